/** `consec ike initiate`: negotiate the SA the active policy asks for towards one peer. */
import { isIPv4, isIPv6 } from 'node:net';
import { systemHostContext } from '../filter/host-context.ts';
import { PolicyStores } from '../policy/store.ts';
import { loadCertStore } from './certstore.ts';
import { dhKeyword } from './describe.ts';
import { planNegotiation } from './config.ts';
import { initiate } from './initiator.ts';
import { writeWiresharkKeys } from './keylog.ts';
import { pingThroughTunnel } from './probe.ts';
import { transformOf } from './proposals.ts';
import { EncrId, PrfId, TransformType } from './wire/constants.ts';

export interface InitiateCliOptions {
  remote: string;
  local?: string;
  ping?: boolean;
  verbose?: boolean;
  /** Directory for Wireshark's ikev2_decryption_table and esp_sa key files (secrets!). */
  wiresharkKeys?: string;
  /** Leave the SA at the peer when exiting (default: delete it). */
  keep?: boolean;
}

const ENCR = (id: number, bits?: number) =>
  id === EncrId.AES_GCM_16 ? `AESGCM${bits}` : id === EncrId.AES_CBC ? `AES${bits}` : `ENCR${id}`;
const PRF: Record<number, string> = {
  [PrfId.HMAC_SHA1]: 'SHA1',
  [PrfId.HMAC_SHA2_256]: 'SHA256',
  [PrfId.HMAC_SHA2_384]: 'SHA384',
  [PrfId.HMAC_SHA2_512]: 'SHA512',
};

const ts = (s: { start: Buffer; end: Buffer }[]): string =>
  s
    .map((t) =>
      t.start.equals(t.end) ? `${[...t.start].join('.')}/32` : `${[...t.start].join('.')}-${[...t.end].join('.')}`,
    )
    .join(',');

export async function runInitiate(
  o: InitiateCliOptions,
  stateDir: string,
  out: (line: string) => void,
): Promise<number> {
  const ctx = systemHostContext();
  const local = o.local ?? ctx.localAddresses.find((a) => (isIPv4(o.remote) ? isIPv4(a) : isIPv6(a)));
  if (!local) throw new Error(`no local IPv${isIPv4(o.remote) ? 4 : 6} address: give --local`);
  const doc = new PolicyStores(stateDir).read('ActiveStore');
  const plan = planNegotiation(
    doc,
    { direction: 'Outbound', local, remote: o.remote, protocol: 1 },
    {
      ctx,
      certs: () => loadCertStore(stateDir),
    },
  );
  for (const s of plan.skipped) out(`note: not offered: ${s}`);
  out(`rule "${plan.rule.DisplayName}": ${plan.mode} mode, IKEv2 with ${plan.local} -> ${plan.remote}`);
  const r = await initiate({
    ...plan,
    log: o.verbose ? (e, d) => out(`  ${e} ${JSON.stringify(d ?? {})}`) : undefined,
  });
  try {
    if (o.wiresharkKeys) {
      writeWiresharkKeys(o.wiresharkKeys, r.sa, r.spec);
      out(`keys for Wireshark appended to ${o.wiresharkKeys}/ikev2_decryption_table and esp_sa (mode 0600)`);
    }
    const chosen = r.sa.chosen;
    const t = (type: TransformType) => (chosen ? transformOf(chosen, type) : undefined);
    const e = t(TransformType.ENCR);
    const suite = `${ENCR(e?.id ?? 0, e?.keyLength)}-${PRF[t(TransformType.PRF)?.id ?? 0] ?? '?'}-${dhKeyword(t(TransformType.KE)?.id)}`;
    out(
      `Main Mode SA:  ${plan.local} -> ${plan.remote}  IKEv2  ${suite}  ${plan.credentials.method === 'cert' ? 'Certificate' : 'PreSharedKey'}  cookies ${r.sa.spiI.toString('hex')}:${r.sa.spiR.toString('hex')}  NAT-T ${r.sa.floated ? 'yes (UDP 4500)' : 'no'}`,
    );
    const ce = transformOf(r.child.proposal, TransformType.ENCR);
    out(
      `Quick Mode SA: ${r.child.mode === 'tunnel' ? 'Tunnel' : 'Transport'}  ESP ${ENCR(ce?.id ?? 0, ce?.keyLength)}  inbound SPI ${r.child.spiIn.toString('hex')}  outbound SPI ${r.child.spiOut.toString('hex')}  ${ts(r.child.tsi)} === ${ts(r.child.tsr)}`,
    );
    if (o.ping) {
      const replies = await pingThroughTunnel(r, local, o.remote);
      out(`ping through the SA: ${replies.length}/3 replies`);
      return replies.length === 3 ? 0 : 1;
    }
    return 0;
  } finally {
    if (!o.keep) {
      await r.delete();
      out('IKE SA deleted at the peer (INFORMATIONAL Delete)');
    }
    r.close();
  }
}
