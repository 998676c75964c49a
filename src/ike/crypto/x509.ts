/**
 * The few X.509 facts node:crypto's X509Certificate does not expose: the DER of the subject Name
 * (for ID_DER_ASN1_DN identities) and the SubjectPublicKeyInfo hash used by CERTREQ. A bounds-checked
 * DER walker over the certificate's own bytes; no parsing of anything else.
 */
import { createHash, type X509Certificate } from 'node:crypto';

interface Tlv {
  tag: number;
  start: number;
  /** Offset of the contents and of the byte after them. */
  body: number;
  end: number;
}

function tlv(b: Buffer, off: number, limit: number): Tlv {
  if (off + 2 > limit) throw new RangeError('DER: truncated');
  const tag = b[off] as number;
  let len = b[off + 1] as number;
  let body = off + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || body + n > limit) throw new RangeError('DER: bad length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (b[body + i] as number);
    body += n;
  }
  if (body + len > limit) throw new RangeError('DER: length beyond the end');
  return { tag, start: off, body, end: body + len };
}

/** The DER of the certificate's subject Name (TBSCertificate field 6). */
export function subjectDer(cert: X509Certificate): Buffer {
  const raw = cert.raw;
  const outer = tlv(raw, 0, raw.length);
  const tbs = tlv(raw, outer.body, outer.end);
  let f = tlv(raw, tbs.body, tbs.end);
  if (f.tag === 0xa0) f = tlv(raw, f.end, tbs.end); // explicit version
  // serialNumber, signature, issuer, validity, then subject
  for (let i = 0; i < 4; i++) f = tlv(raw, f.end, tbs.end);
  if (f.tag !== 0x30) throw new RangeError('DER: subject is not a SEQUENCE');
  return Buffer.from(raw.subarray(f.start, f.end));
}

/** SHA-1 of the SubjectPublicKeyInfo: a CA's entry in CERTREQ (RFC 7296 §3.7). */
export const spkiSha1 = (cert: X509Certificate): Buffer =>
  createHash('sha1')
    .update(cert.publicKey.export({ type: 'spki', format: 'der' }))
    .digest();
