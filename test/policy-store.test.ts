import assert from 'node:assert/strict';
import fc from 'fast-check';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { PolicyDocument } from '../src/policy/model.ts';
import { PolicyStores, storeFileText } from '../src/policy/store.ts';
import { validateDocument } from '../src/policy/validate.ts';
import { ROOT, waitUntil } from './helpers.ts';
import { freshStateDir, ps, storeBytes } from './pwsh-helpers.ts';
import { netSecurityCommands } from '../src/shell/netsecurity/cmdlets.ts';
import { createRuntime } from '../src/shell/pwsh/index.ts';

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

  it('a script is one transaction: read once, written once, each rule validated once — linear in the rules', async () => {
    const script = (n: number) =>
      [
        '$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "store-test-psk-0123456789"',
        '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
        ...Array.from(
          { length: n },
          (_, i) =>
            `New-NetIPsecRule -DisplayName "server ${i}" -RemoteAddress 2001:db8:100::${i.toString(16)} -InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet $p1.Name | Out-Null`,
        ),
      ].join('\n');
    const run = async (n: number) => {
      const dir = freshStateDir('consec-txn-');
      const stores = new PolicyStores(dir);
      let err = '';
      const rt = createRuntime({ stdout: () => {}, stderr: (t) => (err += t) }, netSecurityCommands(stores));
      const errors = await stores.transaction(() => rt.run(script(n)));
      assert.equal(errors, 0, err);
      assert.equal(stores.read().rules.length, n);
      return stores.work;
    };
    const small = await run(250);
    const big = await run(1000);
    // One read and one write of the store whatever the size; validation grows with the rules added, not with their square.
    assert.deepEqual([small.reads, small.writes, big.reads, big.writes], [1, 1, 1, 1]);
    assert.ok(big.validated <= 4 * small.validated + 8, `validated ${small.validated} → ${big.validated}`);
    assert.ok(big.validated >= 1000);
  });

  it("in a script, a failing line changes nothing and the lines around it apply; reads see the script's changes; a terminating error keeps what ran", async () => {
    const dir = freshStateDir('consec-txn-');
    const r = await ps(
      [
        '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal (New-NetIPsecAuthProposal -Machine -PreSharedKey "store-test-psk-0123456789")',
        'New-NetIPsecRule -DisplayName a -Name a -RemoteAddress 192.0.2.1 -Phase1AuthSet $p1.Name | Out-Null',
        'New-NetIPsecRule -DisplayName bad -Name bad -RemoteAddress 192.0.2.300 | Out-Null',
        'New-NetIPsecRule -DisplayName a2 -Name a | Out-Null',
        'Set-NetIPsecRule -Name a -RemoteAddress 192.0.2.9',
        'Set-NetIPsecRule -Name a -InboundSecurity Require -OutboundSecurity None -Phase1AuthSet nosuchset',
        'New-NetIPsecRule -DisplayName b -Name b -RemoteAddress 192.0.2.2 -Phase1AuthSet $p1.Name | Out-Null',
        'Rename-NetIPsecPhase1AuthSet -Name $p1.Name -NewName psk-renamed',
        '"seen: " + ((Get-NetIPsecRule | ForEach-Object { $_.Name + "=" + ($_ | Get-NetFirewallAddressFilter).RemoteAddress }) -join ",")',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 3, r.err);
    assert.match(r.out, /seen: a=192\.0\.2\.9,b=192\.0\.2\.2/);
    const doc = new PolicyStores(dir).read();
    assert.deepEqual(
      doc.rules.map((x) => [x.Name, x.RemoteAddress.join(), x.Phase1AuthSet, x.InboundSecurity]),
      [
        ['a', '192.0.2.9', 'psk-renamed', 'None'],
        ['b', '192.0.2.2', 'psk-renamed', 'None'],
      ],
    );
    // (The failing Set- left InboundSecurity at its default.) A terminating error (throw) ends the
    // script; what ran before it is written.
    const t = await ps(
      [
        '$ErrorActionPreference = "Stop"',
        'New-NetIPsecRule -DisplayName c -Name c | Out-Null',
        'New-NetIPsecRule -DisplayName bad -RemoteAddress 192.0.2.300',
        'New-NetIPsecRule -DisplayName d -Name d',
      ].join('\n'),
      dir,
    );
    assert.equal(t.errors, 1);
    assert.deepEqual(
      new PolicyStores(dir).read().rules.map((x) => x.Name),
      ['a', 'b', 'c'],
    );
  });

  it('property: a script as one transaction ends with the same store and errors as its lines run one by one', async () => {
    const name = fc.constantFrom('a', 'b', 'c');
    const addr = fc.constantFrom('192.0.2.1', '192.0.2.0/24', '2001:db8::7', '192.0.2.999');
    const line = fc.oneof(
      fc
        .tuple(name, addr)
        .map(([n, a]) => `New-NetIPsecRule -DisplayName ${n} -Name ${n} -RemoteAddress ${a} | Out-Null`),
      fc.tuple(name, addr).map(([n, a]) => `Set-NetIPsecRule -Name ${n} -RemoteAddress ${a}`),
      fc
        .tuple(name, fc.constantFrom('p', 'q', 'nosuch'))
        .map(([n, p]) => `Set-NetIPsecRule -Name ${n} -Phase1AuthSet ${p}`),
      name.map((n) => `Remove-NetIPsecRule -Name ${n}`),
      fc.tuple(name, name).map(([n, m]) => `Rename-NetIPsecRule -Name ${n} -NewName ${m}`),
      fc.tuple(name, fc.constantFrom('Enable', 'Disable')).map(([n, v]) => `${v}-NetIPsecRule -Name ${n}`),
      fc
        .constantFrom('p', 'q')
        .map(
          (p) =>
            `New-NetIPsecPhase1AuthSet -Name ${p} -DisplayName ${p} -Proposal (New-NetIPsecAuthProposal -Machine -PreSharedKey "fuzz-psk-0123456789") | Out-Null`,
        ),
      fc.constantFrom('p', 'q').map((p) => `Remove-NetIPsecPhase1AuthSet -Name ${p}`),
      fc
        .tuple(fc.constantFrom('p', 'q'), fc.constantFrom('p', 'q', 'r'))
        .map(([p, r]) => `Rename-NetIPsecPhase1AuthSet -Name ${p} -NewName ${r}`),
    );
    const runtime = (stores: PolicyStores) =>
      createRuntime({ stdout: () => {}, stderr: () => {} }, netSecurityCommands(stores));
    await fc.assert(
      fc.asyncProperty(fc.array(line, { minLength: 1, maxLength: 12 }), async (lines) => {
        const one = new PolicyStores(freshStateDir('consec-prop-'));
        let errorsOne = 0;
        for (const l of lines) errorsOne += await runtime(one).run(l); // each line its own change, as before
        const txn = new PolicyStores(freshStateDir('consec-prop-'));
        const rt = runtime(txn);
        const errorsTxn = await txn.transaction(() => rt.run(lines.join('\n')));
        assert.equal(errorsTxn, errorsOne, lines.join('\n'));
        assert.deepEqual(txn.read(), one.read(), lines.join('\n'));
      }),
      { numRuns: 40 },
    );
  });

  it('a long-lived reader parses only the lines that changed, and reads exactly what a fresh reader reads', async () => {
    const dir = freshStateDir('consec-lines-');
    await ps(
      Array.from(
        { length: 50 },
        (_, i) => `New-NetIPsecRule -DisplayName r${i} -Name r${i} -RemoteAddress 192.0.2.${i + 1} | Out-Null`,
      ).join('\n'),
      dir,
    );
    const daemon = new PolicyStores(dir, { cacheReads: true });
    const first = daemon.read();
    assert.deepEqual(first, new PolicyStores(dir).read());
    await ps(
      'Set-NetIPsecRule -Name r7 -RemoteAddress 192.0.2.200; New-NetIPsecRule -DisplayName more -Name more | Out-Null',
      dir,
    );
    const second = daemon.read();
    assert.deepEqual(second, new PolicyStores(dir).read());
    // Unchanged rules are the very objects read before; the changed and the new one are new.
    const same = second.rules.filter((r) => first.rules.includes(r)).map((r) => r.Name);
    assert.equal(same.length, 49);
    assert.ok(!same.includes('r7') && !same.includes('more'));
    // A hand-edited layout (pretty-printed) is read the ordinary way; a bad value is named precisely.
    const file = join(dir, 'policy', 'PersistentStore.json');
    const doc = JSON.parse(readFileSync(file, 'utf8')) as { document: { rules: { Enabled: string }[] } };
    writeFileSync(file, JSON.stringify(doc, null, 2));
    assert.deepEqual(daemon.read(), new PolicyStores(dir).read());
    (doc.document.rules[3] as { Enabled: string }).Enabled = 'Maybe';
    writeFileSync(file, storeFileText('PersistentStore', doc.document as never));
    assert.throws(() => daemon.read(), /not a valid consec policy \(document\.rules\.3\.Enabled: /);
  });

  it('the long-lived reader equals a fresh reader after any sequence of edits (property)', async () => {
    const dir = freshStateDir('consec-lines-prop-');
    await ps(
      [
        'New-NetIPsecRule -DisplayName base -Name base -RemoteAddress 192.0.2.1 | Out-Null',
        'New-NetIPsecMainModeRule -DisplayName mm -Name mm -RemoteAddress 192.0.2.0/24 | Out-Null',
      ].join('\n'),
      dir,
    );
    const file = join(dir, 'policy', 'PersistentStore.json');
    const base = new PolicyStores(dir).read();
    const rule = base.rules[0] as PolicyDocument['rules'][number];
    const mm = base.mainModeRules[0] as PolicyDocument['mainModeRules'][number];
    // Names with non-ASCII text too: the reader compares bytes and decodes UTF-8 per line.
    const name = fc.stringMatching(/^[a-zé€😀 ]{1,6}$/u);
    const op = fc.oneof(
      fc.record({ kind: fc.constant('add' as const), at: fc.nat(), name, mm: fc.boolean() }),
      fc.record({ kind: fc.constant('remove' as const), at: fc.nat(), mm: fc.boolean() }),
      fc.record({ kind: fc.constant('rename' as const), at: fc.nat(), name }),
      fc.record({ kind: fc.constant('move' as const), from: fc.nat(), to: fc.nat() }),
      fc.record({ kind: fc.constant('setting' as const), name }),
    );
    let serial = 0;
    fc.assert(
      fc.property(fc.array(fc.array(op, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 8 }), (edits) => {
        const doc = structuredClone(base);
        writeFileSync(file, storeFileText('PersistentStore', doc));
        const daemon = new PolicyStores(dir, { cacheReads: true });
        assert.deepEqual(daemon.read(), new PolicyStores(dir).read());
        for (const edit of edits) {
          for (const o of edit) {
            const list = (
              o.kind !== 'move' && o.kind !== 'setting' && o.kind !== 'rename' && o.mm ? doc.mainModeRules : doc.rules
            ) as { Name: string; DisplayName: string }[];
            if (o.kind === 'add') {
              const id = `n${serial++}`;
              list.splice(o.at % (list.length + 1), 0, { ...(o.mm ? mm : rule), Name: id, DisplayName: o.name });
            } else if (o.kind === 'remove' && list.length > 0) list.splice(o.at % list.length, 1);
            else if (o.kind === 'rename' && list.length > 0) {
              const i = o.at % list.length;
              list[i] = { ...(list[i] as { Name: string; DisplayName: string }), DisplayName: o.name };
            } else if (o.kind === 'move' && list.length > 0) {
              const [r] = list.splice(o.from % list.length, 1);
              list.splice(o.to % (list.length + 1), 0, r as { Name: string; DisplayName: string });
            } else if (o.kind === 'setting')
              doc.phase1AuthSets = doc.phase1AuthSets.map((x) => ({ ...x, DisplayName: o.name }));
          }
          writeFileSync(file, storeFileText('PersistentStore', doc));
          assert.deepEqual(daemon.read(), new PolicyStores(dir).read());
        }
      }),
      { numRuns: 60 },
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

  it('the disk fills while a policy is written: a clear error, the store as it was, no half file left', async () => {
    // A state directory on a tmpfs of 256 KiB, then filled up, as a full /var would be.
    const dir = mkdtempSync('/tmp/consec-full-');
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', dir]);
    assert.equal(mounted.status, 0, String(mounted.stderr));
    try {
      await ps('New-NetIPsecRule -DisplayName kept -Name kept | Out-Null', dir);
      const file = join(dir, 'policy', 'PersistentStore.json');
      const before = readFileSync(file, 'utf8');
      const filler = join(dir, 'filler');
      spawnSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=4k'], { encoding: 'utf8' }); // until ENOSPC
      // One page free again: the write starts, then runs out (a short write, not an error at once).
      spawnSync('truncate', ['-s', '-8192', filler]);
      // A rule with a long description: the new store no longer fits.
      const r = await cli(dir, `New-NetIPsecRule -DisplayName big -Description "${'x'.repeat(8000)}"`);
      assert.equal(r.code, 1);
      assert.match(r.err, /ENOSPC|no space left on device/i);
      assert.equal(readFileSync(file, 'utf8'), before, 'the store is unchanged');
      assert.deepEqual(
        readdirSync(join(dir, 'policy')).filter((f) => f.includes('.tmp-')),
        [],
        'no half-written temp file left',
      );
      rmSync(filler);
      const after = await cli(dir, 'Get-NetIPsecRule | ForEach-Object { $_.Name }');
      assert.equal(after.out, 'kept\n', after.err);
    } finally {
      spawnSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    }
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

describe('addresses in a store written by hand', () => {
  it("a rule whose address is no address fails the whole-store check (the fleet agent's, a store read whole) as the cmdlet refuses it: else it would match nothing, a Require rule silently gone", async () => {
    const dir = freshStateDir('consec-badaddr-');
    const r = await ps(
      'New-NetIPsecRule -DisplayName "db" -RemoteAddress 192.0.2.30 -InboundSecurity Require -OutboundSecurity Require | Out-Null',
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    const file = join(dir, 'policy', 'PersistentStore.json');
    const doc = new PolicyStores(dir).read();
    doc.rules = doc.rules.map((x) => ({ ...x, RemoteAddress: ['999.1.1.1'] }));
    writeFileSync(file, storeFileText('PersistentStore', doc));
    for (const [k, v] of [
      ['RemoteAddress', ['999.1.1.1']],
      ['LocalAddress', ['192.0.2.1/33']],
      ['RemoteTunnelEndpoint', ['LocalSubnet']],
    ] as const) {
      const bad: PolicyDocument = {
        ...doc,
        rules: doc.rules.map((x) => ({ ...x, RemoteAddress: ['192.0.2.30'], [k]: v })),
      };
      assert.throws(() => validateDocument(bad), new RegExp(k));
    }
  });
});
