/** Shared bits of the bench scripts: arguments, and a table printed as Markdown or (--json) as one line for bench/run.ts. */
import { markdownTable, type Table } from './report.ts';

const args = process.argv.slice(2);

export function stringArg(name: string, dflt: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? (args[i + 1] ?? dflt) : dflt;
}

export function numberArg(name: string, dflt: number): number {
  const v = Number(stringArg(name, String(dflt)));
  return Number.isFinite(v) && v > 0 ? v : dflt;
}

export const TABLE_PREFIX = 'BENCH-TABLE ';

/** Prints the table: Markdown for a person, or one JSON line that bench/run.ts collects. */
export function emit(t: Table): void {
  if (args.includes('--json')) console.log(`${TABLE_PREFIX}${JSON.stringify(t)}`);
  else console.log(`${t.title}\n\n${markdownTable(t)}\n`);
}
