/**
 * Microsoft's own examples, as published (test/fixtures/published: the NetSecurity cmdlet reference
 * pages and the IPsec guides, each file one example with its source URL): those that work on Windows
 * run unchanged under consec, those that fail on Windows (a typo in the page) fail here too, and
 * those that need Active Directory say so.
 *
 * Header lines of a fixture (`#` comments before the code):
 *   Source: URL · Example: heading · Needs: Active Directory | GPO store | remote computer (CimSession)
 *   Windows: works | fails — error: why (Windows stops with an error) | fails — silent: why (Windows
 *   runs it without an error, but it does not do what the page says: here too, no error)
 *   Uses: earlier-example-file (its code runs first, in the same session)
 *   Given: a command establishing what the page assumes exists (run first; not part of the example)
 *   Needs: keying service (the SA views of a running daemon: without one, a clear error)
 *   Differs: why consec refuses what Windows lets pass (each one a decision, counted in the summary)
 *   Placeholders: yes (names an admin replaces, like domain.contoso.com\gpo_name: valid as they
 *   stand, so the example runs with them; a GPO store is consec's local one, made on first use)
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { after, describe, it } from 'node:test';
import { PolicyStores } from '../src/policy/store.ts';
import { Netsh } from '../src/shell/netsh/netsh.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

const ROOT = join(import.meta.dirname, 'fixtures', 'published');

interface Example {
  rel: string;
  kind: 'ps1' | 'netsh';
  source: string;
  heading: string;
  windows: 'works' | 'fails' | 'silent';
  why: string;
  needs?: string;
  differs?: string;
  uses: string[];
  given: string[];
  code: string;
}

function files(dir: string): string[] {
  let out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out = out.concat(files(p));
    else if (/\.(ps1|netsh)$/.test(name)) out.push(p);
  }
  return out;
}

function parse(path: string): Example {
  const text = readFileSync(path, 'utf8').replace(/^\uFEFF/, '');
  const lines = text.split(/\r?\n/);
  const header: string[] = [];
  let i = 0;
  for (; i < lines.length && (lines[i] ?? '').startsWith('#'); i++) header.push((lines[i] as string).slice(1).trim());
  const field = (name: string) =>
    header
      .filter((h) => h.toLowerCase().startsWith(`${name.toLowerCase()}:`))
      .map((h) => h.slice(name.length + 1).trim());
  const windows = field('Windows')[0] ?? '';
  const source = field('Source')[0];
  assert.ok(source, `${path}: no Source header`);
  assert.match(windows, /^(works|fails)/, `${path}: no "Windows: works|fails" header`);
  return {
    rel: relative(ROOT, path),
    kind: path.endsWith('.netsh') ? 'netsh' : 'ps1',
    source,
    heading: field('Example')[0] ?? '',
    windows: windows.startsWith('works') ? 'works' : /^fails\s*[—-]\s*silent/.test(windows) ? 'silent' : 'fails',
    why: windows.replace(/^fails\s*[—-]?\s*(error:|silent:)?\s*/, ''),
    needs: field('Needs').join(', ') || undefined,
    differs: field('Differs')[0],
    uses: field('Uses'),
    given: field('Given'),
    code: lines.slice(i).join('\n'),
  };
}

const examples = files(ROOT).map(parse);
const byName = new Map(examples.map((e) => [e.rel.split('/').pop() as string, e]));

/** The code an example runs with: what it uses (recursively), the givens, then its own. */
function prelude(e: Example, seen = new Set<string>()): string[] {
  const out: string[] = [];
  for (const u of e.uses
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter(Boolean)) {
    const name = u.split(/[\s(]/)[0] as string;
    const dep = byName.get(name.split('/').pop() as string);
    assert.ok(dep, `${e.rel}: uses ${name}, which is not in the corpus`);
    if (seen.has(dep.rel)) continue;
    seen.add(dep.rel);
    out.push(...prelude(dep, seen), ...dep.given, dep.code);
  }
  return out;
}

async function runNetsh(dir: string, text: string): Promise<{ code: number; out: string }> {
  let out = '';
  const n = new Netsh(new PolicyStores(dir), { stdout: (t) => (out += t), stderr: (t) => (out += t) });
  return { code: await n.runScript(text), out };
}

const tally = {
  works: 0,
  failsAsOnWindows: 0,
  silentAsOnWindows: 0,
  activeDirectory: 0,
  remote: 0,
  keyingService: 0,
  differs: 0,
};
const needsService = (e: Example) => /keying service/.test(e.needs ?? '');
const needsDirectory = (e: Example) => /Active Directory/.test(e.needs ?? '');
const needsRemote = (e: Example) => /remote computer/.test(e.needs ?? '');

describe(`Microsoft's published examples (${examples.length} in test/fixtures/published)`, () => {
  after(() => {
    console.log(
      `# published examples: ${examples.length}; run unchanged as on Windows: ${tally.works}; ` +
        `fail as they do on Windows: ${tally.failsAsOnWindows}; run without an error and without effect, as on Windows: ${tally.silentAsOnWindows}; ` +
        `need Active Directory (said so): ${tally.activeDirectory}; name a remote computer (refused): ${tally.remote}; ` +
        `need the running keying service (said so): ${tally.keyingService}; refused where Windows lets them pass (documented): ${tally.differs}`,
    );
  });

  for (const e of examples)
    it(`${e.rel}: ${e.heading || e.source}`, async () => {
      const dir = freshStateDir('consec-published-');
      const before = [...prelude(e), ...e.given].join('\n');
      if (e.kind === 'netsh') {
        if (before) assert.equal((await runNetsh(dir, before)).code, 0, `${e.rel}: the lines it builds on`);
        const r = await runNetsh(dir, e.code);
        if (e.windows === 'fails' || e.differs) {
          assert.notEqual(r.code, 0, `${e.rel} fails on Windows (${e.why}) but ran\n${r.out}`);
          if (e.differs) tally.differs++;
          else tally.failsAsOnWindows++;
        } else if (needsDirectory(e)) {
          assert.notEqual(r.code, 0, r.out);
          assert.match(r.out, /requires Active Directory/, r.out);
          tally.activeDirectory++;
        } else if (needsService(e)) {
          assert.notEqual(r.code, 0, r.out);
          assert.match(r.out, /consec daemon is not running/, r.out);
          tally.keyingService++;
        } else {
          assert.equal(r.code, 0, `${e.rel} (${e.source})\n${r.out}`);
          if (e.windows === 'works') tally.works++;
          else tally.silentAsOnWindows++;
        }
        return;
      }
      if (before && !needsDirectory(e)) {
        const pre = await ps(before, dir);
        assert.equal(pre.errors, 0, `${e.rel}: the code it builds on failed\n${pre.err}`);
      }
      const source = before ? `${before}\n${e.code}` : e.code;
      const r = await ps(source, freshStateDir('consec-published-'), e.rel);
      const context = `${e.rel} (${e.source})\n--- code\n${e.code}\n--- stderr\n${r.err}\n--- stdout\n${r.out.slice(0, 3000)}`;
      if (e.windows === 'fails' || e.differs) {
        assert.ok(r.errors > 0, `${context}\nthis example fails on Windows (${e.why}) but ran`);
        if (e.differs) tally.differs++;
        else tally.failsAsOnWindows++;
      } else if (needsDirectory(e)) {
        assert.ok(r.errors > 0, context);
        assert.match(r.err, /requires Active Directory/, context);
        tally.activeDirectory++;
      } else if (needsRemote(e)) {
        assert.ok(r.errors > 0, context);
        assert.match(r.err, /remote computer/, context);
        tally.remote++;
      } else if (needsService(e)) {
        assert.ok(r.errors > 0, context);
        assert.match(r.err, /consec daemon is not running/, context);
        tally.keyingService++;
      } else {
        assert.equal(r.errors, 0, context);
        if (e.windows === 'works') tally.works++;
        else tally.silentAsOnWindows++;
      }
    });
});
