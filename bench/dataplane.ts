/**
 * Data plane throughput in the lab, side by side in one run. Paths: the plain veth (ceiling),
 * strongSwan ↔ strongSwan (kernel-libipsec, ESP-in-UDP), wireguard-go ↔ wireguard-go (Debian's
 * userspace WireGuard, ChaCha20-Poly1305), consec → strongSwan (consec's TUN data plane against
 * charon, ESP-in-UDP) and consec ↔ consec in transport mode over raw ESP, transport mode over UDP
 * 4500 and tunnel mode — the IPsec paths each with AES-GCM-256 and AES-CBC-256 + HMAC-SHA-256.
 *
 * Per path: iperf3 TCP with 1 and 4 streams and UDP with 1392-octet IP packets (the largest every
 * path's inner MTU carries unfragmented: consec's TUN is 1392), each `--reps` times for `--seconds`,
 * the median reported; CPU seconds per GB on each side (the IPsec processes in that host's
 * namespace: charon, wireguard-go or consec, iperf3 not counted) and for the whole machine (all
 * cores busy, softirq included), over the TCP one-stream runs.
 *
 *   node --import tsx bench/dataplane.ts [--seconds 3] [--reps 3] [--only REGEX] [--json]
 *   CONSEC_BENCH_PROFILE=DIR …   the consec daemons write CPU profiles into DIR
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecArgv, consecDaemon } from '../test/helpers.ts';
import { freshStateDir } from '../test/pwsh-helpers.ts';
import { consecPolicy, removeFilters } from './lib/consec.ts';
import { emit, numberArg, stringArg } from './lib/cli.ts';
import { machineTicks, namespaceTicks as cpuTicks, TICK } from './lib/cpu.ts';
import { median } from './lib/stats.ts';

const seconds = numberArg('seconds', 3);
const reps = numberArg('reps', 3);
const only = new RegExp(stringArg('only', '.'));
const PSK = 'bench-dataplane-psk-0123456789';
/** UDP payload for 1392-octet IPv4 packets. */
const UDP_PAYLOAD = 1392 - 28;

const lab = await Lab.create(hostToHost());
const a = lab.address('alice');
const b = lab.address('bob');

type Suite = 'AES-GCM-256' | 'AES-CBC-256 + SHA-256' | 'ChaCha20-Poly1305' | '-';
interface Running {
  /** Where iperf3 connects (bob's address, or the tunnel's inner address). */
  target: string;
  stop(): Promise<void>;
  /** What to show when a run fails (the daemons' last log lines). */
  diagnose?(): string;
}
interface Path {
  name: string;
  suite: Suite;
  start(): Promise<Running>;
}

const namespaceTicks = (host: string) => cpuTicks(lab, host, ['iperf3']);

interface Run {
  gbps: number;
  bytes: number;
  pps?: number;
}

async function iperf(target: string, extra: string[]): Promise<Run> {
  const server = lab.spawn('bob', ['iperf3', '-s', '-1', '-B', target]);
  await new Promise((r) => setTimeout(r, 250));
  try {
    // iperf3's own deadline (-t plus slack), so a stalled path ends as a failed run, not a hung bench.
    const { stdout } = await lab.exec(
      'alice',
      ['timeout', String(seconds + 10), 'iperf3', '-c', target, '-t', String(seconds), '-J', ...extra],
      { timeoutMs: (seconds + 20) * 1000, allowFailure: true },
    );
    process.stderr.write('.');
    if (!stdout.trim()) throw new Error(`iperf3 ${extra.join(' ')}: no result within ${seconds + 10} s`);
    type Sum = { bits_per_second: number; bytes: number; packets?: number; lost_packets?: number; seconds: number };
    const j = JSON.parse(stdout) as { error?: string; end: { sum_received?: Sum } };
    if (j.error) throw new Error(`iperf3 ${extra.join(' ')}: ${j.error}`);
    const sum = j.end.sum_received;
    if (!sum) throw new Error(`iperf3 ${extra.join(' ')}: no receiver summary`);
    if (!extra.includes('-u')) return { gbps: sum.bits_per_second / 1e9, bytes: sum.bytes };
    // UDP: what arrived, per second of the receiver's window.
    const received = (sum.packets ?? 0) - (sum.lost_packets ?? 0);
    return { gbps: sum.bits_per_second / 1e9, bytes: sum.bytes, pps: received / sum.seconds };
  } finally {
    await server.stop('SIGTERM', 2000);
  }
}

/** wireguard-go on both hosts (foreground, so the lab owns the processes): tunnel addresses 198.51.100.1/.2. */
async function wireguardGo(): Promise<Running> {
  const env = { ...process.env, WG_PROCESS_FOREGROUND: '1', WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1' };
  const dir = freshStateDir('consec-bench-wg-');
  const keys: Record<string, { priv: string; pub: string }> = {};
  for (const h of ['alice', 'bob']) {
    const priv = (await lab.exec(h, ['wg', 'genkey'])).stdout.trim();
    const pub = (await lab.exec(h, ['sh', '-c', `echo ${priv} | wg pubkey`])).stdout.trim();
    writeFileSync(join(dir, `${h}.key`), `${priv}\n`, { mode: 0o600 });
    keys[h] = { priv, pub };
  }
  // Distinct interface names: wireguard-go's control sockets live in /var/run/wireguard/<name>.sock,
  // one directory for all namespaces.
  const ifname = (h: string) => `wgb-${h}`;
  const procs = ['alice', 'bob'].map((h) => lab.spawn(h, ['wireguard-go', '-f', ifname(h)], { env }));
  const hosts: [string, string, string, string, string][] = [
    ['alice', 'bob', '198.51.100.1', '198.51.100.2', b],
    ['bob', 'alice', '198.51.100.2', '198.51.100.1', a],
  ];
  for (const [h, peer, mine, theirs, endpoint] of hosts) {
    for (let i = 0; i < 50; i++) {
      if ((await lab.exec(h, ['ip', 'link', 'show', ifname(h)], { allowFailure: true })).code === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await lab.exec(h, [
      'wg',
      'set',
      ifname(h),
      'private-key',
      join(dir, `${h}.key`),
      'listen-port',
      '51820',
      'peer',
      (keys[peer] as { pub: string }).pub,
      'allowed-ips',
      `${theirs}/32`,
      'endpoint',
      `${endpoint}:51820`,
    ]);
    await lab.exec(h, ['ip', 'address', 'add', `${mine}/32`, 'peer', `${theirs}/32`, 'dev', ifname(h)]);
    await lab.exec(h, ['ip', 'link', 'set', ifname(h), 'mtu', '1420', 'up']);
  }
  await lab.exec('alice', ['ping', '-c', '2', '-W', '3', '198.51.100.2'], { allowFailure: true });
  return {
    target: '198.51.100.2',
    stop: async () => {
      for (const p of procs) await p.stop('SIGTERM', 3000);
    },
  };
}

const CONSEC_QM: Record<string, string> = {
  'AES-GCM-256': '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
  'AES-CBC-256 + SHA-256': '-Encapsulation ESP -Encryption AES256 -ESPHash SHA256',
};
const SWAN_ESP: Record<string, string> = { 'AES-GCM-256': 'aes256gcm16', 'AES-CBC-256 + SHA-256': 'aes256-sha256' };

const policy = (local: string, remote: string, suite: Suite, tunnel: boolean) =>
  consecPolicy({ local, remote, psk: PSK, qm: CONSEC_QM[suite] as string, tunnel });

const swan = (host: string, suite: Suite) => {
  const [l, r] = host === 'alice' ? [a, b] : [b, a];
  return Charon.start(
    lab,
    host,
    pskHostTunnel(l, r, { name: 'c', secret: PSK, logLevel: 0, esp: [SWAN_ESP[suite] as string] }),
  );
};

/** A consec daemon in `host` with the bench policy toward the other host, ready. */
async function consecUp(host: 'alice' | 'bob', suite: Suite, tunnel: boolean, extra: string[] = []) {
  const [local, remote] = host === 'alice' ? [a, b] : [b, a];
  const state = await policy(local, remote, suite, tunnel);
  // CONSEC_BENCH_PROFILE=DIR: each daemon writes a CPU profile there when it stops.
  const dir = process.env.CONSEC_BENCH_PROFILE;
  const d = dir
    ? lab.spawn(host, [
        process.execPath,
        '--cpu-prof',
        `--cpu-prof-dir=${dir}`,
        ...consecArgv(['daemon', '--listen', local, '--dpd', '0', ...extra], state).slice(1),
      ])
    : consecDaemon(lab, host, state, local, extra);
  await d.waitFor(/"msg":"ready"/);
  return d;
}

/** The first packets: the SA is negotiated before a measurement starts. */
const warmUp = () => lab.exec('alice', ['ping', '-c', '2', '-W', '3', b], { allowFailure: true });

async function consecPair(suite: Suite, tunnel: boolean, extra: string[]): Promise<Running> {
  const dB = await consecUp('bob', suite, tunnel, extra);
  const dA = await consecUp('alice', suite, tunnel, extra);
  await warmUp();
  return {
    target: b,
    stop: async () => {
      await dA.stop('SIGTERM', 5000);
      await dB.stop('SIGTERM', 5000);
      await removeFilters(lab, 'alice', 'bob');
    },
    diagnose: () => [dA, dB].map((d) => d.output().slice(-1500)).join('\n---\n'),
  };
}

const IPSEC_SUITES: Suite[] = ['AES-GCM-256', 'AES-CBC-256 + SHA-256'];
const PATHS: Path[] = [
  { name: 'plain veth (no IPsec)', suite: '-', start: async () => ({ target: b, stop: async () => {} }) },
  ...IPSEC_SUITES.map((suite): Path => ({
    name: 'strongSwan ↔ strongSwan (kernel-libipsec, ESP-in-UDP)',
    suite,
    start: async () => {
      const [sa, sb] = [await swan('alice', suite), await swan('bob', suite)];
      await sa.initiate('c');
      return { target: b, stop: async () => void (await Promise.all([sa.stop(), sb.stop()])) };
    },
  })),
  { name: 'wireguard-go ↔ wireguard-go (userspace WireGuard)', suite: 'ChaCha20-Poly1305', start: wireguardGo },
  ...IPSEC_SUITES.flatMap((suite): Path[] => [
    {
      name: 'consec → strongSwan (TUN data plane, ESP-in-UDP)',
      suite,
      start: async () => {
        const sb = await swan('bob', suite);
        const dA = await consecUp('alice', suite, true);
        await warmUp();
        return {
          target: b,
          stop: async () => {
            await dA.stop('SIGTERM', 5000);
            await sb.stop();
            await removeFilters(lab, 'alice');
          },
          diagnose: () => `${dA.output().slice(-1500)}\n---\n${sb.log().slice(-1500)}`,
        };
      },
    },
    { name: 'consec ↔ consec (transport, raw ESP)', suite, start: () => consecPair(suite, false, []) },
    ...(suite === 'AES-GCM-256'
      ? [
          {
            name: 'consec ↔ consec (transport, raw ESP, no TUN offloads)',
            suite,
            start: () => consecPair(suite, false, ['--no-offload']),
          },
        ]
      : []),
    { name: 'consec ↔ consec (transport, ESP-in-UDP 4500)', suite, start: () => consecPair(suite, false, ['--encap']) },
    { name: 'consec ↔ consec (tunnel, raw ESP)', suite, start: () => consecPair(suite, true, []) },
  ]),
];

interface Result {
  path: Path;
  tcp1: Run[];
  tcp4: Run[];
  udp: Run[];
  /** CPU seconds during the TCP one-stream runs: alice's and bob's IPsec processes, the machine. */
  cpu: { alice: number; bob: number; machine: number };
  /** Runs that failed (a stalled or refused iperf3), reported beside the table. */
  errors: string[];
}

async function measure(path: Path): Promise<Result> {
  process.stderr.write(`\n${path.name} [${path.suite}] `);
  const running = await path.start();
  try {
    const before = { alice: await namespaceTicks('alice'), bob: await namespaceTicks('bob'), machine: machineTicks() };
    const errors: string[] = [];
    const series = async (extra: string[]): Promise<Run[]> => {
      const runs: Run[] = [];
      for (let i = 0; i < reps; i++) {
        try {
          runs.push(await iperf(running.target, extra));
        } catch (err) {
          errors.push((err as Error).message);
          process.stderr.write(`\n  ${(err as Error).message}\n${running.diagnose?.() ?? ''}\n`);
        }
      }
      return runs;
    };
    const tcp1 = await series([]);
    const cpu = {
      alice: ((await namespaceTicks('alice')) - before.alice) / TICK,
      bob: ((await namespaceTicks('bob')) - before.bob) / TICK,
      machine: (machineTicks() - before.machine) / TICK,
    };
    const tcp4 = await series(['-P', '4']);
    const udp = await series(['-u', '-b', '0', '-l', String(UDP_PAYLOAD)]);
    return { path, tcp1, tcp4, udp, cpu, errors };
  } finally {
    await running.stop();
  }
}

const results: Result[] = [];
try {
  for (const path of PATHS) {
    if (!only.test(`${path.name} ${path.suite}`)) continue;
    if (path.suite === 'ChaCha20-Poly1305') {
      const have = await lab.exec('alice', ['sh', '-c', 'command -v wireguard-go && command -v wg'], {
        allowFailure: true,
      });
      if (have.code !== 0) continue;
    }
    results.push(await measure(path));
  }
  process.stderr.write('\n');
} finally {
  await lab.destroy();
}

const gbps = (runs: Run[]) => median(runs.map((r) => r.gbps));
/** A median, or 'failed' when no run of the series succeeded. */
const shown = (x: number, digits: number): number | string =>
  Number.isFinite(x) ? Math.round(x * 10 ** digits) / 10 ** digits : 'failed';
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const failures = results.flatMap((r) => r.errors.map((e) => `${r.path.name} [${r.path.suite}]: ${e}`));
const r2 = (x: number) => Math.round(x * 100) / 100;
const wgRate = results.find((r) => r.path.suite === 'ChaCha20-Poly1305');
const swanRate = (suite: Suite) =>
  results.find((r) => r.path.name.startsWith('strongSwan ↔') && r.path.suite === suite);
const perGb = (cpuS: number, runs: Run[]) => {
  const gb = runs.reduce((n, r) => n + r.bytes, 0) / 1e9;
  return gb > 0 ? r2(cpuS / gb) : '-';
};
const rows = results.map((r) => {
  const g = gbps(r.tcp1);
  const swanOf = swanRate(r.path.suite);
  const ipsec = r.path.suite !== '-';
  return [
    r.path.name,
    r.path.suite,
    shown(g, 3),
    shown(gbps(r.tcp4), 3),
    shown(median(r.udp.map((u) => u.pps ?? 0)), 0),
    swanOf ? shown(g / gbps(swanOf.tcp1), 2) : '-',
    wgRate ? shown(g / gbps(wgRate.tcp1), 2) : '-',
    ipsec ? perGb(r.cpu.alice, r.tcp1) : '-',
    ipsec ? perGb(r.cpu.bob, r.tcp1) : '-',
    perGb(r.cpu.machine, r.tcp1),
  ];
});
emit({
  id: 'throughput',
  title: 'Throughput: iperf3 through each path',
  method:
    `iperf3 through the lab's veth pair (2 cores shared by both ends and iperf3), all paths in the same run: TCP with 1 and 4 streams and UDP with 1392-octet IP packets at full speed (received packets/s), each ${reps} × ${seconds} s, medians. ` +
    '÷ strongSwan compares TCP one stream with strongSwan ↔ strongSwan on the same suite; ÷ wireguard-go with wireguard-go (ChaCha20-Poly1305). ' +
    'CPU s/GB: CPU seconds (user + system) of the IPsec processes in each host (charon, wireguard-go, consec; not iperf3) and of the whole machine (every busy core, softirq included) per GB received, over the TCP one-stream runs.',
  columns: [
    'path',
    'suite',
    'TCP ×1 Gbit/s',
    'TCP ×4 Gbit/s',
    'UDP packets/s',
    '÷ strongSwan',
    '÷ wireguard-go',
    'CPU s/GB alice',
    'CPU s/GB bob',
    'CPU s/GB machine',
  ],
  rows,
  chart: { column: 2, unit: 'Gbit/s', skipRows: results[0]?.path.suite === '-' ? [0] : [], label: [0, 1] },
  notes: [
    'Target: consec ↔ consec ≥ 2× strongSwan (kernel-libipsec) and ≥ wireguard-go; stretch ≥ 1 Gbit/s.',
    'The chart (TCP one stream) leaves out the plain veth ceiling, which would flatten the other bars.',
    'kernel-libipsec is strongSwan’s userspace ESP (this kernel has no ESP module), the fair peer for a userspace data plane; it does tunnel mode only, so strongSwan rows are tunnel mode.',
    ...failures.map((f) => `Failed run: ${f}`),
  ],
  raw: results.map((r) => ({
    path: r.path.name,
    suite: r.path.suite,
    seconds,
    tcp1Gbps: r.tcp1.map((x) => r3(x.gbps)),
    tcp4Gbps: r.tcp4.map((x) => r3(x.gbps)),
    udpPps: r.udp.map((x) => Math.round(x.pps ?? 0)),
    cpuSeconds: r.cpu,
    tcp1Bytes: r.tcp1.reduce((n, x) => n + x.bytes, 0),
  })),
});
