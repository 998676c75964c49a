/**
 * Group Policy's processing order for a host, as Microsoft documents it (LSDOU without sites; link
 * order 1 processed last in its container; Block Inheritance; Enforced links processed after all
 * others with the highest container winning; security filtering), and the directory's records
 * checked as a host reads them from the cluster.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  containerKey,
  type Directory,
  filterKey,
  hostKey,
  parseDirectory,
  targetedGpos,
} from '../src/fleet/directory.ts';
import { FleetError } from '../src/fleet/config.ts';

const D = 'corp.example';

function directory(records: [string, unknown][]): Directory {
  return parseDirectory(
    D,
    records.map(([k, v]) => [k, JSON.stringify(v)]),
  );
}

const link = (gpo: string, o: { enforced?: boolean; enabled?: boolean } = {}) => ({ gpo, ...o });

describe('fleet directory: which GPOs apply to a host, in which order', () => {
  const base: [string, unknown][] = [
    [containerKey(D, D), { path: D, links: [link('Default Domain Policy'), link('Domain Isolation')] }],
    [containerKey(D, `${D}/Servers`), { path: `${D}/Servers`, links: [link('Servers A'), link('Servers B')] }],
    [containerKey(D, `${D}/Servers/SQL`), { path: `${D}/Servers/SQL`, links: [link('SQL')] }],
    [hostKey(D, 'sql1'), { container: `${D}/Servers/SQL`, groups: ['SQL Servers'] }],
    [hostKey(D, 'web1'), { container: `${D}/Servers`, groups: [] }],
  ];

  it('domain first, then each container down to the host’s; within a container link order 1 last (it wins)', () => {
    const t = targetedGpos(directory(base), 'SQL1');
    assert.equal(t.container, `${D}/Servers/SQL`);
    assert.deepEqual(
      t.applied.map((a) => `${a.gpo}#${a.linkOrder}`),
      ['Domain Isolation#2', 'Default Domain Policy#1', 'Servers B#2', 'Servers A#1', 'SQL#1'],
    );
    assert.deepEqual(t.denied, []);
  });

  it('a host not in the directory is in the domain: only the domain’s links apply', () => {
    const t = targetedGpos(directory(base), 'laptop7');
    assert.equal(t.container, D);
    assert.deepEqual(
      t.applied.map((a) => a.gpo),
      ['Domain Isolation', 'Default Domain Policy'],
    );
  });

  it('Block Inheritance drops the links above it, except enforced ones, which are processed last, the domain’s winning', () => {
    const dir = directory([
      [
        containerKey(D, D),
        { path: D, links: [link('Default Domain Policy'), link('Domain Isolation', { enforced: true })] },
      ],
      [containerKey(D, `${D}/Servers`), { path: `${D}/Servers`, links: [link('Servers', { enforced: true })] }],
      [
        containerKey(D, `${D}/Servers/SQL`),
        { path: `${D}/Servers/SQL`, blockInheritance: true, links: [link('SQL'), link('Off', { enabled: false })] },
      ],
      [hostKey(D, 'sql1'), { container: `${D}/Servers/SQL` }],
    ]);
    const t = targetedGpos(dir, 'sql1');
    assert.deepEqual(
      t.applied.map((a) => a.gpo),
      ['SQL', 'Servers', 'Domain Isolation'],
    );
    assert.deepEqual(t.denied.map((d) => `${d.gpo}: ${d.reason}`).sort(), [
      'Default Domain Policy: Blocked Inheritance',
      'Off: Disabled Link',
    ]);
  });

  it('security filtering: a GPO applies only to the hosts and groups it names; Authenticated Users is every host', () => {
    const dir = directory([
      ...base,
      [filterKey(D, 'SQL'), { apply: ['SQL Servers'] }],
      [filterKey(D, 'Servers A'), { apply: ['web1'] }],
      [filterKey(D, 'Domain Isolation'), { apply: ['Authenticated Users'] }],
    ]);
    const sql = targetedGpos(dir, 'sql1');
    assert.ok(sql.applied.some((a) => a.gpo === 'SQL'));
    assert.ok(sql.applied.some((a) => a.gpo === 'Domain Isolation'));
    assert.deepEqual(
      sql.denied.map((d) => `${d.gpo}: ${d.reason}`),
      ['Servers A: Denied (Security)'],
    );
    const web = targetedGpos(dir, 'web1');
    assert.ok(web.applied.some((a) => a.gpo === 'Servers A'));
  });

  it('a GPO linked twice is processed once, where it has the highest precedence', () => {
    const dir = directory([
      [containerKey(D, D), { path: D, links: [link('Isolation')] }],
      [containerKey(D, `${D}/Servers`), { path: `${D}/Servers`, links: [link('Isolation'), link('Servers')] }],
      [hostKey(D, 'web1'), { container: `${D}/Servers` }],
    ]);
    assert.deepEqual(
      targetedGpos(dir, 'web1').applied.map((a) => `${a.gpo}@${a.container}`),
      [`Servers@${D}/Servers`, `Isolation@${D}/Servers`],
    );
  });

  it('records that are not valid are refused with their key; a host in another domain is refused', () => {
    assert.throws(
      () => directory([[containerKey(D, D), { path: D, links: [{}] }]]),
      /container\/corp.example: links.0.gpo/,
    );
    assert.throws(
      () => parseDirectory(D, [[hostKey(D, 'a'), '{not json']]),
      (e: unknown) => e instanceof FleetError && /is not JSON/.test(e.message),
    );
    assert.throws(() => directory([[`/consec/dir/${D}/other/x`, {}]]), /not one consec writes/);
    assert.throws(() => directory([[containerKey(D, `${D}/A`), { path: `${D}/B` }]]), /holds corp.example\/B/);
    const dir = directory([[hostKey(D, 'x'), { container: 'evil.example/Servers' }]]);
    assert.throws(() => targetedGpos(dir, 'x'), /not in the domain corp.example/);
  });

  it('fuzz: any record text is parsed or refused with a FleetError, never anything else', () => {
    const keys = fc.oneof(
      fc.constantFrom(containerKey(D, D), hostKey(D, 'h'), filterKey(D, 'g'), `/consec/dir/${D}/x`),
      fc.string().map((s) => `/consec/dir/${D}/${s}`),
    );
    fc.assert(
      fc.property(keys, fc.oneof(fc.string(), fc.json()), (key, text) => {
        try {
          const dir = parseDirectory(D, [[key, text]]);
          targetedGpos(dir, 'h');
        } catch (err) {
          if (!(err instanceof FleetError)) throw err;
        }
      }),
      { numRuns: 5000 },
    );
  });
});
