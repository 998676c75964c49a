/** netsh spellings of proposals and authentication methods, both directions. */
import type { EnumValue, HashAlgorithm } from '../../policy/enums.ts';
import {
  type AuthProposal,
  type MainModeCryptoProposal,
  mmProposal,
  type QuickModeCryptoProposal,
  qmProposal,
} from '../../policy/model.ts';
import { validateMainModeProposal, validateQuickModeProposal } from '../../policy/validate.ts';
import { type Args, NetshError, yesNo } from './syntax.ts';

const INTEGRITY: Record<string, EnumValue<typeof HashAlgorithm>> = {
  md5: 'MD5',
  sha1: 'SHA1',
  sha256: 'SHA256',
  sha384: 'SHA384',
  aesgmac128: 'AESGMAC128',
  aesgmac192: 'AESGMAC192',
  aesgmac256: 'AESGMAC256',
  // netsh names ESP integrity after the GCM cipher it pairs with.
  aesgcm128: 'AESGMAC128',
  aesgcm192: 'AESGMAC192',
  aesgcm256: 'AESGMAC256',
};
const ENCRYPTION: Record<string, MainModeCryptoProposal['Encryption']> = {
  none: 'None',
  des: 'DES',
  '3des': 'DES3',
  aes128: 'AES128',
  aes192: 'AES192',
  aes256: 'AES256',
  aesgcm128: 'AESGCM128',
  aesgcm192: 'AESGCM192',
  aesgcm256: 'AESGCM256',
};
const KEY_EXCHANGE: Record<string, MainModeCryptoProposal['KeyExchange']> = {
  dhgroup1: 'DH1',
  dhgroup2: 'DH2',
  dhgroup14: 'DH14',
  dhgroup24: 'DH24',
  ecdhp256: 'DH19',
  ecdhp384: 'DH20',
};
export const QM_PFS: Record<string, MainModeCryptoProposal['KeyExchange']> = {
  ...KEY_EXCHANGE,
  mainmode: 'SameAsMainMode',
  none: 'None',
};

const lookup = <T>(table: Record<string, T>, value: string, what: string): T => {
  const v = table[value.toLowerCase()];
  if (v === undefined)
    throw new NetshError(
      `A specified value is not valid: "${value}" is not a ${what} (use ${Object.keys(table).join(', ')}).`,
    );
  return v;
};

function wrap<T>(text: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof NetshError) throw err;
    throw new NetshError(`A specified value is not valid: ${text}: ${(err as Error).message}`);
  }
}

/** qmsecmethods=ESP:SHA256-AES256+60min+100000kb,AH:SHA1+ESP:SHA1-AES128,... */
export function parseQmSecMethods(value: string): QuickModeCryptoProposal[] {
  return value.split(',').map((text) =>
    wrap(text, () => {
      const parts = text.split('+');
      const p = qmProposal({ Encapsulation: [] });
      for (const part of parts) {
        const m = /^(\d+)(min|kb)$/i.exec(part);
        if (m) {
          if ((m[2] as string).toLowerCase() === 'min') p.MaxMinutes = Number(m[1]);
          else p.MaxKiloBytes = Number(m[1]);
          continue;
        }
        const [proto = '', algs = ''] = part.split(':');
        switch (proto.toLowerCase()) {
          case 'ah':
            p.Encapsulation.push('AH');
            p.AHHash = lookup(INTEGRITY, algs, 'integrity algorithm');
            break;
          case 'esp': {
            const [integ = '', enc = 'none'] = algs.split('-');
            p.Encapsulation.push('ESP');
            p.ESPHash = integ.toLowerCase() === 'none' ? 'None' : lookup(INTEGRITY, integ, 'integrity algorithm');
            p.Encryption = lookup(ENCRYPTION, enc, 'encryption algorithm');
            break;
          }
          case 'authnoencap':
            throw new NetshError(
              'authnoencap (authenticate without encapsulation) needs AuthIP, which consec does not speak yet.',
            );
          default:
            throw new NetshError(`"${part}" is not AH:<integrity>, ESP:<integrity>-<encryption>, <n>min or <n>kb.`);
        }
      }
      p.Encapsulation = (['AH', 'ESP'] as const).filter((e) => p.Encapsulation.includes(e));
      if (p.Encapsulation.length === 0) p.Encapsulation = ['None'];
      validateQuickModeProposal(p);
      return p;
    }),
  );
}

/** mmsecmethods=dhgroup14:aes256-sha256,ecdhp384:aes256-sha384 */
export function parseMmSecMethods(value: string): MainModeCryptoProposal[] {
  return value.split(',').map((text) =>
    wrap(text, () => {
      const m = /^([^:]+):([^-]+)-(.+)$/.exec(text);
      if (!m) throw new NetshError(`"${text}" is not <keyexchange>:<encryption>-<integrity>.`);
      const p = mmProposal({
        KeyExchange: lookup(KEY_EXCHANGE, m[1] as string, 'key exchange'),
        Encryption: lookup(ENCRYPTION, m[2] as string, 'encryption algorithm'),
        Hash: lookup(INTEGRITY, m[3] as string, 'integrity algorithm'),
      });
      validateMainModeProposal(p);
      return p;
    }),
  );
}

export function qmSecMethodText(p: QuickModeCryptoProposal): string {
  const parts: string[] = [];
  if (p.Encapsulation.includes('AH')) parts.push(`AH:${p.AHHash}`);
  if (p.Encapsulation.includes('ESP'))
    parts.push(`ESP:${p.ESPHash}-${p.Encryption === 'DES3' ? '3DES' : p.Encryption}`);
  return `${parts.join('+')}+${p.MaxMinutes}min+${p.MaxKiloBytes}kb`;
}

const KE_NAME: Record<string, string> = {
  DH1: 'DHGroup1',
  DH2: 'DHGroup2',
  DH14: 'DHGroup14',
  DH24: 'DHGroup24',
  DH19: 'ECDHP256',
  DH20: 'ECDHP384',
  None: 'None',
};

export function mmSecMethodText(p: MainModeCryptoProposal): string {
  return `${KE_NAME[p.KeyExchange] ?? p.KeyExchange}-${p.Encryption === 'DES3' ? '3DES' : p.Encryption}-${p.Hash}`;
}

/** Certificate options of an auth1ca/auth2ca value; several CAs are separated by '|'. */
function parseCa(
  value: string,
  signing: AuthProposal['Signing'],
  principal: AuthProposal['Principal'],
  health: boolean,
): AuthProposal[] {
  return value.split('|').map((entry) => {
    const words = entry.trim().split(/\s+/);
    const opts = new Map<string, string>();
    while (words.length > 0 && /^(certmapping|excludecaname|catype):\S+$/i.test(words[words.length - 1] as string)) {
      const [k = '', v = ''] = (words.pop() as string).split(':');
      opts.set(k.toLowerCase(), v);
    }
    const p: AuthProposal = {
      AuthenticationMethod: 'Certificate',
      Principal: principal,
      Authority: words.join(' '),
      AuthorityType: (opts.get('catype') ?? 'root').toLowerCase() === 'intermediate' ? 'Intermediate' : 'Root',
      Signing: signing,
    };
    if (opts.has('catype') && !['root', 'intermediate'].includes((opts.get('catype') as string).toLowerCase())) {
      throw new NetshError(`A specified value is not valid: catype:${opts.get('catype')} (use root or intermediate).`);
    }
    if (opts.has('certmapping') && yesNo('certmapping', opts.get('certmapping') as string)) p.AccountMapping = true;
    if (opts.has('excludecaname') && yesNo('excludecaname', opts.get('excludecaname') as string))
      p.ExcludeCAName = true;
    if (health) p.Health = true;
    if (!p.Authority) throw new NetshError('A certification authority name is needed.');
    return p;
  });
}

const AUTH1 = [
  'computerkerb',
  'computercert',
  'computercertecdsap256',
  'computercertecdsap384',
  'computerpsk',
  'computerntlm',
  'anonymous',
];
const AUTH2 = [
  'computercert',
  'computercertecdsap256',
  'computercertecdsap384',
  'userkerb',
  'usercert',
  'usercertecdsap256',
  'usercertecdsap384',
  'userntlm',
  'anonymous',
];

/** auth1=… (phase 1) or auth2=… (phase 2) with their companion keys. */
export function parseAuth(args: Args, phase: 1 | 2): AuthProposal[] | undefined {
  const key = `auth${phase}`;
  const value = args.get(key);
  if (value === undefined) return undefined;
  const methods = value.split(',').map((m) => m.trim().toLowerCase());
  const allowed = phase === 1 ? AUTH1 : AUTH2;
  for (const m of methods)
    if (!allowed.includes(m))
      throw new NetshError(`A specified value is not valid: ${key}=${m} (use ${allowed.join(', ')}).`);
  if (phase === 1 && methods.includes('computerpsk') && methods.includes('computerntlm')) {
    throw new NetshError('computerpsk and computerntlm cannot both be used in auth1.');
  }
  if (phase === 2 && methods.some((m) => m.startsWith('computercert')) && methods.some((m) => m.startsWith('user'))) {
    throw new NetshError('computercert cannot be combined with user authentication methods in auth2.');
  }
  const out: AuthProposal[] = [];
  for (const m of methods) {
    const principal = m.startsWith('user') ? 'User' : 'Machine';
    if (m === 'computerkerb' || m === 'userkerb') out.push({ AuthenticationMethod: 'Kerberos', Principal: principal });
    else if (m === 'computerntlm' || m === 'userntlm') out.push({ AuthenticationMethod: 'NTLM', Principal: principal });
    else if (m === 'anonymous') out.push({ AuthenticationMethod: 'Anonymous', Principal: 'None' });
    else if (m === 'computerpsk') {
      const psk = args.get('auth1psk');
      if (!psk) throw new NetshError('auth1=computerpsk needs auth1psk=<key>.');
      out.push({ AuthenticationMethod: 'PreSharedKey', Principal: 'Machine', PreSharedKey: psk });
    } else {
      const curve = m.endsWith('ecdsap256') ? 'ecdsap256' : m.endsWith('ecdsap384') ? 'ecdsap384' : '';
      const ca = args.get(`auth${phase}${curve}ca`);
      if (!ca) throw new NetshError(`auth${phase}=${m} needs auth${phase}${curve}ca="<CA name>".`);
      const healthKey = `auth${phase}${curve}healthcert`;
      const health = args.has(healthKey) ? yesNo(healthKey, args.get(healthKey) as string) : false;
      const signing = curve === 'ecdsap256' ? 'ECDSA256' : curve === 'ecdsap384' ? 'ECDSA384' : 'RSA';
      out.push(...parseCa(ca, signing, principal, health));
    }
  }
  return out;
}

export const AUTH_KEYS = [
  'auth1',
  'auth1psk',
  'auth1ca',
  'auth1healthcert',
  'auth1ecdsap256ca',
  'auth1ecdsap256healthcert',
  'auth1ecdsap384ca',
  'auth1ecdsap384healthcert',
];
export const AUTH2_KEYS = [
  'auth2',
  'auth2ca',
  'auth2ecdsap256ca',
  'auth2ecdsap384ca',
  'auth2healthcert',
  'auth2ecdsap256healthcert',
  'auth2ecdsap384healthcert',
];

/** netsh's name of an auth method, as show rule prints it. */
export function authMethodName(p: AuthProposal): string {
  const who = p.Principal === 'User' ? 'User' : 'Computer';
  switch (p.AuthenticationMethod) {
    case 'Kerberos':
      return `${who}Kerb`;
    case 'NTLM':
      return `${who}NTLM`;
    case 'PreSharedKey':
      return 'ComputerPSK';
    case 'Anonymous':
      return 'Anonymous';
    case 'Certificate':
      return `${who}Cert${p.Signing === 'ECDSA256' ? 'ECDSAP256' : p.Signing === 'ECDSA384' ? 'ECDSAP384' : ''}`;
  }
}
