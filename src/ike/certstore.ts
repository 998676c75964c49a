/**
 * The machine's certificate stores, Linux-style, as the Windows ones IPsec uses: under
 * `<state dir>/certs/`, `my/` holds machine certificates with their keys (LocalMachine\My; one PEM
 * file with the certificate, any intermediates after it, and the private key), `root/` trusted root
 * CAs (LocalMachine\Root) and `ca/` intermediate CAs. An auth proposal's Authority names the CA (by
 * its subject, e.g. "DC=com, DC=contoso, CN=contoso-CA"); consec sends the machine certificate
 * that chains to it and accepts peers whose certificates do.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AuthProposal } from '../policy/model.ts';
import { IkeError } from './errors.ts';
import type { CertCredentials } from './tasks/ike-cert.ts';
import { NotifyType } from './wire/constants.ts';

export interface MachineCertificate {
  chain: X509Certificate[];
  key: KeyObject;
  file: string;
}

export interface CertStore {
  my: MachineCertificate[];
  root: X509Certificate[];
  ca: X509Certificate[];
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const PEM_KEY =
  /-----BEGIN (?:EC |RSA |ENCRYPTED )?PRIVATE KEY-----[\s\S]+?-----END (?:EC |RSA |ENCRYPTED )?PRIVATE KEY-----/;

function pemFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => /\.(pem|crt|cer)$/i.test(f))
    .sort()
    .map((f) => join(dir, f));
}

const certsIn = (text: string): X509Certificate[] => (text.match(PEM_CERT) ?? []).map((p) => new X509Certificate(p));

/** Reads the stores; a damaged file is an error naming it (nothing is half-loaded silently). */
export function loadCertStore(stateDir: string): CertStore {
  const base = join(stateDir, 'certs');
  const read = (f: string) => {
    try {
      return readFileSync(f, 'utf8');
    } catch (err) {
      throw new IkeError(`cannot read ${f}: ${(err as Error).message}`, NotifyType.AUTHENTICATION_FAILED);
    }
  };
  const parse = <T>(f: string, fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw new IkeError(`${f}: ${(err as Error).message}`, NotifyType.AUTHENTICATION_FAILED);
    }
  };
  const my = pemFiles(join(base, 'my')).map((file) => {
    const text = read(file);
    return parse(file, () => {
      const key = PEM_KEY.exec(text)?.[0];
      const chain = certsIn(text);
      if (!key || chain.length === 0) throw new Error('needs a certificate and its private key');
      const k = createPrivateKey(key);
      if (!(chain[0] as X509Certificate).checkPrivateKey(k))
        throw new Error('the private key does not belong to the certificate');
      return { chain, key: k, file };
    });
  });
  const root = pemFiles(join(base, 'root')).flatMap((f) => parse(f, () => certsIn(read(f))));
  const ca = pemFiles(join(base, 'ca')).flatMap((f) => parse(f, () => certsIn(read(f))));
  return { my, root, ca };
}

/** A DN as a sorted list of `attr=value` (case-insensitive), so "CN=x, DC=com" matches a certificate's subject. */
export function dnKey(dn: string): string {
  return dn
    .split(/\n|,(?=\s*[A-Za-z.0-9]+=)/)
    .map((p) =>
      p
        .trim()
        .replace(/\s*=\s*/, '=')
        .toLowerCase(),
    )
    .filter((p) => p.length > 0)
    .sort()
    .join(',');
}

function chainsTo(cert: X509Certificate, anchors: X509Certificate[], intermediates: X509Certificate[]): boolean {
  let current = cert;
  for (let depth = 0; depth < 8; depth++) {
    if (anchors.some((a) => current.checkIssued(a) && current.verify(a.publicKey))) return true;
    const next = intermediates.find((i) => i.ca && current.checkIssued(i) && current.verify(i.publicKey));
    if (!next) return false;
    current = next;
  }
  return false;
}

/** Credentials for a certificate auth proposal: the CA it names, and a machine certificate under it. */
export function certCredentials(store: CertStore, proposal: AuthProposal, rule: string): CertCredentials {
  const authority = proposal.Authority;
  const pool = proposal.AuthorityType === 'Intermediate' ? [...store.ca, ...store.root] : store.root;
  const anchors = authority ? pool.filter((c) => dnKey(c.subject) === dnKey(authority)) : pool;
  if (anchors.length === 0)
    throw new IkeError(
      `rule "${rule}": no ${proposal.AuthorityType === 'Intermediate' ? 'intermediate or root' : 'root'} CA "${authority ?? '(any)'}" in the certificate store (certs/${proposal.AuthorityType === 'Intermediate' ? 'ca' : 'root'}/)`,
      NotifyType.AUTHENTICATION_FAILED,
    );
  const mine = store.my.find((m) => {
    const c = m.chain[0] as X509Certificate;
    const now = new Date();
    return (
      now >= new Date(c.validFrom) &&
      now <= new Date(c.validTo) &&
      chainsTo(c, anchors, [...m.chain.slice(1), ...store.ca])
    );
  });
  if (!mine)
    throw new IkeError(
      `rule "${rule}": no valid machine certificate chaining to "${authority ?? 'a trusted root'}" in certs/my/`,
      NotifyType.AUTHENTICATION_FAILED,
    );
  return { chain: mine.chain, key: mine.key, trustedCas: anchors };
}
