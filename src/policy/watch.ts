/**
 * Live policy: watches the store files and calls back with the new ActiveStore whenever the
 * persistent or a GPO store changes (another consec process, netsh, a GPO refresh). Writes are
 * atomic renames, so a reader never sees half a file. The daemon recompiles its filters from this.
 */
import { type FSWatcher, mkdirSync, watch } from 'node:fs';
import { join } from 'node:path';
import type { PolicyDocument } from './model.ts';
import type { PolicyStores } from './store.ts';

export interface PolicyWatch {
  close(): void;
}

export function watchActivePolicy(
  stores: PolicyStores,
  onChange: (doc: PolicyDocument) => void,
  onError: (err: Error) => void = () => {},
  debounceMs = 50,
): PolicyWatch {
  const dirs = [stores.policyDir, join(stores.policyDir, 'gpo')];
  for (const d of dirs) mkdirSync(d, { recursive: true, mode: 0o700 });
  let last = JSON.stringify(stores.read('ActiveStore'));
  let timer: NodeJS.Timeout | undefined;
  const check = (): void => {
    timer = undefined;
    try {
      const doc = stores.read('ActiveStore');
      const text = JSON.stringify(doc);
      if (text === last) return;
      last = text;
      onChange(doc);
    } catch (err) {
      // A damaged store keeps the last good policy in force; the error is reported.
      onError(err as Error);
    }
  };
  const watchers: FSWatcher[] = dirs.map((d) =>
    watch(d, (_event, file) => {
      if (file && !String(file).endsWith('.json')) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(check, debounceMs);
    }),
  );
  return {
    close() {
      if (timer) clearTimeout(timer);
      for (const w of watchers) w.close();
    },
  };
}
