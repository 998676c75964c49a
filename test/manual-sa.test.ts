/**
 * Manual SAs (no IKE): the file is checked as a whole (permissions, YAML, every field) before
 * anything is installed; a valid pair of mirrored files gives SAs whose ESP opens on the other side;
 * in the lab, two daemons with manual SAs talk in raw ESP and no IKE packet is ever sent.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadManualSas, ManualSaError, manualSpec } from '../src/dataplane/manual.ts';
import { espFor } from '../src/dataplane/sad.ts';
import { Capture } from '../src/lab/capture.ts';
import { Lab, type LabProcess } from '../src/lab/lab.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecDaemon } from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

const A = '192.0.2.1';
const B = '192.0.2.2';

function files(dir: string, cipher = 'aes-gcm-256') {
  const k1 = randomBytes(36).toString('hex');
  const k2 = randomBytes(36).toString('hex');
  const one = (
    name: string,
    local: string,
    remote: string,
    inKey: string,
    outKey: string,
    inSpi: number,
    outSpi: number,
  ) => {
    const path = join(dir, `${name}.yaml`);
    writeFileSync(
      path,
      [
        'sas:',
        `  - name: ${name}`,
        `    local: ${local}`,
        `    remote: ${remote}`,
        '    mode: transport',
        `    cipher: ${cipher}`,
        `    inbound: { spi: ${inSpi}, key: ${inKey} }`,
        `    outbound: { spi: ${outSpi}, key: ${outKey} }`,
      ].join('\n'),
      { mode: 0o600 },
    );
    return path;
  };
  return { alice: one('alice', A, B, k1, k2, 0x1001, 0x2002), bob: one('bob', B, A, k2, k1, 0x2002, 0x1001) };
}

describe('manual SAs', () => {
  it('a mirrored pair of files gives SAs whose ESP the other side opens', () => {
    const dir = freshStateDir('consec-msa-');
    const f = files(dir);
    const [a] = loadManualSas(f.alice);
    const [b] = loadManualSas(f.bob);
    assert.ok(a && b);
    const ea = espFor(manualSpec(a));
    const eb = espFor(manualSpec(b));
    const payload = randomBytes(300);
    const opened = eb.in.open(ea.out.seal(payload, 6));
    assert.deepEqual([opened.payload, opened.nextHeader], [payload, 6]);
    assert.deepEqual(ea.in.open(eb.out.seal(payload, 17)).payload, payload);
  });

  it('refuses files that are readable by others, not YAML, or incomplete — naming the problem', () => {
    const dir = freshStateDir('consec-msa-bad-');
    const f = files(dir);
    chmodSync(f.alice, 0o644);
    assert.throws(() => loadManualSas(f.alice), /readable by its owner only/);
    const bad = (name: string, text: string, why: RegExp) => {
      const p = join(dir, name);
      writeFileSync(p, text, { mode: 0o600 });
      assert.throws(
        () => loadManualSas(p),
        (e: Error) => e instanceof ManualSaError && why.test(e.message),
      );
    };
    bad('yaml.yaml', 'sas: [ {', /not YAML/);
    const base = `sas:\n  - name: x\n    local: ${A}\n    remote: ${B}\n`;
    bad(
      'short.yaml',
      `${base}    cipher: aes-gcm-256\n    inbound: { spi: 4097, key: "00" }\n    outbound: { spi: 8194, key: "00" }\n`,
      /key must be 36 octets/,
    );
    bad(
      'integ.yaml',
      `${base}    cipher: aes-gcm-128\n    integrity: sha256\n    inbound: { spi: 4097 }\n    outbound: { spi: 8194 }\n`,
      /carries its own integrity/,
    );
    bad(
      'spi.yaml',
      `${base}    cipher: null\n    integrity: sha256\n    inbound: { spi: 7, integrityKey: "${'00'.repeat(32)}" }\n    outbound: { spi: 8194, integrityKey: "${'00'.repeat(32)}" }\n`,
      /reserved/,
    );
    bad(
      'family.yaml',
      `sas:\n  - name: x\n    local: ${A}\n    remote: 2001:db8::2\n    cipher: aes-gcm-128\n    inbound: { spi: 4097, key: "${'00'.repeat(20)}" }\n    outbound: { spi: 8194, key: "${'00'.repeat(20)}" }\n`,
      /different IP families/,
    );
    bad(
      'extra.yaml',
      `${base}    cipher: aes-gcm-128\n    typo: 1\n    inbound: { spi: 4097, key: "${'00'.repeat(20)}" }\n    outbound: { spi: 8194, key: "${'00'.repeat(20)}" }\n`,
      /typo|Unrecognized/i,
    );
  });

  it('two daemons with manual SAs: ping in raw ESP, and not one IKE packet', async () => {
    const lab = await Lab.create(hostToHost());
    const daemons: LabProcess[] = [];
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
    try {
      const dir = freshStateDir('consec-msa-lab-');
      const f = files(dir);
      for (const [host, local, file] of [
        ['bob', B, f.bob],
        ['alice', A, f.alice],
      ] as const) {
        const d = consecDaemon(lab, host, freshStateDir('consec-msa-state-'), local, ['--manual-sas', file]);
        daemons.push(d);
        await d.waitFor(/"msg":"ready"/);
        assert.match(d.output(), /manual SA installed/);
        assert.doesNotMatch(d.output(), /[0-9a-f]{72}/, 'no key in the log');
      }
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', B], { allowFailure: true });
      assert.match(ping.stdout, / 0% packet loss/, daemons.map((d) => d.output().slice(-1500)).join('\n'));
      await cap.stop();
      const protocols = new Set(await cap.protocols('ip'));
      assert.deepEqual([...protocols], ['eth:ethertype:ip:esp'], 'ESP only: no IKE, nothing in clear');
    } finally {
      await cap.dispose();
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
      await lab.destroy();
    }
  });
});
