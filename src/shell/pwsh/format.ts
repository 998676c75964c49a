/**
 * Windows PowerShell's text output: Format-List, Format-Table, the default view (a table for
 * objects of up to four properties, a list otherwise) and ConvertTo-Json.
 */
import {
  getProperty,
  Hashtable,
  isPSObject,
  PS_DISPLAY,
  PS_TYPE,
  propertyNames,
  ScriptBlock,
  toText,
} from './values.ts';

/** $FormatEnumerationLimit: arrays show at most this many items, then "...". */
const ENUMERATION_LIMIT = 4;

/** How a property value appears inside Format-List / Format-Table. */
export function displayValue(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) {
    const shown = v.slice(0, ENUMERATION_LIMIT).map(displayScalar);
    return `{${shown.join(', ')}${v.length > ENUMERATION_LIMIT ? '...' : ''}}`;
  }
  return displayScalar(v);
}

function displayScalar(v: unknown): string {
  if (isPSObject(v)) return v[PS_DISPLAY] ?? toText(v);
  if (v instanceof Hashtable) return 'System.Collections.Hashtable';
  return toText(v);
}

function isScalar(v: unknown): boolean {
  return v === null || v === undefined || typeof v !== 'object' || v instanceof ScriptBlock;
}

/** Selects properties (wildcards allowed) in object order; "*" or none means all. */
export function selectProperties(obj: unknown, wanted?: readonly string[]): string[] {
  const names = propertyNames(obj);
  if (!wanted || wanted.length === 0) return names;
  const out: string[] = [];
  for (const w of wanted) {
    const re = new RegExp(
      `^${w
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*/g, '.*')
        .replace(/\?/g, '.')}$`,
      'i',
    );
    for (const n of names) if (re.test(n) && !out.includes(n)) out.push(n);
    if (!/[*?]/.test(w) && !names.some((n) => n.toLowerCase() === w.toLowerCase())) out.push(w);
  }
  return out;
}

export function formatList(items: readonly unknown[], properties?: readonly string[]): string {
  let out = '\n';
  for (const item of items) {
    if (isScalar(item)) {
      out += `${toText(item)}\n`;
      continue;
    }
    const names = selectProperties(item, properties);
    const width = Math.max(0, ...names.map((n) => n.length));
    out += '\n';
    for (const n of names) {
      const value = displayValue(getProperty(item, n)).split('\n');
      out += `${n.padEnd(width)} : ${value[0]}\n`;
      for (const more of value.slice(1)) out += `${' '.repeat(width + 3)}${more}\n`;
    }
  }
  return `${out}\n\n`;
}

export function formatTable(items: readonly unknown[], properties?: readonly string[]): string {
  const objects = items.filter((i) => !isScalar(i));
  const scalars = items.filter(isScalar);
  if (objects.length === 0) return scalars.map((s) => `${toText(s)}\n`).join('');
  const names = selectProperties(objects[0], properties);
  const rows = objects.map((o) => names.map((n) => displayValue(getProperty(o, n)).replace(/\n/g, ' ')));
  const numeric = names.map((n) => objects.every((o) => typeof getProperty(o, n) === 'number'));
  const widths = names.map((n, c) => Math.max(n.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, c) => {
        const w = widths[c] ?? 0;
        const last = c === cells.length - 1;
        if (numeric[c]) return cell.padStart(w);
        return last ? cell : cell.padEnd(w);
      })
      .join(' ')
      .replace(/\s+$/, '');
  let out = '\n';
  out += `${line(names)}\n`;
  out += `${line(names.map((n, c) => '-'.repeat(numeric[c] ? (widths[c] ?? n.length) : n.length)))}\n`;
  for (const r of rows) out += `${line(r)}\n`;
  return `${out}\n\n`;
}

/**
 * Default table views by type name, as PowerShell's format files give them (objects with more
 * than four properties would otherwise be shown as lists).
 */
const TABLE_VIEWS: Record<string, string[]> = {
  'System.ServiceProcess.ServiceController': ['Status', 'Name', 'DisplayName'],
  'System.Diagnostics.Eventing.Reader.EventLogRecord': ['TimeCreated', 'Id', 'LevelDisplayName', 'Message'],
};

const viewOf = (item: unknown): string[] | undefined => (isPSObject(item) ? TABLE_VIEWS[item[PS_TYPE]] : undefined);

/**
 * Out-Default as a stream, for output that arrives a little at a time (a function's, as it writes
 * it): scalars one per line, objects as their type's table view, a table (≤ 4 properties) or a
 * list. Scalars and list entries are written as they come; a table waits for the rest of its rows
 * (its column widths come from all of them) until something else is written or the statement ends
 * — as PowerShell's table formatting waits, so a Write-Host after its rows can come first.
 */
export class OutDefaultStream {
  private table: unknown[] = [];
  private kind?: 'table' | 'list';
  private view?: string[];

  constructor(private readonly write: (text: string) => void) {}

  items(items: readonly unknown[]): void {
    for (const item of items) {
      if (isScalar(item)) {
        this.end();
        this.write(`${toText(item)}\n`);
        continue;
      }
      const itemView = viewOf(item);
      const kind = itemView || propertyNames(item).length <= 4 ? 'table' : 'list';
      if (kind !== this.kind || itemView !== this.view) this.end();
      if (kind === 'list') {
        // formatList's layout an entry at a time: "\n\n", each object's properties and a blank line, "\n".
        if (this.kind !== 'list') this.write('\n\n');
        this.write(`${formatList([item]).slice(2, -2)}\n`);
      } else this.table.push(item);
      this.kind = kind;
      this.view = itemView;
    }
  }

  /** The end of a statement's output (or of a run of one kind): what waits is written. */
  end(): void {
    if (this.kind === 'list') this.write('\n');
    else if (this.table.length > 0) this.write(formatTable(this.table, this.view));
    this.table = [];
    this.kind = undefined;
    this.view = undefined;
  }
}

/** Out-Default of a whole statement's output at once. */
export function formatDefault(items: readonly unknown[]): string {
  let out = '';
  const stream = new OutDefaultStream((t) => (out += t));
  stream.items(items);
  stream.end();
  return out;
}

// ---- ConvertTo-Json ------------------------------------------------------------------------------

function jsonValue(v: unknown, level: number, depth: number): unknown {
  if (v === null || v === undefined) return null;
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
  if (v instanceof ScriptBlock) return v.text;
  if (Array.isArray(v)) return v.map((x) => jsonValue(x, level, depth));
  if (level > depth) return displayScalar(v);
  const out: Record<string, unknown> = {};
  if (v instanceof Hashtable) {
    for (const [k, x] of v.entries()) out[k] = jsonValue(x, level + 1, depth);
    return out;
  }
  for (const k of propertyNames(v)) out[k] = jsonValue((v as Record<string, unknown>)[k], level + 1, depth);
  return out;
}

/** Windows PowerShell 5.1 layout: four-space indent, two spaces after the colon. */
function render(v: unknown, indent: string, compress: boolean): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  const inner = `${indent}    `;
  const nl = compress ? '' : '\n';
  const sep = compress ? ':' : ':  ';
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return `[${nl}${v.map((x) => `${compress ? '' : inner}${render(x, inner, compress)}`).join(`,${nl}`)}${nl}${compress ? '' : indent}]`;
  }
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length === 0) return '{}';
  return `{${nl}${entries.map(([k, x]) => `${compress ? '' : inner}${JSON.stringify(k)}${sep}${render(x, inner, compress)}`).join(`,${nl}`)}${nl}${compress ? '' : indent}}`;
}

export function convertToJson(items: readonly unknown[], depth = 2, compress = false): string {
  const value = items.length === 1 ? jsonValue(items[0], 0, depth) : items.map((i) => jsonValue(i, 0, depth));
  return render(value, '', compress);
}
