/**
 * The crypto ceiling under the data plane, one core, 1400-octet packets: OpenSSL's own AES-256-GCM
 * (`openssl speed -evp`), node:crypto with one cipher object per packet (what TypeScript ESP pays),
 * the addon's batched AES-GCM (one EVP context per SA, 64 packets per call), and the whole
 * TypeScript ESP seal for comparison — so the data plane's distance to the limit is visible.
 *
 *   node --import tsx bench/crypto.ts [--seconds 2] [--json]
 */
import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { EspOutbound } from '../src/esp/esp.ts';
import { EspCbcBatch, EspGcmBatch, PacketBatch } from '../src/io/native.ts';
import { emit, numberArg } from './lib/cli.ts';

const seconds = numberArg('seconds', 2);
const SIZE = 1400;
const payload = randomBytes(SIZE);

function timed(fn: () => number): number {
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) n += fn();
  return n / ((performance.now() - t0) / 1000);
}

const rows: (string | number)[][] = [];
const row = (name: string, pps: number) =>
  rows.push([name, Math.round(pps), Math.round(((pps * SIZE * 8) / 1e9) * 100) / 100]);

// OpenSSL's own figure (bytes per second, machine-readable output).
try {
  const out = execFileSync(
    'openssl',
    [
      'speed',
      '-mr',
      '-evp',
      'aes-256-gcm',
      '-bytes',
      String(SIZE),
      '-seconds',
      String(Math.max(1, Math.round(seconds))),
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const bytes = Number(/^\+F:\d+:[^:]+:([\d.]+)/m.exec(out)?.[1]);
  if (bytes > 0) row('openssl speed -evp aes-256-gcm (OpenSSL alone)', bytes / SIZE);
} catch {
  // no openssl binary: the row is missing
}

const key = randomBytes(32);
const iv = randomBytes(12);
row(
  'node:crypto, a cipher object per packet',
  timed(() => {
    for (let i = 0; i < 64; i++) {
      const c = createCipheriv('aes-256-gcm', key, iv);
      c.update(payload);
      c.final();
      c.getAuthTag();
    }
    return 64;
  }),
);

const src = new PacketBatch(64, 2048);
const dst = new PacketBatch(64, 2048);
const nh = new Uint8Array(64).fill(4);
for (let i = 0; i < 64; i++) src.set(i, payload);
let seq = 1;
for (const [what, sealer] of [
  ['AES-GCM', new EspGcmBatch(key, iv.subarray(0, 4), { esn: false, direction: 'seal' })],
  [
    'AES-CBC-256 + HMAC-SHA-256',
    new EspCbcBatch(randomBytes(32), randomBytes(32), { digest: 'sha256', icv: 16, esn: false, direction: 'seal' }),
  ],
] as const) {
  row(
    `addon, batched ${what} ESP seal (64 per call)`,
    timed(() => {
      sealer.seal(src.buf, src.offsets, src.lengths, nh, 64, dst, 0, 0x1234, seq);
      seq += 64;
      return 64;
    }),
  );
  sealer.close();
}

const ts = new EspOutbound({ spi: 1, cipher: 'aes-gcm-16', encrKey: randomBytes(36), esn: true });
row(
  'TypeScript ESP seal, AES-GCM-256',
  timed(() => {
    for (let i = 0; i < 64; i++) ts.seal(payload, 4);
    return 64;
  }),
);
const cbc = new EspOutbound({
  spi: 1,
  cipher: 'aes-cbc',
  encrKey: randomBytes(32),
  integ: 'sha256-128',
  integKey: randomBytes(32),
  esn: true,
});
row(
  'TypeScript ESP seal, AES-CBC-256 + HMAC-SHA-256',
  timed(() => {
    for (let i = 0; i < 64; i++) cbc.seal(payload, 4);
    return 64;
  }),
);

emit({
  id: 'crypto-ceiling',
  title: 'Crypto ceiling: ESP sealing with AES-256, 1400-octet packets, one core',
  method: `Packets sealed per second on one core for ${seconds} s each (${SIZE}-octet payloads): OpenSSL's own \`openssl speed -evp aes-256-gcm\`, node:crypto with a new cipher object per packet, the addon's batched sealers (AES-GCM; AES-CBC + HMAC-SHA-256), and consec's TypeScript ESP.`,
  columns: ['what', 'packets/s', 'Gbit/s'],
  rows,
  chart: { column: 1, unit: 'packets/s' },
});
