/**
 * A throw-away PKI for lab tests, made with the openssl command line tool: a root CA and end-entity
 * certificates for lab hosts (subjectAltName IP, EKU server auth + IP security IKE intermediate,
 * as Windows wants them). Keys stay in a temporary directory removed at exit.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PeerError } from '../errors.ts';
import { which } from './exec.ts';

export type KeySpec = 'P-256' | 'P-384' | 'RSA-2048' | 'RSA-4096';

export interface Issued {
  certPem: string;
  keyPem: string;
}

const dirs: string[] = [];
process.once('exit', () => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function keyArgs(spec: KeySpec): string[] {
  return spec.startsWith('RSA-')
    ? ['-newkey', `rsa:${spec.slice(4)}`]
    : ['-newkey', 'ec', '-pkeyopt', `ec_paramgen_curve:${spec}`];
}

export class LabPki {
  private constructor(
    private readonly dir: string,
    readonly ca: Issued,
    private readonly digest: string,
  ) {}

  /** A self-signed root CA (`cn` becomes its subject). */
  static create(cn = 'consec lab root CA', spec: KeySpec = 'P-384'): LabPki {
    if (!which('openssl')) throw new PeerError('openssl not found: install the openssl package');
    const dir = mkdtempSync(join(tmpdir(), 'consec-pki-'));
    dirs.push(dir);
    const digest = spec === 'P-384' ? '-sha384' : '-sha256';
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        ...keyArgs(spec),
        '-nodes',
        digest,
        '-days',
        '30',
        '-subj',
        `/O=consec lab/CN=${cn}`,
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'keyUsage=critical,keyCertSign,cRLSign',
        '-keyout',
        join(dir, 'ca.key'),
        '-out',
        join(dir, 'ca.crt'),
      ],
      { stdio: 'pipe' },
    );
    const ca = {
      certPem: readFileSync(join(dir, 'ca.crt'), 'utf8'),
      keyPem: readFileSync(join(dir, 'ca.key'), 'utf8'),
    };
    return new LabPki(dir, ca, digest);
  }

  /**
   * An end-entity certificate for a lab host: subject CN=`cn`, subjectAltName IP:`ip`, and the
   * EKUs given (default server auth + IKE intermediate).
   */
  issue(cn: string, ip: string, o: { spec?: KeySpec; eku?: string; days?: number } = {}): Issued {
    const base = join(this.dir, cn.replace(/[^A-Za-z0-9.-]/g, '_'));
    execFileSync(
      'openssl',
      [
        'req',
        ...keyArgs(o.spec ?? 'P-384'),
        '-nodes',
        '-subj',
        `/O=consec lab/CN=${cn}`,
        '-keyout',
        `${base}.key`,
        '-out',
        `${base}.csr`,
      ],
      { stdio: 'pipe' },
    );
    const ext = `${base}.ext`;
    writeFileSync(
      ext,
      [
        `subjectAltName=IP:${ip}`,
        'keyUsage=critical,digitalSignature',
        `extendedKeyUsage=${o.eku ?? 'serverAuth,1.3.6.1.5.5.8.2.2'}`,
      ].join('\n'),
    );
    const args = [
      'x509',
      '-req',
      '-in',
      `${base}.csr`,
      '-CA',
      join(this.dir, 'ca.crt'),
      '-CAkey',
      join(this.dir, 'ca.key'),
      '-set_serial',
      String(Date.now()),
      this.digest,
      '-extfile',
      ext,
      '-days',
      String(o.days ?? 30),
      '-out',
      `${base}.crt`,
    ];
    execFileSync('openssl', args, { stdio: 'pipe' });
    return { certPem: readFileSync(`${base}.crt`, 'utf8'), keyPem: readFileSync(`${base}.key`, 'utf8') };
  }

  /** A certificate and its key as a PKCS#12 bundle, base64 (for NSS: libreswan's `pk12util`). */
  pkcs12(issued: Issued, name: string, password: string): string {
    const base = join(this.dir, `p12-${Date.now()}-${Math.random().toString(36).slice(2)}`);
    writeFileSync(`${base}.pem`, issued.certPem + issued.keyPem, { mode: 0o600 });
    execFileSync(
      'openssl',
      ['pkcs12', '-export', '-in', `${base}.pem`, '-name', name, '-passout', `pass:${password}`, '-out', `${base}.p12`],
      { stdio: 'pipe' },
    );
    return readFileSync(`${base}.p12`).toString('base64');
  }
}
