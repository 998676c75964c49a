import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PolicyStores } from '../src/policy/store.ts';
import { ROOT, waitUntil } from './helpers.ts';
import { freshStateDir, ps, storeBytes } from './pwsh-helpers.ts';

function cli(stateDir: string, command: string): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), '--state-dir', stateDir, 'pwsh', '-Command', command],
      {
        cwd: ROOT,
      },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.on('close', (code) => resolve({ code, out, err }));
  });
}

describe('policy store', () => {
  it('concurrent consec processes never lose or corrupt a change', async () => {
    const dir = freshStateDir();
    const runs = await Promise.all(
      Array.from({ length: 6 }, (_, p) =>
        cli(
          dir,
          [1, 2, 3].map((i) => `New-NetIPsecRule -DisplayName "p${p}-r${i}" -Name "p${p}-r${i}" | Out-Null`).join('; '),
        ),
      ),
    );
    for (const r of runs) assert.equal(r.code, 0, r.err);
    const doc = new PolicyStores(dir).read();
    assert.deepEqual(
      doc.rules.map((r) => r.Name).sort(),
      Array.from({ length: 6 }, (_, p) => [1, 2, 3].map((i) => `p${p}-r${i}`))
        .flat()
        .sort(),
    );
  });

  it('a damaged store file is reported clearly and left as it is', async () => {
    const dir = freshStateDir();
    await ps('New-NetIPsecRule -DisplayName keep | Out-Null', dir);
    const file = join(dir, 'policy', 'PersistentStore.json');
    writeFileSync(file, '{"format": "consec-policy", "version": 1, "store": "PersistentStore", "document": {');
    const broken = readFileSync(file, 'utf8');
    const r = await cli(dir, 'New-NetIPsecRule -DisplayName more');
    assert.equal(r.code, 1);
    assert.match(r.err, /The policy store file .*PersistentStore\.json is not valid JSON; it was not changed\./);
    assert.equal(readFileSync(file, 'utf8'), broken);

    const doc = JSON.parse(
      JSON.stringify({
        format: 'consec-policy',
        version: 1,
        store: 'PersistentStore',
        document: new PolicyStores(freshStateDir()).read(),
      }),
    );
    doc.document.rules = [{ DisplayName: 'no other fields' }];
    writeFileSync(file, JSON.stringify(doc));
    const s = await cli(dir, 'Get-NetIPsecRule');
    assert.equal(s.code, 1);
    assert.match(s.err, /is not a valid consec policy \(document\.rules\.0\.Name: /);
  });

  it('a temp file left by a crash mid-write is ignored, and the next write succeeds', async () => {
    const dir = freshStateDir();
    await ps('New-NetIPsecRule -DisplayName first -Name first | Out-Null', dir);
    const file = join(dir, 'policy', 'PersistentStore.json');
    writeFileSync(`${file}.tmp-99999`, '{"half": ');
    const r = await ps(
      'New-NetIPsecRule -DisplayName second -Name second | Out-Null\nGet-NetIPsecRule | ForEach-Object { $_.Name }',
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(r.out, 'first\nsecond\n');
  });

  it('read-only and unknown stores are refused without touching anything', async () => {
    const dir = freshStateDir();
    for (const store of ['ActiveStore', 'RSOP', 'SystemDefaults']) {
      const r = await ps(`New-NetIPsecRule -DisplayName x -PolicyStore ${store}`, dir);
      assert.match(r.err, new RegExp(`The policy store "${store}" is read-only`));
    }
    const bad = await ps('Get-NetIPsecRule -PolicyStore "../../etc"', dir);
    assert.match(bad.err, /The policy store "\.\.\/\.\.\/etc" is not valid\./);
    assert.equal(storeBytes(dir), '<no store file>');
  });
});

describe('live policy', () => {
  it('a change to the persistent or a GPO store reaches a watcher of the ActiveStore', async () => {
    const { watchActivePolicy } = await import('../src/policy/watch.ts');
    const dir = freshStateDir();
    const stores = new PolicyStores(dir);
    const seen: string[][] = [];
    const errors: Error[] = [];
    const waitFor = async (n: number) => {
      for (let i = 0; i < 200 && seen.length < n; i++) await new Promise((r) => setTimeout(r, 10));
    };
    const w = watchActivePolicy(
      stores,
      (doc) => seen.push(doc.rules.map((r) => r.Name)),
      (e) => errors.push(e),
    );
    try {
      await cli(dir, 'New-NetIPsecRule -DisplayName one -Name one | Out-Null');
      await waitFor(1);
      assert.deepEqual(seen.at(-1), ['one']);
      await cli(dir, 'New-NetIPsecRule -DisplayName two -Name two -PolicyStore "corp\\IPsec" | Out-Null');
      await waitFor(2);
      assert.deepEqual(seen.at(-1), ['one', 'two']);
      // A damaged file keeps the last policy and reports the error.
      writeFileSync(join(dir, 'policy', 'PersistentStore.json'), '{');
      for (let i = 0; i < 200 && errors.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.match(errors[0]?.message ?? '', /is not valid JSON/);
      assert.equal(seen.length, 2);
    } finally {
      w.close();
    }
  });

  it('a deleted policy directory or store file is never read as "no policy": the policy in force stays until the store is back', async () => {
    const { watchActivePolicy } = await import('../src/policy/watch.ts');
    const dir = freshStateDir();
    const stores = new PolicyStores(dir);
    await cli(dir, 'New-NetIPsecRule -DisplayName one -Name one | Out-Null');
    const seen: string[][] = [];
    const errors: Error[] = [];
    const w = watchActivePolicy(
      stores,
      (doc) => seen.push(doc.rules.map((r) => r.Name)),
      (e) => errors.push(e),
    );
    try {
      // The whole state directory goes (rm -rf by a bad configuration-management run).
      rmSync(join(dir, 'policy'), { recursive: true, force: true });
      await waitUntil(() => errors.some((e) => /disappeared: the policy in force stays/.test(e.message)), 'the error');
      assert.deepEqual(seen, [], 'no empty policy handed on');
      // It comes back (restored, or written anew): followed again.
      await cli(dir, 'New-NetIPsecRule -DisplayName two -Name two | Out-Null');
      await waitUntil(() => seen.length > 0, 'the restored store', 5000);
      assert.deepEqual(seen.at(-1), ['two']);
      // The PersistentStore file alone removed: the same.
      const before = errors.length;
      rmSync(join(dir, 'policy', 'PersistentStore.json'));
      await waitUntil(() => errors.length > before, 'the error');
      assert.match(errors.at(-1)?.message ?? '', /PersistentStore\.json disappeared/);
      assert.deepEqual(seen.at(-1), ['two']);
    } finally {
      w.close();
    }
  });
});
