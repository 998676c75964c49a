/**
 * `npm run bench`: every benchmark in one run on this machine, side by side, written to
 * BENCHMARKS.md with the raw numbers (bench/results/results.json), a chart per table
 * (bench/results/*.svg) and the exact versions used. Each section runs as its own process (a lab
 * section builds and removes its own namespaces); the whole run is bounded: by default ≈ 21 min on
 * a 2-core machine (throughput runs 3 × 2 s per cell), `--full` for the complete protocol (3 × 10 s
 * per cell, about 15 min more), `--quick` for a short smoke run.
 *
 *   node --import tsx bench/run.ts [--quick | --full]
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TABLE_PREFIX } from './lib/cli.ts';
import { type Table, writeReport } from './lib/report.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const quick = process.argv.includes('--quick');
const full = process.argv.includes('--full');
const mode = quick ? 'quick' : full ? 'full' : 'default';
/** A parameter per mode: quick, default, full. */
const pick = <T>(q: T, d: T, f: T): T => (quick ? q : full ? f : d);

interface Section {
  script: string;
  args: string[];
  node?: string[];
  /** Hard limit for the section, seconds. */
  limit: number;
}

const SECTIONS: Section[] = [
  { script: 'crypto.ts', args: ['--seconds', quick ? '0.5' : '2'], limit: 60 },
  { script: 'esp.ts', args: ['--seconds', quick ? '0.3' : '1'], limit: 60 },
  {
    script: 'policy.ts',
    args: ['--sizes', quick ? '100,1000,10000' : '100,1000,10000,100000', '--seconds', quick ? '0.3' : '1'],
    node: ['--expose-gc'],
    limit: 180,
  },
  { script: 'sad.ts', args: ['--seconds', quick ? '0.3' : '1'], limit: 60 },
  { script: 'policy-scale.ts', args: ['--sizes', quick ? '100,1000' : '100,1000,10000'], limit: 300 },
  { script: 'ike-setup.ts', args: ['--runs', quick ? '3' : '20'], limit: 180 },
  { script: 'ike-load.ts', args: ['--count', pick('200', '2000', '5000')], limit: pick(120, 180, 400) },
  {
    script: 'ike-load.ts',
    args: ['--ike', '1', '--count', pick('200', '2000', '5000')],
    limit: pick(120, 180, 400),
  },
  {
    script: 'authip.ts',
    args: ['--runs', pick('10', '50', '200'), '--count', pick('100', '400', '2000')],
    limit: 120,
  },
  { script: 'first-packet.ts', args: ['--runs', pick('3', '10', '20')], limit: 180 },
  { script: 'daemon.ts', args: ['--runs', pick('2', '5', '10')], limit: 300 },
  { script: 'memory.ts', args: ['--sizes', quick ? '200,1000' : '1000,10000'], node: ['--expose-gc'], limit: 240 },
  {
    script: 'kernel-dataplane.ts',
    args: ['--seconds', pick('2', '5', '10'), '--reps', pick('1', '3', '3')],
    limit: pick(300, 420, 600),
  },
  {
    script: 'fleet.ts',
    args: [
      '--hosts',
      pick('20', '100', '100'),
      '--watchers',
      pick('100', '1000', '1000'),
      '--rounds',
      pick('3', '10', '30'),
    ],
    limit: pick(300, 900, 1200),
  },
  {
    script: 'dataplane.ts',
    args: ['--seconds', pick('1', '2', '10'), '--reps', pick('1', '3', '3')],
    limit: pick(240, 480, 1500),
  },
];

function version(cmd: string, args: string[], pattern = /(\d+\.\d+[\w.~+-]*)/): string {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return pattern.exec(out)?.[1] ?? out.split('\n')[0]?.trim() ?? '?';
  } catch {
    return 'not installed';
  }
}

const dpkg = (pkg: string): string => version('dpkg-query', ['-W', '-f=${Version}', pkg], /(.+)/);

function environment(): Table {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  let commit = '?';
  try {
    commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  } catch {
    // not a git checkout
  }
  return {
    id: 'environment',
    title: 'Machine and versions',
    method: 'Everything below ran on this machine, in this run.',
    columns: ['item', 'version'],
    rows: [
      ['consec', `${pkg.version} (${commit})`],
      ['CPU', `${cpus()[0]?.model ?? '?'} × ${cpus().length}`],
      ['Linux kernel', release()],
      ['Node.js', process.version],
      ['OpenSSL (node)', process.versions.openssl ?? '?'],
      ['OpenSSL (openssl binary)', version('openssl', ['version'])],
      ['strongSwan (charon)', dpkg('strongswan-charon')],
      ['iperf3', dpkg('iperf3')],
      ['nftables', dpkg('nftables')],
    ],
  };
}

function runSection(s: Section): Promise<Table[]> {
  return new Promise((resolve) => {
    const started = Date.now();
    process.stderr.write(`[bench] ${s.script} ${s.args.join(' ')}\n`);
    const child = spawn(
      process.execPath,
      [...(s.node ?? []), '--import', 'tsx', join(ROOT, 'bench', s.script), ...s.args, '--json'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    // SIGINT first: lab sections tear their namespaces down on it.
    const timer = setTimeout(() => {
      process.stderr.write(`[bench] ${s.script}: over its ${s.limit} s limit, stopping it\n`);
      child.kill('SIGINT');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }, s.limit * 1000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      const tables = out
        .split('\n')
        .filter((l) => l.startsWith(TABLE_PREFIX))
        .map((l) => JSON.parse(l.slice(TABLE_PREFIX.length)) as Table);
      process.stderr.write(
        `[bench] ${s.script}: ${tables.length} table(s), exit ${code}, ${Math.round((Date.now() - started) / 1000)} s\n`,
      );
      resolve(tables);
    });
  });
}

const started = Date.now();
const tables: Table[] = [environment()];
for (const s of SECTIONS) tables.push(...(await runSection(s)));
const minutes = Math.round((Date.now() - started) / 6000) / 10;
writeReport(
  ROOT,
  'consec benchmarks',
  [
    `Generated by \`npm run bench${mode === 'default' ? '' : ` -- --${mode}`}\` on ${new Date().toISOString().slice(0, 10)} in ${minutes} min. Every figure below comes from this one run on this machine; raw numbers are in [bench/results/results.json](bench/results/results.json).`,
    'Speed targets are goals reported as ratios, never asserted in tests.',
  ],
  tables,
);
process.stderr.write(`[bench] BENCHMARKS.md written (${tables.length} tables, ${minutes} min)\n`);
