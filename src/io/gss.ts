/**
 * Kerberos V5 through GSS-API (native/gss.cc over MIT krb5's libgssapi_krb5): security contexts for
 * IKE's Kerberos methods. An initiator acts as the computer (its keytab, like a Windows computer
 * account) or as a user (a credential cache from kinit); an acceptor uses the host keytab. Context
 * steps run on the libuv pool (an initiator may ask the KDC for tickets); MICs are local.
 *
 * Failures are GssError with a `reason` taken from the krb5 error code, so the keying modules can
 * word them as Windows does; the library's own text stays in the message.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConsecError, NativeAddonMissingError } from '../errors.ts';

/** What went wrong, in the words the audit events need. */
export type GssReason =
  | 'clock-skew'
  | 'kdc-unreachable'
  | 'unknown-principal'
  | 'no-credentials'
  | 'bad-key'
  | 'ticket-expired'
  | 'bad-token'
  | 'other';

/** krb5 error codes (com_err table "krb5", base -1765328384) and what they mean here. */
const KRB5_REASONS = new Map<number, GssReason>([
  [-1765328378, 'unknown-principal'], // KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN
  [-1765328377, 'unknown-principal'], // KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN
  [-1765328360, 'bad-key'], // KRB5KDC_ERR_PREAUTH_FAILED
  [-1765328353, 'bad-key'], // KRB5KRB_AP_ERR_BAD_INTEGRITY
  [-1765328352, 'ticket-expired'], // KRB5KRB_AP_ERR_TKT_EXPIRED
  [-1765328347, 'clock-skew'], // KRB5KRB_AP_ERR_SKEW
  [-1765328351, 'clock-skew'], // KRB5KRB_AP_ERR_TKT_NYV: a ticket from a clock ahead of ours
  [-1765328343, 'bad-key'], // KRB5KRB_AP_ERR_MODIFIED
  [-1765328340, 'bad-key'], // KRB5KRB_AP_ERR_BADKEYVER
  [-1765328370, 'clock-skew'], // KRB5KDC_ERR_NEVER_VALID (a ticket from a clock far ahead)
  [-1765328228, 'kdc-unreachable'], // KRB5_KDC_UNREACH
  [-1765328203, 'no-credentials'], // KRB5_KT_NOTFOUND
  [-1765328189, 'no-credentials'], // KRB5_FCC_NOFILE
  [-1765328243, 'no-credentials'], // KRB5_CC_NOTFOUND
  [2, 'no-credentials'], // ENOENT: no keytab file
]);

/** GSS routine errors (RFC 2744 §3.9.1, bits 16–23 of the major status) when krb5 says nothing more. */
const GSS_ROUTINE_ERROR_MASK = 0xff0000;
const GSS_REASONS = new Map<number, GssReason>([
  [0x70000, 'no-credentials'], // GSS_S_NO_CRED
  [0x90000, 'bad-token'], // GSS_S_DEFECTIVE_TOKEN
  [0x60000, 'bad-token'], // GSS_S_BAD_SIG (a MIC that does not verify)
  [0xb0000, 'ticket-expired'], // GSS_S_CREDENTIALS_EXPIRED
]);

export class GssError extends ConsecError {
  readonly reason: GssReason;
  readonly major: number;
  readonly minor: number;
  constructor(message: string, major: number, minor: number, options?: { cause?: unknown }) {
    super('ERR_GSSAPI', message, options);
    this.major = major;
    this.minor = minor;
    this.reason =
      KRB5_REASONS.get(minor) ?? GSS_REASONS.get(major & GSS_ROUTINE_ERROR_MASK) ?? ('other' satisfies GssReason);
  }
}

export interface GssInitiatorOptions {
  /** The acceptor: a host-based service ("host@bob.corp.example") or a principal ("host/bob…@REALM"). */
  target: string;
  /** Act as this principal (default: the one of the ccache or the client keytab's first entry). */
  principal?: string;
  /** Credential cache (a user's tickets), e.g. FILE:/tmp/krb5cc_1000. */
  ccache?: string;
  /** Keytab to obtain initial tickets from (a computer account). */
  clientKeytab?: string;
}

export interface GssAcceptorOptions {
  /** Keytab with the service keys (default: krb5.conf / KRB5_KTNAME, i.e. /etc/krb5.keytab). */
  keytab?: string;
}

interface NativeGssContext {
  step(token: Buffer | null, cb: (err: Error | null, r?: { token: Buffer; complete: boolean }) => void): void;
  getMic(message: Buffer): Buffer;
  verifyMic(message: Buffer, mic: Buffer): boolean;
  names(): { source?: string; target?: string };
  sessionKey(): Buffer;
  close(): void;
}

interface GssAddon {
  GssContext: new (o: object) => NativeGssContext;
  keytabPrincipals(keytab?: string): string[];
}

const GSS_ADDON_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'consec_gss.node');
let addon: GssAddon | undefined;

function gssAddon(): GssAddon {
  if (addon) return addon;
  if (!existsSync(GSS_ADDON_PATH))
    throw new NativeAddonMissingError(
      `Kerberos is not available: ${GSS_ADDON_PATH} was not built (install libkrb5-dev, then "npx node-gyp rebuild")`,
    );
  try {
    addon = createRequire(import.meta.url)(GSS_ADDON_PATH) as GssAddon;
  } catch (cause) {
    throw new NativeAddonMissingError(`Kerberos addon failed to load: ${(cause as Error).message}`, { cause });
  }
  return addon;
}

/** Whether this build has Kerberos (the addon was built against libgssapi_krb5). */
export function gssAvailable(): boolean {
  try {
    gssAddon();
    return true;
  } catch {
    return false;
  }
}

const asGssError = (err: Error & { major?: number; minor?: number }): GssError =>
  new GssError(err.message, err.major ?? 0, err.minor ?? 0, { cause: err });

/** One GSS-API security context (Kerberos V5 mechanism), initiator or acceptor. */
export class GssContext {
  private readonly ctx: NativeGssContext;
  private done = false;

  private constructor(ctx: NativeGssContext) {
    this.ctx = ctx;
  }

  static initiator(o: GssInitiatorOptions): GssContext {
    return new GssContext(new (gssAddon().GssContext)({ initiate: true, ...o }));
  }

  static acceptor(o: GssAcceptorOptions = {}): GssContext {
    return new GssContext(new (gssAddon().GssContext)({ initiate: false, ...o }));
  }

  /** Whether the context is established (the last step returned complete). */
  get complete(): boolean {
    return this.done;
  }

  /** One step: the token to send (possibly empty) and whether the context is now established. */
  step(token: Buffer | null): Promise<{ token: Buffer; complete: boolean }> {
    return new Promise((resolve, reject) =>
      this.ctx.step(token, (err, r) => {
        if (err || !r) return reject(asGssError(err ?? new Error('GSS step returned nothing')));
        this.done = r.complete;
        resolve(r);
      }),
    );
  }

  /** A MIC over `message` with the context's key. */
  getMic(message: Buffer): Buffer {
    try {
      return this.ctx.getMic(message);
    } catch (err) {
      throw asGssError(err as Error);
    }
  }

  /** Whether `mic` is the peer's MIC over `message`. */
  verifyMic(message: Buffer, mic: Buffer): boolean {
    return this.ctx.verifyMic(message, mic);
  }

  /** The authenticated names: the initiator's (source) and the acceptor's (target) principals. */
  names(): { source: string; target: string } {
    const n = this.ctx.names();
    return { source: n.source ?? '', target: n.target ?? '' };
  }

  /** The session key of the established context (the acceptor subkey if any, as SSPI gives it). */
  sessionKey(): Buffer {
    try {
      return this.ctx.sessionKey();
    } catch (err) {
      throw asGssError(err as Error);
    }
  }

  close(): void {
    this.ctx.close();
  }
}

/** The principals in a keytab (default: the host keytab krb5.conf names), in keytab order. */
export function keytabPrincipals(keytab?: string): string[] {
  try {
    return gssAddon().keytabPrincipals(keytab);
  } catch (err) {
    if (err instanceof NativeAddonMissingError) throw err;
    throw asGssError(err as Error);
  }
}
