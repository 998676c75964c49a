/**
 * Policy compiler benchmark: compile time and classification lookups per second at 100 to 100k
 * rules. Rules are a realistic mix: host-to-host requires, subnet requires, port-specific requests
 * and authentication exemptions over TEST-NET-style address space.
 *
 *   node --import tsx bench/policy.ts [--sizes 100,1000,10000,100000] [--seconds 2] [--json]
 */
import { performance } from 'node:perf_hooks';
import { compilePolicy } from '../src/filter/compile.ts';
import { emptyDocument, type IPsecRule, ipsecRule } from '../src/policy/model.ts';
import { emit, numberArg, stringArg } from './lib/cli.ts';

const sizes = stringArg('sizes', '100,1000,10000,100000').split(',').map(Number);
const seconds = numberArg('seconds', 2);

// Deterministic pseudo-random numbers (xorshift32), so runs are comparable.
let seed = 0x9e3779b9;
const rnd = (n: number): number => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) % n;
};
const addr = (): string => `10.${rnd(64)}.${rnd(256)}.${rnd(256)}`;

function rules(n: number): IPsecRule[] {
  const out: IPsecRule[] = [];
  for (let i = 0; i < n; i++) {
    const kind = rnd(10);
    const base = { DisplayName: `rule ${i}`, Name: `r${i}` };
    if (kind < 5)
      out.push(
        ipsecRule({
          ...base,
          LocalAddress: [addr()],
          RemoteAddress: [addr()],
          InboundSecurity: 'Require',
          OutboundSecurity: 'Require',
        }),
      );
    else if (kind < 7)
      out.push(
        ipsecRule({
          ...base,
          RemoteAddress: [`10.${rnd(64)}.${rnd(256)}.0/24`],
          InboundSecurity: 'Require',
          OutboundSecurity: 'Require',
        }),
      );
    else if (kind < 9)
      out.push(
        ipsecRule({
          ...base,
          RemoteAddress: [addr()],
          Protocol: 'TCP',
          RemotePort: [String(1 + rnd(1024))],
          InboundSecurity: 'Request',
          OutboundSecurity: 'Request',
        }),
      );
    else
      out.push(
        ipsecRule({ ...base, RemoteAddress: [`10.${rnd(64)}.${rnd(256)}.0/28`], Protocol: 'UDP', RemotePort: ['53'] }),
      );
  }
  return out;
}

interface Row {
  rules: number;
  filters: number;
  compileMs: number;
  lookupsPerSec: number;
  nsPerLookup: number;
  heapMB: number;
}

const results: Row[] = [];
for (const n of sizes) {
  const doc = emptyDocument();
  doc.rules = rules(n);
  global.gc?.();
  const heap0 = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  const policy = compilePolicy(doc);
  const compileMs = performance.now() - t0;
  const heapMB = (process.memoryUsage().heapUsed - heap0) / 2 ** 20;
  // Flows: half towards addresses that rules name, half random.
  const flows = new Uint32Array(4096 * 4);
  for (let i = 0; i < 4096; i++) {
    const r = doc.rules[rnd(doc.rules.length)] as IPsecRule;
    const remote = i % 2 === 0 && !r.RemoteAddress[0]?.includes('/') ? (r.RemoteAddress[0] as string) : addr();
    const p = remote.split('.').map(Number) as [number, number, number, number];
    flows[i * 4] = ((10 << 24) >>> 0) + (rnd(64) << 16) + (rnd(256) << 8) + rnd(256);
    flows[i * 4 + 1] = ((p[0] << 24) >>> 0) + (p[1] << 16) + (p[2] << 8) + p[3];
    flows[i * 4 + 2] = rnd(2) === 0 ? 6 : 17;
    flows[i * 4 + 3] = 1 + rnd(1024);
  }
  let count = 0;
  let sink = 0;
  const end = performance.now() + seconds * 1000;
  const t1 = performance.now();
  while (performance.now() < end) {
    for (let i = 0; i < 4096; i++) {
      const f = policy.classifyV4Filter(
        flows[i * 4] as number,
        flows[i * 4 + 1] as number,
        flows[i * 4 + 2] as number,
        50000,
        flows[i * 4 + 3] as number,
      );
      sink += f ? f.rank : -1;
    }
    count += 4096;
  }
  const elapsed = (performance.now() - t1) / 1000;
  if (sink === 0.5) console.log(sink);
  results.push({
    rules: n,
    filters: policy.filters.length,
    compileMs: Math.round(compileMs * 10) / 10,
    lookupsPerSec: Math.round(count / elapsed),
    nsPerLookup: Math.round((elapsed / count) * 1e9),
    heapMB: Math.round(heapMB * 10) / 10,
  });
}

emit({
  id: 'policy',
  title: 'Policy: compile time and lookups per second',
  method: `A realistic rule mix (host and subnet Require rules, port-specific Request rules, authentication exemptions) compiled, then 4096 IPv4 flows classified in a loop for ${seconds} s per size on one core (node ${process.version}).`,
  columns: ['rules', 'filters', 'compile ms', 'lookups/s', 'ns/lookup', 'heap MB'],
  rows: results.map((r) => [r.rules, r.filters, r.compileMs, r.lookupsPerSec, r.nsPerLookup, r.heapMB]),
  notes: ['Target: ≥ 1 M lookups/s at 10k rules.'],
});
