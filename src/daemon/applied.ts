/**
 * The policy the daemon last applied, kept in the state directory (applied-policy.json, 0600,
 * written atomically each time a policy takes effect). A store file found corrupt or half-written
 * when the service starts — a crash, a disk that filled, an edit by hand — then does not leave the
 * host without policy or the service down: the last applied policy is enforced, the error logged,
 * and the store is read again as soon as it changes.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomic.ts';
import type { PolicyDocument } from '../policy/model.ts';
import { readStoreFile, storeFileText } from '../policy/store.ts';

export const APPLIED_POLICY = 'applied-policy.json';

export class AppliedPolicy {
  private readonly file: string;
  private last = '';

  constructor(stateDir: string) {
    this.file = join(stateDir, APPLIED_POLICY);
  }

  /** Records `doc` (the active store) as applied; unchanged policy is not written again. */
  save(doc: PolicyDocument): void {
    const text = storeFileText('ActiveStore', doc);
    if (text === this.last) return;
    writeFileAtomic(this.file, text, 0o600);
    this.last = text;
  }

  private pending?: { doc: PolicyDocument; timer: NodeJS.Timeout };

  /**
   * Records `doc` shortly, once changes settle (a burst of reloads — a fleet's GPO revisions — is one
   * write, and none of it on the way to enforcing the policy); `flush` writes it at once.
   */
  saveSoon(doc: PolicyDocument, onError: (err: Error) => void, delayMs = 200): void {
    if (this.pending) clearTimeout(this.pending.timer);
    const timer = setTimeout(() => this.flush(onError), delayMs);
    timer.unref();
    this.pending = { doc, timer };
  }

  /** Writes a policy saveSoon is holding, now. */
  flush(onError: (err: Error) => void): void {
    const p = this.pending;
    if (!p) return;
    clearTimeout(p.timer);
    this.pending = undefined;
    try {
      this.save(p.doc);
    } catch (err) {
      onError(err as Error);
    }
  }

  /** The last applied policy, or undefined when there is none (or it is itself unreadable). */
  load(): PolicyDocument | undefined {
    if (!existsSync(this.file)) return undefined;
    try {
      return readStoreFile(this.file, 'ActiveStore');
    } catch {
      return undefined;
    }
  }
}
