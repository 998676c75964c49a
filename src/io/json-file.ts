/**
 * A small JSON file checked by a schema (the fleet's membership, the fleet policy a host applied):
 * undefined when the file does not exist; not JSON, or not what the schema says: the caller's error,
 * with the schema's findings.
 */
import { readFileSync } from 'node:fs';
import type { z } from 'zod';

export function readJsonFile<T>(file: string, schema: z.ZodType<T>, error: (message: string) => Error): T | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw error(`${file} is not JSON: ${(err as Error).message}`);
  }
  const r = schema.safeParse(raw);
  if (!r.success)
    throw error(`${file}: ${r.error.issues.map((i) => `${i.path.join('.') || 'value'}: ${i.message}`).join('; ')}`);
  return r.data;
}
