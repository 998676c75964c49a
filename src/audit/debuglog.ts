/**
 * The IKE debug log (seed 000: `netsh advfirewall set global ipsec debuglog enable|disable`,
 * `… debuglog file PATH`, `… debuglog size KB`): a text trace of every IKE message in and out
 * (header, payloads, proposals offered and chosen, notifies, timing), the keying service's events
 * and the audit events, written by the daemon while enabled. Settings live in
 * `<state dir>/debuglog.json` (atomic writes) and are followed live. The file is owner-only and
 * rotated by size into `<file>.1`; it never holds keys, nonces, PSKs or payload data — the lines
 * come from `src/ike/trace.ts`, which describes payloads without their contents.
 */
import { closeSync, mkdirSync, statSync, watch, writeSync } from 'node:fs';
import { basename, isAbsolute, join } from 'node:path';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { checkOwnPath, openOwnAppend, OwnFiles, rotateOwn } from '../io/safe-file.ts';
import { readTextBounded } from '../io/bounded.ts';

export const DEBUGLOG_SIZE_KB = { min: 1, max: 1_048_576, default: 4096 } as const;

const settingsSchema = z
  .object({
    enabled: z.boolean(),
    file: z.string().min(1).nullable(),
    sizeKb: z.number().int().min(DEBUGLOG_SIZE_KB.min).max(DEBUGLOG_SIZE_KB.max),
  })
  .strict();
export type DebugLogSettings = z.infer<typeof settingsSchema>;

export const debugLogSettingsFile = (stateDir: string): string => join(stateDir, 'debuglog.json');
export const defaultDebugLogFile = (stateDir: string): string => join(stateDir, 'logs', 'ikeext.log');

const DEFAULTS: DebugLogSettings = { enabled: false, file: null, sizeKb: DEBUGLOG_SIZE_KB.default };

export function loadDebugLogSettings(stateDir: string): DebugLogSettings {
  let text: string;
  try {
    text = readTextBounded(debugLogSettingsFile(stateDir));
  } catch {
    return { ...DEFAULTS };
  }
  const parsed = settingsSchema.safeParse(JSON.parse(text));
  if (!parsed.success)
    throw new ConsecError('ERR_DEBUGLOG', `${debugLogSettingsFile(stateDir)} is not valid: ${parsed.error.message}`);
  return parsed.data;
}

/** Changes some settings (validated; the file replaced atomically). */
export function updateDebugLogSettings(stateDir: string, change: Partial<DebugLogSettings>): DebugLogSettings {
  if (change.file !== undefined && change.file !== null) {
    if (/^[A-Za-z]:/.test(change.file) || change.file.includes('\\'))
      throw new ConsecError(
        'ERR_DEBUGLOG',
        `${change.file} is a Windows path; give a Linux path, e.g. /var/log/consec/ikeext.log`,
      );
    if (!isAbsolute(change.file)) throw new ConsecError('ERR_DEBUGLOG', `${change.file}: give an absolute path`);
  }
  const next = settingsSchema.parse({ ...loadDebugLogSettings(stateDir), ...change });
  // The root daemon will append to it: refuse now what it would refuse then (links, files not its own).
  if (next.file) checkOwnPath(next.file, new OwnFiles(stateDir));
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  writeFileAtomic(debugLogSettingsFile(stateDir), `${JSON.stringify(next, null, 2)}\n`);
  return next;
}

/**
 * The daemon's writer: follows the settings file (re-read when it changes: at once with `watch()`,
 * else checked at most twice a second when used), appends lines while enabled, rotates at the size
 * limit. Write errors are reported once and never stop the daemon.
 */
export class IkeDebugLog {
  private settings: DebugLogSettings = { ...DEFAULTS };
  private stamp = '';
  private checkedAt = 0;
  private fd?: number;
  private openFile?: string;
  private size = 0;
  private failed = false;
  /** The files this log created (rotation and appends touch only those). */
  private readonly own: OwnFiles;

  constructor(
    private readonly stateDir: string,
    private readonly onError: (err: Error) => void = () => {},
    /** The settings in force changed (and when first read). */
    private readonly onChange?: (settings: DebugLogSettings) => void,
  ) {
    this.own = new OwnFiles(stateDir);
    this.refresh(true);
  }

  /** Re-reads the settings as soon as the file is replaced (a watch on the state directory); returns the stop. */
  watch(): () => void {
    const name = basename(debugLogSettingsFile(this.stateDir));
    try {
      const w = watch(this.stateDir, (_event, file) => {
        if (file === null || file === name) this.refresh(true);
      });
      w.on('error', () => w.close());
      w.unref();
      return () => w.close();
    } catch {
      return () => {}; // no watch here: the settings are still read on use
    }
  }

  private refresh(force = false): void {
    const now = Date.now();
    if (!force && now - this.checkedAt < 500) return;
    this.checkedAt = now;
    let stamp = 'none';
    try {
      const st = statSync(debugLogSettingsFile(this.stateDir));
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      // no settings: the defaults (disabled)
    }
    if (stamp === this.stamp) return;
    this.stamp = stamp;
    try {
      this.settings = loadDebugLogSettings(this.stateDir);
      this.failed = false;
      this.onChange?.(this.settings);
    } catch (err) {
      this.onError(err as Error); // keep the last good settings
    }
    if (!this.settings.enabled || this.path !== this.openFile) this.close();
  }

  private get path(): string {
    return this.settings.file ?? defaultDebugLogFile(this.stateDir);
  }

  enabled(): boolean {
    this.refresh();
    return this.settings.enabled;
  }

  /** One line (a timestamp is put in front). */
  line(text: string): void {
    if (!this.enabled() || this.failed) return;
    const data = `${new Date().toISOString()} ${text.replace(/[\r\n]+/g, ' ')}\n`;
    try {
      if (this.fd === undefined) this.open();
      if (this.size + Buffer.byteLength(data) > this.settings.sizeKb * 1024) this.rotate();
      this.size += writeSync(this.fd as number, data);
    } catch (err) {
      this.failed = true;
      this.close();
      this.onError(new Error(`IKE debug log ${this.path}: ${(err as Error).message}`));
    }
  }

  private open(): void {
    const path = this.path;
    const { fd, size } = openOwnAppend(path, this.own);
    this.fd = fd;
    this.openFile = path;
    this.size = size;
  }

  /** The current file becomes `.1` (only files consec created are renamed, onto its own or a free name). */
  private rotate(): void {
    const path = this.path;
    rotateOwn(path, this.fd as number, this.own);
    this.close();
    this.open();
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    this.openFile = undefined;
  }
}
