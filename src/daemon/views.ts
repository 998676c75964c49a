/**
 * The daemon's SAs as Windows shows them (Get-NetIPsecMainModeSA / Get-NetIPsecQuickModeSA property
 * names, reference §5.2–5.3): plain data for the control API. No key material.
 */
import { dhKeyword, selectorsText } from '../ike/describe.ts';
import { transformOf } from '../ike/proposals.ts';
import type { ChildEntry } from '../ike/session.ts';
import type { KeyedSession } from './keying.ts';
import { AuthIpSession, windowsAccountName } from '../ike/authip/session.ts';
import { localTs, remoteTs } from '../ike/tasks/child-create.ts';
import { identityText } from '../ike/tasks/ike-cert.ts';
import type { Proposal } from '../ike/wire/codec.ts';
import { EncrId, IntegId, PrfId, ProtocolId, TransformType } from '../ike/wire/constants.ts';
import { mmSaId } from '../audit/events.ts';

/** Windows' cipher keyword for a proposal: AES128 … AES256, AESGCM128 … AESGCM256, None. */
function cipherKeyword(p: Proposal): string {
  const t = transformOf(p, TransformType.ENCR);
  if (!t || t.id === EncrId.NULL) return 'None';
  return `${t.id === EncrId.AES_GCM_16 ? 'AESGCM' : 'AES'}${t.keyLength ?? ''}`;
}

function hashKeyword(p: Proposal): string {
  const prf = transformOf(p, TransformType.PRF)?.id;
  const integ = transformOf(p, TransformType.INTEG)?.id;
  const byPrf: Partial<Record<PrfId, string>> = {
    [PrfId.HMAC_SHA1]: 'SHA1',
    [PrfId.HMAC_SHA2_256]: 'SHA256',
    [PrfId.HMAC_SHA2_384]: 'SHA384',
    [PrfId.HMAC_SHA2_512]: 'SHA512',
  };
  const byInteg: Partial<Record<IntegId, string>> = {
    [IntegId.HMAC_SHA1_96]: 'SHA1',
    [IntegId.HMAC_SHA2_256_128]: 'SHA256',
    [IntegId.HMAC_SHA2_384_192]: 'SHA384',
    [IntegId.HMAC_SHA2_512_256]: 'SHA512',
  };
  if (prf !== undefined) return byPrf[prf as PrfId] ?? `PRF${prf}`;
  if (integ !== undefined) return byInteg[integ as IntegId] ?? `INTEG${integ}`;
  const e = transformOf(p, TransformType.ENCR);
  return e?.id === EncrId.AES_GCM_16 ? `AESGMAC${e.keyLength ?? ''}` : 'None';
}

export interface MainModeSaView {
  Name: string;
  LocalEndpoint: string;
  RemoteEndpoint: string;
  LocalFirstId: { Identity: string; AuthenticationMethod: string };
  RemoteFirstId: { Identity: string; AuthenticationMethod: string };
  /** The second authentication (AuthIP's Extended Mode): the user; empty without it. */
  LocalSecondId: { Identity: string; AuthenticationMethod: string };
  RemoteSecondId: { Identity: string; AuthenticationMethod: string };
  CipherAlgorithm: string;
  HashAlgorithm: string;
  GroupId: string;
  KeyModule: 'IkeV2' | 'IkeV1' | 'AuthIp';
  LifetimeSeconds: number;
  LocalUDPEncapsulationPort: number;
  RemoteUDPEncapsulationPort: number;
  CookiePair: string;
  Role: string;
  State: string;
  QuickModeSACount: number;
}

/** A second identity as Windows lists it: a user's Kerberos (a computer when it is the responder's SPN). */
const second = (principal: string | undefined) =>
  principal
    ? {
        Identity: windowsAccountName(principal),
        AuthenticationMethod: /^host\//i.test(principal) ? 'MachineKerberos' : 'UserKerberos',
      }
    : { Identity: '', AuthenticationMethod: 'None' };

export function mainModeSaView(s: KeyedSession): MainModeSaView {
  const p = s.sa.chosen as Proposal;
  const kerberos = s instanceof AuthIpSession;
  const method = kerberos ? 'MachineKerberos' : s.peer.credentials.method === 'cert' ? 'MachineCert' : 'MachinePSK';
  const udp = s.sa.floated;
  return {
    Name: mmSaId(s.sa.localSpi),
    LocalEndpoint: s.sa.local.address,
    RemoteEndpoint: s.sa.remote.address,
    LocalFirstId: {
      Identity: kerberos ? windowsAccountName(s.localPrincipal ?? '') : identityText(s.peer.localId),
      AuthenticationMethod: method,
    },
    RemoteFirstId: {
      Identity: kerberos
        ? windowsAccountName(s.peerPrincipal ?? '')
        : (s.peerCertificate?.subject ?? (s.peerId ? identityText(s.peerId) : '')),
      AuthenticationMethod: method,
    },
    LocalSecondId: second(kerberos ? s.localUser : undefined),
    RemoteSecondId: second(kerberos ? s.peerUser : undefined),
    CipherAlgorithm: cipherKeyword(p),
    HashAlgorithm: hashKeyword(p),
    GroupId: dhKeyword(transformOf(p, TransformType.KE)?.id),
    KeyModule: 'keyModule' in s ? s.keyModule : 'IkeV2',
    LifetimeSeconds: Math.round(s.lifetimes.ikeExpireMs / 1000),
    LocalUDPEncapsulationPort: udp ? s.sa.local.port : 0,
    RemoteUDPEncapsulationPort: udp ? s.sa.remote.port : 0,
    CookiePair: `${s.sa.spiI.toString('hex')}:${s.sa.spiR.toString('hex')}`,
    Role: s.role === 'initiator' ? 'Initiator' : 'Responder',
    State: s.state === 'established' ? 'Established' : s.state,
    QuickModeSACount: s.children.size,
  };
}

export interface QuickModeSaView {
  Name: string;
  MainModeSAName: string;
  LocalEndpoint: string;
  RemoteEndpoint: string;
  LocalTunnelEndpoint: string;
  RemoteTunnelEndpoint: string;
  EncapsulationMode: 'Transport' | 'Tunnel';
  Protocol: 'ESP' | 'AH';
  InboundSpi: string;
  OutboundSpi: string;
  EncryptionAlgorithm: string;
  IntegrityAlgorithm: string;
  PfsGroupId: string;
  LifetimeSeconds: number;
  LifetimeKilobytes: number;
  LocalUDPEncapsulationPort: number;
  RemoteUDPEncapsulationPort: number;
  State: string;
  /** Traffic through the SA as the data plane counted it (payload octets). */
  BytesIn: number;
  BytesOut: number;
  PacketsIn: number;
  PacketsOut: number;
}

export interface SaCounters {
  bytesIn: number;
  bytesOut: number;
  packetsIn: number;
  packetsOut: number;
}

export function quickModeSaView(s: KeyedSession, e: ChildEntry, counters?: SaCounters): QuickModeSaView {
  const c = e.child;
  const tunnel = c.mode === 'tunnel';
  const udp = s.sa.floated;
  return {
    Name: String(c.spiIn.readUInt32BE(0)),
    MainModeSAName: mmSaId(s.sa.localSpi),
    LocalEndpoint: selectorsText(localTs(c)),
    RemoteEndpoint: selectorsText(remoteTs(c)),
    LocalTunnelEndpoint: tunnel ? s.sa.local.address : '',
    RemoteTunnelEndpoint: tunnel ? s.sa.remote.address : '',
    EncapsulationMode: tunnel ? 'Tunnel' : 'Transport',
    Protocol: c.proposal.protocol === ProtocolId.AH ? 'AH' : 'ESP',
    InboundSpi: c.spiIn.toString('hex'),
    OutboundSpi: c.spiOut.toString('hex'),
    EncryptionAlgorithm: cipherKeyword(c.proposal),
    IntegrityAlgorithm: hashKeyword(c.proposal),
    PfsGroupId: c.pfsGroup === undefined ? 'None' : dhKeyword(c.pfsGroup),
    LifetimeSeconds: Math.round(s.lifetimes.childExpireMs / 1000),
    LifetimeKilobytes: s.lifetimes.childKilobytes ?? 0,
    LocalUDPEncapsulationPort: udp ? s.sa.local.port : 0,
    RemoteUDPEncapsulationPort: udp ? s.sa.remote.port : 0,
    State: e.state.kind === 'installed' ? 'Installed' : e.state.kind,
    BytesIn: counters?.bytesIn ?? 0,
    BytesOut: counters?.bytesOut ?? 0,
    PacketsIn: counters?.packetsIn ?? 0,
    PacketsOut: counters?.packetsOut ?? 0,
  };
}
