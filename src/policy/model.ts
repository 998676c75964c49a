/**
 * The connection-security policy object model, with Windows' property names, types and defaults
 * (shared/reference/windows-ipsec-surface.md §1–3). Objects are plain JSON-serialisable data; the
 * shell adds the read-only status properties (PrimaryStatus, PolicyStoreSource, …) when it shows them.
 */
import { randomUUID } from 'node:crypto';
import type {
  Action,
  Authentication,
  CertificateAuthorityType,
  CertificateSigningAlgorithm,
  CertificateSubjectType,
  CRLCheck,
  DiffieHellmanGroup,
  Direction,
  DynamicTransport,
  EdgeTraversal,
  Enabled,
  Encryption,
  EncryptionAlgorithm,
  EnumValue,
  GpoBoolean,
  HashAlgorithm,
  InterfaceType,
  IPsecEncapsulation,
  IPsecMode,
  IPsecThroughNAT,
  KeyEncoding,
  KeyModule,
  PacketQueuing,
  Profile,
  SecurityPolicy,
  TrafficExemption,
} from './enums.ts';

export interface NamedObject {
  /** Unique per store; "{GUID}" when not given. */
  Name: string;
  DisplayName: string;
  Description: string;
  Group: string;
}

export interface MainModeCryptoProposal {
  Encryption: EnumValue<typeof EncryptionAlgorithm>;
  Hash: EnumValue<typeof HashAlgorithm>;
  KeyExchange: EnumValue<typeof DiffieHellmanGroup>;
}

export interface QuickModeCryptoProposal {
  Encapsulation: EnumValue<typeof IPsecEncapsulation>[];
  Encryption: EnumValue<typeof EncryptionAlgorithm>;
  AHHash: EnumValue<typeof HashAlgorithm>;
  ESPHash: EnumValue<typeof HashAlgorithm>;
  MaxMinutes: number;
  MaxKiloBytes: number;
}

export type AuthMethod = 'Kerberos' | 'NTLM' | 'PreSharedKey' | 'Certificate' | 'Anonymous';

export interface AuthProposal {
  AuthenticationMethod: AuthMethod;
  /** Whose identity: the computer's or the logged-on user's. Anonymous has neither. */
  Principal: 'Machine' | 'User' | 'None';
  /** Stored in clear, as Windows does; never shown or logged. */
  PreSharedKey?: string;
  /** Kerberos proxy (KDC proxy) FQDN. */
  Proxy?: string;
  Authority?: string;
  AuthorityType?: EnumValue<typeof CertificateAuthorityType>;
  Signing?: EnumValue<typeof CertificateSigningAlgorithm>;
  ExtendedKeyUsage?: string[];
  AccountMapping?: boolean;
  ExcludeCAName?: boolean;
  FollowRenewal?: boolean;
  SelectionCriteria?: boolean;
  ValidationCriteria?: boolean;
  SubjectName?: string;
  SubjectNameType?: EnumValue<typeof CertificateSubjectType>;
  Thumbprint?: string;
  Health?: boolean;
}

export interface MainModeCryptoSet extends NamedObject {
  Proposal: MainModeCryptoProposal[];
  MaxMinutes: number;
  MaxSessions: number;
  ForceDiffieHellman: boolean;
}

export interface QuickModeCryptoSet extends NamedObject {
  Proposal: QuickModeCryptoProposal[];
  PerfectForwardSecrecyGroup: EnumValue<typeof DiffieHellmanGroup>;
}

export interface AuthSet extends NamedObject {
  Proposal: AuthProposal[];
}

export interface RuleCommon extends NamedObject {
  Enabled: EnumValue<typeof Enabled>;
  Profile: EnumValue<typeof Profile>[];
  Platform: string[];
  LocalAddress: string[];
  RemoteAddress: string[];
}

/** The protocol, port and interface conditions connection security and firewall rules both have. */
export interface TrafficConditions {
  Protocol: string;
  LocalPort: string[];
  RemotePort: string[];
  InterfaceAlias: string[];
  InterfaceType: EnumValue<typeof InterfaceType>[];
}

export interface IPsecRule extends RuleCommon, TrafficConditions {
  Mode: EnumValue<typeof IPsecMode>;
  InboundSecurity: EnumValue<typeof SecurityPolicy>;
  OutboundSecurity: EnumValue<typeof SecurityPolicy>;
  QuickModeCryptoSet: string;
  Phase1AuthSet: string;
  Phase2AuthSet: string;
  KeyModule: EnumValue<typeof KeyModule>;
  AllowWatchKey: boolean;
  AllowSetKey: boolean;
  LocalTunnelEndpoint: string[];
  RemoteTunnelEndpoint: string[];
  RemoteTunnelHostname: string;
  ForwardPathLifetime: number;
  EncryptedTunnelBypass: boolean;
  RequireAuthorization: boolean;
  User: string;
  Machine: string;
}

/**
 * A firewall rule (MSFT_NetFirewallRule with its filters). consec enforces what bears on IPsec and
 * what the kernel can match: Block rules by addresses, protocol and ports, and the security
 * condition on the same — Authentication Required ("allow the connection if it is secure": its
 * cleartext is dropped), Encryption Required (the SAs with a peer it covers encrypt). Program,
 * package, service and user conditions are kept and shown.
 */
export interface FirewallRule extends RuleCommon, TrafficConditions {
  Direction: EnumValue<typeof Direction>;
  Action: EnumValue<typeof Action>;
  EdgeTraversalPolicy: EnumValue<typeof EdgeTraversal>;
  LooseSourceMapping: boolean;
  LocalOnlyMapping: boolean;
  Owner: string;
  IcmpType: string[];
  DynamicTarget: EnumValue<typeof DynamicTransport>;
  Program: string;
  Package: string;
  Service: string;
  LocalUser: string;
  RemoteUser: string;
  RemoteMachine: string;
  Authentication: EnumValue<typeof Authentication>;
  Encryption: EnumValue<typeof Encryption>;
  OverrideBlockRules: boolean;
}

export interface MainModeRule extends RuleCommon {
  MainModeCryptoSet: string;
  Phase1AuthSet: string;
}

export interface FirewallSetting {
  Exemptions: EnumValue<typeof TrafficExemption>[];
  EnableStatefulFtp: EnumValue<typeof GpoBoolean>;
  EnableStatefulPptp: EnumValue<typeof GpoBoolean>;
  RemoteMachineTransportAuthorizationList: string;
  RemoteMachineTunnelAuthorizationList: string;
  RemoteUserTransportAuthorizationList: string;
  RemoteUserTunnelAuthorizationList: string;
  RequireFullAuthSupport: EnumValue<typeof GpoBoolean>;
  CertValidationLevel: EnumValue<typeof CRLCheck>;
  AllowIPsecThroughNAT: EnumValue<typeof IPsecThroughNAT>;
  MaxSAIdleTimeSeconds: number;
  KeyEncoding: EnumValue<typeof KeyEncoding>;
  EnablePacketQueuing: EnumValue<typeof PacketQueuing>[];
  /**
   * consec's own setting (Windows has none): which keying module a `-KeyModule Default` rule tries
   * first. 'IKEv2First' is Windows 11 24H2 / Server 2025 (IKEv2, then IKEv1 when the peer does not
   * speak it); 'IKEv1First' suits fleets of older Windows peers, which answer a PSK or certificate
   * rule only in IKEv1 (then IKEv2 when the peer does not answer IKEv1).
   */
  DefaultKeyModuleOrder: 'IKEv2First' | 'IKEv1First';
}

export type ProfileName = 'Domain' | 'Private' | 'Public';

/** A firewall profile, as far as IPsec needs it (reference §7.13). */
export interface FirewallProfile {
  Name: ProfileName;
  Enabled: EnumValue<typeof GpoBoolean>;
  DefaultInboundAction: 'NotConfigured' | 'Allow' | 'Block';
  DefaultOutboundAction: 'NotConfigured' | 'Allow' | 'Block';
  /** False in a GPO: local connection security rules are ignored in the active policy. */
  AllowLocalIPsecRules: EnumValue<typeof GpoBoolean>;
  AllowLocalFirewallRules: EnumValue<typeof GpoBoolean>;
  /**
   * Settings Windows keeps per profile that concern its desktop and its firewall log (notifications,
   * per-user app rules, multicast answers, stealth mode, logging): stored and shown, with no effect
   * on what consec enforces.
   */
  AllowInboundRules: EnumValue<typeof GpoBoolean>;
  AllowUserApps: EnumValue<typeof GpoBoolean>;
  AllowUserPorts: EnumValue<typeof GpoBoolean>;
  AllowUnicastResponseToMulticast: EnumValue<typeof GpoBoolean>;
  NotifyOnListen: EnumValue<typeof GpoBoolean>;
  EnableStealthModeForIPsec: EnumValue<typeof GpoBoolean>;
  LogFileName: string;
  LogMaxSizeKilobytes: number;
  LogAllowed: EnumValue<typeof GpoBoolean>;
  LogBlocked: EnumValue<typeof GpoBoolean>;
  LogIgnored: EnumValue<typeof GpoBoolean>;
}

/** Everything one policy store holds. */
export interface PolicyDocument {
  rules: IPsecRule[];
  firewallRules: FirewallRule[];
  mainModeRules: MainModeRule[];
  phase1AuthSets: AuthSet[];
  phase2AuthSets: AuthSet[];
  mainModeCryptoSets: MainModeCryptoSet[];
  quickModeCryptoSets: QuickModeCryptoSet[];
  settings: FirewallSetting;
  profiles: FirewallProfile[];
}

/** The kinds of named objects a store holds, by document field. */
export type CollectionName = Exclude<keyof PolicyDocument, 'settings' | 'profiles'>;

// ---- well-known defaults (§1.3) -----------------------------------------------------------------

export const DEFAULT_MM_CRYPTO_SET = '{E5A5D32A-4BCE-4e4d-B07F-4AB1BA7E5FE1}';
export const DEFAULT_QM_CRYPTO_SET = '{E5A5D32A-4BCE-4e4d-B07F-4AB1BA7E5FE2}';
export const DEFAULT_PHASE1_AUTH_SET = '{E5A5D32A-4BCE-4e4d-B07F-4AB1BA7E5FE3}';
export const DEFAULT_PHASE2_AUTH_SET = '{E5A5D32A-4BCE-4e4d-B07F-4AB1BA7E5FE4}';

/** Windows-style generated Name: an upper-case GUID in braces. */
export function newName(): string {
  return `{${randomUUID().toUpperCase()}}`;
}

export function mmProposal(p: Partial<MainModeCryptoProposal> = {}): MainModeCryptoProposal {
  // Defaults per the current cmdlet help (§2.4; older help said DES3/SHA1).
  return { Encryption: 'AES256', Hash: 'SHA384', KeyExchange: 'None', ...p };
}

export function qmProposal(p: Partial<QuickModeCryptoProposal> = {}): QuickModeCryptoProposal {
  return {
    Encapsulation: ['None'],
    Encryption: 'None',
    AHHash: 'None',
    ESPHash: 'None',
    MaxMinutes: 60,
    MaxKiloBytes: 100000,
    ...p,
  };
}

export function defaultSettings(): FirewallSetting {
  return {
    Exemptions: ['NeighborDiscovery', 'Dhcp'],
    EnableStatefulFtp: 'True',
    EnableStatefulPptp: 'True',
    RemoteMachineTransportAuthorizationList: '',
    RemoteMachineTunnelAuthorizationList: '',
    RemoteUserTransportAuthorizationList: '',
    RemoteUserTunnelAuthorizationList: '',
    RequireFullAuthSupport: 'False',
    CertValidationLevel: 'None',
    AllowIPsecThroughNAT: 'None',
    MaxSAIdleTimeSeconds: 300,
    KeyEncoding: 'UTF8',
    EnablePacketQueuing: ['None'],
    DefaultKeyModuleOrder: 'IKEv2First',
  };
}

/** The desktop and log settings of a profile, not configured. */
export const PROFILE_EXTRAS = {
  AllowInboundRules: 'NotConfigured',
  AllowUserApps: 'NotConfigured',
  AllowUserPorts: 'NotConfigured',
  AllowUnicastResponseToMulticast: 'NotConfigured',
  NotifyOnListen: 'NotConfigured',
  EnableStealthModeForIPsec: 'NotConfigured',
  LogFileName: 'NotConfigured',
  LogMaxSizeKilobytes: 4096,
  LogAllowed: 'NotConfigured',
  LogBlocked: 'NotConfigured',
  LogIgnored: 'NotConfigured',
} as const satisfies Partial<FirewallProfile>;

export function defaultProfiles(): FirewallProfile[] {
  return (['Domain', 'Private', 'Public'] as const).map((Name) => ({
    Name,
    Enabled: 'True',
    DefaultInboundAction: 'NotConfigured',
    DefaultOutboundAction: 'NotConfigured',
    AllowLocalIPsecRules: 'NotConfigured',
    AllowLocalFirewallRules: 'NotConfigured',
    ...PROFILE_EXTRAS,
  }));
}

const named = (Name: string): NamedObject => ({ Name, DisplayName: 'Default', Description: '', Group: '' });

/**
 * A new store's contents: no rules and no sets, the global settings at their defaults. The
 * well-known default sets are not in it (their names are free until an admin customises the
 * defaults): they live in SystemDefaults, and a rule that names no set uses them (findSet).
 */
export function emptyDocument(): PolicyDocument {
  return {
    ...systemDefaults(),
    phase1AuthSets: [],
    phase2AuthSets: [],
    mainModeCryptoSets: [],
    quickModeCryptoSets: [],
  };
}

export type SetCollection = 'phase1AuthSets' | 'phase2AuthSets' | 'mainModeCryptoSets' | 'quickModeCryptoSets';

let builtIns: PolicyDocument | undefined;

/**
 * A set by Name: the document's own, or for a well-known default name the document does not
 * customise, the built-in default of SystemDefaults (shared: copy it before changing it).
 */
export function findSet<C extends SetCollection>(
  doc: PolicyDocument,
  collection: C,
  name: string,
): PolicyDocument[C][number] | undefined {
  const lower = name.toLowerCase();
  const own = (doc[collection] as { Name: string }[]).find((s) => s.Name.toLowerCase() === lower);
  if (own) return own as PolicyDocument[C][number];
  builtIns ??= systemDefaults();
  const builtIn = (builtIns[collection] as { Name: string }[]).find((s) => s.Name.toLowerCase() === lower);
  return builtIn as PolicyDocument[C][number] | undefined;
}

/**
 * The SystemDefaults store: the built-in default sets and global settings. The default proposals
 * follow Windows 10 / Server 2016 and later as far as known (UNVERIFIED against a live system):
 * MM ECDH P-256 first, then the legacy DH2 suites; QM ESP AES-128/SHA-1 first; Kerberos for phase 1.
 */
export function systemDefaults(): PolicyDocument {
  return {
    rules: [],
    firewallRules: [],
    mainModeRules: [],
    phase1AuthSets: [
      { ...named(DEFAULT_PHASE1_AUTH_SET), Proposal: [{ AuthenticationMethod: 'Kerberos', Principal: 'Machine' }] },
    ],
    phase2AuthSets: [],
    mainModeCryptoSets: [
      {
        ...named(DEFAULT_MM_CRYPTO_SET),
        Proposal: [
          { Encryption: 'AES128', Hash: 'SHA256', KeyExchange: 'DH19' },
          { Encryption: 'AES128', Hash: 'SHA1', KeyExchange: 'DH2' },
          { Encryption: 'DES3', Hash: 'SHA1', KeyExchange: 'DH2' },
        ],
        MaxMinutes: 480,
        MaxSessions: 0,
        ForceDiffieHellman: false,
      },
    ],
    quickModeCryptoSets: [
      {
        ...named(DEFAULT_QM_CRYPTO_SET),
        Proposal: [
          qmProposal({ Encapsulation: ['ESP'], Encryption: 'AES128', ESPHash: 'SHA1' }),
          qmProposal({ Encapsulation: ['ESP'], Encryption: 'DES3', ESPHash: 'SHA1' }),
          qmProposal({ Encapsulation: ['AH'], AHHash: 'SHA1' }),
        ],
        PerfectForwardSecrecyGroup: 'None',
      },
    ],
    settings: defaultSettings(),
    profiles: defaultProfiles(),
  };
}

/** The defaults every rule kind shares (Name generated, enabled, all profiles, any address). */
function ruleDefaults(): Omit<RuleCommon, 'DisplayName'> {
  return {
    Name: newName(),
    Description: '',
    Group: '',
    Enabled: 'True',
    Profile: ['Any'],
    Platform: [],
    LocalAddress: ['Any'],
    RemoteAddress: ['Any'],
  };
}

export function ipsecRule(p: Partial<IPsecRule> & { DisplayName: string }): IPsecRule {
  return {
    ...ruleDefaults(),
    Mode: 'Transport',
    InboundSecurity: 'None',
    OutboundSecurity: 'None',
    QuickModeCryptoSet: '',
    Phase1AuthSet: '',
    Phase2AuthSet: '',
    KeyModule: 'Default',
    AllowWatchKey: false,
    AllowSetKey: false,
    LocalTunnelEndpoint: [],
    RemoteTunnelEndpoint: [],
    RemoteTunnelHostname: '',
    ForwardPathLifetime: 0,
    EncryptedTunnelBypass: false,
    RequireAuthorization: false,
    User: '',
    Machine: '',
    Protocol: 'Any',
    LocalPort: ['Any'],
    RemotePort: ['Any'],
    InterfaceAlias: [],
    InterfaceType: ['Any'],
    ...p,
  };
}

/** New-NetFirewallRule's defaults: an inbound Allow rule for any traffic. */
export function firewallRule(p: Partial<FirewallRule> & { DisplayName: string }): FirewallRule {
  return {
    ...ruleDefaults(),
    Direction: 'Inbound',
    Action: 'Allow',
    EdgeTraversalPolicy: 'Block',
    LooseSourceMapping: false,
    LocalOnlyMapping: false,
    Owner: '',
    Protocol: 'Any',
    LocalPort: ['Any'],
    RemotePort: ['Any'],
    IcmpType: ['Any'],
    DynamicTarget: 'Any',
    Program: 'Any',
    Package: '',
    Service: 'Any',
    InterfaceAlias: [],
    InterfaceType: ['Any'],
    LocalUser: 'Any',
    RemoteUser: 'Any',
    RemoteMachine: 'Any',
    Authentication: 'NotRequired',
    Encryption: 'NotRequired',
    OverrideBlockRules: false,
    ...p,
  };
}

export function mainModeRule(p: Partial<MainModeRule> & { DisplayName: string }): MainModeRule {
  return {
    ...ruleDefaults(),
    MainModeCryptoSet: '',
    Phase1AuthSet: '',
    ...p,
  };
}
