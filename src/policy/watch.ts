/**
 * Live policy: watches the store files and calls back with the new ActiveStore whenever the
 * persistent or a GPO store changes (another consec process, netsh, a GPO refresh). Writes are
 * atomic renames, so a reader never sees half a file. The daemon recompiles its filters from this.
 *
 * Fail-safe: a store that cannot be read, or a store file or the policy directory that disappears
 * (a deleted state directory, a bad configuration-management run), never reads as an empty policy:
 * the policy in force stays, the error is reported, and the watch picks the store up again when it
 * is back. An admin who really wants an empty policy writes one (or removes the rules).
 */
import { existsSync, type FSWatcher, mkdirSync, readdirSync, statSync, watch } from 'node:fs';
import { join } from 'node:path';
import type { PolicyDocument } from './model.ts';
import { PolicyStoreError, type PolicyStores } from './store.ts';

export interface PolicyWatch {
  close(): void;
}

/** How often a watch whose directories vanished looks for them again. */
const RETRY_MS = 1000;

export function watchActivePolicy(
  stores: PolicyStores,
  onChange: (doc: PolicyDocument) => void,
  onError: (err: Error) => void = () => {},
  debounceMs = 10,
): PolicyWatch {
  const dirs = [stores.policyDir, join(stores.policyDir, 'gpo')];
  for (const d of dirs) mkdirSync(d, { recursive: true, mode: 0o700 });
  // Store files are replaced by rename, never written in place: the same inode, size and time is
  // the same content, and a change is seen without reading (and parsing) the whole policy.
  const signature = (): string => {
    const parts: string[] = [];
    for (const d of dirs) {
      let names: string[];
      try {
        names = readdirSync(d).filter((f) => f.endsWith('.json'));
      } catch {
        continue;
      }
      for (const f of names.sort()) {
        try {
          const st = statSync(join(d, f));
          parts.push(`${d}/${f}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`);
        } catch {
          // gone meanwhile: not part of the policy
        }
      }
    }
    return parts.join('|');
  };
  let last = signature();
  // The PersistentStore file, once it exists, must not vanish (a GPO store may: it was unlinked).
  const persistent = join(stores.policyDir, 'PersistentStore.json');
  let hadPersistent = existsSync(persistent);
  let timer: NodeJS.Timeout | undefined;
  let watchers: FSWatcher[] = [];
  let retry: NodeJS.Timeout | undefined;
  let closed = false;

  /** Looks again later (the directories or a store file are gone): the policy in force stays. */
  const broken = (err: Error): void => {
    onError(err);
    if (retry || closed) return;
    retry = setInterval(() => {
      if (!existsSync(stores.policyDir)) return;
      clearInterval(retry);
      retry = undefined;
      mkdirSync(dirs[1] as string, { recursive: true, mode: 0o700 });
      arm();
      check();
    }, RETRY_MS);
    retry.unref();
  };

  const check = (): void => {
    timer = undefined;
    try {
      const dirGone = !existsSync(stores.policyDir);
      if (dirGone || (hadPersistent && !existsSync(persistent))) {
        broken(
          new PolicyStoreError(
            `${dirGone ? stores.policyDir : persistent} disappeared: the policy in force stays until the store is back`,
          ),
        );
        return;
      }
      const now = signature();
      if (now === last) return;
      const doc = stores.read('ActiveStore');
      hadPersistent = existsSync(persistent);
      last = now;
      onChange(doc);
    } catch (err) {
      // A damaged store keeps the last good policy in force; the error is reported.
      onError(err as Error);
    }
  };

  const arm = (): void => {
    for (const w of watchers) w.close();
    watchers = [];
    for (const d of dirs) {
      try {
        const w = watch(d, (_event, file) => {
          if (file && !String(file).endsWith('.json')) return;
          if (timer) clearTimeout(timer);
          timer = setTimeout(check, debounceMs);
        });
        // The directory itself was removed: the watch ends; look for it again.
        w.on('error', () => broken(new PolicyStoreError(`${d} is no longer watchable`)));
        watchers.push(w);
      } catch (err) {
        broken(err as Error);
      }
    }
  };
  arm();
  return {
    close() {
      closed = true;
      if (timer) clearTimeout(timer);
      if (retry) clearInterval(retry);
      for (const w of watchers) w.close();
    },
  };
}
