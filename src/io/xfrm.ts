/**
 * The kernel's IPsec SAD and SPD over netlink XFRM (linux/xfrm.h), built and parsed here and sent by
 * the addon (`xfrmRequests`, `xfrmQuery`, `RtnetlinkMonitor.openXfrm`): what `ip xfrm state add`,
 * `ip xfrm policy update` and `ip xfrm monitor` send and read, without an `ip` process per change.
 * Struct layouts (offsets checked against the kernel's header in test/xfrm.test.ts):
 * xfrm_selector 56, xfrm_usersa_info 224, xfrm_usersa_id 24, xfrm_userpolicy_info 168,
 * xfrm_userpolicy_id 64, xfrm_user_tmpl 64, xfrm_user_acquire 280, xfrm_user_expire 232.
 */
import { ConsecError } from '../errors.ts';

export class XfrmCodecError extends ConsecError {
  constructor(message: string) {
    super('ERR_XFRM_CODEC', message);
  }
}

const NLMSG_HDRLEN = 16;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_DUMP = 0x300;

export const XFRM_MSG = {
  NEWSA: 16,
  DELSA: 17,
  GETSA: 18,
  NEWPOLICY: 19,
  DELPOLICY: 20,
  GETPOLICY: 21,
  ACQUIRE: 23,
  EXPIRE: 24,
  UPDPOLICY: 25,
  UPDSA: 26,
  POLEXPIRE: 27,
  FLUSHSA: 28,
  FLUSHPOLICY: 29,
} as const;

/** Multicast groups of NETLINK_XFRM (bits for the socket's bind). */
export const XFRMGRP_ACQUIRE = 1;
export const XFRMGRP_EXPIRE = 2;
export const XFRMGRP_SA = 4;
export const XFRMGRP_POLICY = 8;

const XFRMA = {
  ALG_AUTH_TRUNC: 20,
  ALG_CRYPT: 2,
  ALG_AEAD: 18,
  ENCAP: 4,
  TMPL: 5,
  REPLAY_ESN_VAL: 23,
  SA_EXTRA_FLAGS: 24,
  SET_MARK: 29,
  SET_MARK_MASK: 30,
} as const;

const AF_INET = 2;
const AF_INET6 = 10;
const XFRM_STATE_ESN = 128;
const XFRM_STATE_AF_UNSPEC = 32;
const XFRM_INF = 0xffff_ffff_ffff_ffffn;
const UDP_ENCAP_ESPINUDP = 2;

export type XfrmDir = 'in' | 'out' | 'fwd';
const DIR: Record<XfrmDir, number> = { in: 0, out: 1, fwd: 2 };
const DIR_NAME: XfrmDir[] = ['in', 'out', 'fwd'];
export type XfrmMode = 'transport' | 'tunnel';
const MODE: Record<XfrmMode, number> = { transport: 0, tunnel: 1 };

/** IP protocol numbers of the two IPsec protocols. */
export const XFRM_PROTO = { esp: 50, ah: 51 } as const;
export type XfrmProto = keyof typeof XFRM_PROTO;

/** What the kernel matches a packet against: prefixes, protocol (0 any) and ports with masks (network order values). */
export interface XfrmSelector {
  family: 4 | 6;
  src: Uint8Array;
  srcPrefix: number;
  dst: Uint8Array;
  dstPrefix: number;
  proto: number;
  sport: number;
  sportMask: number;
  dport: number;
  dportMask: number;
}

export interface XfrmTemplate {
  proto: XfrmProto;
  mode: XfrmMode;
  /** Tunnel endpoints (tunnel mode); transport mode leaves them to the flow. */
  src?: Uint8Array;
  dst?: Uint8Array;
  family: 4 | 6;
  /** 0: any SA of this protocol and mode between the addresses. */
  reqid: number;
  /** `level use`: no SA → the packet passes as it is (and the kernel still asks for one). */
  optional: boolean;
}

export interface XfrmPolicy {
  dir: XfrmDir;
  sel: XfrmSelector;
  /** Lower goes first. */
  priority: number;
  action: 'allow' | 'block';
  /** Empty for a bypass (allow) or block policy. */
  tmpls: XfrmTemplate[];
}

export interface XfrmAlgorithm {
  /** The kernel crypto API name: rfc4106(gcm(aes)), cbc(aes), hmac(sha256), ecb(cipher_null) … */
  name: string;
  key: Buffer;
  /** ICV bits (AEAD) or truncation bits (authentication). */
  bits?: number;
}

export interface XfrmSa {
  family: 4 | 6;
  src: Uint8Array;
  dst: Uint8Array;
  spi: number;
  proto: XfrmProto;
  mode: XfrmMode;
  reqid: number;
  /** For tunnel mode SAs carrying the other family inside (XFRM_STATE_AF_UNSPEC). */
  anyInnerFamily?: boolean;
  /** Transport mode: the traffic this SA may carry (the kernel checks inbound packets against it). */
  sel?: XfrmSelector;
  aead?: XfrmAlgorithm;
  crypt?: XfrmAlgorithm;
  auth?: XfrmAlgorithm;
  encap?: { sport: number; dport: number };
  esn: boolean;
  /** Anti-replay window in packets (a multiple of 32). */
  replayWindow: number;
  /** Byte lifetimes (both counted by the kernel per SA): soft → an expire message, hard → the SA goes. */
  softBytes?: bigint;
  hardBytes?: bigint;
  /** Packet lifetimes likewise (a 32-bit sequence number space runs out). */
  softPackets?: bigint;
  hardPackets?: bigint;
  /** The firewall mark the kernel puts on the packets this SA makes (XFRMA_SET_MARK, all 32 bits). */
  outputMark?: number;
}

export interface XfrmSaId {
  family: 4 | 6;
  dst: Uint8Array;
  spi: number;
  proto: XfrmProto;
}

const align4 = (n: number): number => (n + 3) & ~3;
const familyCode = (f: 4 | 6): number => (f === 4 ? AF_INET : AF_INET6);

function header(out: Buffer, type: number, flags: number, seq: number): void {
  out.writeUInt32LE(out.length, 0);
  out.writeUInt16LE(type, 4);
  out.writeUInt16LE(flags, 6);
  out.writeUInt32LE(seq >>> 0, 8);
  out.writeUInt32LE(0, 12);
}

function writeAddress(out: Buffer, off: number, a: Uint8Array | undefined, family: 4 | 6): void {
  if (!a) return;
  if (a.length !== (family === 4 ? 4 : 16))
    throw new XfrmCodecError(`an IPv${family} address has ${family === 4 ? 4 : 16} octets`);
  out.set(a, off);
}

function writeSelector(out: Buffer, off: number, s: XfrmSelector): void {
  const max = s.family === 4 ? 32 : 128;
  if (s.srcPrefix < 0 || s.srcPrefix > max || s.dstPrefix < 0 || s.dstPrefix > max)
    throw new XfrmCodecError('selector prefix length out of range');
  writeAddress(out, off, s.dst, s.family);
  writeAddress(out, off + 16, s.src, s.family);
  out.writeUInt16BE(s.dport & 0xffff, off + 32);
  out.writeUInt16BE(s.dportMask & 0xffff, off + 34);
  out.writeUInt16BE(s.sport & 0xffff, off + 36);
  out.writeUInt16BE(s.sportMask & 0xffff, off + 38);
  out.writeUInt16LE(familyCode(s.family), off + 40);
  out[off + 42] = s.dstPrefix;
  out[off + 43] = s.srcPrefix;
  out[off + 44] = s.proto & 0xff;
}

/** Byte and packet limits (none: XFRM_INF); the time limits stay 0, which is "none" (as ip sets them). */
function writeLifetimeCfg(
  out: Buffer,
  off: number,
  l: { softBytes?: bigint; hardBytes?: bigint; softPackets?: bigint; hardPackets?: bigint } = {},
): void {
  out.writeBigUInt64LE(l.softBytes ?? XFRM_INF, off);
  out.writeBigUInt64LE(l.hardBytes ?? XFRM_INF, off + 8);
  out.writeBigUInt64LE(l.softPackets ?? XFRM_INF, off + 16);
  out.writeBigUInt64LE(l.hardPackets ?? XFRM_INF, off + 24);
}

function attr(type: number, value: Buffer): Buffer {
  const out = Buffer.alloc(align4(4 + value.length));
  out.writeUInt16LE(4 + value.length, 0);
  out.writeUInt16LE(type, 2);
  value.copy(out, 4);
  return out;
}

function algorithm(a: XfrmAlgorithm, withBits: boolean): Buffer {
  const name = Buffer.from(a.name, 'ascii');
  if (name.length >= 64) throw new XfrmCodecError(`algorithm name too long: ${a.name}`);
  const head = withBits ? 72 : 68;
  const out = Buffer.alloc(head + a.key.length);
  name.copy(out, 0);
  out.writeUInt32LE(a.key.length * 8, 64);
  if (withBits) out.writeUInt32LE(a.bits ?? 0, 68);
  a.key.copy(out, head);
  return out;
}

function message(type: number, flags: number, seq: number, body: Buffer, attrs: Buffer[] = []): Buffer {
  const out = Buffer.concat([Buffer.alloc(NLMSG_HDRLEN), body, ...attrs]);
  header(out, type, flags, seq);
  return out;
}

/** XFRM_MSG_NEWSA (or UPDSA for `update`): one SA into the kernel's SAD. */
export function saRequest(sa: XfrmSa, seq: number, update = false): Buffer {
  const body = Buffer.alloc(224);
  // A tunnel carrying the other family inside: selector family 0 (with XFRM_STATE_AF_UNSPEC), or the
  // kernel takes the outer family for the inner packets.
  if (sa.sel) writeSelector(body, 0, sa.sel);
  else if (!sa.anyInnerFamily) body.writeUInt16LE(familyCode(sa.family), 40);
  writeAddress(body, 56, sa.dst, sa.family);
  body.writeUInt32BE(sa.spi >>> 0, 72);
  body[76] = XFRM_PROTO[sa.proto];
  writeAddress(body, 80, sa.src, sa.family);
  writeLifetimeCfg(body, 96, sa);
  body.writeUInt32LE(sa.reqid >>> 0, 208);
  body.writeUInt16LE(familyCode(sa.family), 212);
  body[214] = MODE[sa.mode];
  body[215] = 0; // the window is in XFRMA_REPLAY_ESN_VAL
  body[216] = (sa.esn ? XFRM_STATE_ESN : 0) | (sa.anyInnerFamily ? XFRM_STATE_AF_UNSPEC : 0);
  const attrs: Buffer[] = [];
  if (sa.aead) attrs.push(attr(XFRMA.ALG_AEAD, algorithm(sa.aead, true)));
  if (sa.crypt) attrs.push(attr(XFRMA.ALG_CRYPT, algorithm(sa.crypt, false)));
  if (sa.auth) attrs.push(attr(XFRMA.ALG_AUTH_TRUNC, algorithm(sa.auth, true)));
  if (sa.encap) {
    const e = Buffer.alloc(24);
    e.writeUInt16LE(UDP_ENCAP_ESPINUDP, 0);
    e.writeUInt16BE(sa.encap.sport, 2);
    e.writeUInt16BE(sa.encap.dport, 4);
    attrs.push(attr(XFRMA.ENCAP, e));
  }
  if (sa.replayWindow % 32 !== 0 || sa.replayWindow <= 0 || sa.replayWindow > 4096)
    throw new XfrmCodecError('the replay window is a multiple of 32 packets, at most 4096');
  const bmpLen = sa.replayWindow / 32;
  const esn = Buffer.alloc(24 + 4 * bmpLen);
  esn.writeUInt32LE(bmpLen, 0);
  esn.writeUInt32LE(sa.replayWindow, 20);
  attrs.push(attr(XFRMA.REPLAY_ESN_VAL, esn));
  if (sa.outputMark !== undefined) {
    const u32 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v >>> 0, 0);
      return b;
    };
    attrs.push(attr(XFRMA.SET_MARK, u32(sa.outputMark)), attr(XFRMA.SET_MARK_MASK, u32(0xffffffff)));
  }
  return message(update ? XFRM_MSG.UPDSA : XFRM_MSG.NEWSA, NLM_F_REQUEST | NLM_F_ACK, seq, body, attrs);
}

function saIdBody(id: XfrmSaId): Buffer {
  const body = Buffer.alloc(24);
  writeAddress(body, 0, id.dst, id.family);
  body.writeUInt32BE(id.spi >>> 0, 16);
  body.writeUInt16LE(familyCode(id.family), 20);
  body[22] = XFRM_PROTO[id.proto];
  return body;
}

/** XFRM_MSG_DELSA: the SA with this destination, SPI and protocol leaves the SAD. */
export function deleteSaRequest(id: XfrmSaId, seq: number): Buffer {
  return message(XFRM_MSG.DELSA, NLM_F_REQUEST | NLM_F_ACK, seq, saIdBody(id));
}

/** XFRM_MSG_GETSA for one SA (its counters), answered with an XFRM_MSG_NEWSA. */
export function getSaRequest(id: XfrmSaId, seq: number): Buffer {
  return message(XFRM_MSG.GETSA, NLM_F_REQUEST, seq, saIdBody(id));
}

/** XFRM_MSG_GETSA as a dump of the whole SAD. */
export function dumpSasRequest(seq: number): Buffer {
  return message(XFRM_MSG.GETSA, NLM_F_REQUEST | NLM_F_DUMP, seq, Buffer.alloc(0));
}

/** XFRM_MSG_GETPOLICY as a dump of the whole SPD. */
export function dumpPoliciesRequest(seq: number): Buffer {
  return message(XFRM_MSG.GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP, seq, Buffer.alloc(0));
}

function templateBytes(t: XfrmTemplate): Buffer {
  const out = Buffer.alloc(64);
  writeAddress(out, 0, t.dst, t.family);
  out[20] = XFRM_PROTO[t.proto];
  out.writeUInt16LE(familyCode(t.family), 24);
  writeAddress(out, 28, t.src, t.family);
  out.writeUInt32LE(t.reqid >>> 0, 44);
  out[48] = MODE[t.mode];
  out[49] = 0; // XFRM_SHARE_ANY
  out[50] = t.optional ? 1 : 0;
  out.writeUInt32LE(0xffffffff, 52); // any authentication
  out.writeUInt32LE(0xffffffff, 56); // any encryption
  out.writeUInt32LE(0xffffffff, 60); // any compression
  return out;
}

/** XFRM_MSG_UPDPOLICY (creates or replaces the policy with this selector and direction). */
export function policyRequest(p: XfrmPolicy, seq: number): Buffer {
  const body = Buffer.alloc(168);
  writeSelector(body, 0, p.sel);
  writeLifetimeCfg(body, 56);
  body.writeUInt32LE(p.priority >>> 0, 152);
  body[160] = DIR[p.dir];
  body[161] = p.action === 'allow' ? 0 : 1;
  const attrs = p.tmpls.length > 0 ? [attr(XFRMA.TMPL, Buffer.concat(p.tmpls.map(templateBytes)))] : [];
  return message(XFRM_MSG.UPDPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq, body, attrs);
}

/** XFRM_MSG_DELPOLICY by selector and direction. */
export function deletePolicyRequest(p: { dir: XfrmDir; sel: XfrmSelector }, seq: number): Buffer {
  const body = Buffer.alloc(64);
  writeSelector(body, 0, p.sel);
  body[60] = DIR[p.dir];
  return message(XFRM_MSG.DELPOLICY, NLM_F_REQUEST | NLM_F_ACK, seq, body);
}

// ---- parsing ---------------------------------------------------------------------------------

export interface XfrmMessage {
  type: number;
  seq: number;
  /** The message after its netlink header (struct, then attributes). */
  body: Buffer;
}

/** Splits a datagram of netlink messages; a truncated or overlong one throws XfrmCodecError. */
export function splitMessages(buf: Buffer): XfrmMessage[] {
  const out: XfrmMessage[] = [];
  for (let off = 0; off + NLMSG_HDRLEN <= buf.length;) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) throw new XfrmCodecError('truncated netlink message');
    out.push({
      type: buf.readUInt16LE(off + 4),
      seq: buf.readUInt32LE(off + 8),
      body: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

function need(body: Buffer, n: number, what: string): void {
  if (body.length < n) throw new XfrmCodecError(`truncated ${what} (${body.length} of ${n} octets)`);
}

function familyOf(code: number): 4 | 6 {
  if (code === AF_INET) return 4;
  if (code === AF_INET6) return 6;
  throw new XfrmCodecError(`address family ${code} is neither IPv4 nor IPv6`);
}

function readAddress(body: Buffer, off: number, family: 4 | 6): Buffer {
  return Buffer.from(body.subarray(off, off + (family === 4 ? 4 : 16)));
}

function protoName(n: number): XfrmProto | undefined {
  return n === 50 ? 'esp' : n === 51 ? 'ah' : undefined;
}

export function parseSelector(body: Buffer, off = 0): XfrmSelector {
  need(body, off + 56, 'selector');
  const code = body.readUInt16LE(off + 40);
  // A selector of family 0 (AF_UNSPEC) matches both; what the kernel reports for it is IPv4-shaped.
  const family = code === 0 ? 4 : familyOf(code);
  return {
    family,
    dst: readAddress(body, off, family),
    src: readAddress(body, off + 16, family),
    dport: body.readUInt16BE(off + 32),
    dportMask: body.readUInt16BE(off + 34),
    sport: body.readUInt16BE(off + 36),
    sportMask: body.readUInt16BE(off + 38),
    dstPrefix: body[off + 42] as number,
    srcPrefix: body[off + 43] as number,
    proto: body[off + 44] as number,
  };
}

/** An SA as the kernel reports it (XFRM_MSG_NEWSA answers and dumps, and inside expire messages). */
export interface XfrmSaInfo {
  family: 4 | 6;
  src: Buffer;
  dst: Buffer;
  spi: number;
  proto: number;
  reqid: number;
  mode: number;
  bytes: bigint;
  packets: bigint;
  replayDrops: number;
  integrityFailures: number;
}

export function parseSaInfo(body: Buffer, off = 0): XfrmSaInfo {
  need(body, off + 224, 'xfrm_usersa_info');
  const family = familyOf(body.readUInt16LE(off + 212));
  return {
    family,
    dst: readAddress(body, off + 56, family),
    spi: body.readUInt32BE(off + 72),
    proto: body[off + 76] as number,
    src: readAddress(body, off + 80, family),
    bytes: body.readBigUInt64LE(off + 160),
    packets: body.readBigUInt64LE(off + 168),
    replayDrops: body.readUInt32LE(off + 196),
    integrityFailures: body.readUInt32LE(off + 200),
    reqid: body.readUInt32LE(off + 208),
    mode: body[off + 214] as number,
  };
}

export interface XfrmPolicyInfo {
  sel: XfrmSelector;
  dir: XfrmDir;
  priority: number;
  index: number;
  action: 'allow' | 'block';
}

export function parsePolicyInfo(body: Buffer, off = 0): XfrmPolicyInfo {
  need(body, off + 168, 'xfrm_userpolicy_info');
  const dir = DIR_NAME[body[off + 160] as number];
  if (!dir) throw new XfrmCodecError(`policy direction ${body[off + 160]}`);
  return {
    sel: parseSelector(body, off),
    priority: body.readUInt32LE(off + 152),
    index: body.readUInt32LE(off + 156),
    dir,
    action: body[off + 161] === 0 ? 'allow' : 'block',
  };
}

/** XFRM_MSG_ACQUIRE: a packet matched a policy whose template has no SA. */
export interface XfrmAcquire {
  proto: XfrmProto | undefined;
  /** The template's outer addresses (the flow's own in transport mode). */
  dst: Buffer;
  src: Buffer;
  /** The packet's flow as a selector (full-length prefixes, its protocol and ports). */
  sel: XfrmSelector;
  policy: XfrmPolicyInfo;
}

export function parseAcquire(body: Buffer): XfrmAcquire {
  need(body, 280, 'xfrm_user_acquire');
  const policy = parsePolicyInfo(body, 96);
  const sel = parseSelector(body, 40);
  // The message names no outer family: the flow's (a tunnel of the other family is acquired by its flow).
  return {
    dst: readAddress(body, 0, sel.family),
    proto: protoName(body[20] as number),
    src: readAddress(body, 24, sel.family),
    sel,
    policy,
  };
}

/** XFRM_MSG_DELSA as the kernel announces it: the SA's destination, SPI and protocol (xfrm_usersa_id). */
export function parseSaId(body: Buffer): { dst: Buffer; spi: number; proto: number } {
  need(body, 24, 'xfrm_usersa_id');
  const family = familyOf(body.readUInt16LE(20));
  return { dst: readAddress(body, 0, family), spi: body.readUInt32BE(16), proto: body[22] as number };
}

/** XFRM_MSG_EXPIRE: an SA reached its soft or hard lifetime. */
export function parseExpire(body: Buffer): { sa: XfrmSaInfo; hard: boolean } {
  need(body, 225, 'xfrm_user_expire');
  return { sa: parseSaInfo(body, 0), hard: body[224] !== 0 };
}

// ---- ranges as prefixes and port masks --------------------------------------------------------

/**
 * The fewest prefixes covering `start`..`end` (both 4 or 16 octets, start ≤ end), as the kernel's
 * selectors need; at most `limit` (a range that needs more throws).
 */
export function rangeToPrefixes(
  start: Uint8Array,
  end: Uint8Array,
  limit = 256,
): { address: Buffer; prefix: number }[] {
  const bits = start.length * 8;
  let lo = BigInt(`0x${Buffer.from(start).toString('hex')}`);
  const hi = BigInt(`0x${Buffer.from(end).toString('hex')}`);
  if (lo > hi) throw new XfrmCodecError('an address range ends before it starts');
  const out: { address: Buffer; prefix: number }[] = [];
  while (lo <= hi) {
    let size = 0;
    while (size < bits && (lo & ((1n << BigInt(size + 1)) - 1n)) === 0n && lo + (1n << BigInt(size + 1)) - 1n <= hi)
      size++;
    out.push({ address: Buffer.from(lo.toString(16).padStart(start.length * 2, '0'), 'hex'), prefix: bits - size });
    if (out.length > limit) throw new XfrmCodecError(`an address range needs more than ${limit} kernel selectors`);
    lo += 1n << BigInt(size);
  }
  return out;
}

/** A port range as value/mask pairs (0/0 for any). */
export function portRangeToMasks(start: number, end: number, limit = 64): { port: number; mask: number }[] {
  if (start === 0 && end === 65535) return [{ port: 0, mask: 0 }];
  if (start > end) throw new XfrmCodecError('a port range ends before it starts');
  const out: { port: number; mask: number }[] = [];
  let lo = start;
  while (lo <= end) {
    let size = 0;
    while (size < 16 && (lo & ((1 << (size + 1)) - 1)) === 0 && lo + (1 << (size + 1)) - 1 <= end) size++;
    out.push({ port: lo, mask: (0xffff << size) & 0xffff });
    if (out.length > limit) throw new XfrmCodecError(`a port range needs more than ${limit} kernel selectors`);
    lo += 1 << size;
  }
  return out;
}
