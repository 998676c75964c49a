/**
 * Whole-store validation: every rule Windows enforces on sets, proposals and rules, and references
 * between them. Mutating commands validate the changed document before writing it, so an invalid
 * change never reaches the disk.
 */
import { addressFamily, parseAddress, PolicyValidationError } from './endpoints.ts';
import {
  type AuthProposal,
  type AuthSet,
  type CollectionName,
  DEFAULT_MM_CRYPTO_SET,
  DEFAULT_PHASE1_AUTH_SET,
  DEFAULT_PHASE2_AUTH_SET,
  DEFAULT_QM_CRYPTO_SET,
  type FirewallRule,
  type IPsecRule,
  type MainModeCryptoProposal,
  type MainModeCryptoSet,
  type MainModeRule,
  type PolicyDocument,
  type QuickModeCryptoProposal,
  type QuickModeCryptoSet,
  findSet,
  type SetCollection,
} from './model.ts';

const fail = (parameter: string, message: string): never => {
  throw new PolicyValidationError(parameter, message);
};

function range(parameter: string, v: number, lo: number, hi: number): void {
  if (!Number.isInteger(v) || v < lo || v > hi) {
    fail(
      parameter,
      `Cannot validate argument on parameter '${parameter}'. The ${v} argument is outside the range ${lo}-${hi}.`,
    );
  }
}

export function validateMainModeProposal(p: MainModeCryptoProposal): void {
  if (p.Encryption.startsWith('AESGCM'))
    fail('Encryption', `The encryption algorithm ${p.Encryption} is valid only in quick mode proposals.`);
  if (p.Hash.startsWith('AESGMAC')) fail('Hash', `The hash algorithm ${p.Hash} is valid only in quick mode proposals.`);
  if (p.KeyExchange === 'SameAsMainMode')
    fail('KeyExchange', 'SameAsMainMode is valid only as a quick mode perfect forward secrecy group.');
}

export function validateQuickModeProposal(p: QuickModeCryptoProposal): void {
  const ah = p.Encapsulation.includes('AH');
  const esp = p.Encapsulation.includes('ESP');
  if (!ah && !esp) fail('Encapsulation', 'A quick mode proposal needs Encapsulation AH, ESP or AH,ESP.');
  if (!esp && (p.Encryption !== 'None' || p.ESPHash !== 'None')) {
    fail(
      p.Encryption !== 'None' ? 'Encryption' : 'ESPHash',
      'Encryption and ESPHash apply only when Encapsulation includes ESP.',
    );
  }
  if (!ah && p.AHHash !== 'None') fail('AHHash', 'AHHash applies only when Encapsulation includes AH.');
  if (ah && p.AHHash === 'None') fail('AHHash', 'AH encapsulation needs an AHHash algorithm.');
  if (p.AHHash === 'SHA384')
    fail('AHHash', 'SHA384 is not a valid AH integrity algorithm (use MD5, SHA1, SHA256 or AESGMAC128/192/256).');
  if (p.ESPHash === 'SHA384')
    fail('ESPHash', 'SHA384 is not a valid ESP integrity algorithm (use MD5, SHA1, SHA256 or AESGMAC128/192/256).');
  if (esp && p.Encryption === 'None' && p.ESPHash === 'None')
    fail('ESPHash', 'ESP needs an encryption algorithm, an integrity algorithm, or both.');
  const gcm = /^AESGCM(\d+)$/.exec(p.Encryption);
  if (gcm && p.ESPHash !== `AESGMAC${gcm[1]}`) {
    fail(
      'ESPHash',
      `Encryption ${p.Encryption} requires ESPHash AESGMAC${gcm[1]}: AES-GCM must be used for both ESP integrity and encryption.`,
    );
  }
  const gmac = /^AESGMAC(\d+)$/.exec(p.ESPHash);
  if (gmac && p.Encryption !== 'None' && p.Encryption !== `AESGCM${gmac[1]}`) {
    fail('Encryption', `ESPHash ${p.ESPHash} can be combined only with Encryption AESGCM${gmac[1]} or None.`);
  }
  range('MaxMinutes', p.MaxMinutes, 5, 2879);
  range('MaxKiloBytes', p.MaxKiloBytes, 20480, 2147483647);
}

/** Phase 1 proposals authenticate the computer; phase 2 ones the user (or a health certificate). */
export function validateAuthProposal(p: AuthProposal, phase: 1 | 2): void {
  if (p.AuthenticationMethod === 'PreSharedKey') {
    if (phase === 2) fail('Proposal', 'A pre-shared key can be used only in a phase 1 authentication set.');
    if (!p.PreSharedKey) fail('PreSharedKey', 'The pre-shared key cannot be empty.');
  }
  if (p.AuthenticationMethod === 'Certificate' && !p.Authority && !p.Thumbprint) {
    fail('Authority', 'Certificate authentication needs the issuing certification authority (-Authority).');
  }
  if (p.Principal === 'User' && phase === 1) {
    fail('Proposal', `User authentication (${p.AuthenticationMethod}) is valid only in a phase 2 authentication set.`);
  }
  if (p.Principal === 'Machine' && phase === 2 && p.AuthenticationMethod !== 'Certificate') {
    fail(
      'Proposal',
      `Computer ${p.AuthenticationMethod} authentication is valid only in a phase 1 authentication set.`,
    );
  }
  if ((p.ExtendedKeyUsage?.length ?? 0) > 100)
    fail('ExtendedKeyUsage', 'At most 100 extended key usages can be given.');
  if (p.ExtendedKeyUsage?.some((oid) => !/^\d+(\.\d+)+$/.test(oid)))
    fail('ExtendedKeyUsage', 'Each extended key usage must be an OID such as 1.3.6.1.5.5.8.2.2.');
}

function validateNamed(kind: string, o: { Name: string; DisplayName: string }): void {
  if (!o.Name.trim()) fail('Name', `The ${kind} Name cannot be empty.`);
  if (!o.DisplayName.trim()) fail('DisplayName', `The ${kind} DisplayName cannot be empty.`);
  if (o.DisplayName.toLowerCase() === 'all')
    fail('DisplayName', `"All" is reserved and cannot be used as a DisplayName.`);
}

function validateMmSet(s: MainModeCryptoSet): void {
  validateNamed('main mode crypto set', s);
  if (s.Proposal.length === 0) fail('Proposal', 'A main mode crypto set needs at least one proposal.');
  s.Proposal.forEach(validateMainModeProposal);
  range('MaxMinutes', s.MaxMinutes, 0, 2879);
  range('MaxSessions', s.MaxSessions, 0, 2147483647);
}

function validateQmSet(s: QuickModeCryptoSet): void {
  validateNamed('quick mode crypto set', s);
  if (s.Proposal.length === 0) fail('Proposal', 'A quick mode crypto set needs at least one proposal.');
  s.Proposal.forEach(validateQuickModeProposal);
}

function validateAuthSet(s: AuthSet, phase: 1 | 2): void {
  validateNamed(`phase ${phase} authentication set`, s);
  if (s.Proposal.length === 0) fail('Proposal', `A phase ${phase} authentication set needs at least one proposal.`);
  for (const p of s.Proposal) validateAuthProposal(p, phase);
}

const VALID_SECURITY = new Set(['None/None', 'Request/None', 'Request/Request', 'Require/Request', 'Require/Require']);

function validateIPsecRule(r: IPsecRule, doc: PolicyDocument): void {
  validateNamed('IPsec rule', r);
  // Every address as a cmdlet would take it: a store written by hand (or a fleet GPO) with an entry
  // that is no address would otherwise match nothing — a Require rule silently gone.
  for (const k of ['LocalAddress', 'RemoteAddress'] as const) for (const a of r[k]) parseAddress(k, a);
  for (const k of ['LocalTunnelEndpoint', 'RemoteTunnelEndpoint'] as const)
    for (const a of r[k]) parseAddress(k, a, false);
  const combo = `${r.InboundSecurity}/${r.OutboundSecurity}`;
  // Require in, clear out (netsh requireinclearout) exists for tunnel rules only.
  if (!VALID_SECURITY.has(combo) && !(combo === 'Require/None' && r.Mode === 'Tunnel')) {
    fail(
      'InboundSecurity',
      `InboundSecurity ${r.InboundSecurity} with OutboundSecurity ${r.OutboundSecurity} is not a valid combination. Valid: None/None, Request/None, Request/Request, Require/Request, Require/Require (and Require/None for tunnel rules).`,
    );
  }
  const tunnelEndpoints = r.LocalTunnelEndpoint.length + r.RemoteTunnelEndpoint.length;
  if (r.Mode === 'Tunnel') {
    if (combo !== 'None/None' && (r.LocalTunnelEndpoint.length === 0 || r.RemoteTunnelEndpoint.length === 0)) {
      fail(
        r.LocalTunnelEndpoint.length === 0 ? 'LocalTunnelEndpoint' : 'RemoteTunnelEndpoint',
        'A tunnel mode rule needs both LocalTunnelEndpoint and RemoteTunnelEndpoint.',
      );
    }
    const fams = new Set(
      [...r.LocalTunnelEndpoint, ...r.RemoteTunnelEndpoint].map(addressFamily).filter((f) => f !== undefined),
    );
    if (fams.size > 1)
      fail('RemoteTunnelEndpoint', 'The local and remote tunnel endpoints must be of the same IP version.');
  } else if (tunnelEndpoints > 0) {
    fail('LocalTunnelEndpoint', 'Tunnel endpoints can be given only for a rule with -Mode Tunnel.');
  }
  if (r.RemoteTunnelHostname && (r.RemoteTunnelEndpoint.length < 2 || r.RemoteTunnelEndpoint.includes('Any'))) {
    fail(
      'RemoteTunnelHostname',
      'RemoteTunnelHostname needs more than one remote tunnel endpoint, and none of them Any.',
    );
  }
  const portsGiven =
    !(r.LocalPort.length === 1 && r.LocalPort[0] === 'Any') ||
    !(r.RemotePort.length === 1 && r.RemotePort[0] === 'Any');
  if (portsGiven && r.Protocol !== 'TCP' && r.Protocol !== 'UDP') {
    fail(r.LocalPort[0] !== 'Any' ? 'LocalPort' : 'RemotePort', 'Ports can be given only when Protocol is TCP or UDP.');
  }
  if (r.ForwardPathLifetime !== 0) range('ForwardPathLifetime', r.ForwardPathLifetime, 78, 172799);
  const p1 = findRef(doc, 'phase1AuthSets', r.Phase1AuthSet, DEFAULT_PHASE1_AUTH_SET, 'Phase1AuthSet');
  const qm = findRef(doc, 'quickModeCryptoSets', r.QuickModeCryptoSet, DEFAULT_QM_CRYPTO_SET, 'QuickModeCryptoSet');
  findRef(doc, 'phase2AuthSets', r.Phase2AuthSet, DEFAULT_PHASE2_AUTH_SET, 'Phase2AuthSet');
  if (r.Phase2AuthSet && (r.KeyModule === 'IKEv1' || r.KeyModule === 'IKEv2')) {
    fail(
      'Phase2AuthSet',
      `A phase 2 authentication set needs AuthIP; it cannot be used with KeyModule ${r.KeyModule}.`,
    );
  }
  if (r.KeyModule === 'IKEv2') {
    const unsupported = (p1?.Proposal ?? []).find((p) => p.AuthenticationMethod !== 'Certificate');
    if (unsupported) {
      fail(
        'KeyModule',
        `IKEv2 connection security rules support certificate authentication only; phase 1 authentication set "${p1?.Name}" contains ${unsupported.Principal === 'Machine' ? 'computer ' : ''}${unsupported.AuthenticationMethod}.`,
      );
    }
    // IKEv2 transport mode carries no AH: its proposals are left out when offered (the default set
    // has one), and a set with nothing else is refused.
    if (r.Mode === 'Transport' && qm && qm.Proposal.every((p) => p.Encapsulation.includes('AH'))) {
      fail(
        'QuickModeCryptoSet',
        `AH is not supported with IKEv2 transport mode; quick mode crypto set "${qm?.Name}" proposes nothing but AH.`,
      );
    }
  }
}

const isAny = (list: readonly string[]) => list.length === 0 || (list.length === 1 && list[0] === 'Any');

/**
 * A firewall rule's conditions as Windows accepts them (the New-NetFirewallRule reference): ports
 * with TCP or UDP, ICMP types with ICMPv4/ICMPv6, and the security condition's dependencies —
 * encryption, authorized users or computers and the block override all need Authentication
 * Required (or NoEncap), which only an Allow rule can ask for.
 */
function validateFirewallRule(r: FirewallRule): void {
  validateNamed('firewall rule', r);
  if ((!isAny(r.LocalPort) || !isAny(r.RemotePort)) && r.Protocol !== 'TCP' && r.Protocol !== 'UDP')
    fail(!isAny(r.LocalPort) ? 'LocalPort' : 'RemotePort', 'Ports can be given only when Protocol is TCP or UDP.');
  if (!isAny(r.IcmpType) && r.Protocol !== 'ICMPv4' && r.Protocol !== 'ICMPv6')
    fail('IcmpType', 'ICMP types can be given only when Protocol is ICMPv4 or ICMPv6.');
  for (const t of r.IcmpType) {
    const m = /^(\d{1,3})(?::(\d{1,3}|\*))?$/.exec(t);
    if (t !== 'Any' && (!m || Number(m[1]) > 255 || (m[2] !== undefined && m[2] !== '*' && Number(m[2]) > 255)))
      fail('IcmpType', `The ICMP type "${t}" is not valid: use a type 0-255, optionally with a code (3:4), or Any.`);
  }
  // What the kernel enforces must be matchable there: ports named by keyword (RPC, IPHTTPS …) are
  // dynamic on Windows and have no fixed number to match.
  const keywordPort = [...r.LocalPort, ...r.RemotePort].find((p) => p !== 'Any' && !/^\d+(-\d+)?$/.test(p));
  if (keywordPort && (r.Action === 'Block' || r.Authentication !== 'NotRequired'))
    fail(
      r.LocalPort.includes(keywordPort) ? 'LocalPort' : 'RemotePort',
      `The port keyword ${keywordPort} cannot be enforced by consec on a Block or secure-only rule: it stands for ports Windows assigns at run time. Give the port numbers.`,
    );
  const secure = r.Authentication !== 'NotRequired';
  if (r.Encryption !== 'NotRequired' && r.Authentication !== 'Required')
    fail(
      'Encryption',
      `Encryption ${r.Encryption} needs Authentication Required: only authenticated IPsec traffic can be encrypted.`,
    );
  if (r.OverrideBlockRules && !secure)
    fail(
      'OverrideBlockRules',
      'OverrideBlockRules needs Authentication Required: only authenticated traffic may bypass block rules.',
    );
  if (r.OverrideBlockRules && r.Action !== 'Allow')
    fail('OverrideBlockRules', 'OverrideBlockRules is valid only on Allow rules.');
  if (r.OverrideBlockRules && r.Direction === 'Inbound' && r.RemoteMachine === 'Any' && r.RemoteUser === 'Any')
    fail(
      'OverrideBlockRules',
      'An inbound rule with OverrideBlockRules must list the authorized computers or users (-RemoteMachine, -RemoteUser).',
    );
  if (secure && r.Action === 'Block')
    fail(
      'Authentication',
      'Authentication Required is valid only on Allow rules ("allow the connection if it is secure").',
    );
  for (const k of ['RemoteMachine', 'RemoteUser'] as const)
    if (r[k] !== 'Any' && !secure)
      fail(k, `${k} authorizes authenticated peers only: it needs Authentication Required.`);
  for (const k of ['RemoteMachine', 'RemoteUser', 'LocalUser'] as const)
    if (r[k] !== 'Any' && !/^(O:[^()]*)?(G:[^()]*)?D:[A-Z]*(\([^()]*\))+$/.test(r[k].replace(/\s+/g, '')))
      fail(k, `${k} must be an SDDL security descriptor such as D:(A;;CC;;;S-1-5-21-...), not "${r[k]}".`);
}

function validateMainModeRule(r: MainModeRule, doc: PolicyDocument): void {
  validateNamed('main mode rule', r);
  findRef(doc, 'mainModeCryptoSets', r.MainModeCryptoSet, DEFAULT_MM_CRYPTO_SET, 'MainModeCryptoSet');
  findRef(doc, 'phase1AuthSets', r.Phase1AuthSet, DEFAULT_PHASE1_AUTH_SET, 'Phase1AuthSet');
}

/** Resolves a set reference; empty means the default set. A missing non-default set is an error. */
function findRef<C extends SetCollection>(
  doc: PolicyDocument,
  collection: C,
  name: string,
  defaultName: string,
  parameter: string,
): PolicyDocument[C][number] | undefined {
  const wanted = name || defaultName;
  const found = findSet(doc, collection, wanted);
  if (!found && name) fail(parameter, `The ${parameter} "${name}" does not exist in the policy store.`);
  return found as PolicyDocument[C][number] | undefined;
}

function uniqueNames(doc: PolicyDocument, collection: CollectionName, kind: string): void {
  const seen = new Set<string>();
  for (const o of doc[collection] as { Name: string }[]) {
    const key = o.Name.toLowerCase();
    if (seen.has(key))
      fail('Name', `Cannot create a file when that file already exists: a ${kind} named "${o.Name}" already exists.`);
    seen.add(key);
  }
}

/** The collections that may hold thousands of objects (one rule per server or subnet). */
export const LARGE_COLLECTIONS = ['rules', 'mainModeRules'] as const;
export type LargeCollection = (typeof LARGE_COLLECTIONS)[number];

const LARGE_KIND: Record<LargeCollection, string> = { rules: 'rule', mainModeRules: 'main mode rule' };

/**
 * Validates what one change did to a document already valid except for these objects: `added`
 * objects of a large collection (new or changed), each checked as validateDocument checks it, and
 * their names against `names` (lowercase Name → count in the document before the change, minus
 * `removed`). Throws PolicyValidationError as validateDocument does.
 */
export function validateAdded(
  doc: PolicyDocument,
  collection: LargeCollection,
  added: readonly (IPsecRule | MainModeRule)[],
  removed: readonly (IPsecRule | MainModeRule)[],
  names: ReadonlyMap<string, number>,
): void {
  const delta = new Map<string, number>();
  for (const o of removed) delta.set(o.Name.toLowerCase(), (delta.get(o.Name.toLowerCase()) ?? 0) - 1);
  for (const o of added) {
    const key = o.Name.toLowerCase();
    const count = (names.get(key) ?? 0) + (delta.get(key) ?? 0);
    if (count > 0)
      fail(
        'Name',
        `Cannot create a file when that file already exists: a ${LARGE_KIND[collection]} named "${o.Name}" already exists.`,
      );
    delta.set(key, (delta.get(key) ?? 0) + 1);
    if (collection === 'rules') validateIPsecRule(o as IPsecRule, doc);
    else validateMainModeRule(o as MainModeRule, doc);
  }
}

/** Validates everything; throws PolicyValidationError naming the parameter at fault. */
export function validateDocument(doc: PolicyDocument): void {
  uniqueNames(doc, 'rules', 'rule');
  uniqueNames(doc, 'mainModeRules', 'main mode rule');
  uniqueNames(doc, 'firewallRules', 'firewall rule');
  uniqueNames(doc, 'phase1AuthSets', 'phase 1 authentication set');
  uniqueNames(doc, 'phase2AuthSets', 'phase 2 authentication set');
  uniqueNames(doc, 'mainModeCryptoSets', 'main mode crypto set');
  uniqueNames(doc, 'quickModeCryptoSets', 'quick mode crypto set');
  doc.mainModeCryptoSets.forEach(validateMmSet);
  doc.quickModeCryptoSets.forEach(validateQmSet);
  for (const s of doc.phase1AuthSets) validateAuthSet(s, 1);
  for (const s of doc.phase2AuthSets) validateAuthSet(s, 2);
  for (const r of doc.rules) validateIPsecRule(r, doc);
  for (const r of doc.mainModeRules) validateMainModeRule(r, doc);
  for (const r of doc.firewallRules) validateFirewallRule(r);
  range('MaxSAIdleTimeSeconds', doc.settings.MaxSAIdleTimeSeconds, 300, 3600);
}
