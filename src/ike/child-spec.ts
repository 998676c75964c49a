/**
 * An IKEv2 child SA as the data plane takes it (src/sa/spec.ts): the one place where IKE's view
 * (transform IDs, keys of the exchange initiator and responder, TSi/TSr) becomes the neutral one.
 */
import type { EspCipher, EspInteg } from '../esp/esp.ts';
import type { ChildSaSpec, Endpoint } from '../sa/spec.ts';
import { IkeError } from './errors.ts';
import { transformOf } from './proposals.ts';
import { type ChildSa, localTs, remoteTs } from './tasks/child-create.ts';
import { EncrId, EsnId, IntegId, NotifyType, ProtocolId, TransformType } from './wire/constants.ts';

const CIPHER: Partial<Record<number, EspCipher>> = {
  [EncrId.AES_GCM_16]: 'aes-gcm-16',
  [EncrId.AES_CBC]: 'aes-cbc',
  [EncrId.NULL]: 'null',
};

const INTEG: Partial<Record<number, EspInteg>> = {
  [IntegId.HMAC_SHA1_96]: 'sha1-96',
  [IntegId.HMAC_SHA2_256_128]: 'sha256-128',
  [IntegId.HMAC_SHA2_384_192]: 'sha384-192',
  [IntegId.HMAC_SHA2_512_256]: 'sha512-256',
};

export interface SpecOptions {
  local: Endpoint;
  remote: Endpoint;
  udpEncapsulation: boolean;
  maxKilobytes?: number;
  outboundActive?: boolean;
}

/** The child SA's data-plane spec: suite by name, keys and SPIs by direction, our selectors and the peer's. */
export function childSpec(c: ChildSa, o: SpecOptions): ChildSaSpec {
  const ah = c.proposal.protocol === ProtocolId.AH;
  const encr = transformOf(c.proposal, TransformType.ENCR)?.id;
  const integId = transformOf(c.proposal, TransformType.INTEG)?.id;
  const cipher = ah || encr === undefined ? undefined : CIPHER[encr];
  const integrity = integId === undefined ? undefined : INTEG[integId];
  if (ah ? !integrity : !cipher || (cipher !== 'aes-gcm-16' && !integrity))
    throw new IkeError(
      'the child SA has an algorithm the data plane does not implement',
      NotifyType.NO_PROPOSAL_CHOSEN,
    );
  const k = c.keys;
  if (!k) throw new Error('the child SA was installed and its keys handed to the data plane already');
  // The exchange's initiator sealed with the *I keys: ours out when we initiated it.
  const initiators = { encrKey: k.encrI, integKey: k.integI };
  const responders = { encrKey: k.encrR, integKey: k.integR };
  return {
    protocol: ah ? 'ah' : 'esp',
    mode: c.mode,
    cipher,
    integrity,
    esn: transformOf(c.proposal, TransformType.ESN)?.id === EsnId.YES,
    inbound: { spi: c.spiIn.readUInt32BE(0), ...(c.initiator ? responders : initiators) },
    outbound: { spi: c.spiOut.readUInt32BE(0), ...(c.initiator ? initiators : responders) },
    localTs: localTs(c),
    remoteTs: remoteTs(c),
    local: { ...o.local },
    remote: { ...o.remote },
    udpEncapsulation: o.udpEncapsulation,
    maxKilobytes: o.maxKilobytes,
    outboundActive: o.outboundActive,
  };
}
