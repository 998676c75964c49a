/**
 * Data plane throughput in the lab, side by side in one run: iperf3 TCP (one stream) through the
 * plain veth, strongSwan ↔ strongSwan (kernel-libipsec, ESP-in-UDP, AES-GCM-256), wireguard-go ↔
 * wireguard-go (Debian's userspace WireGuard, ChaCha20-Poly1305), consec → strongSwan (consec's
 * TUN data plane, ESP-in-UDP) and consec ↔ consec (transport mode, raw ESP).
 *
 *   node --import tsx bench/dataplane.ts [--seconds 5] [--json]
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecDaemon } from '../test/helpers.ts';
import { freshStateDir, ps } from '../test/pwsh-helpers.ts';
import { emit, numberArg } from './lib/cli.ts';

const seconds = numberArg('seconds', 5);
const PSK = 'bench-dataplane-psk-0123456789';

const lab = await Lab.create(hostToHost());
const a = lab.address('alice');
const b = lab.address('bob');

async function iperf(to = b): Promise<number> {
  const server = lab.spawn('bob', ['iperf3', '-s', '-1', '-B', to]);
  await new Promise((r) => setTimeout(r, 300));
  const { stdout } = await lab.exec('alice', ['iperf3', '-c', to, '-t', String(seconds), '-J'], {
    timeoutMs: (seconds + 20) * 1000,
  });
  await server.exited;
  process.stderr.write('.');
  const j = JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second / 1e9;
}

/** wireguard-go on both hosts (foreground, so the lab owns the processes): tunnel addresses 198.51.100.1/.2. */
async function wireguardGo(): Promise<{ inner: string; stop(): Promise<void> } | undefined> {
  const have = await lab.exec('alice', ['sh', '-c', 'command -v wireguard-go && command -v wg'], {
    allowFailure: true,
  });
  if (have.code !== 0) return undefined;
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
    inner: '198.51.100.2',
    stop: async () => {
      for (const p of procs) await p.stop('SIGTERM', 3000);
    },
  };
}

async function policy(local: string, remote: string, tunnel: boolean): Promise<string> {
  const dir = freshStateDir('consec-bench-');
  const mode = tunnel ? `-Mode Tunnel -LocalTunnelEndpoint ${local} -RemoteTunnelEndpoint ${remote} ` : '';
  const r = await ps(
    [
      '$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
      '$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "QM" -Proposal $qm',
      `$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "${PSK}"`,
      '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
      '$mm = New-NetIPsecMainModeCryptoProposal -Encryption AES256 -Hash SHA256 -KeyExchange DH19',
      '$mmSet = New-NetIPsecMainModeCryptoSet -DisplayName "MM" -Proposal $mm',
      `New-NetIPsecMainModeRule -DisplayName "MM" -LocalAddress ${local} -RemoteAddress ${remote} -MainModeCryptoSet $mmSet.Name | Out-Null`,
      `New-NetIPsecRule -DisplayName "bench" ${mode}-LocalAddress ${local} -RemoteAddress ${remote} ` +
        '-InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null',
    ].join('\n'),
    dir,
  );
  if (r.errors) throw new Error(r.err);
  return dir;
}

const rows: [string, number][] = [];
try {
  process.stderr.write('\n');
  rows.push(['plain veth (no IPsec)', await iperf()]);

  const swanA = await Charon.start(lab, 'alice', pskHostTunnel(a, b, { name: 'c', secret: PSK, logLevel: 0 }));
  const swanB = await Charon.start(lab, 'bob', pskHostTunnel(b, a, { name: 'c', secret: PSK, logLevel: 0 }));
  await swanA.initiate('c');
  process.stderr.write('\n');
  rows.push(['strongSwan ↔ strongSwan (kernel-libipsec, ESP-in-UDP)', await iperf()]);
  await swanA.stop();

  const wg = await wireguardGo();
  if (wg) {
    process.stderr.write('\n');
    rows.push(['wireguard-go ↔ wireguard-go (userspace WireGuard)', await iperf(wg.inner)]);
    await wg.stop();
  }

  const dA = consecDaemon(lab, 'alice', await policy(a, b, true), a);
  await dA.waitFor(/"msg":"ready"/);
  await lab.exec('alice', ['ping', '-c', '2', '-W', '3', b], { allowFailure: true });
  process.stderr.write('\n');
  rows.push(['consec → strongSwan (consec TUN data plane, ESP-in-UDP)', await iperf()]);
  await dA.stop('SIGTERM', 5000);
  await swanB.stop();

  const dB = consecDaemon(lab, 'bob', await policy(b, a, false), b);
  await dB.waitFor(/"msg":"ready"/);
  const dA2 = consecDaemon(lab, 'alice', await policy(a, b, false), a);
  await dA2.waitFor(/"msg":"ready"/);
  await lab.exec('alice', ['ping', '-c', '2', '-W', '3', b], { allowFailure: true });
  process.stderr.write('\n');
  rows.push(['consec ↔ consec (transport mode, raw ESP)', await iperf()]);
  await dA2.stop('SIGTERM', 5000);
  await dB.stop('SIGTERM', 5000);

  const swan = rows[1]?.[1] ?? 1;
  const wgRate = rows.find(([n]) => n.startsWith('wireguard-go'))?.[1];
  emit({
    id: 'throughput',
    title: 'Throughput: iperf3 TCP, one stream, AES-GCM-256',
    method: `iperf3 TCP, one stream, ${seconds} s per path, through the lab's veth pair (2 cores shared by both ends), all paths in the same run.`,
    columns: ['path', 'Gbit/s', '÷ strongSwan', '÷ wireguard-go'],
    rows: rows.map(([name, g]) => [
      name,
      Math.round(g * 1000) / 1000,
      Math.round((g / swan) * 100) / 100,
      wgRate ? Math.round((g / wgRate) * 100) / 100 : '-',
    ]),
    chart: { column: 1, unit: 'Gbit/s', skipRows: [0] },
    notes: [
      'Target: consec ↔ consec ≥ 2× strongSwan (kernel-libipsec) and ≥ wireguard-go; stretch ≥ 1 Gbit/s.',
      'The chart leaves out the plain veth ceiling, which would flatten the other bars.',
    ],
  });
} finally {
  await lab.destroy();
}
