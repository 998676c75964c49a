/**
 * The Security log: `auditpol` decides which IPsec subcategories and outcomes are written, the
 * daemon writes them as JSON lines (rotated), and `Get-WinEvent -FilterHashtable` reads them back.
 * In the lab, a wrong pre-shared key against strongSwan produces 4653 with its failure reason —
 * only once "IPsec Main Mode" failure auditing is enabled, as on Windows.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AuditEvent } from '../src/audit/events.ts';
import { eventMessage, readSecurityLog, SecurityLog } from '../src/audit/log.ts';
import { auditPolicyFile, AuditPolicyError, LiveAuditPolicy, runAuditpol } from '../src/audit/policy.ts';
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { decodeJournalEntry, encodeJournalEntry } from '../src/io/journal.ts';
import { PacketBatch, UnixDatagramSocket } from '../src/io/native.ts';
import { applyPolicy, consecArgv } from './helpers.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

const mmFailure = (n: number): AuditEvent => ({
  id: 4653,
  subcategory: 'IPsec Main Mode',
  success: false,
  local: { address: '192.0.2.1', port: 500 },
  remote: { address: '192.0.2.2', port: 500 },
  keyingModule: 'IKEv2',
  role: 'Initiator',
  authenticationMethod: 'Preshared key',
  failure: {
    failurePoint: 'Remote computer',
    failureReason: `Authentication failed ${n}`,
    state: 'Sent fourth (ID) payload',
    notify: 'AUTHENTICATION_FAILED',
    initiatorCookie: '0102030405060708',
    responderCookie: '0807060504030201',
  },
});
const qmEstablished: AuditEvent = {
  id: 5451,
  subcategory: 'IPsec Quick Mode',
  success: true,
  quickMode: {
    local: { address: '192.0.2.1', port: 500 },
    remote: { address: '192.0.2.2', port: 500 },
    keyingModule: 'IKEv2',
    mode: 'Transport',
    protocol: 'ESP',
    encryption: 'AES-GCM 256',
    integrity: 'AES-GMAC 256',
    inboundSpi: 1,
    outboundSpi: 2,
    mmSaId: '1',
    localSelectors: '192.0.2.1',
    remoteSelectors: '192.0.2.2',
  },
};

describe('auditpol', () => {
  it('sets and shows subcategories as Windows auditpol does; everything starts at No Auditing', () => {
    const dir = freshStateDir('consec-audit-');
    assert.match(runAuditpol(dir, ['/get', '/subcategory:IPsec Main Mode']), /IPsec Main Mode\s+No Auditing/);
    assert.equal(
      runAuditpol(dir, ['/set', '/subcategory:"IPsec Main Mode"', '/success:enable', '/failure:enable']),
      'The command was successfully executed.\n',
    );
    runAuditpol(dir, ['/SET', '/Subcategory:ipsec quick mode', '/failure:enable']);
    const all = runAuditpol(dir, ['/get', '/category:*']);
    assert.match(all, /^System audit policy\n/);
    assert.match(
      all,
      /Logon\/Logoff\n {2}IPsec Main Mode\s+Success and Failure\n {2}IPsec Quick Mode\s+Failure\n {2}IPsec Extended Mode\s+No Auditing/,
    );
    runAuditpol(dir, ['/set', '/subcategory:IPsec Main Mode', '/success:disable']);
    assert.match(runAuditpol(dir, ['/get', '/subcategory:IPsec Main Mode']), /IPsec Main Mode\s+Failure\n$/);
  });

  it('a bad command says why and changes nothing; a damaged policy file is reported, not guessed', () => {
    const dir = freshStateDir('consec-audit-');
    runAuditpol(dir, ['/set', '/subcategory:IPsec Driver', '/success:enable']);
    const before = readFileSync(auditPolicyFile(dir), 'utf8');
    for (const args of [
      ['/set', '/subcategory:IPsec Mian Mode', '/success:enable'],
      ['/set', '/subcategory:IPsec Main Mode', '/success:maybe'],
      ['/set', '/subcategory:IPsec Main Mode'],
      ['/frobnicate'],
      ['/get'],
    ]) {
      assert.throws(() => runAuditpol(dir, args), AuditPolicyError, args.join(' '));
      assert.equal(readFileSync(auditPolicyFile(dir), 'utf8'), before, `${args.join(' ')} changed nothing`);
    }
    writeFileSync(
      auditPolicyFile(dir),
      '{"format":"consec-auditpol","version":1,"subcategories":{"IPsec Main Mode":{"success":"yes"}}}',
    );
    assert.throws(() => runAuditpol(dir, ['/get', '/category:*']), /not a valid audit policy/);
  });
});

describe('Security log and Get-WinEvent', () => {
  it('writes only what the audit policy enables (picked up live), newest first, across rotated files', async () => {
    const dir = freshStateDir('consec-audit-');
    const errors: Error[] = [];
    let clock = Date.now();
    const policy = new LiveAuditPolicy(dir, undefined, () => clock);
    const log = new SecurityLog(dir, policy, (e) => errors.push(e), { maxBytes: 3000, keep: 3 });
    log.emit(mmFailure(0));
    assert.deepEqual(readSecurityLog(dir), [], 'nothing while auditing is off');
    runAuditpol(dir, ['/set', '/subcategory:IPsec Main Mode', '/failure:enable']);
    // The daemon looks at the policy file at most every 200 ms (no stat per event): not yet, then at 250 ms.
    log.emit(mmFailure(0));
    assert.deepEqual(readSecurityLog(dir), [], 'the change is seen at the next look, not per event');
    clock += 250;
    for (let i = 1; i <= 6; i++) log.emit(mmFailure(i));
    log.emit(qmEstablished); // Quick Mode success is not enabled
    const records = readSecurityLog(dir);
    assert.equal(errors.length, 0, errors.join('; '));
    assert.equal(records.length, 6);
    assert.deepEqual(
      records.map((r) => r.RecordId),
      [6, 5, 4, 3, 2, 1],
      'newest first, numbered in order across rotation',
    );
    assert.ok(readFileSync(join(dir, 'audit', 'security.1.jsonl'), 'utf8').length > 0, 'the log rotated');
    assert.equal(records[0]?.KeywordsDisplayNames[0], 'Audit Failure');
    assert.match(
      records[0]?.Message ?? '',
      /^An IPsec Main Mode negotiation failed\.\n[\s\S]*Failure Reason:\t+IKE authentication credentials are unacceptable\.\n\tDetail:\t+Authentication failed 6/,
      "Windows' text for the error (ERROR_IPSEC_IKE_AUTH_FAIL), consec's finding as Detail",
    );
    // A daemon restart continues the numbering.
    const again = new SecurityLog(dir, new LiveAuditPolicy(dir), (e) => errors.push(e), { maxBytes: 3000, keep: 3 });
    again.emit(mmFailure(7));
    assert.equal(readSecurityLog(dir, { maxEvents: 1 })[0]?.RecordId, 7);

    const r = await ps(
      [
        "$e = Get-WinEvent -FilterHashtable @{LogName='Security'; Id=4653} -MaxEvents 2",
        '$e.Count',
        '$e[0].Id',
        "$e[0].Message -match 'Authentication failed 7'",
        '$e[0].KeywordsDisplayNames',
        "Get-WinEvent -FilterHashtable @{LogName='Security'; Id=5451}",
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, '2\n4653\nTrue\nAudit Failure\n');
    assert.match(r.err, /No events were found that match the specified selection criteria\./);
    assert.match(r.err, /NoMatchingEventsFound,Get-WinEvent/);
  });
});

describe('policy reload events', () => {
  it('5465 for a reload done, 5461 with the policy and the error when the store could not be applied', () => {
    assert.equal(
      eventMessage({ id: 5465, subcategory: 'Filtering Platform Policy Change', success: true }),
      'PAStore Engine received a control for forced reloading of IPsec policy and processed the control successfully.',
    );
    assert.equal(
      eventMessage({
        id: 5461,
        subcategory: 'Filtering Platform Policy Change',
        success: false,
        policy: '/var/lib/consec/policy',
        errorCode: 'not valid JSON',
      }),
      'PAStore Engine failed to apply local registry storage IPsec policy on the computer.\n\nPolicy:\t\t/var/lib/consec/policy\nError Code:\t\tnot valid JSON',
    );
  });
});

describe('auditpol and netsh inside PowerShell scripts (native commands)', () => {
  it('run in-process with their quoting, output lines down the pipeline, and $LASTEXITCODE', async () => {
    const dir = freshStateDir('consec-audit-native-');
    const r = await ps(
      [
        'auditpol /set /subcategory:"IPsec Main Mode" /failure:enable',
        '"code $LASTEXITCODE"',
        "auditpol.exe /get /subcategory:'IPsec Main Mode' | Where-Object { $_ -match 'IPsec' }",
        'auditpol /set /subcategory:"No Such Thing" /failure:enable',
        '"code $LASTEXITCODE"',
        'netsh advfirewall set global ipsec saidletimemin 10',
        '(netsh advfirewall show global) -match "SAIdleTimeMin"',
        'netsh advfirewall consec show rule name=missing',
        '"code $LASTEXITCODE"',
      ].join('\n'),
      dir,
    );
    assert.equal(
      r.out,
      'The command was successfully executed.\ncode 0\n  IPsec Main Mode                         Failure\ncode 87\n\nOk.\n\nSAIdleTimeMin                         10min\nNo rules match the specified criteria.\n\ncode 1\n',
    );
    assert.match(r.err, /The parameter is incorrect\. \(subcategory "No Such Thing"/);
    assert.equal(new LiveAuditPolicy(dir).current.enabled('IPsec Main Mode', false), true);
  });
});

describe('systemd journal native protocol', () => {
  it('plain fields as KEY=value, values with newlines length-prefixed; decodes back; bad names refused', () => {
    const fields = { MESSAGE: 'line one\nline two\n', PRIORITY: 6, CONSEC_EVENT_ID: 4653, EMPTY: '' };
    const wire = encodeJournalEntry(fields);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(18n);
    assert.deepEqual(
      wire,
      Buffer.concat([
        Buffer.from('MESSAGE\n'),
        len,
        Buffer.from('line one\nline two\n\nPRIORITY=6\nCONSEC_EVENT_ID=4653\nEMPTY=\n'),
      ]),
    );
    assert.deepEqual(decodeJournalEntry(wire), {
      MESSAGE: 'line one\nline two\n',
      PRIORITY: '6',
      CONSEC_EVENT_ID: '4653',
      EMPTY: '',
    });
    assert.throws(() => encodeJournalEntry({ _SYSTEMD_UNIT: 'x' }), RangeError);
    assert.throws(() => encodeJournalEntry({ 'bad name': 'x' }), RangeError);
  });
});

describe('Security log from a running daemon (lab, strongSwan peer)', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('a wrong pre-shared key gives 4653 with its failure reason, only once Main Mode failure auditing is on', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const dir = freshStateDir('consec-audit-lab-');
    await applyPolicy(dir, { local: a, remote: b, tunnel: true, mm: true, psk: 'not-the-key-bob-has-0123456789' });
    const bob = await Charon.start(
      lab,
      'bob',
      pskHostTunnel(b, a, { name: 'c', secret: 'the-key-bob-has-0123456789', proposals: ['aes256-sha256-ecp256'] }),
    );
    // A stand-in for systemd-journald's socket: what the daemon sends there is read back below.
    const journalPath = join(dir, 'journal.socket');
    const journal = UnixDatagramSocket.open(journalPath);
    const daemon = lab.spawn('alice', [
      'env',
      `CONSEC_JOURNAL_SOCKET=${journalPath}`,
      ...consecArgv(['daemon', '--listen', a, '--dpd', '0'], dir),
    ]);
    try {
      await daemon.waitFor(/"msg":"ready"/);
      await lab.exec('alice', ['ping', '-c', '1', '-W', '2', b], { allowFailure: true });
      await daemon.waitFor(/"msg":"audit 4653"/, 10_000);
      assert.deepEqual(readSecurityLog(dir), [], 'auditing is off by default: nothing in the Security log');
      runAuditpol(dir, ['/set', '/subcategory:"IPsec Main Mode"', '/failure:enable']);
      runAuditpol(dir, ['/set', '/subcategory:"Filtering Platform Packet Drop"', '/failure:enable']);
      // Wait out the failed negotiation's hold-down, then try again.
      let events: ReturnType<typeof readSecurityLog> = [];
      for (let i = 0; i < 20 && events.length === 0; i++) {
        await lab.exec('alice', ['ping', '-c', '1', '-W', '1', b], { allowFailure: true });
        events = readSecurityLog(dir, { ids: [4653] });
      }
      assert.ok(events.length > 0, daemon.output().slice(-3000));
      const r = await ps(
        "Get-WinEvent -FilterHashtable @{LogName='Security'; Id=4653} -MaxEvents 1 | Format-List Id, Message",
        dir,
      );
      assert.match(r.out, /Id\s+: 4653/);
      assert.match(r.out, /Network Address:\t192\.0\.2\.2/);
      assert.match(r.out, /Failure Reason:\t+IKE authentication credentials are unacceptable\./);
      assert.deepEqual(
        readSecurityLog(dir, { ids: [4650, 4651, 5451] }),
        [],
        'no success events: only failures are enabled',
      );
      // The ping the Require rule held while IKE failed was dropped: 5152 names it.
      let drops: ReturnType<typeof readSecurityLog> = [];
      for (let i = 0; i < 20 && drops.length === 0; i++) {
        drops = readSecurityLog(dir, { ids: [5152] });
        if (drops.length === 0) await new Promise((r) => setTimeout(r, 250));
      }
      assert.match(
        drops[0]?.Message ?? '',
        new RegExp(
          `^The Windows Filtering Platform has blocked a packet\\.\\n(.|\\n)*Direction:\\t\\tOutbound\\n\\tSource Address:\\t\\t${a}\\n(.|\\n)*Destination Address:\\t${b}\\n(.|\\n)*Protocol:\\t\\t1\\n`,
        ),
        JSON.stringify(drops),
      );
      // The journal got exactly what the Security log got, in the native protocol.
      const batch = new PacketBatch(64, 65_536);
      const entries = Array.from({ length: journal.recv(batch) }, (_, i) => decodeJournalEntry(batch.packet(i)));
      const written = readSecurityLog(dir);
      assert.equal(entries.length, written.length);
      const first = entries.find((e) => e.CONSEC_EVENT_ID === '4653');
      assert.ok(first, JSON.stringify(entries));
      assert.equal(first.SYSLOG_IDENTIFIER, 'consec');
      assert.equal(first.PRIORITY, '4', 'a failure is a warning');
      assert.match(first.MESSAGE ?? '', /^An IPsec Main Mode negotiation failed\.\n\nLocal Endpoint:\n/);
      assert.match(first.MESSAGE ?? '', /Network Address:\t192\.0\.2\.2/);
      assert.equal(first.CONSEC_RECORD_ID, String(written.find((w) => w.Id === 4653)?.RecordId));
      assert.equal((JSON.parse(first.CONSEC_EVENT_JSON ?? '{}') as { id: number }).id, 4653);
    } finally {
      journal.close();
      await daemon.stop('SIGTERM', 5000);
      await bob.stop();
    }
  });
});
