/**
 * How policy objects look in PowerShell: Windows' property names and order (reference §2), flags
 * as "A, B", and the read-only status properties. Each view keeps a link to the model object it
 * shows, so it can be piped back into Set-/Remove- cmdlets or used as a -Proposal.
 */
import type {
  AuthProposal,
  AuthSet,
  FirewallProfile,
  FirewallSetting,
  FirewallRule,
  IPsecRule,
  MainModeCryptoProposal,
  MainModeCryptoSet,
  MainModeRule,
  QuickModeCryptoProposal,
  QuickModeCryptoSet,
} from '../../policy/model.ts';
import { isPSObject, PS_HIDDEN, type PSObject, psObject } from '../pwsh/values.ts';

export const MODEL = Symbol('consecModel');

export type ProposalKind = 'MainModeCryptoProposal' | 'QuickModeCryptoProposal' | 'AuthProposal';

export interface Source {
  store: string;
  type: 'Local' | 'GroupPolicy' | 'Hardcoded';
}

/** The type name prefix of Windows' NetSecurity CIM objects (a view's type is this + its class). */
export const CIM = 'Microsoft.Management.Infrastructure.CimInstance#root/standardcimv2/';

/** The model object behind one of our views, with its kind (undefined for anything else). */
export function viewModel<T = unknown>(v: unknown): { kind: string; value: T } | undefined {
  return isPSObject(v) ? (v as unknown as Record<symbol, { kind: string; value: T } | undefined>)[MODEL] : undefined;
}

/** The model object behind a view, when the value is one of our views of `kind`. */
export function modelOf<T>(v: unknown, kind: string): T | undefined {
  const m = viewModel<T>(v);
  return m?.kind === kind ? m.value : undefined;
}

const STORED = new Set([
  'rules',
  'firewallRules',
  'mainModeRules',
  'phase1AuthSets',
  'phase2AuthSets',
  'mainModeCryptoSets',
  'quickModeCryptoSets',
]);

/** CreationClassName of the stored objects that have one on Windows (the firewall's rules). */
const CREATION_CLASS: Record<string, string> = {
  rules: 'MSFT|FW|ConSecRule',
  mainModeRules: 'MSFT|FW|MainModeRule',
  firewallRules: 'MSFT|FW|FirewallRule',
};

function withModel(o: PSObject, kind: string, value: unknown): PSObject {
  Object.defineProperty(o, MODEL, { value: { kind, value }, enumerable: false });
  // A stored object is a CIM instance on Windows: its key (InstanceID, what scripts pass as a set
  // parameter: -Phase1AuthSet $set.InstanceID) and name, not listed by its views.
  const named = value as { Name?: unknown; DisplayName?: unknown };
  if (STORED.has(kind) && typeof named.Name === 'string') {
    const cls = CREATION_CLASS[kind];
    o[PS_HIDDEN] = {
      InstanceID: named.Name,
      ElementName: named.DisplayName,
      ...(cls ? { CreationClassName: `${cls}|${named.Name}` } : {}),
    };
  }
  return o;
}

const flags = (v: readonly string[]): string => v.join(', ');

function status(source: Source): Record<string, unknown> {
  return {
    PrimaryStatus: 'OK',
    Status: 'The rule was parsed successfully from the store. (65536)',
    EnforcementStatus: 'NotApplicable',
    PolicyStoreSource: source.store,
    PolicyStoreSourceType: source.type,
  };
}

function setStatus(source: Source): Record<string, unknown> {
  const props = status(source);
  delete props.EnforcementStatus;
  return props;
}

export function mmProposalText(p: MainModeCryptoProposal): string {
  return `${p.Encryption}-${p.Hash}-${p.KeyExchange}`;
}

/** netsh's quick mode notation: ESP:SHA256-AES256+60min+100000kb, AH:SHA1+ESP:SHA1-AES128+…. */
export function qmProposalText(p: QuickModeCryptoProposal): string {
  const parts: string[] = [];
  if (p.Encapsulation.includes('AH')) parts.push(`AH:${p.AHHash}`);
  if (p.Encapsulation.includes('ESP')) parts.push(`ESP:${p.ESPHash}-${p.Encryption}`);
  return `${parts.join('+')}+${p.MaxMinutes}min+${p.MaxKiloBytes}kb`;
}

export function authProposalText(p: AuthProposal): string {
  if (p.AuthenticationMethod === 'Anonymous') return 'Anonymous';
  const who = p.Principal === 'User' ? 'User' : 'Machine';
  if (p.AuthenticationMethod === 'Certificate')
    return `${who}${p.Health ? 'HealthCert' : 'Cert'}: ${p.Authority ?? p.Thumbprint ?? ''}`;
  if (p.AuthenticationMethod === 'PreSharedKey') return `${who}PreSharedKey`;
  return `${who}${p.AuthenticationMethod === 'NTLM' ? 'Ntlm' : 'Kerberos'}`;
}

export function mmProposalView(p: MainModeCryptoProposal): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetIKEMMCryptoProposal`, { ...p }, mmProposalText(p)),
    'MainModeCryptoProposal',
    p,
  );
}

export function qmProposalView(p: QuickModeCryptoProposal): PSObject {
  return withModel(
    psObject(
      `${CIM}MSFT_NetIKEQMCryptoProposal`,
      {
        Encapsulation: flags(p.Encapsulation),
        Encryption: p.Encryption,
        AHHash: p.AHHash,
        ESPHash: p.ESPHash,
        MaxMinutes: p.MaxMinutes,
        MaxKiloBytes: p.MaxKiloBytes,
      },
      qmProposalText(p),
    ),
    'QuickModeCryptoProposal',
    p,
  );
}

/** Auth proposals: the pre-shared key is never shown (it is stored, but output is not a place for secrets). */
export function authProposalView(p: AuthProposal): PSObject {
  const props: Record<string, unknown> = {
    AuthenticationMethod: p.AuthenticationMethod,
    Principal: p.Principal,
  };
  if (p.AuthenticationMethod === 'PreSharedKey') props.PreSharedKey = '********';
  if (p.AuthenticationMethod === 'Kerberos') props.Proxy = p.Proxy ?? '';
  if (p.AuthenticationMethod === 'Certificate') {
    Object.assign(props, {
      Authority: p.Authority ?? '',
      AuthorityType: p.AuthorityType ?? 'Root',
      Signing: p.Signing ?? 'RSA',
      ExtendedKeyUsage: p.ExtendedKeyUsage ?? [],
      AccountMapping: p.AccountMapping ?? false,
      ExcludeCAName: p.ExcludeCAName ?? false,
      FollowRenewal: p.FollowRenewal ?? false,
      SubjectName: p.SubjectName ?? '',
      SubjectNameType: p.SubjectNameType ?? 'None',
      Thumbprint: p.Thumbprint ?? '',
      Health: p.Health ?? false,
    });
  }
  return withModel(psObject(`${CIM}MSFT_NetIKEAuthProposal`, props, authProposalText(p)), 'AuthProposal', p);
}

function namedProps(o: {
  Name: string;
  DisplayName: string;
  Description: string;
  Group: string;
}): Record<string, unknown> {
  return {
    Name: o.Name,
    DisplayName: o.DisplayName,
    Description: o.Description,
    DisplayGroup: o.Group,
    Group: o.Group,
  };
}

export function mmCryptoSetView(s: MainModeCryptoSet, source: Source): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetIKEMMCryptoSet`, {
      ...namedProps(s),
      Proposal: s.Proposal.map(mmProposalView),
      MaxMinutes: s.MaxMinutes,
      MaxSessions: s.MaxSessions,
      ForceDiffieHellman: s.ForceDiffieHellman,
      ...setStatus(source),
    }),
    'mainModeCryptoSets',
    s,
  );
}

export function qmCryptoSetView(s: QuickModeCryptoSet, source: Source): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetIKEQMCryptoSet`, {
      ...namedProps(s),
      Proposal: s.Proposal.map(qmProposalView),
      PerfectForwardSecrecyGroup: s.PerfectForwardSecrecyGroup,
      ...setStatus(source),
    }),
    'quickModeCryptoSets',
    s,
  );
}

export function authSetView(s: AuthSet, source: Source, phase: 1 | 2): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetIKEP${phase}AuthSet`, {
      ...namedProps(s),
      Proposal: s.Proposal.map(authProposalView),
      ...setStatus(source),
    }),
    phase === 1 ? 'phase1AuthSets' : 'phase2AuthSets',
    s,
  );
}

export function ipsecRuleView(r: IPsecRule, source: Source): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetConSecRule`, {
      ...namedProps(r),
      Enabled: r.Enabled,
      Profile: flags(r.Profile),
      Platform: r.Platform,
      Mode: r.Mode,
      InboundSecurity: r.InboundSecurity,
      OutboundSecurity: r.OutboundSecurity,
      QuickModeCryptoSet: r.QuickModeCryptoSet,
      Phase1AuthSet: r.Phase1AuthSet,
      Phase2AuthSet: r.Phase2AuthSet,
      KeyModule: r.KeyModule,
      AllowWatchKey: r.AllowWatchKey,
      AllowSetKey: r.AllowSetKey,
      LocalTunnelEndpoint: r.LocalTunnelEndpoint,
      RemoteTunnelEndpoint: r.RemoteTunnelEndpoint,
      RemoteTunnelHostname: r.RemoteTunnelHostname,
      ForwardPathLifetime: r.ForwardPathLifetime,
      EncryptedTunnelBypass: r.EncryptedTunnelBypass,
      RequireAuthorization: r.RequireAuthorization,
      User: r.User,
      Machine: r.Machine,
      ...status(source),
    }),
    'rules',
    r,
  );
}

export function mainModeRuleView(r: MainModeRule, source: Source): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetMainModeRule`, {
      ...namedProps(r),
      Enabled: r.Enabled,
      Profile: flags(r.Profile),
      Platform: r.Platform,
      MainModeCryptoSet: r.MainModeCryptoSet,
      Phase1AuthSet: r.Phase1AuthSet,
      ...status(source),
    }),
    'mainModeRules',
    r,
  );
}

/** Get-NetFirewallRule: the rule object (its conditions are in the filter objects, as on Windows). */
export function firewallRuleView(r: FirewallRule, source: Source): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetFirewallRule`, {
      ...namedProps(r),
      Enabled: r.Enabled,
      Profile: flags(r.Profile),
      Platform: r.Platform,
      Direction: r.Direction,
      Action: r.Action,
      EdgeTraversalPolicy: r.EdgeTraversalPolicy,
      LooseSourceMapping: r.LooseSourceMapping,
      LocalOnlyMapping: r.LocalOnlyMapping,
      Owner: r.Owner,
      ...status(source),
    }),
    'firewallRules',
    r,
  );
}

/** The filter objects of a rule carry the rule they belong to, so they pipe back into Get-/Set- of rules. */
function filterOf(o: PSObject, kind: 'rules' | 'mainModeRules' | 'firewallRules', r: { Name: string }): PSObject {
  Object.defineProperty(o, MODEL, { value: { kind, value: r }, enumerable: false });
  return o;
}

const kindOf = (r: IPsecRule | MainModeRule | FirewallRule): 'rules' | 'mainModeRules' | 'firewallRules' =>
  'Direction' in r ? 'firewallRules' : 'Mode' in r ? 'rules' : 'mainModeRules';

/** Get-NetFirewallAddressFilter / PortFilter: where a rule's endpoints live on Windows. */
export function addressFilterView(r: IPsecRule | MainModeRule | FirewallRule): PSObject {
  return filterOf(
    psObject(`${CIM}MSFT_NetAddressFilter`, { LocalAddress: r.LocalAddress, RemoteAddress: r.RemoteAddress }),
    kindOf(r),
    r,
  );
}

export function portFilterView(r: IPsecRule | FirewallRule): PSObject {
  const fw = 'Direction' in r ? r : undefined;
  return filterOf(
    psObject(`${CIM}MSFT_NetProtocolPortFilter`, {
      Protocol: r.Protocol,
      LocalPort: r.LocalPort,
      RemotePort: r.RemotePort,
      IcmpType: fw ? fw.IcmpType : 'Any',
      DynamicTarget: fw ? fw.DynamicTarget : 'Any',
    }),
    kindOf(r),
    r,
  );
}

export function securityFilterView(r: FirewallRule): PSObject {
  return filterOf(
    psObject(`${CIM}MSFT_NetNetworkLayerSecurityFilter`, {
      Authentication: r.Authentication,
      Encryption: r.Encryption,
      OverrideBlockRules: r.OverrideBlockRules,
      LocalUser: r.LocalUser,
      RemoteUser: r.RemoteUser,
      RemoteMachine: r.RemoteMachine,
    }),
    'firewallRules',
    r,
  );
}

export function applicationFilterView(r: FirewallRule): PSObject {
  return filterOf(
    psObject(`${CIM}MSFT_NetApplicationFilter`, { Program: r.Program, Package: r.Package }),
    'firewallRules',
    r,
  );
}

export function serviceFilterView(r: FirewallRule): PSObject {
  return filterOf(psObject(`${CIM}MSFT_NetServiceFilter`, { Service: r.Service }), 'firewallRules', r);
}

export function interfaceTypeFilterView(r: IPsecRule | FirewallRule): PSObject {
  return filterOf(
    psObject(`${CIM}MSFT_NetInterfaceTypeFilter`, { InterfaceType: flags(r.InterfaceType) }),
    kindOf(r),
    r,
  );
}

export function interfaceFilterView(r: IPsecRule | FirewallRule): PSObject {
  return filterOf(
    psObject(`${CIM}MSFT_NetInterfaceFilter`, {
      InterfaceAlias: r.InterfaceAlias.length ? r.InterfaceAlias : 'Any',
    }),
    kindOf(r),
    r,
  );
}

export function firewallProfileView(p: FirewallProfile): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetFirewallProfile`, {
      Name: p.Name,
      Enabled: p.Enabled,
      DefaultInboundAction: p.DefaultInboundAction,
      DefaultOutboundAction: p.DefaultOutboundAction,
      AllowInboundRules: p.AllowInboundRules,
      AllowLocalFirewallRules: p.AllowLocalFirewallRules,
      AllowLocalIPsecRules: p.AllowLocalIPsecRules,
      AllowUserApps: p.AllowUserApps,
      AllowUserPorts: p.AllowUserPorts,
      AllowUnicastResponseToMulticast: p.AllowUnicastResponseToMulticast,
      NotifyOnListen: p.NotifyOnListen,
      EnableStealthModeForIPsec: p.EnableStealthModeForIPsec,
      LogFileName: p.LogFileName,
      LogMaxSizeKilobytes: p.LogMaxSizeKilobytes,
      LogAllowed: p.LogAllowed,
      LogBlocked: p.LogBlocked,
      LogIgnored: p.LogIgnored,
    }),
    'profiles',
    p,
  );
}

export function firewallSettingView(s: FirewallSetting, storeName: string): PSObject {
  return withModel(
    psObject(`${CIM}MSFT_NetSecuritySettingData`, {
      Name: storeName,
      Exemptions: flags(s.Exemptions),
      EnableStatefulFtp: s.EnableStatefulFtp,
      EnableStatefulPptp: s.EnableStatefulPptp,
      ActiveProfile: 'Domain',
      RemoteMachineTransportAuthorizationList: s.RemoteMachineTransportAuthorizationList,
      RemoteMachineTunnelAuthorizationList: s.RemoteMachineTunnelAuthorizationList,
      RemoteUserTransportAuthorizationList: s.RemoteUserTransportAuthorizationList,
      RemoteUserTunnelAuthorizationList: s.RemoteUserTunnelAuthorizationList,
      RequireFullAuthSupport: s.RequireFullAuthSupport,
      CertValidationLevel: s.CertValidationLevel,
      AllowIPsecThroughNAT: s.AllowIPsecThroughNAT,
      MaxSAIdleTimeSeconds: s.MaxSAIdleTimeSeconds,
      KeyEncoding: s.KeyEncoding,
      EnablePacketQueuing: flags(s.EnablePacketQueuing),
    }),
    'settings',
    s,
  );
}
