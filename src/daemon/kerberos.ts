/**
 * This host's Kerberos for AuthIP: the computer account in the host keytab (KRB5_KTNAME, else
 * /etc/krb5.keytab, as every Linux Kerberos tool reads it), used to ask the KDC for tickets to
 * peers (initiator) and to accept theirs (acceptor). Realm and KDC come from krb5.conf.
 */
import type { KerberosProvider } from '../ike/authip/session.ts';
import { GssContext, gssAvailable, keytabPrincipals } from '../io/gss.ts';

export interface HostKerberos {
  provider?: KerberosProvider;
  /** Why there is none (no addon, no keytab, no computer account in it). */
  reason?: string;
  principal?: string;
}

export function hostKerberos(env: NodeJS.ProcessEnv = process.env): HostKerberos {
  if (!gssAvailable()) return { reason: 'consec was built without Kerberos (libkrb5-dev)' };
  const keytab = env.KRB5_KTNAME ?? 'FILE:/etc/krb5.keytab';
  let principals: string[];
  try {
    principals = keytabPrincipals(keytab);
  } catch (err) {
    return { reason: `no host keytab (${keytab}): ${(err as Error).message}` };
  }
  const principal = principals.find((p) => /^host\//i.test(p)) ?? principals[0];
  if (!principal) return { reason: `the host keytab ${keytab} holds no account` };
  // Tickets live in memory: nothing of this host's credentials is written to disk.
  const ccache = `MEMORY:consec-${process.pid}`;
  return {
    principal,
    provider: {
      initiator: (spn) => GssContext.initiator({ target: spn, principal, clientKeytab: keytab, ccache }),
      acceptor: () => GssContext.acceptor({ keytab }),
      spn: () => principal,
    },
  };
}
