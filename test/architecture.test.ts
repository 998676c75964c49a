/**
 * The import graph of src/ at run time has no cycle (type-only imports are erased and do not count):
 * a keying module's tasks never load their session, the data plane never loads a keying module.
 * The direction of the layers is eslint's (eslint.config.js); this is the part eslint cannot see.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { it } from 'node:test';
import { ROOT } from './helpers.ts';

/** Runtime imports of one module: `import … from './x.ts'` and `export … from`, less `import type`. */
function runtimeImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s+(type\s+)?([^'"]*?)\bfrom\s+'(\.[^']+)'/gms)) {
    if (m[1]) continue;
    const names = (m[2] ?? '').trim();
    const braced = /^\{([^}]*)\}$/.exec(names);
    const allTypes = braced?.[1]
      ?.split(',')
      .map((n) => n.trim())
      .filter(Boolean)
      .every((n) => n.startsWith('type '));
    if (allTypes) continue;
    out.push(resolve(dirname(file), m[3] as string));
  }
  return out;
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

it('src/ has no import cycle at run time', () => {
  const files = sources(join(ROOT, 'src'));
  const graph = new Map(files.map((f) => [f, runtimeImports(f)]));
  assert.ok(graph.size > 100, 'the sources were found');
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const cycles: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 'open');
    stack.push(n);
    for (const d of graph.get(n) ?? []) {
      if (!graph.has(d)) continue;
      if (state.get(d) === 'open')
        cycles.push([...stack.slice(stack.indexOf(d)), d].map((x) => relative(ROOT, x)).join(' → '));
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const f of files) if (!state.has(f)) visit(f);
  assert.deepEqual(cycles, []);
});
