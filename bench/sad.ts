/**
 * The data plane's outbound SA lookup (which SA protects this packet) with N child SAs installed,
 * one per peer host (the SAD of a server with N clients): lookups per second on one core for
 * packets spread over all the peers.
 *
 *   node --import tsx bench/sad.ts [--sizes 100,1000,10000] [--seconds 1] [--json]
 */
import { parseIp } from '../src/dataplane/ip.ts';
import { Sad } from '../src/dataplane/sad.ts';
import type { TrafficSelector } from '../src/ike/wire/codec.ts';
import { gcmChildSa } from '../test/helpers.ts';
import { emit, numberArg, stringArg } from './lib/cli.ts';

const sizes = stringArg('sizes', '100,1000,10000').split(',').map(Number);
const seconds = numberArg('seconds', 1);
const US = Buffer.from([192, 0, 2, 1]);
const peer = (n: number) => Buffer.from([198, 51, (n >> 8) & 255, n & 255]);
const host = (b: Buffer): TrafficSelector => ({
  type: 7,
  ipProtocol: 0,
  startPort: 0,
  endPort: 65535,
  start: b,
  end: b,
});

const child = (i: number) => gcmChildSa(0x1000 + i, [host(US)], [host(peer(i))]);

const rows: (string | number)[][] = [];
for (const n of sizes) {
  const sad = new Sad();
  for (let i = 0; i < n; i++) sad.install(child(i));
  const packets = Array.from({ length: 1024 }, (_, k) => {
    const p = Buffer.alloc(28);
    p[0] = 0x45;
    p.writeUInt16BE(28, 2);
    p[9] = 17;
    US.copy(p, 12);
    peer((k * 7919) % n).copy(p, 16);
    return p;
  });
  let lookups = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000)
    for (const p of packets) {
      const ip = parseIp(p);
      if (!ip || !sad.outboundFor(p, ip)) throw new Error('a packet without its SA');
      lookups++;
    }
  const perS = lookups / ((performance.now() - t0) / 1000);
  rows.push([n, Math.round(perS), Math.round(1e9 / perS)]);
}

emit({
  id: 'sad',
  title: 'Data plane: outbound SA lookup with N peers',
  method: `N child SAs installed in the data plane's SAD, one per peer host; packets to all of them classified (parse + lookup) for ${seconds} s per size on one core. The lookup is indexed by the remote host (ranges are searched apart, newest first), so its cost does not grow with N.`,
  columns: ['SAs', 'lookups/s', 'ns/lookup'],
  rows,
  chart: { column: 1, unit: 'lookups/s' },
});
