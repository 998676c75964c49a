/**
 * The fail-closed nftables table: canonical set elements (merged, so the kernel holds exactly what
 * we rendered) and changes as element additions and deletions that leave the same table a full
 * rewrite would — checked against nft itself in a lab namespace.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { GuardKeeper, type GuardSets, guardSets, mergeElements } from '../src/dataplane/guard.ts';
import { type Lab, Lab as LabClass } from '../src/lab/lab.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { emptyDocument, ipsecRule } from '../src/policy/model.ts';

describe('fail-closed table: canonical elements and incremental changes', () => {
  it('merges overlapping and adjacent addresses into the intervals the kernel keeps', () => {
    assert.deepEqual(mergeElements(['192.0.2.7', '192.0.2.0/29', '192.0.2.9', '192.0.2.8', '192.0.2.20']), [
      '192.0.2.0-192.0.2.9',
      '192.0.2.20',
    ]);
    assert.deepEqual(mergeElements(['2001:db8::2', '2001:db8::1', '2001:db8::/127', '2001:db8::9']), [
      '2001:db8::-2001:db8::2',
      '2001:db8::9',
    ]);
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 63 }), { maxLength: 40 }), (hosts) => {
        const merged = mergeElements(hosts.map((h) => `192.0.2.${h}`));
        // The same addresses, each covered once, in order, with gaps between intervals.
        const covered: number[] = [];
        let lastHi = -2;
        for (const e of merged) {
          const [lo, hi = lo] = e.split('-').map((a) => Number(a.split('.')[3]));
          assert.ok((lo as number) > lastHi + 1, `${merged.join()} keeps a gap`);
          for (let i = lo as number; i <= (hi as number); i++) covered.push(i);
          lastHi = hi as number;
        }
        assert.deepEqual(
          covered,
          [...new Set(hosts)].sort((a, b) => a - b),
        );
      }),
    );
  });

  let lab: Lab;
  before(async () => {
    lab = await LabClass.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  /** The Require sets as nft lists them (sorted element texts per set). */
  const listed = async (): Promise<Record<string, string[]>> => {
    const out = (await lab.exec('alice', ['nft', '-j', 'list', 'table', 'inet', 'consec'])).stdout;
    const doc = JSON.parse(out) as { nftables: { set?: { name: string; elem?: unknown[] } }[] };
    const sets: Record<string, string[]> = {};
    for (const item of doc.nftables)
      if (item.set && /^(out|in)[46]h?$/.test(item.set.name))
        sets[item.set.name] = (item.set.elem ?? []).map((e) => JSON.stringify(e)).sort();
    return sets;
  };

  it('a changed policy is put in force as element changes that leave the table a full rewrite would', async () => {
    const rule = (remote: string[], inbound = 'Require') =>
      ipsecRule({
        DisplayName: remote.join(),
        RemoteAddress: remote,
        InboundSecurity: inbound as 'Require',
        OutboundSecurity: 'Require',
      });
    const policies: GuardSets[] = [
      [rule(['192.0.2.10']), rule(['192.0.2.0/29']), rule(['2001:db8::5'])],
      // Added: an adjacent host (the interval grows), a host inside the subnet, IPv6 hosts.
      [
        rule(['192.0.2.10']),
        rule(['192.0.2.0/29']),
        rule(['192.0.2.8', '192.0.2.3']),
        rule(['2001:db8::5', '2001:db8::6']),
      ],
      // Removed: the subnet (the interval shrinks to what the hosts cover); inbound no longer required for one.
      [rule(['192.0.2.10']), rule(['192.0.2.8', '192.0.2.3'], 'Request'), rule(['2001:db8::6'])],
      [],
    ].map((rules) => guardSets({ ...emptyDocument(), rules }));
    const errors: Error[] = [];
    const keeper = () =>
      new GuardKeeper({ tampered() {}, restored() {}, error: (e) => errors.push(e), netns: lab.ns('alice') });
    const kept = keeper();
    let previous: Record<string, string[]> | undefined;
    for (const [i, sets] of policies.entries()) {
      const how = await kept.applySets(sets, 'consec0', 0xc5ec);
      assert.equal(how, i === 0 ? 'table' : 'elements');
      const incremental = await listed();
      await keeper().applySets(sets, 'consec0', 0xc5ec); // a fresh keeper writes the whole table
      assert.deepEqual(incremental, await listed(), `policy ${i}: as a full rewrite`);
      assert.notDeepEqual(incremental, previous);
      previous = incremental;
    }
    assert.deepEqual(errors, []);
  });

  it("the kernel data plane's variant (no TUN: what XFRM transforms, and what came out of it) loads into the kernel and updates by elements", async () => {
    const rule = (remote: string) =>
      ipsecRule({
        DisplayName: remote,
        RemoteAddress: [remote],
        InboundSecurity: 'Require',
        OutboundSecurity: 'Require',
      });
    const kept = new GuardKeeper({ tampered() {}, restored() {}, error: () => {}, netns: lab.ns('alice') });
    assert.equal(
      await kept.applySets(guardSets({ ...emptyDocument(), rules: [rule('192.0.2.10')] }), undefined, 0xc5ec),
      'table',
    );
    assert.equal(
      await kept.applySets(
        guardSets({ ...emptyDocument(), rules: [rule('192.0.2.10'), rule('192.0.2.20')] }),
        undefined,
        0xc5ec,
      ),
      'elements',
    );
    const table = (await lab.exec('alice', ['nft', 'list', 'table', 'inet', 'consec'])).stdout;
    const chain = (name: string) => table.slice(table.indexOf(`chain ${name} {`)).split('\n\t}')[0] ?? '';
    assert.match(chain('output'), /rt ipsec exists accept/, table);
    assert.match(chain('forward'), /rt ipsec exists accept/);
    assert.match(chain('input'), /meta ipsec exists ct mark set/);
    assert.match(table, /meta l4proto \{ esp, ah \} accept/);
    assert.doesNotMatch(table, /(oif|iif)name "consec0"/);
    assert.match(table, /192\.0\.2\.20/);
    await lab.exec('alice', ['nft', 'delete', 'table', 'inet', 'consec']);
  });
});
