/**
 * Keying under load, side by side: one load generator (bench/lib/ike-loadgen.ts, consec's IKEv2
 * initiator in alice) negotiating IKE SAs with a child SA each, `--concurrency` at a time, against
 * bob's responder — the consec daemon, then charon (strongSwan) — with the same generator, count and
 * proposals: PSK, AES-256/SHA-256 with ECP-256 (DH19) or MODP-2048 (DH14), child AES-GCM-256 in
 * tunnel mode (kernel-libipsec's only mode). Then the same ECP-256 load during a half-open flood:
 * IKE_SA_INIT requests at `--flood-rate` a second that never complete, from the generator's address
 * (another port, so the responder's policy admits them and each one would cost a Diffie-Hellman and
 * a half-open SA), answered with cookies once the responder's half-open threshold is reached (RFC
 * 7296 §2.6) — which then asks the load for a cookie too.
 *
 * Per run: setups/s (wall time of the load), p50/p99 setup latency, responder CPU ms per setup
 * (the responder's processes in bob, so a generator-bound run still compares the responders), and
 * for the flood what the flood got back. A fresh responder for every run.
 *
 * With `--ike 1` the same for IKEv1 (Main Mode + Quick Mode, as a Windows peer keys with a pre-shared
 * key): the consec daemon (its rule's KeyModule Default answers IKEv1) against charon with
 * `version = 1`; no flood row (IKEv1's DoS cookies are MS-IKEE's, which charon does not speak).
 *
 *   node --import tsx bench/ike-load.ts [--ike 2|1] [--count 2000] [--concurrency 16] [--flood-rate 2000] [--cpu-prof DIR] [--json]
 */
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecArgv, consecDaemon } from '../test/helpers.ts';
import { emit, numberArg, stringArg } from './lib/cli.ts';
import { consecPolicy, removeFilters } from './lib/consec.ts';
import { namespaceTicks, TICK } from './lib/cpu.ts';
import { labNodeScript } from './lib/lab-node.ts';
import { median, percentile, round } from './lib/stats.ts';

const count = numberArg('count', 2000);
const concurrency = numberArg('concurrency', 16);
const floodRate = numberArg('flood-rate', 2000);
const ikeVersion = numberArg('ike', 2) === 1 ? 1 : 2;
/** `--cpu-prof DIR`: the consec daemon writes a V8 CPU profile per run into DIR (where its time goes). */
const cpuProfDir = stringArg('cpu-prof', '');
const profiled = (argv: string[]): string[] => [
  argv[0] as string,
  '--cpu-prof',
  `--cpu-prof-dir=${cpuProfDir}`,
  ...argv.slice(1),
];
const PSK = 'bench-ike-load-psk-0123456789';

interface LoadResult {
  setups: number;
  failures: number;
  errors: Record<string, number>;
  seconds: number;
  latencies: number[];
  cookiesAsked: number;
  flood?: { sent: number; answered: number; cookies: number };
}

interface Responder {
  name: string;
  start(): Promise<{ stop(): Promise<void> }>;
}

const lab = await Lab.create(hostToHost());
const a = lab.address('alice');
const b = lab.address('bob');

const RESPONDERS: Responder[] = [
  {
    name: 'consec daemon',
    start: async () => {
      const dir = await consecPolicy({
        local: b,
        remote: a,
        psk: PSK,
        qm: '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
        tunnel: true,
        keyExchanges: ['DH19', 'DH14'],
      });
      // As quiet as charon here (its log off): problems only, no line per SA.
      const d = cpuProfDir
        ? lab.spawn('bob', profiled(consecArgv(['daemon', '--listen', b, '--dpd', '0', '--log-level', 'warn'], dir)))
        : consecDaemon(lab, 'bob', dir, b, ['--log-level', 'warn']);
      await d.waitFor(/"msg":"ready"/);
      return {
        stop: async () => {
          await d.stop('SIGTERM', 10_000);
          await removeFilters(lab, 'bob');
        },
      };
    },
  },
  {
    name: 'charon (strongSwan)',
    start: async () => {
      const config = pskHostTunnel(b, a, {
        name: 'c',
        secret: PSK,
        logLevel: -1,
        proposals: ['aes256-sha256-ecp256', 'aes256-sha256-modp2048'],
      });
      const conn = config.connections.c as (typeof config.connections)[string];
      conn.version = ikeVersion;
      conn.encap = false; // the generator does not float to 4500 against consec either
      conn.unique = 'never'; // many IKE SAs from one identity, as from many hosts
      // All load comes from one address: charon's per-address half-open limits (block_threshold,
      // default 5; cookie_threshold_ip, default 3) would refuse it or ask every setup for a cookie,
      // where consec (which counts half-open SAs globally only) would not; the global cookie
      // threshold stays at its default.
      config.charon = { block_threshold: 100_000, cookie_threshold_ip: 100_000 };
      const c = await Charon.start(lab, 'bob', config);
      return { stop: () => c.stop() };
    },
  },
];

async function load(dh: string, flood: boolean): Promise<LoadResult> {
  const args = [
    '--local',
    a,
    '--remote',
    b,
    '--psk',
    PSK,
    '--dh',
    dh,
    '--count',
    String(count),
    '--concurrency',
    String(concurrency),
    '--mode',
    'tunnel',
    '--ike',
    String(ikeVersion),
    ...(flood ? ['--flood-from', a, '--flood-rate', String(floodRate)] : []),
  ];
  return labNodeScript<LoadResult>(lab, 'alice', 'bench/lib/ike-loadgen.ts', args, 180_000);
}

const RUNS: { label: string; dh: string; flood: boolean }[] = [
  { label: 'ECP-256', dh: '19', flood: false },
  { label: 'MODP-2048', dh: '14', flood: false },
  ...(ikeVersion === 2 ? [{ label: `ECP-256 + half-open flood ${floodRate}/s`, dh: '19', flood: true }] : []),
];

const rows: (string | number)[][] = [];
const raw: unknown[] = [];
try {
  for (const run of RUNS) {
    for (const responder of RESPONDERS) {
      process.stderr.write(`${responder.name}, ${run.label} `);
      const r = await responder.start();
      let result: LoadResult;
      let cpuS: number;
      try {
        const before = await namespaceTicks(lab, 'bob');
        result = await load(run.dh, run.flood);
        cpuS = ((await namespaceTicks(lab, 'bob')) - before) / TICK;
      } finally {
        await r.stop();
      }
      process.stderr.write(`${result.setups} in ${round(result.seconds, 2)} s\n`);
      const f = result.flood;
      rows.push([
        responder.name,
        run.label,
        result.setups,
        result.failures,
        round(result.setups / result.seconds, 0),
        round(median(result.latencies), 1),
        round(percentile(result.latencies, 99), 1),
        result.setups > 0 ? round((cpuS * 1000) / result.setups, 2) : '-',
        f ? `${f.sent} sent, ${f.answered} answered, ${f.cookies} cookies` : '-',
      ]);
      raw.push({ responder: responder.name, run: run.label, cpuSeconds: cpuS, ...result });
    }
  }
} finally {
  await lab.destroy();
}

emit({
  id: ikeVersion === 1 ? 'ikev1-load' : 'ike-load',
  title:
    ikeVersion === 1
      ? 'IKEv1 keying under load (Main Mode + Quick Mode): consec vs charon as responder'
      : 'IKEv2 keying under load: consec vs charon as responder',
  method:
    `One load generator in alice (consec's ${ikeVersion === 1 ? 'IKEv1 initiator: Main Mode + Quick Mode' : 'IKEv2 initiator'}, one process) negotiates ${count} ${ikeVersion === 1 ? 'ISAKMP' : 'IKE'} SAs with one child SA each, ${concurrency} at a time, against a fresh responder in bob: the consec daemon, then charon${ikeVersion === 1 ? ' (version = 1)' : ''} with the same generator. PSK, AES-256/SHA-256 with the key exchange shown, child AES-GCM-256 in tunnel mode. ` +
    (ikeVersion === 2
      ? `The flood row adds IKE_SA_INIT requests at ${floodRate}/s that never complete, from the generator's address (another port), for as long as the load runs; cookies asked of the load are in results.json. `
      : '') +
    'Both responders log problems only (charon’s log off, consec --log-level warn). setups/s is the load’s wall time; responder CPU is user + system time of the responder’s processes per established SA (2 cores shared by generator and responder), the figure that compares the responders when the one generator bounds the rate.',
  columns: [
    'responder',
    'key exchange',
    'setups',
    'failed',
    'setups/s',
    'p50 ms',
    'p99 ms',
    'responder CPU ms/setup',
    'half-open flood',
  ],
  rows,
  chart: { column: 4, unit: 'setups/s', label: [0, 1] },
  notes: [
    'Target: SA setups/s ≥ charon’s.',
    'charon runs with block_threshold and cookie_threshold_ip raised (its per-address half-open limits, default 5 and 3): all the load comes from one address, where in the field it comes from many; its global cookie_threshold stays at its default (30). consec’s cookie threshold is 64 half-open SAs, global.',
    ...(ikeVersion === 1
      ? [
          'libreswan’s pluto is not in this table: this lab runs it only inside a User-Mode Linux guest, whose emulated kernel would be measured instead of pluto.',
          'All ISAKMP SAs come from one identity: charon checks every new IKEv1 SA against the SAs of that identity for a reauthentication to adopt children from, so its rate falls as they add up (366 setups/s for 300 SAs in a shorter run); peers of a real fleet have identities of their own.',
        ]
      : []),
  ],
  raw,
});
