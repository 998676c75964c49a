/** IKE_AUTH authentication with a pre-shared key (RFC 7296 §2.15), initiator side. */
import { pskAuth, verifyPskAuth } from '../crypto/auth.ts';
import { IkeError, notifyName } from '../errors.ts';
import type { IkeSa } from '../sa.ts';
import type { Payload } from '../wire/codec.ts';
import { AuthMethod, NotifyType, PayloadType } from '../wire/constants.ts';
import { findNotifies, findPayload, type Task } from './task.ts';

export interface Identity {
  type: number;
  data: Buffer;
}

export const idBody = (id: Identity): Buffer => Buffer.concat([Buffer.from([id.type, 0, 0, 0]), id.data]);

export class IkeAuthPskInitiator implements Task {
  readonly name = 'ike-auth';

  constructor(
    private readonly psk: Buffer,
    private readonly localId: Identity,
    private readonly remoteId?: Identity,
  ) {}

  build(sa: IkeSa, out: Payload[]): void {
    const keys = sa.keys;
    const suite = sa.suite;
    if (!keys || !suite || !sa.initRequest || !sa.nonceR)
      throw new IkeError('IKE_AUTH before IKE_SA_INIT completed', NotifyType.INVALID_SYNTAX);
    out.push({ type: PayloadType.IDi, idType: this.localId.type, data: this.localId.data });
    if (this.remoteId) out.push({ type: PayloadType.IDr, idType: this.remoteId.type, data: this.remoteId.data });
    out.push({
      type: PayloadType.AUTH,
      method: AuthMethod.SHARED_KEY_MIC,
      data: pskAuth(suite.prf, this.psk, sa.initRequest, sa.nonceR, keys.skPi, idBody(this.localId)),
    });
    out.push({
      type: PayloadType.NOTIFY,
      protocol: 0,
      spi: Buffer.alloc(0),
      notify: NotifyType.INITIAL_CONTACT,
      data: Buffer.alloc(0),
    });
  }

  process(sa: IkeSa, payloads: readonly Payload[]): void {
    const failed = findNotifies(payloads, NotifyType.AUTHENTICATION_FAILED)[0];
    if (failed)
      throw new IkeError(
        'the responder refused our authentication (AUTHENTICATION_FAILED)',
        NotifyType.AUTHENTICATION_FAILED,
        true,
      );
    const idr = findPayload(payloads, PayloadType.IDr);
    const auth = findPayload(payloads, PayloadType.AUTH);
    if (!idr || !auth) {
      const err = payloads.find((p) => 'notify' in p && p.notify < 16384);
      throw new IkeError(
        err && 'notify' in err ? `IKE_AUTH failed: ${notifyName(err.notify)}` : 'IKE_AUTH response lacks IDr or AUTH',
        err && 'notify' in err ? err.notify : NotifyType.INVALID_SYNTAX,
        err !== undefined,
      );
    }
    if (this.remoteId && (idr.idType !== this.remoteId.type || !idr.data.equals(this.remoteId.data))) {
      throw new IkeError(
        'the responder authenticated as an identity other than the one expected',
        NotifyType.AUTHENTICATION_FAILED,
      );
    }
    if (auth.method !== AuthMethod.SHARED_KEY_MIC)
      throw new IkeError(
        `responder used auth method ${auth.method}, not a pre-shared key`,
        NotifyType.AUTHENTICATION_FAILED,
      );
    const keys = sa.keys;
    const suite = sa.suite;
    if (!keys || !suite || !sa.initResponse || !sa.nonceI)
      throw new IkeError('IKE_AUTH before IKE_SA_INIT completed', NotifyType.INVALID_SYNTAX);
    const expected = pskAuth(
      suite.prf,
      this.psk,
      sa.initResponse,
      sa.nonceI,
      keys.skPr,
      idBody({ type: idr.idType, data: idr.data }),
    );
    if (!verifyPskAuth(expected, auth.data))
      throw new IkeError(
        "the responder's AUTH does not verify (different pre-shared key?)",
        NotifyType.AUTHENTICATION_FAILED,
      );
  }
}
