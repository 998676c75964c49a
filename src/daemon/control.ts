/**
 * The daemon's control API: newline-delimited JSON over a Unix socket in the state directory (mode
 * 0600, so only root — the daemon's user — can connect). Requests and responses are versioned and
 * validated with zod; the CLI's live commands (SA views, SA removal) go through `controlRequest`.
 */
import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';

export const CONTROL_VERSION = 1;
export const controlSocketPath = (stateDir: string): string => join(stateDir, 'control.sock');

const requestSchema = z
  .object({
    v: z.literal(CONTROL_VERSION),
    id: z.number().int().nonnegative(),
    method: z.enum(['mmsa.list', 'qmsa.list', 'mmsa.remove', 'qmsa.remove', 'stats', 'gpupdate', 'fleet.status']),
    params: z
      .object({ name: z.string().max(64).optional(), force: z.boolean().optional() })
      .strict()
      .default({}),
  })
  .strict();
export type ControlRequest = z.infer<typeof requestSchema>;
export type ControlMethod = ControlRequest['method'];

const responseSchema = z.object({
  v: z.literal(CONTROL_VERSION),
  id: z.number(),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});

export class NoDaemonError extends ConsecError {
  constructor(path: string) {
    super(
      'ERR_NO_DAEMON',
      `consec daemon is not running (no control socket at ${path}); start it with: consec daemon --listen ADDRESS`,
    );
  }
}

export type ControlHandler = (req: ControlRequest) => Promise<unknown> | unknown;

/** Serves the control API on the state directory's socket until closed. */
export async function startControlServer(stateDir: string, handle: ControlHandler): Promise<Server> {
  const path = controlSocketPath(stateDir);
  if (existsSync(path)) unlinkSync(path); // a socket left by a daemon that died
  const server = createServer((sock: Socket) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > 65_536) {
        sock.destroy();
        return;
      }
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void answer(line).then((out) => sock.write(`${JSON.stringify(out)}\n`));
      }
    });
    sock.on('error', () => {});
  });
  const answer = async (line: string) => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      return { v: CONTROL_VERSION, id: -1, error: { code: 'ERR_BAD_REQUEST', message: 'not JSON' } };
    }
    const r = requestSchema.safeParse(parsed);
    const id = typeof (parsed as { id?: unknown })?.id === 'number' ? (parsed as { id: number }).id : -1;
    if (!r.success)
      return {
        v: CONTROL_VERSION,
        id,
        error: { code: 'ERR_BAD_REQUEST', message: r.error.issues[0]?.message ?? 'bad request' },
      };
    try {
      return { v: CONTROL_VERSION, id, result: await handle(r.data) };
    } catch (err) {
      const code = err instanceof ConsecError ? err.code : 'ERR_INTERNAL';
      return { v: CONTROL_VERSION, id, error: { code, message: (err as Error).message } };
    }
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(path, 0o600);
  return server;
}

/** One request to the running daemon; its result, or its error as a ConsecError. */
export async function controlRequest(
  stateDir: string,
  method: ControlMethod,
  params: { name?: string; force?: boolean } = {},
  timeoutMs = 10_000,
): Promise<unknown> {
  const path = controlSocketPath(stateDir);
  if (!existsSync(path)) throw new NoDaemonError(path);
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new ConsecError('ERR_NO_DAEMON', `consec daemon did not answer on ${path} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        err.code === 'ECONNREFUSED' || err.code === 'ENOENT'
          ? new NoDaemonError(path)
          : new ConsecError('ERR_CONTROL', `${path}: ${err.message}`),
      );
    });
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      sock.end();
      const r = responseSchema.safeParse(JSON.parse(buf.slice(0, nl)));
      if (!r.success)
        reject(new ConsecError('ERR_CONTROL', 'the daemon answered something this CLI does not understand'));
      else if (r.data.error) reject(new ConsecError(r.data.error.code, r.data.error.message));
      else resolve(r.data.result);
    });
    sock.write(`${JSON.stringify({ v: CONTROL_VERSION, id: 1, method, params })}\n`);
  });
}
