/** Running host commands for the lab: captured output, typed failures, process groups we own. */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { LabCommandError, LabPrerequisiteError, LabTimeoutError } from '../errors.ts';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number | null;
}

export interface RunOptions {
  /** Input written to the command's stdin. */
  input?: string;
  /** Fail with LabTimeoutError after this many ms (the process group is killed). Default 60 s. */
  timeoutMs?: number;
  /** Resolve instead of throwing when the exit status is non-zero. */
  allowFailure?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Runs argv to completion; throws LabCommandError on a non-zero exit unless allowFailure. */
export function run(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new LabCommandError('empty command', null, '');
  const timeoutMs = options.timeoutMs ?? 60_000;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: options.env ?? process.env,
      detached: true,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
    });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new LabCommandError(`${cmd}: ${err.message}`, null, ''));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(new LabTimeoutError(`${argv.join(' ')}: no exit after ${timeoutMs} ms`));
      } else if (code !== 0 && !options.allowFailure) {
        const detail = (stderr.trim() || stdout.trim()).slice(-1000);
        reject(new LabCommandError(`${argv.join(' ')}: exit ${code}${detail ? `: ${detail}` : ''}`, code, stderr));
      } else {
        resolve({ stdout, stderr, code });
      }
    });
    child.stdin.on('error', () => {});
    child.stdin.end(options.input ?? '');
  });
}

/** Synchronous variant for teardown paths (signal handlers, process exit). Never throws. */
export function runSync(argv: readonly string[]): RunResult {
  const [cmd, ...args] = argv;
  if (cmd === undefined) return { stdout: '', stderr: 'empty command', code: null };
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  return { stdout: r.stdout ?? '', stderr: r.stderr ?? r.error?.message ?? '', code: r.status };
}

/** Sends a signal to the process group of a child we spawned detached (so its helpers die too). */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      /* already gone */
    }
  }
}

/** Finds an executable on PATH (plus the sbin directories, which a non-login root shell may lack). */
export function which(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Throws LabPrerequisiteError naming everything missing: root, tools, devices. */
export function requireLabPrerequisites(tools: readonly string[] = ['ip']): void {
  const missing: string[] = [];
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    missing.push('root privileges (network namespaces need CAP_NET_ADMIN; run as root)');
  }
  for (const tool of tools) {
    if (!which(tool)) missing.push(`"${tool}" (${TOOL_PACKAGES[tool] ?? tool})`);
  }
  if (missing.length > 0) {
    throw new LabPrerequisiteError(`the lab cannot run here; missing: ${missing.join(', ')}`);
  }
}

const TOOL_PACKAGES: Record<string, string> = {
  ip: 'Debian package iproute2',
  nft: 'Debian package nftables',
  tshark: 'Debian package tshark',
  ping: 'Debian package iputils-ping',
  swanctl: 'Debian package strongswan-swanctl',
};
