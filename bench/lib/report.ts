/**
 * Benchmark results as tables: Markdown for BENCHMARKS.md and an SVG bar chart per table
 * (horizontal bars of one numeric column, labelled, no dependencies), plus the raw JSON.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Table {
  /** File-name-safe identifier (the chart is bench/results/<id>.svg). */
  id: string;
  title: string;
  /** What was measured and how (one paragraph, Markdown). */
  method: string;
  columns: string[];
  rows: (string | number)[][];
  /** The column drawn in the chart (its values must be numbers), its unit, and rows left out (a far-off ceiling). */
  chart?: {
    column: number;
    unit: string;
    skipRows?: number[];
    /** Columns joined for a bar's label (default the first). */ label?: number[];
  };
  notes?: string[];
  /** Every measurement behind the rows (repetitions, counters), kept in results.json only. */
  raw?: unknown;
}

function fmt(v: string | number): string {
  if (typeof v !== 'number') return v;
  if (Number.isInteger(v) || Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  if (Math.abs(v) >= 1) return String(Math.round(v * 100) / 100);
  return String(Number(v.toPrecision(3)));
}

export function markdownTable(t: Table): string {
  const head = `| ${t.columns.join(' | ')} |`;
  const numeric = (i: number) => t.rows.some((r) => typeof r[i] === 'number');
  const sep = `|${t.columns.map((_, i) => (numeric(i) ? '---:' : '---')).join('|')}|`;
  const body = t.rows.map((r) => `| ${r.map(fmt).join(' | ')} |`);
  return [head, sep, ...body].join('\n');
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A horizontal bar chart of one column, as SVG text. */
export function barChart(t: Table): string {
  const c = t.chart;
  if (!c) return '';
  const rows = t.rows.filter((_, i) => !c.skipRows?.includes(i));
  const values = rows.map((r) => Number(r[c.column]) || 0);
  const labels = rows.map((r) => (c.label ?? [0]).map((i) => String(r[i])).join(' · '));
  const max = Math.max(...values, 1e-12);
  const labelW = Math.min(560, 7 * Math.max(...labels.map((l) => l.length), 10));
  const barW = 420;
  const rowH = 26;
  const top = 40;
  const width = labelW + barW + 120;
  const height = top + rowH * values.length + 20;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${esc(t.title)}</text>`,
  ];
  values.forEach((v, i) => {
    const y = top + i * rowH;
    const w = Math.max(1, (v / max) * barW);
    parts.push(
      `<text x="${labelW}" y="${y + 16}" text-anchor="end">${esc(labels[i] as string)}</text>`,
      `<rect x="${labelW + 8}" y="${y + 4}" width="${w.toFixed(1)}" height="${rowH - 8}" fill="${i % 2 ? '#4c78a8' : '#f58518'}"/>`,
      `<text x="${(labelW + 12 + w).toFixed(1)}" y="${y + 16}">${esc(fmt(v))} ${esc(c.unit)}</text>`,
    );
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** Writes BENCHMARKS.md, bench/results/<id>.svg and bench/results/results.json. */
export function writeReport(root: string, title: string, intro: string[], tables: Table[]): void {
  const dir = join(root, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const md: string[] = [`# ${title}`, '', ...intro, ''];
  for (const t of tables) {
    md.push(`## ${t.title}`, '', t.method, '', markdownTable(t), '');
    for (const n of t.notes ?? []) md.push(`- ${n}`);
    if (t.notes?.length) md.push('');
    if (t.chart) {
      writeFileSync(join(dir, `${t.id}.svg`), barChart(t));
      md.push(`![${t.title}](bench/results/${t.id}.svg)`, '');
    }
  }
  writeFileSync(join(root, 'BENCHMARKS.md'), `${md.join('\n').trimEnd()}\n`);
  writeFileSync(
    join(dir, 'results.json'),
    `${JSON.stringify({ title, generated: new Date().toISOString(), tables }, null, 2)}\n`,
  );
}
