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
import {
  chownSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { endianness } from 'node:os';
import { dirname, join } from 'node:path';
import { socketOwner } from '../src/io/socket-owner.ts';
import { userCcacheFile, userCredentials } from '../src/daemon/kerberos.ts';

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

describe("Extended Mode's user: the socket's owner and that user's own tickets", () => {
  it('finds the owner of a connection in the kernel socket tables (IPv4, IPv6, a dual-stack socket), preferring the connected socket to a listener', () => {
    // /proc/net/tcp lines as the kernel prints them (little-endian words on this machine's layout).
    const le = (a: string) => Buffer.from(a.split('.').map(Number)).reverse().toString('hex').toUpperCase();
    const row = (l: string, lp: number, r: string, rp: number, uid: number) =>
      `   0: ${l}:${lp.toString(16).toUpperCase().padStart(4, '0')} ${r}:${rp.toString(16).toUpperCase().padStart(4, '0')} 01 00000000:00000000 00:00000000 00000000  ${uid}        0 1 1`;
    const header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
    const v4 = [
      header,
      row(le('0.0.0.0'), 40000, le('0.0.0.0'), 0, 7),
      row(le('192.0.2.1'), 40000, le('192.0.2.2'), 5007, 1001),
    ].join('\n');
    // ::ffff:192.0.2.1 as four little-endian words.
    const mapped = (a: string) => `0000000000000000FFFF0000${le(a)}`;
    const v6 = [header, row(mapped('192.0.2.1'), 40001, mapped('192.0.2.2'), 5007, 1002)].join('\n');
    const tables: Record<string, string> = { tcp: v4, tcp6: v6 };
    const read = (t: string) => tables[t] ?? '';
    const flow = { protocol: 6, local: '192.0.2.1', remote: '192.0.2.2', remotePort: 5007 };
    if (endianness() === 'LE') {
      assert.equal(socketOwner({ ...flow, localPort: 40000 }, read), 1001, 'the connected socket, not the listener');
      assert.equal(socketOwner({ ...flow, localPort: 40001 }, read), 1002, 'a dual-stack socket in tcp6');
      assert.equal(socketOwner({ ...flow, localPort: 40000, remotePort: 80 }, read), 7, 'only the listener matches');
    }
    assert.equal(socketOwner({ ...flow, localPort: 40002 }, read), undefined);
    assert.equal(socketOwner({ ...flow, protocol: 1, localPort: 40000 }, read), undefined, 'ICMP has no socket table');
  });

  it("a live connection's owner from /proc/net", async () => {
    const { createServer, connect } = await import('node:net');
    const srv = createServer(() => {});
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    const c = connect(port, '127.0.0.1');
    await new Promise((r) => c.once('connect', r));
    try {
      assert.equal(
        socketOwner({
          protocol: 6,
          local: '127.0.0.1',
          localPort: c.localPort as number,
          remote: '127.0.0.1',
          remotePort: port,
        }),
        process.getuid?.(),
      );
    } finally {
      c.destroy();
      srv.close();
    }
  });

  it("reads a user's tickets only from a regular file that user owns, never through a link, into a copy only root can read", () => {
    const dir = mkdtempSync('/tmp/consec-ccache-test-');
    try {
      const conf = join(dir, 'krb5.conf');
      writeFileSync(conf, `[libdefaults]\n  default_ccache_name = FILE:${dir}/cc_%{uid}\n`);
      const env = { KRB5_CONFIG: conf };
      assert.equal(userCcacheFile(1001, env), `${dir}/cc_1001`);
      assert.throws(() => userCredentials(1001, env), /user 1001 has no Kerberos tickets/);
      // Someone else's file under the user's name (here root's): refused.
      writeFileSync(join(dir, 'cc_1001'), 'root tickets', { mode: 0o600 });
      assert.throws(() => userCredentials(1001, env), /not a credential cache of user 1001 \(owner 0\)/);
      // A link to another user's cache: refused without being followed.
      writeFileSync(join(dir, 'cc_0'), 'root tickets', { mode: 0o600 });
      symlinkSync(join(dir, 'cc_0'), join(dir, 'cc_1002'));
      assert.throws(() => userCredentials(1002, env), /is a symbolic link/);
      // The user's own file: copied into a private directory, removed on dispose.
      chownSync(join(dir, 'cc_1001'), 1001, 1001);
      const c = userCredentials(1001, env);
      const copy = c.ccache.replace(/^FILE:/, '');
      assert.equal(readFileSync(copy, 'utf8'), 'root tickets');
      assert.equal(statSync(copy).mode & 0o777, 0o600);
      assert.equal(statSync(dirname(copy)).mode & 0o777, 0o700);
      c.dispose();
      assert.ok(!existsSync(dirname(copy)));
      // Cache types a service cannot read for a user are said so.
      writeFileSync(conf, '[libdefaults]\n  default_ccache_name = KEYRING:persistent:%{uid}\n');
      assert.throws(() => userCcacheFile(1001, env), /KEYRING caches .* consec reads FILE caches/);
      assert.equal(userCcacheFile(1001, { KRB5_CONFIG: join(dir, 'none.conf') }), '/tmp/krb5cc_1001');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
