/** The NetSecurity cmdlets for IPsec policy, over the policy stores. */
import { parseAddressList } from '../../policy/endpoints.ts';
import {
  Action,
  CertificateAuthorityType,
  CertificateSigningAlgorithm,
  CertificateSubjectType,
  CRLCheck,
  DiffieHellmanGroup,
  EncryptionAlgorithm,
  GpoBoolean,
  HashAlgorithm,
  InterfaceType,
  IPsecEncapsulation,
  IPsecMode,
  IPsecThroughNAT,
  KeyEncoding,
  KeyModule,
  PacketQueuing,
  SecurityPolicy,
  TrafficExemption,
  TunnelType,
} from '../../policy/enums.ts';
import {
  type AuthProposal,
  type AuthSet,
  DEFAULT_MM_CRYPTO_SET,
  DEFAULT_PHASE1_AUTH_SET,
  DEFAULT_PHASE2_AUTH_SET,
  DEFAULT_QM_CRYPTO_SET,
  type FirewallProfile,
  type FirewallSetting,
  findSet,
  type IPsecRule,
  ipsecRule,
  type MainModeCryptoSet,
  type MainModeRule,
  mainModeRule,
  mmProposal,
  type NamedObject,
  type PolicyDocument,
  type QuickModeCryptoSet,
  qmProposal,
} from '../../policy/model.ts';
import type { Etcd3 } from 'etcd3';
import { connectFleet, FleetConflictError, GpoSessions, loadGpo, saveGpo, splitGpoName } from '../../fleet/gpo.ts';
import { type FleetConfig, readFleetConfig } from '../../fleet/config.ts';
import { editable, type PolicyStores } from '../../policy/store.ts';
import { validateAuthProposal, validateMainModeProposal, validateQuickModeProposal } from '../../policy/validate.ts';
import { type CommandCall, type CommandDef, type ParamDef, PwshError, wildcardMatch } from '../pwsh/runtime.ts';
import { enumerate } from '../pwsh/values.ts';
import {
  applyRuleCommon,
  applyTrafficConditions,
  type Family,
  familyCommands,
  readWithSources,
  RULE_COMMON,
  STORE_PARAMS,
  storeName,
} from './family.ts';
import { firewallFilterCommands, firewallRules } from './firewall.ts';
import { saCommands } from './sa.ts';
import { serviceCommands } from './service.ts';
import { locationCommands } from './location.ts';
import { nativeCommands } from './native-commands.ts';
import { winEventCommands } from './winevent.ts';
import { whatIfCommands } from './whatif.ts';
import {
  addressFilterView,
  CIM,
  authProposalView,
  authSetView,
  firewallProfileView,
  firewallSettingView,
  interfaceFilterView,
  ipsecRuleView,
  mainModeRuleView,
  mmCryptoSetView,
  mmProposalView,
  modelOf,
  portFilterView,
  qmCryptoSetView,
  qmProposalView,
} from './views.ts';

// ---- proposals ----------------------------------------------------------------------------------

const newMmProposal: CommandDef = {
  name: 'New-NetIPsecMainModeCryptoProposal',
  params: [
    { name: 'Encryption', type: 'enum', enum: EncryptionAlgorithm },
    { name: 'KeyExchange', type: 'enum', enum: DiffieHellmanGroup },
    { name: 'Hash', type: 'enum', enum: HashAlgorithm },
    { name: 'CimSession', type: 'any' },
  ],
  invoke(call) {
    const p = mmProposal({
      ...(call.has('Encryption') ? { Encryption: call.get('Encryption') } : {}),
      ...(call.has('KeyExchange') ? { KeyExchange: call.get('KeyExchange') } : {}),
      ...(call.has('Hash') ? { Hash: call.get('Hash') } : {}),
    });
    validateMainModeProposal(p);
    return [mmProposalView(p)];
  },
};

const newQmProposal: CommandDef = {
  name: 'New-NetIPsecQuickModeCryptoProposal',
  params: [
    { name: 'Encapsulation', type: 'flags', enum: IPsecEncapsulation },
    { name: 'Encryption', type: 'enum', enum: EncryptionAlgorithm },
    { name: 'AHHash', type: 'enum', enum: HashAlgorithm },
    { name: 'ESPHash', type: 'enum', enum: HashAlgorithm },
    { name: 'MaxMinutes', type: 'uint', min: 5, max: 2879 },
    { name: 'MaxKiloBytes', type: 'uint', min: 20480, max: 2147483647 },
    { name: 'CimSession', type: 'any' },
  ],
  invoke(call) {
    const given = <K extends string>(k: K) => (call.has(k) ? { [k]: call.get(k) } : {});
    const p = qmProposal({
      ...given('Encapsulation'),
      ...given('Encryption'),
      ...given('AHHash'),
      ...given('ESPHash'),
      ...given('MaxMinutes'),
      ...given('MaxKiloBytes'),
    });
    validateQuickModeProposal(p);
    return [qmProposalView(p)];
  },
};

const newAuthProposal: CommandDef = {
  name: 'New-NetIPsecAuthProposal',
  params: [
    { name: 'Machine', type: 'switch' },
    { name: 'User', type: 'switch' },
    { name: 'Kerberos', type: 'switch' },
    { name: 'Ntlm', type: 'switch' },
    { name: 'Cert', type: 'switch' },
    { name: 'Anonymous', type: 'switch' },
    { name: 'Health', type: 'switch' },
    { name: 'PreSharedKey', type: 'string' },
    { name: 'Proxy', type: 'string' },
    { name: 'Authority', type: 'string' },
    { name: 'AuthorityType', type: 'string' },
    { name: 'Signing', type: 'enum', enum: CertificateSigningAlgorithm },
    { name: 'ExtendedKeyUsage', type: 'strings' },
    { name: 'AccountMapping', type: 'switch' },
    { name: 'ExcludeCAName', type: 'switch' },
    { name: 'FollowRenewal', type: 'switch' },
    { name: 'SelectionCriteria', type: 'switch' },
    { name: 'ValidationCriteria', type: 'switch' },
    { name: 'SubjectName', type: 'string' },
    { name: 'SubjectNameType', type: 'enum', enum: CertificateSubjectType },
    { name: 'Thumbprint', type: 'string' },
    { name: 'CimSession', type: 'any' },
  ],
  invoke(call) {
    const methods = [
      call.get('Kerberos') && 'Kerberos',
      call.get('Ntlm') && 'NTLM',
      call.has('PreSharedKey') && 'PreSharedKey',
      (call.get('Cert') || call.get('Health')) && 'Certificate',
      call.get('Anonymous') && 'Anonymous',
    ].filter(Boolean) as AuthProposal['AuthenticationMethod'][];
    if (methods.length !== 1) {
      throw new PwshError(
        'Parameter set cannot be resolved using the specified named parameters. Give exactly one of -Kerberos, -Ntlm, -PreSharedKey, -Cert or -Anonymous.',
        'AmbiguousParameterSet',
        'InvalidArgument',
        'ParameterBindingException',
      );
    }
    const method = methods[0] as AuthProposal['AuthenticationMethod'];
    const user = call.get<boolean>('User') ?? false;
    const machine = call.get<boolean>('Machine') ?? false;
    if (user && machine) {
      throw new PwshError(
        'Parameter set cannot be resolved: -Machine and -User cannot be used together.',
        'AmbiguousParameterSet',
        'InvalidArgument',
        'ParameterBindingException',
      );
    }
    if ((method === 'Kerberos' || method === 'NTLM') && !user && !machine) {
      throw new PwshError(
        `Parameter set cannot be resolved: -${method === 'NTLM' ? 'Ntlm' : 'Kerberos'} needs -Machine or -User.`,
        'AmbiguousParameterSet',
        'InvalidArgument',
        'ParameterBindingException',
      );
    }
    const p: AuthProposal = {
      AuthenticationMethod: method,
      Principal: method === 'Anonymous' ? 'None' : user ? 'User' : 'Machine',
    };
    if (method === 'PreSharedKey') p.PreSharedKey = call.get<string>('PreSharedKey') ?? '';
    if (method === 'Kerberos' && call.has('Proxy')) p.Proxy = call.get<string>('Proxy');
    if (method === 'Certificate') {
      p.Authority = call.get<string>('Authority') ?? '';
      p.AuthorityType = authorityType(call);
      p.Signing = call.get('Signing') ?? 'RSA';
      for (const k of [
        'AccountMapping',
        'ExcludeCAName',
        'FollowRenewal',
        'SelectionCriteria',
        'ValidationCriteria',
      ] as const) {
        if (call.get<boolean>(k)) p[k] = true;
      }
      if (call.get<boolean>('Health')) p.Health = true;
      if (call.has('ExtendedKeyUsage')) p.ExtendedKeyUsage = call.get<string[]>('ExtendedKeyUsage');
      if (call.has('SubjectName')) p.SubjectName = call.get<string>('SubjectName');
      if (call.has('SubjectNameType')) p.SubjectNameType = call.get('SubjectNameType');
      if (call.has('Thumbprint')) p.Thumbprint = call.get<string>('Thumbprint');
      if (p.FollowRenewal && !p.Thumbprint) {
        throw new PwshError(
          '-FollowRenewal works only together with -Thumbprint.',
          'InvalidArgument,FollowRenewal',
          'InvalidArgument',
          'CimException',
        );
      }
    }
    validateAuthProposal(p, p.Principal === 'User' ? 2 : 1);
    return [authProposalView(p)];
  },
};

/**
 * Root or Intermediate. "CA" is not a Windows value, but a published Microsoft-community script (seed
 * 000) uses it for a root CA; consec accepts it as Root with a warning instead of failing the script.
 */
function authorityType(call: CommandCall): 'Root' | 'Intermediate' {
  const raw = call.get<string>('AuthorityType');
  if (raw === undefined) return 'Root';
  if (raw.toLowerCase() === 'ca') {
    call.runtime.warn('"CA" is not a CertificateAuthorityType (Root, Intermediate); consec treats it as Root.');
    return 'Root';
  }
  const v = CertificateAuthorityType.values.find((x) => x.toLowerCase() === raw.toLowerCase());
  if (!v || v === 'Invalid') {
    throw new PwshError(
      `Cannot bind parameter 'AuthorityType'. Cannot convert value "${raw}" to type "CertificateAuthorityType". Error: "Unable to match the identifier name ${raw} to a valid enumerator name. Specify one of the following enumerator names and try again:\nRoot, Intermediate"`,
      'CannotConvertArgumentNoMessage',
      'InvalidArgument',
      'ParameterBindingException',
    );
  }
  return v;
}

// ---- sets -----------------------------------------------------------------------------------------

function proposals<T>(call: CommandCall, kind: string, maker: string): T[] | undefined {
  if (!call.has('Proposal')) return undefined;
  return enumerate(call.get('Proposal')).map((v) => {
    const m = modelOf<T>(v, kind);
    if (!m) {
      throw new PwshError(
        `Cannot bind parameter 'Proposal': each proposal must be an object made by ${maker}.`,
        'CannotConvertArgument',
        'InvalidArgument',
        'ParameterBindingException',
      );
    }
    return structuredClone(m);
  });
}

const named = (DisplayName: string) => ({ Name: '', DisplayName, Description: '', Group: '' });
const withName = <T extends { Name: string }>(o: T): T => ({
  ...o,
  Name: o.Name || `{${crypto.randomUUID().toUpperCase()}}`,
});

const setRefs = (property: string) => [
  { collection: 'rules' as const, property, label: 'IPsec rule' },
  ...(property === 'Phase1AuthSet' || property === 'MainModeCryptoSet'
    ? [{ collection: 'mainModeRules' as const, property, label: 'main mode rule' }]
    : []),
];

const mmCryptoSets: Family<MainModeCryptoSet> = {
  noun: 'NetIPsecMainModeCryptoSet',
  cimClass: 'MSFT_NetIKEMMCryptoSet',
  collection: 'mainModeCryptoSets',
  nameParam: { name: 'Name', type: 'string', aliases: ['ID'] },
  view: mmCryptoSetView,
  properties: [
    { name: 'Proposal', type: 'objects' },
    { name: 'MaxMinutes', type: 'uint', min: 0, max: 2879 },
    { name: 'MaxSessions', type: 'uint', min: 0, max: 2147483647 },
    { name: 'ForceDiffieHellman', type: 'bool' },
  ],
  newOnly: [{ name: 'Default', type: 'switch' }],
  mandatory: ['Proposal'],
  defaultName: DEFAULT_MM_CRYPTO_SET,
  create: (d) => withName({ ...named(d), Proposal: [], MaxMinutes: 480, MaxSessions: 0, ForceDiffieHellman: false }),
  apply(o, call) {
    o.Proposal = proposals(call, 'MainModeCryptoProposal', 'New-NetIPsecMainModeCryptoProposal') ?? o.Proposal;
    if (call.has('MaxMinutes')) o.MaxMinutes = call.get<number>('MaxMinutes') ?? o.MaxMinutes;
    if (call.has('MaxSessions')) o.MaxSessions = call.get<number>('MaxSessions') ?? o.MaxSessions;
    if (call.has('ForceDiffieHellman')) o.ForceDiffieHellman = call.get<boolean>('ForceDiffieHellman') ?? false;
  },
  references: setRefs('MainModeCryptoSet'),
};

const qmCryptoSets: Family<QuickModeCryptoSet> = {
  noun: 'NetIPsecQuickModeCryptoSet',
  cimClass: 'MSFT_NetIKEQMCryptoSet',
  collection: 'quickModeCryptoSets',
  nameParam: { name: 'Name', type: 'string', aliases: ['ID'] },
  view: qmCryptoSetView,
  properties: [
    { name: 'Proposal', type: 'objects' },
    { name: 'PerfectForwardSecrecyGroup', type: 'enum', enum: DiffieHellmanGroup },
  ],
  newOnly: [{ name: 'Default', type: 'switch' }],
  mandatory: ['Proposal'],
  defaultName: DEFAULT_QM_CRYPTO_SET,
  create: (d) => withName({ ...named(d), Proposal: [], PerfectForwardSecrecyGroup: 'None' }),
  apply(o, call) {
    o.Proposal = proposals(call, 'QuickModeCryptoProposal', 'New-NetIPsecQuickModeCryptoProposal') ?? o.Proposal;
    if (call.has('PerfectForwardSecrecyGroup'))
      o.PerfectForwardSecrecyGroup = call.get('PerfectForwardSecrecyGroup') ?? 'None';
  },
  references: setRefs('QuickModeCryptoSet'),
};

function authSets(phase: 1 | 2): Family<AuthSet> {
  return {
    noun: `NetIPsecPhase${phase}AuthSet`,
    cimClass: `MSFT_NetIKEP${phase}AuthSet`,
    collection: phase === 1 ? 'phase1AuthSets' : 'phase2AuthSets',
    nameParam: { name: 'Name', type: 'string', aliases: ['ID'] },
    view: (s, source) => authSetView(s, source, phase),
    properties: [{ name: 'Proposal', type: 'objects' }],
    newOnly: [{ name: 'Default', type: 'switch' }],
    mandatory: ['Proposal'],
    defaultName: phase === 1 ? DEFAULT_PHASE1_AUTH_SET : DEFAULT_PHASE2_AUTH_SET,
    create: (d) => withName({ ...named(d), Proposal: [] }),
    apply(o, call) {
      o.Proposal = proposals(call, 'AuthProposal', 'New-NetIPsecAuthProposal') ?? o.Proposal;
    },
    references: setRefs(`Phase${phase}AuthSet`),
  };
}

// ---- rules ----------------------------------------------------------------------------------------

/** A set reference as stored: "Default" (what Windows' reference pages set to go back to the default set) is none. */
const setRef = (name: string): string => (name.trim().toLowerCase() === 'default' ? '' : name);

/** Main mode rule that carries a connection security rule's -MainModeCryptoSet (a consec extension). */
const linkedMainModeRule = (ruleName: string): string => `${ruleName}-MainMode`;

const ipsecRules: Family<IPsecRule> = {
  noun: 'NetIPsecRule',
  cimClass: 'MSFT_NetConSecRule',
  collection: 'rules',
  nameParam: { name: 'IPsecRuleName', type: 'string', aliases: ['Name', 'ID'] },
  view: ipsecRuleView,
  properties: [
    ...RULE_COMMON,
    { name: 'Mode', type: 'enum', enum: IPsecMode },
    { name: 'InboundSecurity', type: 'enum', enum: SecurityPolicy },
    { name: 'OutboundSecurity', type: 'enum', enum: SecurityPolicy },
    { name: 'QuickModeCryptoSet', type: 'string', notNullOrEmpty: true },
    { name: 'Phase1AuthSet', type: 'string', notNullOrEmpty: true },
    { name: 'Phase2AuthSet', type: 'string', notNullOrEmpty: true },
    { name: 'MainModeCryptoSet', type: 'string', notNullOrEmpty: true },
    { name: 'KeyModule', type: 'enum', enum: KeyModule },
    { name: 'TunnelType', type: 'enum', enum: TunnelType },
    { name: 'AllowWatchKey', type: 'bool' },
    { name: 'AllowSetKey', type: 'bool' },
    { name: 'LocalTunnelEndpoint', type: 'strings' },
    { name: 'RemoteTunnelEndpoint', type: 'strings' },
    { name: 'RemoteTunnelHostname', type: 'string' },
    { name: 'ForwardPathLifetime', type: 'uint', max: 172799 },
    { name: 'EncryptedTunnelBypass', type: 'bool' },
    { name: 'RequireAuthorization', type: 'bool' },
    { name: 'User', type: 'string' },
    { name: 'Machine', type: 'string' },
    { name: 'Protocol', type: 'string' },
    { name: 'LocalPort', type: 'strings' },
    { name: 'RemotePort', type: 'strings' },
    { name: 'InterfaceAlias', type: 'strings' },
    { name: 'InterfaceType', type: 'flags', enum: InterfaceType },
  ],
  create: (d) => ipsecRule({ DisplayName: d }),
  apply(o, call) {
    applyRuleCommon(o, call);
    const str = <K extends keyof IPsecRule>(k: K): void => {
      if (call.has(k)) (o as unknown as Record<string, unknown>)[k] = call.get(k);
    };
    for (const k of [
      'Mode',
      'InboundSecurity',
      'OutboundSecurity',
      'QuickModeCryptoSet',
      'Phase1AuthSet',
      'Phase2AuthSet',
      'KeyModule',
      'AllowWatchKey',
      'AllowSetKey',
      'RemoteTunnelHostname',
      'ForwardPathLifetime',
      'EncryptedTunnelBypass',
      'RequireAuthorization',
      'User',
      'Machine',
    ] as const) {
      str(k);
    }
    for (const k of ['QuickModeCryptoSet', 'Phase1AuthSet', 'Phase2AuthSet'] as const) o[k] = setRef(o[k]);
    applyTrafficConditions(o, call);
    if (call.has('LocalTunnelEndpoint'))
      o.LocalTunnelEndpoint = parseAddressList(
        'LocalTunnelEndpoint',
        call.get<string[]>('LocalTunnelEndpoint') ?? [],
        false,
      );
    if (call.has('RemoteTunnelEndpoint'))
      o.RemoteTunnelEndpoint = parseAddressList(
        'RemoteTunnelEndpoint',
        call.get<string[]>('RemoteTunnelEndpoint') ?? [],
        false,
      );
    // Tunnel endpoints given to a new rule imply tunnel mode only when -Mode says so; Windows requires -Mode Tunnel.
  },
  afterWrite(o, call, doc) {
    if (!call.has('MainModeCryptoSet')) return;
    const set = call.get<string>('MainModeCryptoSet') ?? '';
    const name = linkedMainModeRule(o.Name);
    doc.mainModeRules = doc.mainModeRules.filter((r) => r.Name !== name);
    if (!set) return;
    doc.mainModeRules.push(
      mainModeRule({
        Name: name,
        DisplayName: `${o.DisplayName} (main mode)`,
        Description: `Created by consec for the -MainModeCryptoSet of IPsec rule ${o.Name}.`,
        LocalAddress: o.LocalAddress,
        RemoteAddress: o.RemoteAddress,
        MainModeCryptoSet: set,
        Phase1AuthSet: o.Phase1AuthSet,
        Profile: o.Profile,
      }),
    );
    call.runtime.warn(
      `-MainModeCryptoSet is not a parameter of ${call.name} on Windows, where main mode crypto is chosen by main mode rules; consec created main mode rule "${name}" for the same endpoints.`,
    );
  },
  onRemove(removed, doc) {
    const linked = new Set(removed.map((r) => linkedMainModeRule(r.Name)));
    doc.mainModeRules = doc.mainModeRules.filter((r) => !linked.has(r.Name));
  },
  enableDisable: true,
};

const mainModeRules: Family<MainModeRule> = {
  noun: 'NetIPsecMainModeRule',
  cimClass: 'MSFT_NetMainModeRule',
  collection: 'mainModeRules',
  nameParam: { name: 'Name', type: 'string', aliases: ['ID'] },
  view: mainModeRuleView,
  properties: [
    ...RULE_COMMON,
    { name: 'MainModeCryptoSet', type: 'string', notNullOrEmpty: true },
    { name: 'Phase1AuthSet', type: 'string', notNullOrEmpty: true },
  ],
  create: (d) => mainModeRule({ DisplayName: d }),
  apply(o, call) {
    applyRuleCommon(o, call);
    if (call.has('MainModeCryptoSet')) o.MainModeCryptoSet = setRef(call.get<string>('MainModeCryptoSet') ?? '');
    if (call.has('Phase1AuthSet')) o.Phase1AuthSet = setRef(call.get<string>('Phase1AuthSet') ?? '');
  },
  enableDisable: true,
};

// ---- settings and filters ---------------------------------------------------------------------------

const SETTING_PARAMS: ParamDef[] = [
  { name: 'Exemptions', type: 'flags', enum: TrafficExemption },
  { name: 'EnableStatefulFtp', type: 'enum', enum: GpoBoolean },
  { name: 'EnableStatefulPptp', type: 'enum', enum: GpoBoolean },
  { name: 'RemoteMachineTransportAuthorizationList', type: 'string' },
  { name: 'RemoteMachineTunnelAuthorizationList', type: 'string' },
  { name: 'RemoteUserTransportAuthorizationList', type: 'string' },
  { name: 'RemoteUserTunnelAuthorizationList', type: 'string' },
  { name: 'RequireFullAuthSupport', type: 'enum', enum: GpoBoolean },
  { name: 'CertValidationLevel', type: 'enum', enum: CRLCheck },
  { name: 'AllowIPsecThroughNAT', type: 'enum', enum: IPsecThroughNAT },
  { name: 'MaxSAIdleTimeSeconds', type: 'uint', min: 300, max: 3600 },
  { name: 'KeyEncoding', type: 'enum', enum: KeyEncoding },
  { name: 'EnablePacketQueuing', type: 'flags', enum: PacketQueuing },
];

function settingCommands(stores: PolicyStores): CommandDef[] {
  return [
    {
      name: 'Get-NetFirewallSetting',
      params: [{ name: 'All', type: 'switch' }, ...STORE_PARAMS],
      invoke(call) {
        const name = storeName(call);
        return [firewallSettingView(stores.read(name).settings, stores.resolve(name).name)];
      },
    },
    {
      name: 'Set-NetFirewallSetting',
      mutating: true,
      params: [
        ...SETTING_PARAMS,
        { name: 'InputObject', type: 'objects', pipeline: true },
        { name: 'PassThru', type: 'switch' },
        ...STORE_PARAMS,
      ],
      async invoke(call) {
        const name = storeName(call);
        const changes = SETTING_PARAMS.filter((p) => call.has(p.name));
        if (call.whatIf) {
          call.runtime.host.stdout(
            `What if: Performing operation "Set" on Target "${changes.map((c) => c.name).join(', ')} in ${name}".\n`,
          );
          return [];
        }
        const settings = await stores.update(name, (doc: PolicyDocument) => {
          for (const p of changes) (doc.settings as unknown as Record<string, unknown>)[p.name] = call.get(p.name);
          return doc.settings as FirewallSetting;
        });
        return call.get<boolean>('PassThru') ? [firewallSettingView(settings, stores.resolve(name).name)] : [];
      },
    },
    ...profileCommands(stores),
    {
      name: 'Open-NetGPO',
      params: [
        { name: 'PolicyStore', type: 'string', position: 0, mandatory: true },
        { name: 'DomainController', type: 'string' },
      ],
      async invoke(call) {
        // The session is the store's name. A GPO of the fleet this host joined (`consec fleet join`)
        // is read from the fleet's cluster into the local copy, and its revision remembered for
        // Save-NetGPO; any other GPO store is local and its edits are written at once.
        const name = stores.resolve(call.get<string>('PolicyStore') ?? '').name;
        const fleet = fleetGpo(stores, name);
        if (fleet) {
          const etcd = connectFleet(fleet.config);
          try {
            const record = await fleetCall(() => loadGpo(etcd, name));
            new GpoSessions(stores.stateDir).record(name, record.revision);
            await stores.update(name, (doc) => Object.assign(doc, structuredClone(record.doc)));
          } finally {
            etcd.close();
          }
        }
        return [name];
      },
    },
    {
      name: 'Save-NetGPO',
      params: [{ name: 'GPOSession', type: 'string', position: 0, mandatory: true }],
      async invoke(call) {
        const name = stores.resolve(call.get<string>('GPOSession') ?? '').name;
        const fleet = fleetGpo(stores, name);
        if (!fleet) return [];
        const sessions = new GpoSessions(stores.stateDir);
        const opened = sessions.opened(name);
        if (opened === undefined)
          throw new PwshError(
            `The GPO session ${name} was not opened on this host: open it with Open-NetGPO first.`,
            'InvalidOperation',
            'InvalidOperation',
            'CimException',
          );
        const etcd = connectFleet(fleet.config);
        try {
          await fleetCall(() => saveGpo(etcd, name, stores.read(name), opened));
          // The session ends with its save: the GPO's cmdlets without -GPOSession go to the cluster again.
          sessions.close(name);
        } finally {
          etcd.close();
        }
        return [];
      },
    },
  ];
}

const PROFILE_PARAMS: ParamDef[] = [
  { name: 'Enabled', type: 'enum', enum: GpoBoolean },
  { name: 'DefaultInboundAction', type: 'enum', enum: Action },
  { name: 'DefaultOutboundAction', type: 'enum', enum: Action },
  { name: 'AllowLocalFirewallRules', type: 'enum', enum: GpoBoolean },
  { name: 'AllowLocalIPsecRules', type: 'enum', enum: GpoBoolean },
  { name: 'AllowInboundRules', type: 'enum', enum: GpoBoolean },
  { name: 'AllowUserApps', type: 'enum', enum: GpoBoolean },
  { name: 'AllowUserPorts', type: 'enum', enum: GpoBoolean },
  { name: 'AllowUnicastResponseToMulticast', type: 'enum', enum: GpoBoolean },
  { name: 'NotifyOnListen', type: 'enum', enum: GpoBoolean },
  { name: 'EnableStealthModeForIPsec', type: 'enum', enum: GpoBoolean },
  { name: 'LogFileName', type: 'string' },
  { name: 'LogMaxSizeKilobytes', type: 'uint', min: 1, max: 32767 },
  { name: 'LogAllowed', type: 'enum', enum: GpoBoolean },
  { name: 'LogBlocked', type: 'enum', enum: GpoBoolean },
  { name: 'LogIgnored', type: 'enum', enum: GpoBoolean },
];

/** Profiles named by -Name (wildcards), piped in, or all; unknown names are Windows' not-found error. */
function selectProfiles(call: CommandCall, profiles: FirewallProfile[]): FirewallProfile[] {
  const piped = call.get<unknown[]>('InputObject');
  // A rule piped in (Get-NetFirewallRule … | Get-NetFirewallProfile) stands for the profiles it applies to.
  const ofRule = (p: unknown): string[] | undefined => {
    const rule = modelOf<{ Profile: string[] }>(p, 'firewallRules') ?? modelOf<{ Profile: string[] }>(p, 'rules');
    if (!rule) return undefined;
    return rule.Profile.includes('Any') ? ['Domain', 'Private', 'Public'] : rule.Profile;
  };
  const names =
    call.get<string[]>('Name') ??
    (piped
      ? enumerate(piped).flatMap((p) => ofRule(p) ?? [String(modelOf<FirewallProfile>(p, 'profiles')?.Name ?? p)])
      : undefined);
  if (!names || call.get<boolean>('All')) return profiles;
  for (const n of names) {
    if (!/[*?]/.test(n) && !profiles.some((p) => p.Name.toLowerCase() === n.toLowerCase())) {
      throw new PwshError(
        `No MSFT_NetFirewallProfile objects found with property 'Name' equal to '${n}'.  Verify the value of the property and retry.`,
        'CmdletizationQuery_NotFound_Name',
        'ObjectNotFound',
        'CimJobException',
        undefined,
        n,
        'String',
      );
    }
  }
  return profiles.filter((p) => names.some((n) => wildcardMatch(p.Name, n)));
}

function profileCommands(stores: PolicyStores): CommandDef[] {
  const selectors: ParamDef[] = [
    { name: 'Name', type: 'strings', position: 0, aliases: ['Profile'] },
    { name: 'All', type: 'switch' },
    { name: 'InputObject', type: 'objects', pipeline: true },
  ];
  return [
    {
      name: 'Get-NetFirewallProfile',
      params: [...selectors, ...STORE_PARAMS],
      invoke: (call) => selectProfiles(call, stores.read(storeName(call)).profiles).map(firewallProfileView),
    },
    {
      name: 'Set-NetFirewallProfile',
      mutating: true,
      params: [...selectors, ...PROFILE_PARAMS, { name: 'PassThru', type: 'switch' }, ...STORE_PARAMS],
      async invoke(call) {
        const changed = await stores.update(storeName(call), (doc) => {
          const selected = selectProfiles(call, doc.profiles);
          if (call.whatIf) {
            for (const p of selected)
              call.runtime.host.stdout(`What if: Performing operation "Set" on Target "${p.Name}".\n`);
            return [];
          }
          for (const p of selected) {
            for (const param of PROFILE_PARAMS)
              if (call.has(param.name)) (p as unknown as Record<string, unknown>)[param.name] = call.get(param.name);
          }
          return selected;
        });
        return call.get<boolean>('PassThru') ? changed.map(firewallProfileView) : [];
      },
    },
  ];
}

/**
 * The NetIPsecDospSetting cmdlets (IPsec DoS protection of an IPv6 edge gateway): not in consec,
 * said so whatever they are given — never a setting stored as if it were enforced.
 */
const dospCommands: CommandDef[] = ['New', 'Get', 'Set', 'Remove'].map((verb) => ({
  name: `${verb}-NetIPsecDospSetting`,
  params: [],
  unbound: true,
  invoke() {
    throw new PwshError(
      `${verb}-NetIPsecDospSetting: consec has no IPsec DoS protection (the rate limiting of IPv6 traffic an edge gateway forwards from its public to its internal interfaces); no such setting exists or can be made.`,
      'DospNotSupported',
      'NotImplemented',
      'CimException',
    );
  },
}));

const ChangeAction = { typeName: 'ChangeAction', values: ['Add', 'Delete'], flags: false } as const;
const EndpointType = { typeName: 'EndpointType', values: ['Endpoint1', 'Endpoint2'], flags: false } as const;

/**
 * Update-NetIPsecRule: adds addresses to or deletes them from a rule's Endpoint1 (local) or
 * Endpoint2 (remote) list. Deleting the last address is refused: the rule would then apply to any
 * address, the opposite of what a deletion asks for.
 */
function updateIpsecRule(stores: PolicyStores): CommandDef {
  return {
    name: 'Update-NetIPsecRule',
    mutating: true,
    params: [
      { name: 'IPsecRuleName', type: 'strings', position: 0, aliases: ['Name', 'ID'] },
      { name: 'DisplayName', type: 'strings' },
      { name: 'InputObject', type: 'objects', pipeline: true },
      { name: 'Action', type: 'enum', enum: ChangeAction, mandatory: true },
      { name: 'IPv4Addresses', type: 'strings' },
      { name: 'IPv6Addresses', type: 'strings' },
      { name: 'EndpointType', type: 'enum', enum: EndpointType, mandatory: true },
      { name: 'PassThru', type: 'switch' },
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const names = (call.get<string[]>('IPsecRuleName') ?? []).map((n) => n.toLowerCase());
      const displayNames = call.get<string[]>('DisplayName');
      const piped = enumerate(call.get<unknown[]>('InputObject') ?? []).map((v) => {
        const r = modelOf<IPsecRule>(v, 'rules');
        if (!r)
          throw new PwshError(
            `Cannot bind argument to parameter 'InputObject', because PSTypeNames of the argument do not match the PSTypeName required by the parameter: ${CIM}MSFT_NetConSecRule.`,
            'MismatchedPSTypeName',
            'InvalidArgument',
            'ParameterBindingException',
          );
        return r.Name.toLowerCase();
      });
      const v4 = parseAddressList('IPv4Addresses', call.get<string[]>('IPv4Addresses') ?? []).filter(
        (a) => a !== 'Any',
      );
      const v6 = parseAddressList('IPv6Addresses', call.get<string[]>('IPv6Addresses') ?? []).filter(
        (a) => a !== 'Any',
      );
      if (v4.some((a) => a.includes(':')) || v6.some((a) => !a.includes(':')))
        throw new PwshError(
          'IPv4Addresses takes IPv4 addresses and IPv6Addresses IPv6 addresses.',
          'InvalidArgument',
          'InvalidArgument',
          'CimException',
        );
      const given = [...v4, ...v6];
      const field = call.get<string>('EndpointType') === 'Endpoint1' ? 'LocalAddress' : 'RemoteAddress';
      const changed = await stores.update(storeName(call), (doc) => {
        const found = doc.rules.filter(
          (r) =>
            names.includes(r.Name.toLowerCase()) ||
            piped.includes(r.Name.toLowerCase()) ||
            (displayNames ?? []).some((d) => wildcardMatch(r.DisplayName, d)),
        );
        for (const n of names)
          if (!found.some((r) => r.Name.toLowerCase() === n))
            throw new PwshError(
              `No MSFT_NetConSecRule objects found with property 'IPsecRuleName' equal to '${n}'.  Verify the value of the property and retry.`,
              'CmdletizationQuery_NotFound_IPsecRuleName',
              'ObjectNotFound',
              'CimJobException',
            );
        if (call.whatIf) {
          for (const r of found)
            call.runtime.host.stdout(
              `What if: Performing operation "Update" on Target "${r.Name} (${r.DisplayName})".\n`,
            );
          return [];
        }
        return found.map((o) => {
          const r = editable(doc, 'rules', o);
          const have = r[field].filter((a) => a !== 'Any');
          if (call.get<string>('Action') === 'Add') r[field] = [...new Set([...have, ...given])];
          else {
            const left = have.filter((a) => !given.some((g) => g.toLowerCase() === a.toLowerCase()));
            if (left.length === 0)
              throw new PwshError(
                `Deleting these addresses would leave rule "${r.DisplayName}" with no ${field === 'LocalAddress' ? 'Endpoint1' : 'Endpoint2'} address, which means any address: remove the rule or set the list instead.`,
                'InvalidArgument',
                'InvalidArgument',
                'CimException',
              );
            r[field] = left;
          }
          return r;
        });
      });
      return call.get<boolean>('PassThru')
        ? changed.map((r) => ipsecRuleView(r, { store: storeName(call), type: 'Local' }))
        : [];
    },
  };
}

/**
 * Show-NetIPsecRule: each IPsec rule of the store followed by the objects that make it — its
 * address, port and interface filters and the authentication and crypto sets it uses (the
 * defaults when it names none) — "in a fully expanded view".
 */
function showIpsecRule(stores: PolicyStores): CommandDef {
  return {
    name: 'Show-NetIPsecRule',
    params: STORE_PARAMS,
    invoke(call) {
      const out: unknown[] = [];
      for (const { doc, source } of readWithSources(stores, storeName(call)))
        for (const r of doc.rules) {
          out.push(ipsecRuleView(r, source), addressFilterView(r), portFilterView(r), interfaceFilterView(r));
          const p1 = findSet(doc, 'phase1AuthSets', r.Phase1AuthSet || DEFAULT_PHASE1_AUTH_SET);
          if (p1) out.push(authSetView(p1, source, 1));
          const p2 = r.Phase2AuthSet ? findSet(doc, 'phase2AuthSets', r.Phase2AuthSet) : undefined;
          if (p2) out.push(authSetView(p2, source, 2));
          const qm = findSet(doc, 'quickModeCryptoSets', r.QuickModeCryptoSet || DEFAULT_QM_CRYPTO_SET);
          if (qm) out.push(qmCryptoSetView(qm, source));
        }
      return out;
    },
  };
}

/**
 * The families with what selects their objects from the other side of each reference: a set piped
 * into Get-NetIPsecRule selects the rules that use it.
 */
function withAssociations(families: Family<NamedObject>[]): Family<NamedObject>[] {
  return families.map((f) => ({
    ...f,
    associated: families.flatMap((g) =>
      (g.references ?? [])
        .filter((r) => r.collection === f.collection)
        .map((r) => ({ collection: g.collection, property: r.property, defaultName: g.defaultName })),
    ),
  }));
}

export function netSecurityCommands(stores: PolicyStores): CommandDef[] {
  fleetStores(stores);
  const families = withAssociations([
    mmCryptoSets,
    qmCryptoSets,
    authSets(1),
    authSets(2),
    ipsecRules,
    mainModeRules,
    firewallRules,
  ] as unknown as Family<NamedObject>[]);
  const commands: CommandDef[] = [
    newMmProposal,
    newQmProposal,
    newAuthProposal,
    ...families.flatMap((f) => familyCommands(f, stores)),
    ...settingCommands(stores),
    ...firewallFilterCommands(stores),
    showIpsecRule(stores),
    updateIpsecRule(stores),
    ...dospCommands,
    ...whatIfCommands(stores),
    ...saCommands(stores),
    ...winEventCommands(stores),
    ...serviceCommands(stores),
    ...locationCommands(stores),
    ...nativeCommands(stores),
  ];
  // A fleet GPO named by -PolicyStore is read from the cluster first (its local copy brought up to date).
  return commands.map((c) =>
    c.unbound || !c.params.some((p) => p.name === 'PolicyStore')
      ? c
      : {
          ...c,
          invoke: async (call) => {
            await stores.prefetch(call.get<string>('PolicyStore'));
            return c.invoke(call);
          },
        },
  );
}

/**
 * The fleet's GPOs: an edit session (Open-NetGPO … Save-NetGPO) works on a local copy; without one, a
 * cmdlet's `-PolicyStore domain\GPO` reads the GPO from the cluster and writes its change there at
 * once (compare-and-swap on the revision it read), as a cmdlet without -GPOSession does on Windows.
 */
export function fleetStores(stores: PolicyStores): void {
  stores.isFleetGpo = (name) => fleetGpo(stores, name) !== undefined;
  const withFleet = async <T>(name: string, work: (etcd: Etcd3) => Promise<T>): Promise<T> => {
    const fleet = fleetGpo(stores, name);
    if (!fleet)
      throw new PwshError(
        `${name} is not a GPO of this host's fleet.`,
        'InvalidArgument',
        'InvalidArgument',
        'CimException',
      );
    const etcd = connectFleet(fleet.config);
    try {
      return await fleetCall(() => work(etcd));
    } finally {
      etcd.close();
    }
  };
  stores.remote = {
    owns: (name) => fleetGpo(stores, name) !== undefined && new GpoSessions(stores.stateDir).opened(name) === undefined,
    load: (name) => withFleet(name, (etcd) => loadGpo(etcd, name)),
    save: (name, doc, revision) =>
      withFleet(name, async (etcd) => {
        try {
          await saveGpo(etcd, name, doc, revision);
          return true;
        } catch (err) {
          if (err instanceof FleetConflictError) return false;
          throw err;
        }
      }),
  };
}

/** The fleet this host joined, when `name` is one of its domain's GPOs. */
function fleetGpo(stores: PolicyStores, name: string): { config: FleetConfig } | undefined {
  const config = readFleetConfig(stores.stateDir);
  const n = splitGpoName(name);
  return config && n && n.domain === config.domain.toLowerCase() ? { config } : undefined;
}

/** A call to the fleet's cluster; its failures as PowerShell errors (a conflict is Windows' "changed meanwhile"). */
async function fleetCall<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof FleetConflictError)
      throw new PwshError(err.message, 'ResourceBusy', 'ResourceBusy', 'CimException');
    throw new PwshError(
      `The fleet's policy cluster could not be reached or refused the request: ${(err as Error).message}`,
      'ConnectionError',
      'ConnectionError',
      'CimException',
    );
  }
}
