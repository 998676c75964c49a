/**
 * Files the root daemon appends to (key log, IKE debug log and its rotation) as a hostile local
 * user would lay them out: a symbolic link at the file's name, a file someone else made, a
 * directory others may write to, a generation `.1` that is not consec's. Each is refused with a
 * clear error and the target is left byte for byte as it was.
 */
import assert from 'node:assert/strict';
import { chmodSync, lstatSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { IkeDebugLog, loadDebugLogSettings, updateDebugLogSettings } from '../src/audit/debuglog.ts';
import type { AuditEvent } from '../src/audit/events.ts';
import { SecurityLog } from '../src/audit/log.ts';
import { LiveAuditPolicy, runAuditpol } from '../src/audit/policy.ts';
import { appendEspKeys } from '../src/ike/keylog.ts';
import { UnsafeFileError } from '../src/io/safe-file.ts';
import { gcmChildSa } from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

const spec = () => gcmChildSa(0x1001, [], []);

describe('files a root daemon writes: no link followed, no file that is not its own', () => {
  it('the key log: appends to the esp_sa it created; refuses a link, a foreign file, a directory others may write to', () => {
    const dir = join(freshStateDir('consec-keys-'), 'keys');
    appendEspKeys(dir, spec());
    appendEspKeys(dir, spec());
    assert.equal(readFileSync(join(dir, 'esp_sa'), 'utf8').trim().split('\n').length, 4, 'two SAs, two rows each');
    assert.equal(lstatSync(join(dir, 'esp_sa')).mode & 0o777, 0o600);

    // A link at the name: nothing is written through it.
    const victim = join(freshStateDir('consec-victim-'), 'passwd');
    writeFileSync(victim, 'root:x:0:0::/root:/bin/bash\n', { mode: 0o644 });
    const linked = join(freshStateDir('consec-keys-'), 'keys');
    mkdirSync(linked, { mode: 0o700 });
    symlinkSync(victim, join(linked, 'esp_sa'));
    assert.throws(
      () => appendEspKeys(linked, spec()),
      (e: Error) => e instanceof UnsafeFileError && /symbolic link/.test(e.message),
    );
    assert.equal(readFileSync(victim, 'utf8'), 'root:x:0:0::/root:/bin/bash\n');

    // A file consec did not create (same owner and mode as ours, even): refused.
    const foreign = join(freshStateDir('consec-keys-'), 'keys');
    mkdirSync(foreign, { mode: 0o700 });
    writeFileSync(join(foreign, 'esp_sa'), 'planted\n', { mode: 0o600 });
    assert.throws(() => appendEspKeys(foreign, spec()), /not a file consec created|did not create/);
    assert.equal(readFileSync(join(foreign, 'esp_sa'), 'utf8'), 'planted\n');

    // A directory others may write to (where they could swap the file): refused.
    const open = join(freshStateDir('consec-keys-'), 'keys');
    mkdirSync(open);
    chmodSync(open, 0o777);
    assert.throws(() => appendEspKeys(open, spec()), /writable by group or others/);
  });

  it('the IKE debug log: `set … file` refuses /etc/passwd and links at set time; the store is unchanged', () => {
    const dir = freshStateDir('consec-dbg-');
    const before = loadDebugLogSettings(dir);
    assert.throws(() => updateDebugLogSettings(dir, { enabled: true, file: '/etc/passwd' }), UnsafeFileError);
    const link = join(dir, 'ike.log');
    symlinkSync('/etc/passwd', link);
    assert.throws(() => updateDebugLogSettings(dir, { enabled: true, file: link }), /symbolic link/);
    assert.deepEqual(loadDebugLogSettings(dir), before);
  });

  it('the IKE debug log rotates only its own file, never onto a `.1` it did not create', () => {
    const dir = freshStateDir('consec-dbg-');
    const logDir = join(dir, 'log');
    const file = join(logDir, 'ike.log');
    updateDebugLogSettings(dir, { enabled: true, file, sizeKb: 1 });
    const errors: Error[] = [];
    const log = new IkeDebugLog(dir, (e) => errors.push(e));
    const line = 'x'.repeat(200);
    for (let i = 0; i < 12; i++) log.line(line); // past 1 KiB: rotated into ike.log.1
    assert.equal(errors.length, 0, errors.join('; '));
    assert.ok(readFileSync(`${file}.1`, 'utf8').includes(line), 'the first generation is ike.log.1');
    for (let i = 0; i < 12; i++) log.line(line); // and again: ike.log.1 is its own, replaced
    assert.equal(errors.length, 0, errors.join('; '));
    log.close();

    // Someone replaces ike.log.1 with a link to a file of theirs: the next rotation refuses.
    const victim = join(freshStateDir('consec-victim-'), 'keep');
    writeFileSync(victim, 'keep me\n');
    rmSync(`${file}.1`);
    symlinkSync(victim, `${file}.1`);
    const again = new IkeDebugLog(dir, (e) => errors.push(e));
    for (let i = 0; i < 12; i++) again.line(line);
    again.close();
    assert.ok(
      errors.some((e) => /ike\.log\.1 exists and is a symbolic link/.test(e.message)),
      errors.join('; '),
    );
    assert.equal(readFileSync(victim, 'utf8'), 'keep me\n');
    assert.ok(lstatSync(`${file}.1`).isSymbolicLink(), 'the planted link was not replaced');
  });

  it('the Security log: never through a link planted in the audit directory; rotation shifts only its own generations', () => {
    const dir = freshStateDir('consec-seclog-');
    runAuditpol(dir, ['/set', '/subcategory:IPsec Driver', '/failure:enable']);
    const errors: Error[] = [];
    const drop = (n: number): AuditEvent => ({
      id: 4963,
      subcategory: 'IPsec Driver',
      success: false,
      remoteAddress: '192.0.2.2',
      spi: 0,
      packets: n,
    });
    const victim = join(freshStateDir('consec-victim-'), 'keep');
    writeFileSync(victim, 'keep me\n');
    const audit = join(dir, 'audit');
    mkdirSync(audit, { recursive: true, mode: 0o700 });
    symlinkSync(victim, join(audit, 'security.jsonl'));
    const log = new SecurityLog(dir, new LiveAuditPolicy(dir), (e) => errors.push(e), { maxBytes: 1500, keep: 2 });
    log.emit(drop(1));
    assert.match(errors[0]?.message ?? '', /security\.jsonl exists and is a symbolic link/);
    assert.equal(readFileSync(victim, 'utf8'), 'keep me\n');
    log.close();

    // Its own files rotate through the generations; a link planted as the oldest one stops that rotation.
    rmSync(join(audit, 'security.jsonl'));
    errors.length = 0;
    const own = new SecurityLog(dir, new LiveAuditPolicy(dir), (e) => errors.push(e), { maxBytes: 1500, keep: 2 });
    for (let i = 0; i < 12; i++) own.emit(drop(i));
    assert.equal(errors.length, 0, errors.join('; '));
    assert.ok(lstatSync(join(audit, 'security.2.jsonl')).isFile(), 'two generations rotated');
    rmSync(join(audit, 'security.2.jsonl'));
    symlinkSync(victim, join(audit, 'security.2.jsonl'));
    for (let i = 0; i < 12; i++) own.emit(drop(i));
    own.close();
    assert.ok(
      errors.some((e) => /security\.2\.jsonl exists and is a symbolic link/.test(e.message)),
      errors.join('; '),
    );
    assert.equal(readFileSync(victim, 'utf8'), 'keep me\n');
  });
});
