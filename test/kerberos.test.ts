/**
 * Kerberos V5 through GSS-API against a real MIT KDC (krb5-kdc) on the lab's domain controller:
 * computer accounts from keytabs, users from kinit, MICs in both directions over the lab network,
 * and the failures a domain member meets (KDC down, unknown account, a stale keytab, clock skew).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../src/lab/lab.ts';
import { LabDomain } from '../src/lab/kdc.ts';
import { domain } from '../src/lab/topology.ts';
import { events, fixture } from './helpers.ts';
import { GssContext } from '../src/io/gss.ts';
import { domainRealm } from '../src/filter/location.ts';
import { writeFileSync } from 'node:fs';

describe('Kerberos through GSS-API with the lab domain controller (MIT krb5-kdc)', () => {
  let lab: Lab;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(domain());
    dom = await LabDomain.create(lab);
    await dom.join('alice');
    await dom.join('bob');
  });
  after(async () => {
    await lab?.destroy();
  });

  /** alice's first context token toward bob, or the failure: only the KDC is involved. */
  async function firstToken(host: string, args: { principal: string; keytab?: string; ccache?: string }) {
    const p = fixture(
      lab,
      host,
      'gss-peer',
      [
        'initiate',
        '-',
        0,
        `host@${dom.fqdn('bob')}`,
        args.principal,
        args.keytab ?? '-',
        args.ccache ?? `MEMORY:${host}`,
      ],
      { KRB5_CONFIG: dom.krb5Conf },
    );
    await p.exited;
    return {
      token: events<{ octets: number }>(p, 'token')[0],
      error: events<{ reason: string; message: string }>(p, 'error')[0],
      out: p.output(),
    };
  }

  it('computer to computer: alice (keytab only, no kinit) authenticates to host@bob; mutual; MICs verify both ways, an altered message does not', async () => {
    const b = lab.address('bob');
    const acceptor = fixture(lab, 'bob', 'gss-peer', ['accept', b, 7001, dom.keytab('bob')], {
      KRB5_CONFIG: dom.krb5Conf,
    });
    await acceptor.waitFor(/listening/);
    const initiator = fixture(
      lab,
      'alice',
      'gss-peer',
      [
        'initiate',
        b,
        7001,
        `host@${dom.fqdn('bob')}`,
        dom.computerPrincipal('alice'),
        dom.keytab('alice'),
        'MEMORY:alice',
      ],
      { KRB5_CONFIG: dom.krb5Conf },
    );
    await Promise.all([initiator.exited, acceptor.exited]);
    const [iDone] = events<{ complete: boolean; source: string; target: string }>(initiator, 'established');
    const [aDone] = events<{ complete: boolean; source: string; target: string }>(acceptor, 'established');
    assert.ok(iDone && aDone, `${initiator.output()}\n${acceptor.output()}`);
    assert.deepEqual([iDone.complete, aDone.complete], [true, true]);
    assert.equal(aDone.source, dom.computerPrincipal('alice'), 'bob sees the computer account of alice');
    assert.equal(iDone.target, dom.computerPrincipal('bob'), 'alice authenticated bob (mutual)');
    // Both ends hold the same session key (AuthIP's keys come from it); bob's keytab names his account.
    const keys = [initiator, acceptor].map((p) => events<{ sha256: string }>(p, 'session key')[0]?.sha256);
    assert.ok(keys[0] && keys[0] === keys[1], JSON.stringify(keys));
    assert.deepEqual(events<{ principals: string[] }>(acceptor, 'keytab')[0]?.principals, [
      dom.computerPrincipal('bob'),
    ]);
    for (const p of [initiator, acceptor]) {
      const [mic] = events<{ verified: boolean; alteredVerified: boolean }>(p, 'mic');
      assert.deepEqual(mic, { event: 'mic', verified: true, alteredVerified: false });
    }
    assert.match(
      dom.log(),
      /TGS_REQ .* host\/alice\.corp\.example@CORP\.EXAMPLE for host\/bob\.corp\.example@CORP\.EXAMPLE/,
    );
  });

  it('domain membership (the Domain profile) needs krb5.conf and a host keytab of its realm, not krb5.conf alone', () => {
    assert.equal(domainRealm({ KRB5_CONFIG: dom.krb5Conf, KRB5_KTNAME: `FILE:${dom.keytab('alice')}` }), dom.realm);
    assert.equal(domainRealm({ KRB5_CONFIG: dom.krb5Conf, KRB5_KTNAME: `${dom.dir}/none.keytab` }), undefined);
    const other = `${dom.dir}/other-krb5.conf`;
    writeFileSync(other, '[libdefaults]\n  default_realm = ATHENA.MIT.EDU\n');
    assert.equal(domainRealm({ KRB5_CONFIG: other, KRB5_KTNAME: dom.keytab('alice') }), undefined);
  });

  it('a user with a ticket from kinit (Extended Mode credentials): the context names the user', async () => {
    await dom.addUser('dana', 'lab-only-Passw0rd');
    await dom.kinit('alice', 'dana', 'lab-only-Passw0rd', `FILE:${dom.dir}/dana.ccache`);
    const r = await firstToken('alice', { principal: `dana@${dom.realm}`, ccache: `FILE:${dom.dir}/dana.ccache` });
    assert.ok(r.token && r.token.octets > 100, r.out);
  });

  it('failures a member meets, each with its reason: unknown account, stale keytab (either side), KDC down', async () => {
    const unknown = await firstToken('alice', {
      principal: `host/nobody.corp.example@${dom.realm}`,
      keytab: dom.keytab('alice'),
    });
    assert.equal(unknown.error?.reason, 'no-credentials', unknown.out);
    // carol's account got a new key at the KDC (a reset computer account); her keytab has the old one.
    await dom.join('carol');
    await dom.rekeyAccount('carol');
    const stale = await firstToken('carol', { principal: dom.computerPrincipal('carol'), keytab: dom.keytab('carol') });
    assert.equal(stale.error?.reason, 'bad-key', `carol as initiator: ${stale.out}`);
    // … and as acceptor she cannot read the ticket alice gets for her.
    const c = lab.address('carol');
    const acceptor = fixture(lab, 'carol', 'gss-peer', ['accept', c, 7002, dom.keytab('carol')], {
      KRB5_CONFIG: dom.krb5Conf,
    });
    await acceptor.waitFor(/listening/);
    const initiator = fixture(
      lab,
      'alice',
      'gss-peer',
      [
        'initiate',
        c,
        7002,
        `host@${dom.fqdn('carol')}`,
        dom.computerPrincipal('alice'),
        dom.keytab('alice'),
        'MEMORY:a',
      ],
      { KRB5_CONFIG: dom.krb5Conf },
    );
    await acceptor.exited;
    await initiator.stop();
    assert.equal(events<{ reason: string }>(acceptor, 'error')[0]?.reason, 'bad-key', acceptor.output());
    await dom.stop();
    try {
      const down = await firstToken('alice', {
        principal: dom.computerPrincipal('alice'),
        keytab: dom.keytab('alice'),
      });
      assert.equal(down.error?.reason, 'kdc-unreachable', down.out);
    } finally {
      await dom.start();
    }
  });
});

describe('Kerberos with a realm on loopback (both peers in one process)', () => {
  it('the KDC on 127.0.0.1: an in-process initiator and acceptor agree on the session key', async () => {
    const dom = await LabDomain.loopback();
    const saved = process.env.KRB5_CONFIG;
    try {
      process.env.KRB5_CONFIG = dom.krb5Conf;
      await dom.join('alice');
      await dom.join('bob');
      const i = GssContext.initiator({
        target: dom.computerPrincipal('bob'),
        principal: dom.computerPrincipal('alice'),
        clientKeytab: dom.keytab('alice'),
        ccache: 'MEMORY:loopback-alice',
      });
      const a = GssContext.acceptor({ keytab: dom.keytab('bob') });
      const first = await i.step(null);
      const reply = await a.step(first.token);
      const done = await i.step(reply.token);
      assert.deepEqual([done.complete, reply.complete], [true, true]);
      assert.deepEqual(i.sessionKey(), a.sessionKey());
      assert.equal(a.names().source, dom.computerPrincipal('alice'));
    } finally {
      if (saved === undefined) delete process.env.KRB5_CONFIG;
      else process.env.KRB5_CONFIG = saved;
      await dom.close();
    }
  });
});
