/**
 * Names of negotiated algorithms as Windows shows them in SA views and audit events
 * (Get-NetIPsecMainModeSA, 4650, 5451): cipher "AES-256", integrity "SHA-256", group "ECDH P-384".
 */
import { transformOf } from './proposals.ts';
import type { Proposal, TrafficSelector } from './wire/codec.ts';
import { EncrId, IntegId, KeId, PrfId, ProtocolId, TransformType } from './wire/constants.ts';
import { readIp } from '../io/addr.ts';
import { type AuditEvent, type EndpointInfo, type MainModeInfo, mmSaId, type QuickModeInfo } from '../audit/events.ts';
import { type ChildSa, localTs, remoteTs } from './tasks/child-create.ts';
import { type Credentials, methodName } from './tasks/ike-auth.ts';
import type { PeerCertificate } from './tasks/ike-cert.ts';
import { IkeError, notifyName } from './errors.ts';
import type { Endpoint } from '../sa/spec.ts';

type KeyingModule = MainModeInfo['keyingModule'];

export function cipherName(p: Proposal): string {
  const t = transformOf(p, TransformType.ENCR);
  if (!t) return 'None';
  if (t.id === EncrId.NULL) return 'None';
  if (t.id === EncrId.AES_GCM_16) return `AES-GCM ${t.keyLength ?? 0}`;
  if (t.id === EncrId.AES_CBC) return `AES-${t.keyLength ?? 0}`;
  return EncrId[t.id] ?? `ENCR ${t.id}`;
}

export function integrityName(p: Proposal): string {
  const t = transformOf(p, TransformType.INTEG);
  if (!t) {
    const e = transformOf(p, TransformType.ENCR);
    if (e?.id === EncrId.AES_GCM_16) return `AES-GMAC ${e.keyLength ?? 0}`;
    const prf = transformOf(p, TransformType.PRF);
    return prf
      ? (({ [PrfId.HMAC_SHA2_256]: 'SHA-256', [PrfId.HMAC_SHA2_384]: 'SHA-384' } as Record<number, string>)[prf.id] ??
          'None')
      : 'None';
  }
  const names: Partial<Record<IntegId, string>> = {
    [IntegId.HMAC_SHA1_96]: 'SHA-1',
    [IntegId.HMAC_SHA2_256_128]: 'SHA-256',
    [IntegId.HMAC_SHA2_384_192]: 'SHA-384',
    [IntegId.HMAC_SHA2_512_256]: 'SHA-512',
  };
  return names[t.id as IntegId] ?? `INTEG ${t.id}`;
}

/** Key exchange groups: the Windows proposal name (DH14) and the SA view name. */
const GROUPS: Partial<Record<KeId, { dh: string; name: string }>> = {
  [KeId.MODP_2048]: { dh: 'DH14', name: 'DH Group 14' },
  [KeId.MODP_3072]: { dh: 'DH15', name: 'DH Group 15' },
  [KeId.MODP_4096]: { dh: 'DH16', name: 'DH Group 16' },
  [KeId.ECP_256]: { dh: 'DH19', name: 'ECDH P-256' },
  [KeId.ECP_384]: { dh: 'DH20', name: 'ECDH P-384' },
  [KeId.ECP_521]: { dh: 'DH21', name: 'ECDH P-521' },
  [KeId.CURVE25519]: { dh: 'DH31', name: 'Curve25519' },
};

export function groupName(id: number | undefined): string {
  return id === undefined ? 'None' : (GROUPS[id as KeId]?.name ?? `group ${id}`);
}

/** The group as a Windows crypto proposal names it (DH14, DH19 …). */
export const dhKeyword = (id: number | undefined): string => (id === undefined ? '?' : (GROUPS[id as KeId]?.dh ?? '?'));

export const dhOf = (p: Proposal): string => groupName(transformOf(p, TransformType.KE)?.id);

/** Traffic selectors as text: "192.0.2.1-192.0.2.1 proto 0 ports 0-65535". */
export function selectorsText(ts: readonly TrafficSelector[]): string {
  return ts
    .map((t) => {
      const fam = t.start.length === 4 ? 4 : 6;
      const a = readIp(t.start, 0, fam);
      const b = readIp(t.end, 0, fam);
      const range = a === b ? a : `${a}-${b}`;
      const proto = t.ipProtocol === 0 ? '' : ` proto ${t.ipProtocol}`;
      const ports = t.startPort === 0 && t.endPort === 65535 ? '' : ` port ${t.startPort}-${t.endPort}`;
      return `${range}${proto}${ports}`;
    })
    .join(', ');
}

/** What the SA views of an IKE SA need from either keying module's session. */
export interface DescribedSession {
  endpoint(side: 'local' | 'remote'): EndpointInfo;
  readonly role: 'initiator' | 'responder';
  readonly peer: { credentials: Credentials };
  readonly lifetimes: { ikeExpireMs: number };
  readonly peerCertificate?: PeerCertificate;
}

/** The main mode SA as audit events and views show it (4650/4651, Get-NetIPsecMainModeSA). */
export function mainModeInfoOf(
  s: DescribedSession,
  keyingModule: KeyingModule,
  localSpi: Buffer,
  chosen: Proposal | undefined,
): MainModeInfo {
  const cert = s.peerCertificate;
  return {
    local: s.endpoint('local'),
    remote: s.endpoint('remote'),
    keyingModule,
    role: s.role === 'initiator' ? 'Initiator' : 'Responder',
    authenticationMethod: methodName(s.peer.credentials),
    mmSaId: mmSaId(localSpi),
    cipher: chosen ? cipherName(chosen) : undefined,
    integrity: chosen ? integrityName(chosen) : undefined,
    dhGroup: chosen ? dhOf(chosen) : undefined,
    lifetimeMinutes: Math.round(s.lifetimes.ikeExpireMs / 60_000),
    certificate: cert
      ? { remote: { sha1Thumbprint: cert.sha1Thumbprint, issuer: cert.issuer, subject: cert.subject } }
      : undefined,
  };
}

/** A child SA as audit events and views show it (5451, Get-NetIPsecQuickModeSA). */
export function quickModeInfoOf(
  s: Pick<DescribedSession, 'endpoint'>,
  keyingModule: KeyingModule,
  localSpi: Buffer,
  child: ChildSa,
): QuickModeInfo {
  return {
    local: s.endpoint('local'),
    remote: s.endpoint('remote'),
    keyingModule,
    mode: child.mode === 'tunnel' ? 'Tunnel' : 'Transport',
    protocol: child.proposal.protocol === ProtocolId.AH ? 'AH' : 'ESP',
    encryption: cipherName(child.proposal),
    integrity: integrityName(child.proposal),
    inboundSpi: child.spiIn.readUInt32BE(0),
    outboundSpi: child.spiOut.readUInt32BE(0),
    mmSaId: mmSaId(localSpi),
    localSelectors: selectorsText(localTs(child)),
    remoteSelectors: selectorsText(remoteTs(child)),
  };
}

/** The 5452 event of a child SA that ended (the quick mode fields Windows shows for it). */
export function childEndedEvent(q: QuickModeInfo, reason: string): AuditEvent {
  const { local, remote, mode, protocol, inboundSpi, outboundSpi, mmSaId: id } = q;
  return {
    id: 5452,
    subcategory: 'IPsec Quick Mode',
    success: true,
    quickMode: { local, remote, mode, protocol, inboundSpi, outboundSpi, mmSaId: id },
    reason,
  };
}

/** The 4655 event of a main mode SA that ended. */
export function mainModeEndedEvent(
  s: Pick<DescribedSession, 'endpoint'>,
  keyingModule: KeyingModule,
  localSpi: Buffer,
  reason: string,
): AuditEvent {
  return {
    id: 4655,
    subcategory: 'IPsec Main Mode',
    success: true,
    local: s.endpoint('local'),
    remote: s.endpoint('remote'),
    keyingModule,
    mmSaId: mmSaId(localSpi),
    reason,
  };
}

/**
 * The event of a main mode that failed: 4652 when it authenticated with certificates, 4653
 * otherwise; who found the failure (a refusal the peer sent is the remote computer's), the state
 * it was in, the cookies (IKE SPIs).
 */
export function mainModeFailedEvent(o: {
  local: Endpoint;
  remote: Endpoint;
  keyingModule: KeyingModule;
  role: 'Initiator' | 'Responder';
  credentials?: Credentials;
  err: Error;
  authenticating: boolean;
  cookieI: Buffer;
  cookieR: Buffer;
  /** The failure was in Extended Mode (the user's authentication): 4984, the Main Mode SA goes with it. */
  extendedMode?: boolean;
}): AuditEvent {
  return {
    id: o.extendedMode ? 4984 : o.credentials?.method === 'cert' ? 4652 : 4653,
    subcategory: o.extendedMode ? 'IPsec Extended Mode' : 'IPsec Main Mode',
    success: false,
    local: { address: o.local.address, port: o.local.port },
    remote: { address: o.remote.address, port: o.remote.port },
    keyingModule: o.keyingModule,
    role: o.role,
    authenticationMethod: o.credentials ? methodName(o.credentials) : undefined,
    failure: {
      failurePoint: o.err instanceof IkeError && o.err.fromPeer ? 'Remote computer' : 'Local computer',
      failureReason: o.err.message,
      state: o.extendedMode ? 'Extended Mode' : o.authenticating ? 'Authentication' : 'No state',
      notify: o.err instanceof IkeError ? notifyName(o.err.notify) : undefined,
      initiatorCookie: o.cookieI.toString('hex'),
      responderCookie: o.cookieR.toString('hex'),
    },
  };
}
