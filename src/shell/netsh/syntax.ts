/**
 * netsh command-line syntax: command words (abbreviable to any unique prefix, as netsh allows)
 * followed by key=value arguments. Values may be quoted; the quotes are removed.
 */
import { ConsecError } from '../../errors.ts';
import type { EnumValue, InterfaceType, Profile } from '../../policy/enums.ts';

export class NetshError extends ConsecError {
  constructor(message: string) {
    super('ERR_NETSH', message);
  }
}

/**
 * Splits one netsh line into words, honouring double quotes (name="My rule" → name=My rule); `\'`
 * stands for a double quote inside a value, as netsh's help says (a CA name with quotes).
 */
export function splitLine(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  let any = false;
  let escape = false;
  for (const c of line) {
    if (escape) {
      escape = false;
      if (c === "'") {
        cur += '"';
        continue;
      }
      cur += '\\';
    }
    if (c === '\\') {
      escape = true;
      any = true;
    } else if (c === '"') {
      quoted = !quoted;
      any = true;
    } else if (!quoted && (c === ' ' || c === '\t')) {
      if (any) out.push(cur);
      cur = '';
      any = false;
    } else {
      cur += c;
      any = true;
    }
  }
  if (escape) cur += '\\';
  if (quoted) throw new NetshError('The command line has an unterminated quote.');
  if (any) out.push(cur);
  return out;
}

/** Matches a word against the choices netsh offers: exact, or a unique prefix. */
export function matchWord(word: string | undefined, choices: readonly string[], what: string): string {
  if (word === undefined) throw new NetshError(`A ${what} is missing; expected one of: ${choices.join(', ')}.`);
  const w = word.toLowerCase();
  const exact = choices.find((c) => c === w);
  if (exact) return exact;
  const prefixed = choices.filter((c) => c.startsWith(w));
  if (prefixed.length === 1) return prefixed[0] as string;
  throw new NetshError(
    `The following command was not found: ${word}. Expected ${prefixed.length > 1 ? 'one of (ambiguous)' : 'one of'}: ${(prefixed.length > 1 ? prefixed : choices).join(', ')}.`,
  );
}

export type Args = Map<string, string>;

/**
 * Parses key=value words; keys are case-insensitive and must be among `allowed`. As in netsh, a
 * value may be given without its tag when it stands where its parameter does in `allowed`'s order
 * (`show rule all` is `show rule name=all`).
 */
export function parseArgs(words: readonly string[], allowed: readonly string[]): Args {
  const args: Args = new Map();
  for (const [i, w] of words.entries()) {
    const eq = w.indexOf('=');
    const positional = allowed[i];
    if (eq < 0 && positional !== undefined && !args.has(positional)) {
      args.set(positional, w);
      continue;
    }
    if (eq <= 0) throw new NetshError(`A specified value is not valid: "${w}" (expected key=value).`);
    const key = w.slice(0, eq).toLowerCase();
    if (!allowed.includes(key)) {
      throw new NetshError(
        `A specified value is not valid: "${w.slice(0, eq)}" is not a parameter of this command. Parameters: ${allowed.join(', ')}.`,
      );
    }
    if (args.has(key)) throw new NetshError(`The parameter "${key}" is given more than once.`);
    args.set(key, w.slice(eq + 1));
  }
  return args;
}

/** `set rule <selection> new <changes>`: the two halves, each parsed; at least one change. */
export function parseSetRule(
  words: readonly string[],
  selectKeys: readonly string[],
  ruleKeys: readonly string[],
): { sel: Args; changes: Args } {
  const newAt = words.findIndex((w) => w.toLowerCase() === 'new');
  if (newAt < 0)
    throw new NetshError(
      'set rule needs the keyword "new" before the properties to change: set rule name=<rule> new <key>=<value> ...',
    );
  const sel = parseArgs(words.slice(0, newAt), selectKeys);
  const changes = parseArgs(words.slice(newAt + 1), ruleKeys);
  if (changes.size === 0) throw new NetshError('Nothing to change: give at least one <key>=<value> after "new".');
  return { sel, changes };
}

export function yesNo(key: string, value: string): boolean {
  const v = value.toLowerCase();
  if (v === 'yes' || v === 'enable') return true;
  if (v === 'no' || v === 'disable') return false;
  throw new NetshError(`A specified value is not valid: ${key}=${value} (use yes or no).`);
}

/** One of a fixed set of values, case-insensitive. */
export function oneOf<T>(key: string, value: string, table: Record<string, T>): T {
  const v = table[value.toLowerCase()];
  if (v === undefined)
    throw new NetshError(`A specified value is not valid: ${key}=${value} (use ${Object.keys(table).join(', ')}).`);
  return v;
}

const PROFILES: Record<string, EnumValue<typeof Profile>> = {
  public: 'Public',
  private: 'Private',
  domain: 'Domain',
  any: 'Any',
};

/** netsh's interfacetype= values as the InterfaceType enumeration. */
export const INTERFACE_TYPES: Record<string, EnumValue<typeof InterfaceType>> = {
  wireless: 'Wireless',
  lan: 'Wired',
  ras: 'RemoteAccess',
  any: 'Any',
};

/** profile=public,private…: the Profile flags (any stands alone). */
export function profiles(value: string): EnumValue<typeof Profile>[] {
  const list = value.split(',').map((p) => oneOf('profile', p.trim(), PROFILES));
  return list.includes('Any') ? ['Any'] : [...new Set(list)];
}
