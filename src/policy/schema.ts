/** zod schema of a policy store file, so a damaged or hand-edited file is rejected with a clear message. */
import { z } from 'zod';
import {
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
  type EnumDef,
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
import { defaultProfiles } from './model.ts';

const e = <T extends string>(d: EnumDef<T>) => z.enum(d.values as [T, ...T[]]);
const named = { Name: z.string(), DisplayName: z.string(), Description: z.string(), Group: z.string() };

const mmProposal = z.strictObject({
  Encryption: e(EncryptionAlgorithm),
  Hash: e(HashAlgorithm),
  KeyExchange: e(DiffieHellmanGroup),
});
const qmProposal = z.strictObject({
  Encapsulation: z.array(e(IPsecEncapsulation)),
  Encryption: e(EncryptionAlgorithm),
  AHHash: e(HashAlgorithm),
  ESPHash: e(HashAlgorithm),
  MaxMinutes: z.number().int(),
  MaxKiloBytes: z.number().int(),
});
const authProposal = z.strictObject({
  AuthenticationMethod: z.enum(['Kerberos', 'NTLM', 'PreSharedKey', 'Certificate', 'Anonymous']),
  Principal: z.enum(['Machine', 'User', 'None']),
  PreSharedKey: z.string().optional(),
  Proxy: z.string().optional(),
  Authority: z.string().optional(),
  AuthorityType: e(CertificateAuthorityType).optional(),
  Signing: e(CertificateSigningAlgorithm).optional(),
  ExtendedKeyUsage: z.array(z.string()).optional(),
  AccountMapping: z.boolean().optional(),
  ExcludeCAName: z.boolean().optional(),
  FollowRenewal: z.boolean().optional(),
  SelectionCriteria: z.boolean().optional(),
  ValidationCriteria: z.boolean().optional(),
  SubjectName: z.string().optional(),
  SubjectNameType: e(CertificateSubjectType).optional(),
  Thumbprint: z.string().optional(),
  Health: z.boolean().optional(),
});
const ruleCommon = {
  ...named,
  Enabled: e(Enabled),
  Profile: z.array(e(Profile)),
  Platform: z.array(z.string()),
  LocalAddress: z.array(z.string()),
  RemoteAddress: z.array(z.string()),
};

const action = z.enum(['NotConfigured', 'Allow', 'Block']);
const profileSchema = z.strictObject({
  Name: z.enum(['Domain', 'Private', 'Public']),
  Enabled: e(GpoBoolean),
  DefaultInboundAction: action,
  DefaultOutboundAction: action,
  AllowLocalIPsecRules: e(GpoBoolean),
  AllowLocalFirewallRules: e(GpoBoolean),
  // Stores written before these were kept read with them not configured.
  AllowInboundRules: e(GpoBoolean).default('NotConfigured'),
  AllowUserApps: e(GpoBoolean).default('NotConfigured'),
  AllowUserPorts: e(GpoBoolean).default('NotConfigured'),
  AllowUnicastResponseToMulticast: e(GpoBoolean).default('NotConfigured'),
  NotifyOnListen: e(GpoBoolean).default('NotConfigured'),
  EnableStealthModeForIPsec: e(GpoBoolean).default('NotConfigured'),
  LogFileName: z.string().default('NotConfigured'),
  LogMaxSizeKilobytes: z.number().int().min(1).max(32767).default(4096),
  LogAllowed: e(GpoBoolean).default('NotConfigured'),
  LogBlocked: e(GpoBoolean).default('NotConfigured'),
  LogIgnored: e(GpoBoolean).default('NotConfigured'),
});

const trafficConditions = {
  Protocol: z.string(),
  LocalPort: z.array(z.string()),
  RemotePort: z.array(z.string()),
  InterfaceAlias: z.array(z.string()),
  InterfaceType: z.array(e(InterfaceType)),
};

export const ipsecRuleSchema = z.strictObject({
  ...ruleCommon,
  Mode: e(IPsecMode),
  InboundSecurity: e(SecurityPolicy),
  OutboundSecurity: e(SecurityPolicy),
  QuickModeCryptoSet: z.string(),
  Phase1AuthSet: z.string(),
  Phase2AuthSet: z.string(),
  KeyModule: e(KeyModule),
  AllowWatchKey: z.boolean(),
  AllowSetKey: z.boolean(),
  LocalTunnelEndpoint: z.array(z.string()),
  RemoteTunnelEndpoint: z.array(z.string()),
  RemoteTunnelHostname: z.string(),
  ForwardPathLifetime: z.number().int(),
  EncryptedTunnelBypass: z.boolean(),
  RequireAuthorization: z.boolean(),
  User: z.string(),
  Machine: z.string(),
  ...trafficConditions,
});

export const firewallRuleSchema = z.strictObject({
  ...ruleCommon,
  Direction: e(Direction),
  Action: e(Action),
  EdgeTraversalPolicy: e(EdgeTraversal),
  LooseSourceMapping: z.boolean(),
  LocalOnlyMapping: z.boolean(),
  Owner: z.string(),
  ...trafficConditions,
  IcmpType: z.array(z.string()),
  DynamicTarget: e(DynamicTransport),
  Program: z.string(),
  Package: z.string(),
  Service: z.string(),
  LocalUser: z.string(),
  RemoteUser: z.string(),
  RemoteMachine: z.string(),
  Authentication: e(Authentication),
  Encryption: e(Encryption),
  OverrideBlockRules: z.boolean(),
});

export const mainModeRuleSchema = z.strictObject({
  ...ruleCommon,
  MainModeCryptoSet: z.string(),
  Phase1AuthSet: z.string(),
});

export const policyDocumentSchema = z.strictObject({
  rules: z.array(ipsecRuleSchema),
  // Stores written before firewall rules existed read with none.
  firewallRules: z.array(firewallRuleSchema).default([]),
  mainModeRules: z.array(mainModeRuleSchema),
  phase1AuthSets: z.array(z.strictObject({ ...named, Proposal: z.array(authProposal) })),
  phase2AuthSets: z.array(z.strictObject({ ...named, Proposal: z.array(authProposal) })),
  mainModeCryptoSets: z.array(
    z.strictObject({
      ...named,
      Proposal: z.array(mmProposal),
      MaxMinutes: z.number().int(),
      MaxSessions: z.number().int(),
      ForceDiffieHellman: z.boolean(),
    }),
  ),
  quickModeCryptoSets: z.array(
    z.strictObject({ ...named, Proposal: z.array(qmProposal), PerfectForwardSecrecyGroup: e(DiffieHellmanGroup) }),
  ),
  settings: z.strictObject({
    Exemptions: z.array(e(TrafficExemption)),
    EnableStatefulFtp: e(GpoBoolean),
    EnableStatefulPptp: e(GpoBoolean),
    RemoteMachineTransportAuthorizationList: z.string(),
    RemoteMachineTunnelAuthorizationList: z.string(),
    RemoteUserTransportAuthorizationList: z.string(),
    RemoteUserTunnelAuthorizationList: z.string(),
    RequireFullAuthSupport: e(GpoBoolean),
    CertValidationLevel: e(CRLCheck),
    AllowIPsecThroughNAT: e(IPsecThroughNAT),
    MaxSAIdleTimeSeconds: z.number().int(),
    KeyEncoding: e(KeyEncoding),
    EnablePacketQueuing: z.array(e(PacketQueuing)),
    // consec's own; stores written before it existed read with Windows 11 24H2's order.
    DefaultKeyModuleOrder: z.enum(['IKEv2First', 'IKEv1First']).default('IKEv2First'),
  }),
  // Stores written before profiles existed read with the defaults.
  profiles: z.array(profileSchema).default(defaultProfiles),
});

export const storeFileSchema = z.strictObject({
  format: z.literal('consec-policy'),
  version: z.literal(1),
  store: z.string(),
  document: policyDocumentSchema,
});

/** A store file with its rules and main mode rules left out (each checked on its own, see readStoreFile). */
export const storeSkeletonSchema = storeFileSchema.extend({
  document: policyDocumentSchema.extend({
    rules: z.array(z.literal(0)),
    mainModeRules: z.array(z.literal(0)),
  }),
});
