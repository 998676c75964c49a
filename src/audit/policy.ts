/**
 * The audit policy (`auditpol`): which IPsec subcategories write Success and/or Failure events to
 * the Security log. Windows ships with them all at "No Auditing"; so does consec. Stored as JSON in
 * `<state dir>/audit/auditpol.json`, replaced atomically; a damaged file is reported, never guessed.
 *
 *   auditpol /set /subcategory:"IPsec Main Mode" /success:enable /failure:enable
 *   auditpol /get /subcategory:"IPsec Main Mode"
 *   auditpol /get /category:*
 */
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { readTextBounded } from '../io/bounded.ts';

export class AuditPolicyError extends ConsecError {
  constructor(message: string) {
    super('ERR_AUDITPOL', message);
  }
}

/** The subcategories consec raises events for, under their Windows categories. */
export const AUDIT_CATEGORIES = {
  'Logon/Logoff': ['IPsec Main Mode', 'IPsec Quick Mode', 'IPsec Extended Mode'],
  System: ['IPsec Driver'],
  'Object Access': ['Filtering Platform Packet Drop', 'Filtering Platform Connection'],
  'Policy Change': ['Filtering Platform Policy Change'],
} as const;

export type AuditSubcategoryName = (typeof AUDIT_CATEGORIES)[keyof typeof AUDIT_CATEGORIES][number];
export const SUBCATEGORIES: readonly AuditSubcategoryName[] = Object.values(AUDIT_CATEGORIES).flat();

export interface AuditSetting {
  success: boolean;
  failure: boolean;
}

const fileSchema = z
  .object({
    format: z.literal('consec-auditpol'),
    version: z.literal(1),
    subcategories: z.record(z.string(), z.object({ success: z.boolean(), failure: z.boolean() }).strict()),
  })
  .strict();

export function auditPolicyFile(stateDir: string): string {
  return join(stateDir, 'audit', 'auditpol.json');
}

export class AuditPolicy {
  private constructor(private readonly settings: Map<AuditSubcategoryName, AuditSetting>) {}

  static load(stateDir: string): AuditPolicy {
    const file = auditPolicyFile(stateDir);
    const settings = new Map<AuditSubcategoryName, AuditSetting>();
    let text: string | undefined;
    try {
      text = readTextBounded(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        throw new AuditPolicyError(`cannot read ${file}: ${(err as Error).message}`);
    }
    if (text !== undefined) {
      let parsed: z.infer<typeof fileSchema>;
      try {
        parsed = fileSchema.parse(JSON.parse(text));
      } catch (err) {
        throw new AuditPolicyError(`${file} is not a valid audit policy (${(err as Error).message.split('\n')[0]})`);
      }
      for (const [name, s] of Object.entries(parsed.subcategories)) {
        const known = SUBCATEGORIES.find((c) => c === name);
        if (known) settings.set(known, s);
      }
    }
    return new AuditPolicy(settings);
  }

  setting(subcategory: string): AuditSetting {
    return this.settings.get(subcategory as AuditSubcategoryName) ?? { success: false, failure: false };
  }

  /** Does an event of `subcategory` with this outcome go to the Security log? */
  enabled(subcategory: string, success: boolean): boolean {
    const s = this.setting(subcategory);
    return success ? s.success : s.failure;
  }

  save(stateDir: string): void {
    const file = auditPolicyFile(stateDir);
    mkdirSync(join(stateDir, 'audit'), { recursive: true, mode: 0o700 });
    const subcategories = Object.fromEntries(this.settings);
    writeFileAtomic(file, `${JSON.stringify({ format: 'consec-auditpol', version: 1, subcategories }, null, 2)}\n`);
  }

  with(subcategory: AuditSubcategoryName, change: Partial<AuditSetting>): AuditPolicy {
    const next = new Map(this.settings);
    next.set(subcategory, { ...this.setting(subcategory), ...change });
    return new AuditPolicy(next);
  }
}

/** Re-reads the policy when its file changes (the daemon asks per event; events are rare). */
export class LiveAuditPolicy {
  private policy: AuditPolicy;
  private stamp = '';

  constructor(
    private readonly stateDir: string,
    private readonly onError: (err: Error) => void = () => {},
    /** The clock the 200 ms re-check interval is measured with (tests move it). */
    private readonly now: () => number = Date.now,
  ) {
    this.policy = AuditPolicy.load(stateDir);
    this.stamp = this.currentStamp();
  }

  private currentStamp(): string {
    try {
      const st = statSync(auditPolicyFile(this.stateDir));
      return `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      return 'none';
    }
  }

  private checkedAt = 0;

  /** The policy in force; the file is looked at again at most every 200 ms (an event costs no stat). */
  get current(): AuditPolicy {
    const now = this.now();
    if (now - this.checkedAt < 200) return this.policy;
    this.checkedAt = now;
    const stamp = this.currentStamp();
    if (stamp !== this.stamp) {
      this.stamp = stamp;
      try {
        this.policy = AuditPolicy.load(this.stateDir);
      } catch (err) {
        this.onError(err as Error); // keep the last good policy
      }
    }
    return this.policy;
  }
}

const settingText = (s: AuditSetting): string =>
  s.success && s.failure ? 'Success and Failure' : s.success ? 'Success' : s.failure ? 'Failure' : 'No Auditing';

/** Parses `/name:value` switches as auditpol takes them (names case-insensitive, value quoted or not). */
function switches(args: readonly string[]): { verb: string; opts: Map<string, string> } {
  const [verbArg, ...rest] = args;
  const verb = (verbArg ?? '').toLowerCase();
  if (!/^\/(set|get|list)$/.test(verb))
    throw new AuditPolicyError(
      `The command was not recognized${verbArg ? ` ("${verbArg}")` : ''}. Usage: auditpol /get | /set | /list [...]`,
    );
  const opts = new Map<string, string>();
  for (const a of rest) {
    const m = /^\/([a-z]+)(?::(.*))?$/i.exec(a);
    if (!m) throw new AuditPolicyError(`The parameter is incorrect: ${a}`);
    opts.set((m[1] ?? '').toLowerCase(), (m[2] ?? '').replace(/^"(.*)"$/, '$1'));
  }
  return { verb, opts };
}

function subcategoriesNamed(list: string): AuditSubcategoryName[] {
  return list.split(',').map((n) => {
    const name = n.trim();
    const found = SUBCATEGORIES.find((c) => c.toLowerCase() === name.toLowerCase());
    if (!found)
      throw new AuditPolicyError(
        `Error 0x00000057 occurred:\nThe parameter is incorrect. (subcategory "${name}"; consec knows: ${SUBCATEGORIES.join(', ')})`,
      );
    return found;
  });
}

function enableValue(v: string | undefined, name: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (/^enable$/i.test(v)) return true;
  if (/^disable$/i.test(v)) return false;
  throw new AuditPolicyError(`The parameter is incorrect: /${name}:${v} (enable or disable)`);
}

/** Runs an auditpol command line against the policy in `stateDir`; returns what auditpol prints. */
export function runAuditpol(stateDir: string, args: readonly string[]): string {
  const { verb, opts } = switches(args);
  const policy = AuditPolicy.load(stateDir);
  if (verb === '/list') {
    const lines = ['Category/Subcategory'];
    for (const [cat, subs] of Object.entries(AUDIT_CATEGORIES)) lines.push(cat, ...subs.map((s) => `  ${s}`));
    return `${lines.join('\n')}\n`;
  }
  if (verb === '/set') {
    const names = opts.get('subcategory');
    if (!names) throw new AuditPolicyError('auditpol /set needs /subcategory:"<name>"');
    const success = enableValue(opts.get('success'), 'success');
    const failure = enableValue(opts.get('failure'), 'failure');
    if (success === undefined && failure === undefined)
      throw new AuditPolicyError('auditpol /set needs /success:enable|disable and/or /failure:enable|disable');
    let next = policy;
    for (const name of subcategoriesNamed(names)) {
      next = next.with(name, {
        ...(success === undefined ? {} : { success }),
        ...(failure === undefined ? {} : { failure }),
      });
    }
    next.save(stateDir);
    return 'The command was successfully executed.\n';
  }
  // /get
  const wanted = opts.has('subcategory') ? new Set(subcategoriesNamed(opts.get('subcategory') ?? '')) : undefined;
  const category = opts.get('category');
  if (!opts.has('subcategory') && category === undefined)
    throw new AuditPolicyError('auditpol /get needs /subcategory:"<name>" or /category:*');
  const lines = ['System audit policy', `${'Category/Subcategory'.padEnd(42)}Setting`];
  for (const [cat, subs] of Object.entries(AUDIT_CATEGORIES)) {
    if (category !== undefined && category !== '*' && category.toLowerCase() !== cat.toLowerCase()) continue;
    const shown = subs.filter((s) => !wanted || wanted.has(s));
    if (shown.length === 0) continue;
    lines.push(cat);
    for (const s of shown) lines.push(`  ${s.padEnd(40)}${settingText(policy.setting(s))}`);
  }
  if (lines.length === 2)
    throw new AuditPolicyError(`Error 0x00000057 occurred:\nThe parameter is incorrect. (category "${category}")`);
  return `${lines.join('\n')}\n`;
}
