/**
 * The AuthIP SAs of one address: the index by cookies, the dispatch of AuthIP datagrams (exchange
 * types 243–246 on UDP 500, [MS-AIPS] §2.1), and a responder SA for each new Main Mode message 1
 * for which the policy has a Kerberos rule.
 */
import type { Endpoint } from '../../sa/spec.ts';
import { V1DecodeError } from '../v1/codec.ts';
import type { IkeTrace } from '../trace.ts';
import { decodeAuthIp } from './codec.ts';
import { authIpLine } from './trace.ts';
import { AuthIpExchange } from './constants.ts';
import { type AuthIpConfig, type AuthIpHost, AuthIpSession } from './session.ts';
import type { ChildSa } from '../tasks/child-create.ts';
import type { PeerConfig } from '../tasks/context.ts';

/**
 * A rule's negotiation as AuthIP needs it; `view` says whose side the config's tsi is (an
 * initiator's plan names ours first, a responder's config the peer's).
 */
export function authIpConfigOf(peer: PeerConfig, view: 'initiator' | 'responder'): AuthIpConfig {
  const [localTs, remoteTs] = view === 'initiator' ? [peer.tsi, peer.tsr] : [peer.tsr, peer.tsi];
  return {
    name: peer.name ?? 'AuthIP',
    peer,
    mmProposals: peer.ikeProposals,
    espProposals: peer.espProposals,
    localTs,
    remoteTs,
    mode: peer.mode,
    lifeSeconds: Math.round((peer.lifetimes?.ikeExpireMs ?? 480 * 60_000) / 1000),
    childLifeSeconds: Math.round((peer.lifetimes?.childExpireMs ?? 60 * 60_000) / 1000),
    extendedMode: peer.userAuthentication ? {} : undefined,
  };
}

export interface AuthIpManagerOptions extends Omit<AuthIpHost, 'register' | 'unregister' | 'renew'> {
  address: string;
  /** The IKE debug log: every AuthIP message in and out, described (never tokens or keys). */
  trace?: IkeTrace;
  /** The rule for a peer that starts Main Mode; undefined refuses it. */
  configFor(remote: string): AuthIpConfig | undefined;
}

/** Half-open responder SAs kept at most (the rest of the first messages are dropped). */
const MAX_HALF_OPEN = 1024;

export class AuthIpManager {
  private readonly byCookieI = new Map<string, AuthIpSession>();

  constructor(private readonly o: AuthIpManagerOptions) {}

  private get host(): AuthIpHost {
    return {
      spis: this.o.spis,
      audit: this.o.audit,
      dataplane: this.o.dataplane,
      send: (d, from, to) => {
        if (this.o.trace?.enabled()) this.traceLine('sent', to, d);
        this.o.send(d, from, to);
      },
      kerberos: this.o.kerberos,
      log: (e, d) => this.o.log(e, d),
      retransmits: this.o.retransmits,
      halfOpenMs: this.o.halfOpenMs,
      established: this.o.established,
      renew: async (old) => {
        await this.initiate(old.remote, old.config).child;
      },
      register: (s) => this.byCookieI.set(s.cookieI.toString('hex'), s),
      unregister: (s) => {
        if (this.byCookieI.get(s.cookieI.toString('hex')) === s) this.byCookieI.delete(s.cookieI.toString('hex'));
      },
    };
  }

  sessions(): AuthIpSession[] {
    return [...this.byCookieI.values()];
  }

  get halfOpen(): number {
    return this.sessions().filter((s) => s.state === 'half-open').length;
  }

  /** Main Mode with Kerberos and its first Quick Mode toward `remote`; resolves with the child SA. */
  initiate(remote: Endpoint, config: AuthIpConfig): { session: AuthIpSession; child: Promise<ChildSa> } {
    const s = new AuthIpSession(this.host, 'initiator', { address: this.o.address, port: 500 }, remote, config);
    this.host.register(s);
    const child = s.whenEstablished();
    s.start();
    return { session: s, child };
  }

  /** The data plane reached a child SA's byte lifetime; true when the SA is AuthIP's. */
  expire(spiIn: number, hard: boolean): boolean {
    const s = this.sessions().find((x) => x.children.has(spiIn));
    s?.expire(hard);
    return s !== undefined;
  }

  /** One datagram whose exchange type is AuthIP's. Never throws. */
  receive(data: Buffer, from: Endpoint): void {
    let msg;
    try {
      msg = decodeAuthIp(data);
    } catch (err) {
      if (err instanceof V1DecodeError) {
        this.o.log('AuthIP message dropped', { from: from.address, reason: err.message });
        return;
      }
      throw err;
    }
    if (this.o.trace?.enabled()) this.o.trace.line(authIpLine('received', `${from.address}:${from.port}`, msg));
    const key = msg.header.cookieI.toString('hex');
    let s = this.byCookieI.get(key);
    if (s && s.role === 'initiator' && !s.cookieR.equals(Buffer.alloc(8)) && !s.cookieR.equals(msg.header.cookieR))
      return; // another responder's cookie
    if (!s) {
      const first =
        msg.header.exchange === AuthIpExchange.MAIN_MODE &&
        msg.header.cookieR.equals(Buffer.alloc(8)) &&
        msg.crypto?.seq === 0;
      if (!first) return;
      const config = this.o.configFor(from.address);
      if (!config) {
        this.o.log('no AuthIP rule for this peer', { from: from.address });
        return;
      }
      if (this.halfOpen >= MAX_HALF_OPEN) return;
      s = new AuthIpSession(
        this.host,
        'responder',
        { address: this.o.address, port: 500 },
        from,
        config,
        msg.header.cookieI,
      );
      this.host.register(s);
    }
    s.receive(msg);
  }

  private traceLine(dir: 'sent' | 'received', peer: Endpoint, d: Buffer): void {
    try {
      this.o.trace?.line(authIpLine(dir, `${peer.address}:${peer.port}`, decodeAuthIp(d)));
    } catch {
      // what we send decodes; nothing to describe otherwise
    }
  }

  close(reason = 'keying service stopped'): void {
    for (const s of this.sessions()) s.terminate(reason);
  }
}
