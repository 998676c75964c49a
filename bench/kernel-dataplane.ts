/**
 * The kernel data plane where it runs: inside User-Mode Linux guests (this host's kernel has no
 * ESP). One TCP stream (iperf3) between two guests, same guest pair, same run: without IPsec;
 * strongSwan ↔ strongSwan (both on their kernel's ESP); consec (kernel data plane) ↔ strongSwan;
 * consec ↔ consec (both on the kernel). AES-GCM-256, transport mode, raw ESP. Also consec's start-up
 * to ready and its idle memory inside the guest. UML runs the kernel's generic C AES in a process:
 * the figures compare the IKE daemons on one kernel, they say nothing about real hardware.
 *
 *   node --import tsx bench/kernel-dataplane.ts [--seconds 5] [--reps 3] [--json]
 */
import { Lab } from '../src/lab/lab.ts';
import { charonHostToHost, GuestCharon, GuestConsec } from '../src/lab/guest-peers.ts';
import type { CharonConfig } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { Guest } from '../src/lab/uml.ts';
import { applyPolicy, DATAPLANE_PSK as PSK, ROOT } from '../test/helpers.ts';
import { freshStateDir } from '../test/pwsh-helpers.ts';
import { emit, numberArg } from './lib/cli.ts';
import { median, round } from './lib/stats.ts';

const seconds = numberArg('seconds', 5);
const reps = numberArg('reps', 3);

const swan = (local: string, remote: string): CharonConfig =>
  charonHostToHost(local, remote, { psk: PSK, logLevel: 0 });

const lab = await Lab.create(hostToHost());
const a = lab.address('alice');
const b = lab.address('bob');
let alice: Guest | undefined;
let bob: Guest | undefined;

/** Median Mbit/s of `reps` iperf3 runs alice → bob (the first packet's IKE is done before). */
async function stream(from: Guest, to: Guest): Promise<number> {
  const out: number[] = [];
  for (let i = 0; i < reps; i++) {
    await to.sh('iperf3 -s -1 -D -p 5201 && sleep 0.3');
    const r = await from.exec(['iperf3', '-c', b, '-p', '5201', '-t', String(seconds), '-J'], {
      timeoutMs: (seconds + 30) * 1000,
    });
    const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
    out.push(j.end.sum_received.bits_per_second / 1e6);
    process.stderr.write('.');
  }
  return median(out);
}

async function waitPing(from: Guest): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline)
    if ((await from.exec(['ping', '-c', '1', '-W', '1', b], { allowFailure: true })).code === 0) return;
  throw new Error('no SA came up');
}

async function consecIn(guest: Guest, local: string, remote: string): Promise<{ c: GuestConsec; readyMs: number }> {
  const dir = freshStateDir('consec-bench-kd-');
  await applyPolicy(dir, { local, remote, mm: true });
  const t0 = performance.now();
  const c = await GuestConsec.start(guest, { root: ROOT, node: process.execPath, stateDir: dir, args: ['--dpd', '0'] });
  await c.waitFor(/"dataplane":"kernel"[^\n]*"msg":"ready"/, 180_000);
  return { c, readyMs: performance.now() - t0 };
}

const rssMiB = async (guest: Guest): Promise<number> =>
  Number((await guest.sh('grep VmRSS /proc/$(cat /run/consec.pid)/status | tr -s " " | cut -d" " -f2')).stdout.trim()) /
  1024;

try {
  [alice, bob] = await Promise.all([
    Guest.boot(lab, 'alice', { kind: 'strongswan' }),
    Guest.boot(lab, 'bob', { kind: 'strongswan' }),
  ]);
  const rows: (string | number)[][] = [];
  rows.push(['no IPsec', round(await stream(alice, bob)), '—', '—']);

  {
    const s1 = await GuestCharon.start(alice, swan(a, b));
    const s2 = await GuestCharon.start(bob, swan(b, a));
    try {
      await s1.initiate('c');
      await waitPing(alice);
      rows.push(['strongSwan ↔ strongSwan (both kernel ESP)', round(await stream(alice, bob)), '—', '—']);
    } finally {
      await s1.stop();
      await s2.stop();
    }
  }
  {
    const s2 = await GuestCharon.start(bob, swan(b, a));
    const { c, readyMs } = await consecIn(alice, a, b);
    try {
      await waitPing(alice);
      const mbit = await stream(alice, bob);
      rows.push([
        'consec (kernel data plane) ↔ strongSwan',
        round(mbit),
        round(readyMs),
        round(await rssMiB(alice), 1),
      ]);
    } finally {
      await c.signal('TERM');
      await s2.stop();
      await alice.sh('ip xfrm policy flush; ip xfrm state flush');
    }
  }
  {
    const here = await consecIn(alice, a, b);
    const there = await consecIn(bob, b, a);
    try {
      await waitPing(alice);
      rows.push([
        'consec ↔ consec (both kernel data plane)',
        round(await stream(alice, bob)),
        round(here.readyMs),
        round(await rssMiB(alice), 1),
      ]);
    } finally {
      await here.c.signal('TERM');
      await there.c.signal('TERM');
    }
  }
  process.stderr.write('\n');
  emit({
    id: 'kernel-dataplane',
    title: 'Kernel data plane (in UML guests): throughput beside strongSwan, start-up, memory',
    method: `Two User-Mode Linux guests (Debian's linux.uml ${'6.1'}, ESP in the guest kernel, generic C AES), one TCP stream alice → bob with iperf3, ${seconds} s, median of ${reps}; AES-GCM-256, transport mode, raw ESP, IKEv2 PSK. consec runs in the guest with this machine's Node over hostfs, from source (tsx), \`--dataplane auto\` (it chose the kernel). Start-up: from launching the daemon in the guest to its "ready" line (includes Node and tsx starting under UML). RSS: VmRSS in the guest after the transfer. Same guests, same run for every row; UML's speed says nothing about real hardware — compare the rows.`,
    columns: ['pair', 'TCP ×1 Mbit/s', 'consec start-up to ready ms', 'consec RSS MiB'],
    rows,
    chart: { column: 1, unit: 'Mbit/s' },
  });
} finally {
  await alice?.stop();
  await bob?.stop();
  await lab.destroy();
}
