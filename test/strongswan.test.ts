import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PeerError } from '../src/errors.ts';
import { Capture } from '../src/lab/capture.ts';
import { Lab } from '../src/lab/lab.ts';
import { Charon, parseListSas, parseVici, pskHostTunnel, renderConf } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';

const hostToHostConfig = (local: string, remote: string) =>
  pskHostTunnel(local, remote, { name: 'h2h', secret: 'lab-only-psk-0123456789abcdef' });

describe('strongSwan peer helper', () => {
  let lab: Lab;
  let alice: Charon;
  let bob: Charon;
  before(async () => {
    lab = await Lab.create(hostToHost());
    const a = lab.address('alice');
    const b = lab.address('bob');
    [alice, bob] = await Promise.all([
      Charon.start(lab, 'alice', hostToHostConfig(a, b)),
      Charon.start(lab, 'bob', hostToHostConfig(b, a)),
    ]);
  });
  after(async () => {
    await Promise.all([alice?.stop(), bob?.stop()]);
    await lab?.destroy();
  });

  it('two charons in the lab bring up a tunnel and ping through it; only ESP crosses the wire', async () => {
    const cap = await Capture.start(lab, 'bob', 'eth0');
    await alice.initiate('h2h');
    const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', lab.address('bob')], {
      allowFailure: true,
    });
    assert.equal(ping.code, 0, `${ping.stdout}\n${alice.log().slice(-3000)}`);

    const rows = await cap.fields(['frame.protocols', 'ip.src', 'ip.dst', 'udp.dstport']);
    await cap.dispose();
    const ipRows = rows.filter((r) => r[0]?.includes(':ip:'));
    const esp = ipRows.filter((r) => r[0]?.endsWith(':udp:udpencap:esp'));
    const ike = ipRows.filter((r) => r[0]?.endsWith(':isakmp'));
    assert.ok(ike.length >= 4, `IKE_SA_INIT and IKE_AUTH seen (${ike.length} IKE packets)`);
    assert.ok(esp.length >= 6, `3 echo requests and 3 replies as ESP in UDP 4500 (${esp.length} seen)`);
    assert.deepEqual(
      ipRows.filter((r) => !r[0]?.endsWith(':udp:udpencap:esp') && !r[0]?.endsWith(':isakmp')),
      [],
      'nothing but IKE and ESP between the hosts: no cleartext ICMP',
    );
    for (const r of esp) assert.equal(r[3], '4500');

    const [sa] = await alice.listSas();
    assert.equal(sa?.state, 'ESTABLISHED');
    assert.equal(sa?.version, 2);
    assert.equal(sa?.encrAlg, 'AES_CBC');
    assert.equal(sa?.dhGroup, 'ECP_256');
    const child = sa?.children[0];
    assert.equal(child?.state, 'INSTALLED');
    assert.equal(child?.mode, 'TUNNEL');
    assert.equal(child?.encrAlg, 'AES_GCM_16');
    assert.equal(child?.encap, true);
    assert.deepEqual(child?.localTs, [`${lab.address('alice')}/32`]);
    assert.ok((child?.packetsOut ?? 0) >= 3 && (child?.packetsIn ?? 0) >= 3, JSON.stringify(child));
    // The responder sees the same SPIs the other way round.
    const [bsa] = await bob.listSas();
    assert.equal(bsa?.children[0]?.spiIn, child?.spiOut);
    assert.equal(bsa?.children[0]?.spiOut, child?.spiIn);
  });

  it("a failed initiation is a PeerError carrying charon's log", async () => {
    await assert.rejects(
      alice.initiate('no-such-child', 3),
      (e: unknown) => e instanceof PeerError && /no-such-child/.test(e.message),
    );
  });
});

describe('strongSwan configuration rendering', () => {
  it('renders one key per line and refuses injection', () => {
    assert.equal(
      renderConf({ a: { b: ['x', 'y'], c: true, d: 3, e: undefined } }),
      'a {\n  b = x,y\n  c = yes\n  d = 3\n}\n',
    );
    assert.throws(() => renderConf({ 'bad key': 'x' }), PeerError);
    assert.throws(() => renderConf({ k: 'x\n}\nconnections {' }), PeerError);
  });

  it('parses swanctl raw vici output', () => {
    assert.deepEqual(parseVici('a=1 b=[x y] c {d=2 e {} f=[]}'), {
      a: '1',
      b: ['x', 'y'],
      c: { d: '2', e: {}, f: [] },
    });
    assert.throws(() => parseVici('a ~'), PeerError);
    assert.throws(() => parseVici('a=[x y'), PeerError);
    const [sa] = parseListSas(
      'list-sa event {h2h {uniqueid=1 version=2 state=ESTABLISHED local-host=192.0.2.1 remote-host=192.0.2.2 initiator=yes encr-alg=AES_CBC encr-keysize=256 integ-alg=HMAC_SHA2_256_128 prf-alg=PRF_HMAC_SHA2_256 dh-group=ECP_256 child-sas {h2h-1 {name=h2h state=INSTALLED mode=TUNNEL protocol=ESP encap=yes spi-in=59b3c8ee spi-out=c994c0a5 encr-alg=AES_GCM_16 encr-keysize=256 bytes-in=252 packets-in=3 bytes-out=252 packets-out=3 local-ts=[192.0.2.1/32] remote-ts=[192.0.2.2/32]}}}}',
    );
    assert.equal(sa?.children[0]?.spiOut, 'c994c0a5');
    assert.deepEqual(sa?.children[0]?.remoteTs, ['192.0.2.2/32']);
    assert.equal(sa?.children[0]?.packetsIn, 3);
  });
});
