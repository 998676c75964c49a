import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { entryToRange, inRange, v4ToNumber, v6ToBigint } from '../src/filter/address.ts';
import { compilePolicy, EMPTY_CONTEXT, type Filter, type Flow } from '../src/filter/compile.ts';
import { defaultRouteDevices } from '../src/filter/location.ts';
import { emptyDocument, type IPsecRule, ipsecRule, type PolicyDocument } from '../src/policy/model.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

function doc(rules: Partial<IPsecRule>[]): PolicyDocument {
  const d = emptyDocument();
  d.rules = rules.map((r, i) => ipsecRule({ DisplayName: r.DisplayName ?? `r${i}`, Name: `r${i}`, ...r }));
  return d;
}

const out = (local: string, remote: string, protocol = 6, remotePort = 445): Flow => ({
  direction: 'Outbound',
  local,
  remote,
  protocol,
  localPort: 50000,
  remotePort,
});

describe('policy compilation and precedence', () => {
  it('IKE and the default exemptions pass in clear even under Require Any', () => {
    const p = compilePolicy(doc([{ DisplayName: 'all', InboundSecurity: 'Require', OutboundSecurity: 'Require' }]));
    assert.equal(p.classify(out('192.0.2.1', '192.0.2.2', 17, 500)).filter?.kind, 'ike');
    assert.equal(
      p.classify({ ...out('192.0.2.1', '192.0.2.2', 17, 68), localPort: 67 }).filter?.label,
      'default exemption: Dhcp',
    );
    assert.equal(
      p.classify({ ...out('2001:db8::1', '2001:db8::2', 58, 0), icmpType: 135 }).filter?.label,
      'default exemption: NeighborDiscovery',
    );
    // ICMP echo is not exempt by default (Exemptions = NeighborDiscovery, Dhcp).
    const echo = p.classify({ ...out('192.0.2.1', '192.0.2.2', 1, 0), icmpType: 8 });
    assert.deepEqual([echo.action, echo.security], ['negotiate', 'Require']);
    assert.deepEqual(p.classify(out('192.0.2.1', '192.0.2.2')).security, 'Require');
  });

  it('an authentication exemption beats a more specific Require rule', () => {
    const p = compilePolicy(
      doc([
        { DisplayName: 'dc', RemoteAddress: ['10.30.0.10'], InboundSecurity: 'Require', OutboundSecurity: 'Require' },
        { DisplayName: 'exempt', RemoteAddress: ['10.30.0.0/24'] },
      ]),
    );
    const d = p.classify(out('10.20.0.5', '10.30.0.10'));
    assert.deepEqual([d.action, d.filter?.label], ['clear', 'exempt']);
  });

  it('the most specific negotiation rule wins, whatever the order of creation', () => {
    const p = compilePolicy(
      doc([
        { DisplayName: 'any', InboundSecurity: 'Require', OutboundSecurity: 'Require' },
        {
          DisplayName: 'subnet',
          RemoteAddress: ['198.51.100.0/24'],
          InboundSecurity: 'Require',
          OutboundSecurity: 'Require',
        },
        {
          DisplayName: 'host',
          RemoteAddress: ['198.51.100.7'],
          InboundSecurity: 'Request',
          OutboundSecurity: 'Request',
        },
        {
          DisplayName: 'host smb',
          RemoteAddress: ['198.51.100.7'],
          Protocol: 'TCP',
          RemotePort: ['445'],
          InboundSecurity: 'Require',
          OutboundSecurity: 'Require',
        },
      ]),
    );
    assert.equal(p.classify(out('192.0.2.1', '198.51.100.7', 6, 445)).filter?.label, 'host smb');
    assert.equal(p.classify(out('192.0.2.1', '198.51.100.7', 6, 80)).filter?.label, 'host');
    assert.equal(p.classify(out('192.0.2.1', '198.51.100.8')).filter?.label, 'subnet');
    assert.equal(p.classify(out('192.0.2.1', '203.0.113.1')).filter?.label, 'any');
  });

  it('Request in / None out: outbound goes clear, inbound may be protected; disabled rules do nothing', () => {
    const p = compilePolicy(
      doc([
        { DisplayName: 'ri', InboundSecurity: 'Request', OutboundSecurity: 'None' },
        {
          DisplayName: 'off',
          RemoteAddress: ['192.0.2.2'],
          InboundSecurity: 'Require',
          OutboundSecurity: 'Require',
          Enabled: 'False',
        },
      ]),
    );
    assert.deepEqual(p.classify(out('192.0.2.1', '192.0.2.2')), {
      filter: p.filters.find((f) => f.label === 'ri'),
      action: 'clear',
      security: 'None',
    });
    assert.equal(p.classify({ ...out('192.0.2.1', '192.0.2.2'), direction: 'Inbound' }).security, 'Request');
  });

  it('address keywords resolve with the host context; unknown ones warn and match nothing', () => {
    const p = compilePolicy(
      doc([
        { DisplayName: 'dns', RemoteAddress: ['DNS'], InboundSecurity: 'Require', OutboundSecurity: 'Require' },
        {
          DisplayName: 'p2p',
          RemoteAddress: ['PlayToDevice'],
          InboundSecurity: 'Require',
          OutboundSecurity: 'Require',
        },
      ]),
      {
        ...EMPTY_CONTEXT,
        dnsServers: ['192.0.2.53'],
      },
    );
    assert.equal(p.classify(out('192.0.2.1', '192.0.2.53', 17, 53)).filter?.label, 'dns');
    assert.equal(p.classify(out('192.0.2.1', '192.0.2.54', 17, 53)).filter, undefined);
    assert.match(p.warnings.join('\n'), /the keyword PlayToDevice is not supported by consec and matches nothing/);
  });

  it('warns about the Kerberos domain-controller and DNS lockouts (seed 001)', () => {
    const d = doc([{ DisplayName: 'require all', InboundSecurity: 'Require', OutboundSecurity: 'Require' }]);
    const ctx = {
      ...EMPTY_CONTEXT,
      localAddresses: ['10.20.0.5'],
      domainControllers: ['10.30.0.10'],
      dnsServers: ['10.30.0.11'],
    };
    const warnings = compilePolicy(d, ctx).warnings.join('\n');
    assert.match(
      warnings,
      /requires IPsec with Kerberos authentication .* to domain controller 10\.30\.0\.10\. Kerberos needs that domain controller/,
    );
    assert.match(warnings, /to DNS server 10\.30\.0\.11\. Without name resolution/);
    // With the DC and DNS servers exempted, nothing to warn about.
    d.rules.push(ipsecRule({ DisplayName: 'exempt infra', Name: 'ex', RemoteAddress: ['10.30.0.10', '10.30.0.11'] }));
    assert.deepEqual(compilePolicy(d, ctx).warnings, []);
  });
});

// ---- properties ---------------------------------------------------------------------------------

const v4addr = fc
  .tuple(fc.constantFrom(192, 198, 203), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 255 }))
  .map(([a, b, c]) => `${a}.${b}.${b}.${c}`);
// A small space, so flows hit the edges of rules' ranges often.
const v6addr = fc
  .tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: 0, max: 24 }))
  .map(([b, c]) => `2001:db8:${b}::${c.toString(16)}`);
const v4entry = fc.oneof(
  v4addr,
  fc.tuple(v4addr, fc.integer({ min: 16, max: 32 })).map(([a, l]) => `${a}/${l}`),
  fc.constant('Any'),
  // IPv6 hosts, prefixes and ranges in the same policies: the IPv6 index is built alongside.
  v6addr,
  fc.tuple(v6addr, fc.integer({ min: 40, max: 128 })).map(([a, l]) => `${a}/${l}`),
  fc.tuple(v6addr, v6addr).map(([a, b]) => (v6ToBigint(a) <= v6ToBigint(b) ? `${a}-${b}` : `${b}-${a}`)),
);
const security = fc.constantFrom('None', 'Request', 'Require');
const ruleArb = fc
  .record({
    LocalAddress: fc.array(v4entry, { minLength: 1, maxLength: 2 }),
    RemoteAddress: fc.array(v4entry, { minLength: 1, maxLength: 2 }),
    sec: security,
    proto: fc.constantFrom('Any', 'TCP', 'UDP'),
    port: fc.option(fc.integer({ min: 1, max: 1000 }), { nil: undefined }),
  })
  .map((r) => {
    const norm = (l: string[]) => (l.includes('Any') ? ['Any'] : [...new Set(l)]);
    const inbound = r.sec;
    const outbound = r.sec === 'Require' ? 'Require' : r.sec;
    return {
      LocalAddress: norm(r.LocalAddress),
      RemoteAddress: norm(r.RemoteAddress),
      InboundSecurity: inbound,
      OutboundSecurity: outbound,
      Protocol: r.proto,
      RemotePort: r.proto !== 'Any' && r.port !== undefined ? [String(r.port)] : ['Any'],
    } as Partial<IPsecRule>;
  });
const flowArb = fc.oneof(
  fc.record({
    local: v4addr,
    remote: v4addr,
    protocol: fc.constantFrom(6, 17, 1),
    remotePort: fc.integer({ min: 1, max: 1000 }),
  }),
  fc.record({
    local: v6addr,
    remote: v6addr,
    protocol: fc.constantFrom(6, 17, 58),
    remotePort: fc.integer({ min: 1, max: 1000 }),
  }),
);

function deepFrozen<T extends object>(o: T): T {
  for (const v of Object.values(o)) if (typeof v === 'object' && v !== null) deepFrozen(v as object);
  return Object.freeze(o);
}

function bruteForce(filters: Filter[], flow: Flow): Filter | undefined {
  const family = flow.remote.includes(':') ? 6 : 4;
  const num = (a: string) => (family === 4 ? v4ToNumber(a) : v6ToBigint(a));
  const l = num(flow.local);
  const r = num(flow.remote);
  const within = (ranges: Filter['local'], n: number | bigint) =>
    ranges.length === 0 ||
    ranges.some((x) => (family === 4 ? inRange(x, 4, n as number, 0n) : inRange(x, 6, 0, n as bigint)));
  return filters.find((f) => {
    if (!within(f.local, l) || !within(f.remote, r)) return false;
    if (f.protocol !== undefined && f.protocol !== flow.protocol) return false;
    if (f.icmpTypes && !f.icmpTypes.includes(flow.icmpType ?? -1)) return false;
    const inP = (p: Filter['localPorts'], v?: number) =>
      !p || (v !== undefined && p.some(([a, b]) => v >= a && v <= b));
    if (f.kind === 'ike') return inP(f.localPorts, flow.localPort) || inP(f.remotePorts, flow.remotePort);
    return inP(f.localPorts, flow.localPort) && inP(f.remotePorts, flow.remotePort);
  });
}

describe('compiler invariants (properties)', () => {
  it('the index finds exactly the first matching filter in precedence order', () => {
    fc.assert(
      fc.property(
        fc.array(ruleArb, { maxLength: 25 }),
        fc.array(flowArb, { minLength: 1, maxLength: 20 }),
        (rules, flows) => {
          const d = doc(rules);
          const p = compilePolicy(d);
          // Frozen rules (as the daemon's store reader gives them) are compiled once and reused:
          // the second compilation of the same objects must decide exactly as the first.
          const frozen = { ...d, rules: d.rules.map((r) => deepFrozen(structuredClone(r))) };
          const again = [compilePolicy(frozen), compilePolicy(frozen)];
          for (const f of flows) {
            const flow: Flow = { direction: 'Outbound', localPort: 40000, ...f };
            const expected = bruteForce(p.filters, flow);
            assert.equal(p.classify(flow).filter, expected);
            for (const q of again) assert.equal(q.classify(flow).filter?.rank, expected?.rank);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('exemptions precede negotiation, and a nested narrower remote ranks before the wider one', () => {
    fc.assert(
      fc.property(fc.array(ruleArb, { maxLength: 25 }), (rules) => {
        const p = compilePolicy(doc(rules));
        const negotiate = p.filters.filter((f) => f.kind === 'negotiate');
        const exempt = p.filters.filter((f) => f.kind === 'exemption');
        if (negotiate.length && exempt.length)
          assert.ok(Math.max(...exempt.map((f) => f.rank)) < Math.min(...negotiate.map((f) => f.rank)));
        const size = (f: Filter) =>
          f.remote.length === 0
            ? 2 ** 33
            : Math.max(...f.remote.map((r) => (r.family === 4 ? r.hi - r.lo + 1 : 2 ** 33)));
        for (const a of negotiate) {
          for (const b of negotiate) {
            if (a.remote.length === 1 && b.remote.length === 1 && size(a) < size(b)) {
              const ra = a.remote[0];
              const rb = b.remote[0];
              if (ra?.family === 4 && rb?.family === 4 && ra.lo >= rb.lo && ra.hi <= rb.hi) assert.ok(a.rank < b.rank);
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('IPv6 ranges and lookups agree with a direct comparison', () => {
    fc.assert(
      fc.property(fc.ipV6(), fc.integer({ min: 0, max: 128 }), fc.ipV6(), (a, len, probe) => {
        const r = entryToRange(`${a}/${len}`);
        assert.ok(r && r.family === 6);
        const n = v6ToBigint(probe);
        const base = v6ToBigint(a);
        const shift = BigInt(128 - len);
        assert.equal(inRange(r, 6, 0, n), n >> shift === base >> shift);
      }),
    );
  });
});

describe('network location', () => {
  it('default routes are found in route tables of thousands of routes, IPv4 and IPv6, by device', () => {
    const v4 = [
      'Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT',
      ...Array.from(
        { length: 5000 },
        (_, i) => `consec0\t${(i + 1).toString(16).padStart(8, '0')}\t00000000\t0001\t0\t0\t0\tFFFFFFFF\t0\t0\t0`,
      ),
      'eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0',
      // A route to 0.0.0.0/8 is not a default route.
      'eth1\t00000000\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0',
    ].join('\n');
    assert.deepEqual([...defaultRouteDevices(v4, 4)], ['eth0']);
    const z = '0'.repeat(32);
    const v6 = [
      ...Array.from(
        { length: 5000 },
        (_, i) =>
          `20010db8${i.toString(16).padStart(24, '0')} 80 ${z} 00 ${z} 00000400 00000001 00000000 00000001  consec0`,
      ),
      `${z} 00 ${z} 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0`,
      // ::/0 is the default route; ::/8 is not.
      `${z} 08 ${z} 00 ${z} 00000400 00000002 00000000 00000003     eth2`,
    ].join('\n');
    assert.deepEqual([...defaultRouteDevices(v6, 6)], ['eth0']);
  });
});

describe('what-if cmdlets', () => {
  it('Test-NetIPsecFlow explains the decision, the sets and the first packet; Find-NetIPsecRule lists matches', async () => {
    const dir = freshStateDir();
    const setup = [
      'New-NetIPsecRule -DisplayName "servers" -Name servers -RemoteAddress 10.30.0.0/24 -InboundSecurity Require -OutboundSecurity Require | Out-Null',
      'New-NetIPsecRule -DisplayName "web request" -Name web -RemoteAddress 10.30.0.20 -Protocol TCP -RemotePort 443 -InboundSecurity Request -OutboundSecurity Request | Out-Null',
    ].join('\n');
    assert.equal((await ps(setup, dir)).errors, 0);
    const r = await ps(
      [
        'Test-NetIPsecFlow -LocalAddress 10.20.0.5 -RemoteAddress 10.30.0.20 -Protocol TCP -RemotePort 443 | ForEach-Object { "$($_.Decision)|$($_.Rule)|$($_.FirstPacket)" }',
        'Test-NetIPsecFlow 10.30.0.10 -LocalAddress 10.20.0.5 -Protocol UDP -RemotePort 88 -DomainController 10.30.0.10 | ForEach-Object { "$($_.Decision)|$($_.Phase1Methods)|$($_.QuickModeProposals.Count)" }',
        'Find-NetIPsecRule -RemoteAddress 10.30.0.20 -LocalAddress 10.20.0.5 -Protocol TCP -RemotePort 443 | ForEach-Object { $_.Name }',
      ].join('\n'),
      dir,
    );
    const lines = r.out.trim().split('\n');
    assert.equal(
      lines[0],
      'Request|web request|Queued while IKE negotiates, then sent protected; sent in clear if the negotiation fails (Request).',
    );
    assert.equal(lines[1], 'Require|MachineKerberos|3');
    assert.deepEqual(lines.slice(2), ['web', 'servers']);
    assert.match(
      r.err,
      /^WARNING: IPsec rule "servers" requires IPsec with Kerberos authentication \(phase 1 set "Default"\) for traffic to domain controller 10\.30\.0\.10\./m,
    );
  });
});
