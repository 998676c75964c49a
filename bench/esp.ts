/**
 * ESP seal/open throughput on one core, 1400-octet payloads (the data plane's per-packet crypto
 * cost, next to node:crypto's fixed per-call cost noted in shared/notes):
 *
 *   node --import tsx bench/esp.ts [--seconds 2] [--json]
 */
import { randomBytes } from 'node:crypto';
import { EspInbound, EspOutbound, type EspSaParams } from '../src/esp/esp.ts';
import { emit, numberArg } from './lib/cli.ts';

const seconds = numberArg('seconds', 2);
const suites: [string, Omit<EspSaParams, 'spi'>][] = [
  ['AES-GCM-16-256', { cipher: 'aes-gcm-16', encrKey: randomBytes(36) }],
  ['AES-GCM-16-128', { cipher: 'aes-gcm-16', encrKey: randomBytes(20) }],
  [
    'AES-CBC-256 + HMAC-SHA-256-128',
    { cipher: 'aes-cbc', encrKey: randomBytes(32), integ: 'sha256-128', integKey: randomBytes(32) },
  ],
  [
    'NULL + HMAC-SHA-256-128',
    { cipher: 'null', encrKey: Buffer.alloc(0), integ: 'sha256-128', integKey: randomBytes(32) },
  ],
];
const payload = randomBytes(1400);
const rows: (string | number)[][] = [];
for (const [name, p] of suites) {
  const out = new EspOutbound({ spi: 1, ...p, esn: true });
  const inb = new EspInbound({ spi: 1, ...p, esn: true, replayWindow: 4096 });
  const sealed: Buffer[] = [];
  let t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < seconds * 1000) {
    for (let i = 0; i < 256; i++) {
      const b = out.seal(payload, 4);
      if (sealed.length < 200_000) sealed.push(b);
    }
    n += 256;
  }
  const sealRate = n / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  let m = 0;
  while (m < sealed.length && performance.now() - t0 < seconds * 1000) {
    inb.open(sealed[m] as Buffer);
    m++;
  }
  const openRate = m / ((performance.now() - t0) / 1000);
  rows.push([name, Math.round(sealRate), Math.round(openRate), (sealRate * payload.length * 8) / 1e9]);
}
emit({
  id: 'esp',
  title: 'TypeScript ESP per suite, one core',
  method: `consec's ESP in TypeScript (node:crypto), ${payload.length}-octet payloads, extended sequence numbers, ${seconds} s per figure: packets sealed and opened per second. AES-GCM SAs in the data plane use the addon's batched path instead (see the crypto ceiling).`,
  columns: ['suite', 'seal packets/s', 'open packets/s', 'seal Gbit/s'],
  rows,
  chart: { column: 1, unit: 'packets/s' },
});
