/**
 * The keying service (what `consec daemon` runs) in one process: two hosts on an in-memory network,
 * their policy written with the cmdlets, fake data planes that count traffic. Windows' SA idle timer
 * (MaxSAIdleTimeSeconds): a child SA that carries nothing for that long is deleted at both ends.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KeyingService } from '../src/daemon/keying.ts';
import { MemoryNetwork } from '../src/ike/bind.ts';
import { PolicyStores } from '../src/policy/store.ts';
import type { ChildSaSink } from '../src/sa/sink.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

const [A, B] = ['192.0.2.1', '192.0.2.2'];

/** A data plane that keeps the SAs installed and counts what the test says passed. */
class CountingPlane implements ChildSaSink {
  readonly installed = new Set<number>();
  readonly packets = new Map<number, number>();
  install(spec: { inbound: { spi: number } }): void {
    this.installed.add(spec.inbound.spi);
    this.packets.set(spec.inbound.spi, 0);
  }
  delete(spi: number): void {
    this.installed.delete(spi);
  }
  counters(spi: number) {
    const n = this.packets.get(spi);
    return this.installed.has(spi) && n !== undefined
      ? { bytesIn: n * 100, bytesOut: 0, packetsIn: n, packetsOut: 0 }
      : undefined;
  }
}

async function host(net: MemoryNetwork, local: string, remote: string, idleMs: number) {
  const dir = freshStateDir('consec-keying-');
  const r = await ps(
    [
      '$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "lab-only-idle-test-0123456789"',
      '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
      `New-NetIPsecRule -DisplayName "Host to host" -LocalAddress ${local} -RemoteAddress ${remote} -InboundSecurity Require -OutboundSecurity Require -KeyModule IKEv1 -Phase1AuthSet $p1.Name | Out-Null`,
    ].join('\n'),
    dir,
  );
  assert.equal(r.errors, 0, r.err);
  const plane = new CountingPlane();
  const log: string[] = [];
  const service = new KeyingService({
    stores: new PolicyStores(dir),
    addresses: [local],
    timing: { dpdMs: 0 },
    dataplane: plane,
    bind: () => (rx) => net.bind(local, rx),
    idle: { sweepMs: 3_600_000, afterMs: idleMs },
    log: {
      info: (o, m) => log.push(`${m} ${JSON.stringify(o)}`),
      warn: (o, m) => log.push(`${m} ${JSON.stringify(o)}`),
      error: (o, m) => log.push(`${m} ${JSON.stringify(o)}`),
    },
  });
  await service.start();
  return { service, plane, log };
}

describe('SA idle timer (MaxSAIdleTimeSeconds)', () => {
  it('a child SA that carries traffic stays; one quiet for the idle time is deleted at both ends, and the next flow negotiates a new one', async () => {
    const net = new MemoryNetwork();
    const a = await host(net, A, B, 300_000);
    const b = await host(net, B, A, 300_000);
    try {
      const flow = {
        direction: 'Outbound' as const,
        local: A,
        remote: B,
        protocol: 6,
        localPort: 40000,
        remotePort: 22,
      };
      const first = await a.service.acquire(flow);
      const spi = first.child.spiIn.readUInt32BE(0);
      assert.ok(a.plane.installed.has(spi));
      const t0 = Date.now();
      a.service.sweepIdle(t0);
      // Traffic moves: never idle, however long.
      a.plane.packets.set(spi, 5);
      a.service.sweepIdle(t0 + 200_000);
      a.plane.packets.set(spi, 9);
      a.service.sweepIdle(t0 + 400_000);
      assert.ok(a.plane.installed.has(spi), 'busy SA kept');
      // Then nothing for 300 s: deleted here and, by its Delete, at bob.
      a.service.sweepIdle(t0 + 600_000);
      assert.ok(a.plane.installed.has(spi), 'quiet for 200 s only: kept');
      a.service.sweepIdle(t0 + 700_000);
      assert.ok(!a.plane.installed.has(spi));
      assert.ok(
        a.log.some((l) => l.startsWith('child SA idle: deleted')),
        a.log.join('\n'),
      );
      const outAtBob = first.child.spiOut.readUInt32BE(0);
      const deadline = Date.now() + 5000;
      while (b.plane.installed.has(outAtBob) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      assert.ok(!b.plane.installed.has(outAtBob), 'bob deleted his side');
      const again = await a.service.acquire(flow);
      assert.notEqual(again.child.spiIn.readUInt32BE(0), spi, 'a new child SA for the next packet');
    } finally {
      await a.service.stop();
      await b.service.stop();
    }
  });
});
