/**
 * Manual SAs (the WFP "manual IPsec SAs" scenario of seed 004): keys and SPIs from a file, no IKE.
 * For peers without a keying daemon, for tests and benchmarks. The file holds keys, so it must be
 * readable by its owner only; its contents are validated as a whole before anything is installed,
 * and never logged.
 *
 *   sas:
 *     - name: to-bob
 *       local: 192.0.2.1
 *       remote: 192.0.2.2
 *       mode: transport            # or tunnel
 *       encapsulation: esp         # raw ESP (protocol 50), esp-udp (port 4500), or ah (protocol 51)
 *       cipher: aes-gcm-256        # aes-gcm-128, aes-cbc-128, aes-cbc-256, null; none with ah
 *       integrity: sha256          # for aes-cbc, null and ah: sha1, sha256, sha384, sha512
 *       esn: false
 *       inbound:  { spi: 0x1001, key: <hex>, integrityKey: <hex> }
 *       outbound: { spi: 0x2002, key: <hex>, integrityKey: <hex> }
 *       localSelectors: [192.0.2.1/32]    # default: the local address
 *       remoteSelectors: [192.0.2.2/32]   # default: the remote address
 */
import { statSync } from 'node:fs';
import { isIP, isIPv4 } from 'node:net';
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';
import { parsePrefix, writeIp } from '../io/addr.ts';
import { type ChildSaSpec, type TrafficSelector, TS_IPV4, TS_IPV6 } from '../sa/spec.ts';
import { readTextBounded } from '../io/bounded.ts';

export class ManualSaError extends ConsecError {
  constructor(message: string) {
    super('ERR_MANUAL_SA', message);
  }
}

const hex = z
  .string()
  .regex(/^([0-9a-fA-F]{2})+$/, 'a key is an even number of hex digits')
  .transform((s) => Buffer.from(s, 'hex'));
const spi = z.number().int().min(256, 'SPIs 0–255 are reserved (RFC 4303 §2.1)').max(0xffffffff);
const address = z.string().refine((a) => isIP(a) !== 0, 'not an IP address');
const prefix = z.string().refine((p) => {
  try {
    parsePrefix(p.includes('/') ? p : `${p}/${isIPv4(p) ? 32 : 128}`);
    return true;
  } catch {
    return false;
  }
}, 'not an address or prefix');
const direction = z.object({ spi, key: hex.optional(), integrityKey: hex.optional() }).strict();

const KEY_BYTES = { 'aes-gcm-128': 20, 'aes-gcm-256': 36, 'aes-cbc-128': 16, 'aes-cbc-256': 32, null: 0 } as const;
const INTEG_BYTES = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 } as const;

const saSchema = z
  .object({
    name: z.string().min(1),
    local: address,
    remote: address,
    mode: z.enum(['transport', 'tunnel']).default('transport'),
    encapsulation: z.enum(['esp', 'esp-udp', 'ah']).default('esp'),
    // YAML reads a bare `null` as no value: it means the NULL cipher here.
    cipher: z.preprocess(
      (v) => (v === null ? 'null' : v),
      z.enum(['aes-gcm-128', 'aes-gcm-256', 'aes-cbc-128', 'aes-cbc-256', 'null']).optional(),
    ),
    integrity: z.enum(['sha1', 'sha256', 'sha384', 'sha512']).optional(),
    esn: z.boolean().default(false),
    inbound: direction,
    outbound: direction,
    localSelectors: z.array(prefix).optional(),
    remoteSelectors: z.array(prefix).optional(),
  })
  .strict()
  .superRefine((sa, ctx) => {
    const ah = sa.encapsulation === 'ah';
    if (ah && sa.cipher !== undefined)
      ctx.addIssue({ code: 'custom', message: `${sa.name}: AH authenticates only; leave out "cipher"` });
    if (!ah && sa.cipher === undefined) ctx.addIssue({ code: 'custom', message: `${sa.name}: ESP needs "cipher"` });
    const gcm = sa.cipher?.startsWith('aes-gcm') ?? false;
    if (gcm && sa.integrity)
      ctx.addIssue({ code: 'custom', message: `${sa.name}: AES-GCM carries its own integrity; leave out "integrity"` });
    if (!gcm && !sa.integrity)
      ctx.addIssue({ code: 'custom', message: `${sa.name}: ${sa.cipher ?? 'AH'} needs "integrity"` });
    for (const dir of ['inbound', 'outbound'] as const) {
      const d = sa[dir];
      const want = sa.cipher ? KEY_BYTES[sa.cipher] : 0;
      if ((d.key?.length ?? 0) !== want)
        ctx.addIssue({
          code: 'custom',
          message: sa.cipher
            ? `${sa.name}: ${dir} key must be ${want} octets for ${sa.cipher}${gcm ? ' (key and 4-octet salt)' : ''}`
            : `${sa.name}: ${dir}: AH has no encryption key, only integrityKey`,
        });
      const iw = sa.integrity ? INTEG_BYTES[sa.integrity] : 0;
      if ((d.integrityKey?.length ?? 0) !== iw)
        ctx.addIssue({ code: 'custom', message: `${sa.name}: ${dir} integrityKey must be ${iw} octets` });
    }
    if (isIPv4(sa.local) !== isIPv4(sa.remote))
      ctx.addIssue({ code: 'custom', message: `${sa.name}: local and remote are of different IP families` });
  });

const fileSchema = z.object({ sas: z.array(saSchema).min(1) }).strict();
export type ManualSa = z.infer<typeof saSchema>;

/** Reads and validates the file (owner-only permissions, every SA complete) or throws ManualSaError. */
export function loadManualSas(path: string): ManualSa[] {
  let text: string;
  try {
    if ((statSync(path).mode & 0o077) !== 0)
      throw new ManualSaError(`${path} holds keys: make it readable by its owner only (chmod 600)`);
    text = readTextBounded(path);
  } catch (err) {
    if (err instanceof ManualSaError) throw err;
    throw new ManualSaError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    // The YAML parser is loaded only by a daemon given a manual SA file.
    doc = (createRequire(import.meta.url)('yaml') as typeof Yaml).parse(text);
  } catch (err) {
    throw new ManualSaError(`${path}: not YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const r = fileSchema.safeParse(doc);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new ManualSaError(`${path}: ${issue?.path.join('.') || 'file'}: ${issue?.message}`);
  }
  const spis = new Set<number>();
  for (const sa of r.data.sas) {
    if (spis.has(sa.inbound.spi)) throw new ManualSaError(`${path}: inbound SPI ${sa.inbound.spi} is used twice`);
    spis.add(sa.inbound.spi);
  }
  return r.data.sas;
}

function selector(p: string): TrafficSelector {
  const { address, prefixLength, family } = parsePrefix(p.includes('/') ? p : `${p}/${isIPv4(p) ? 32 : 128}`);
  const start = Buffer.alloc(family === 4 ? 4 : 16);
  writeIp(address, start);
  const end = Buffer.from(start);
  for (let bit = prefixLength; bit < start.length * 8; bit++) {
    start[bit >> 3] = (start[bit >> 3] as number) & ~(0x80 >> (bit & 7));
    end[bit >> 3] = (end[bit >> 3] as number) | (0x80 >> (bit & 7));
  }
  return { type: family === 4 ? TS_IPV4 : TS_IPV6, ipProtocol: 0, startPort: 0, endPort: 65535, start, end };
}

const INTEGRITY = { sha1: 'sha1-96', sha256: 'sha256-128', sha384: 'sha384-192', sha512: 'sha512-256' } as const;

/** A manual SA as the data plane takes every child SA. */
export function manualSpec(sa: ManualSa): ChildSaSpec {
  const udp = sa.encapsulation === 'esp-udp';
  const direction = (d: ManualSa['inbound']) => ({
    spi: d.spi,
    encrKey: d.key ?? Buffer.alloc(0),
    integKey: d.integrityKey ?? Buffer.alloc(0),
  });
  return {
    protocol: sa.encapsulation === 'ah' ? 'ah' : 'esp',
    mode: sa.mode,
    cipher:
      sa.cipher === undefined
        ? undefined
        : sa.cipher.startsWith('aes-gcm')
          ? 'aes-gcm-16'
          : sa.cipher === 'null'
            ? 'null'
            : 'aes-cbc',
    integrity: sa.integrity && INTEGRITY[sa.integrity],
    esn: sa.esn,
    inbound: direction(sa.inbound),
    outbound: direction(sa.outbound),
    localTs: (sa.localSelectors ?? [sa.local]).map(selector),
    remoteTs: (sa.remoteSelectors ?? [sa.remote]).map(selector),
    local: { address: sa.local, port: udp ? 4500 : 0 },
    remote: { address: sa.remote, port: udp ? 4500 : 0 },
    udpEncapsulation: udp,
  };
}
