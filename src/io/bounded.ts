/**
 * Reading input of bounded size: scripts, policy stores and settings files are refused above a
 * documented size before they are read whole, and a file that is not regular (a FIFO, /dev/zero,
 * standard input) is read only up to the same size. A consec process never grows without limit
 * because someone pointed it at an endless file.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { ConsecError } from '../errors.ts';

/** The largest script, policy store or settings file consec reads: 16 MiB. */
export const MAX_INPUT_BYTES = 16 * 1024 * 1024;

export class InputTooLargeError extends ConsecError {
  constructor(what: string, limit: number) {
    super(
      'ERR_INPUT_TOO_LARGE',
      `${what} is larger than ${limit / (1024 * 1024)} MiB, the most consec reads from a script, policy or settings file: not read`,
    );
  }
}

/** Reads the open file `fd` whole, at most `limit` octets. */
export function readFdBounded(fd: number, what: string, limit = MAX_INPUT_BYTES): Buffer {
  const st = fstatSync(fd);
  if (st.isFile() && st.size > limit) throw new InputTooLargeError(what, limit);
  // A regular file: straight into one buffer of its size (a policy store of thousands of rules is
  // read on every change).
  if (st.isFile()) return readInto(fd, what, limit, Buffer.allocUnsafe(st.size));
  return readRest(fd, what, limit, 0);
}

/**
 * A regular file into `buffer` (of its size or more); if it grew past that meanwhile, the rest in
 * chunks. The bytes read: `buffer` itself, a part of it, or a new buffer when it grew.
 */
function readInto(fd: number, what: string, limit: number, buffer: Buffer): Buffer {
  let filled = 0;
  while (filled < buffer.length) {
    const n = readSync(fd, buffer, filled, buffer.length - filled, null);
    if (n === 0) return buffer.subarray(0, filled);
    filled += n;
    // The buffer may be larger than the limit (room to grow): the file is not.
    if (filled > limit) throw new InputTooLargeError(what, limit);
  }
  const rest = readRest(fd, what, limit, filled);
  return rest.length === 0 ? buffer : Buffer.concat([buffer, rest]);
}

/** The rest of `fd` from its position, in chunks (pipes, devices, growth), `before` octets read already. */
function readRest(fd: number, what: string, limit: number, before: number): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  const chunk = Buffer.allocUnsafe(64 * 1024);
  for (;;) {
    let n: number;
    try {
      n = readSync(fd, chunk, 0, chunk.length, null);
    } catch (err) {
      // Standard input in non-blocking mode (a terminal or pipe Node set up): wait and try again.
      if ((err as { code?: string }).code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        continue;
      }
      throw err;
    }
    if (n === 0) break;
    total += n;
    if (before + total > limit) throw new InputTooLargeError(what, limit);
    chunks.push(Buffer.from(chunk.subarray(0, n)));
  }
  return Buffer.concat(chunks, total);
}

/** Reads `path` whole, at most `limit` octets (errors as readFileSync's: ENOENT …). */
export function readFileBounded(path: string, what = path, limit = MAX_INPUT_BYTES): Buffer {
  const fd = openSync(path, constants.O_RDONLY);
  try {
    return readFdBounded(fd, what, limit);
  } finally {
    closeSync(fd);
  }
}

/** Reads `path` whole as UTF-8 text, at most `limit` octets. */
export function readTextBounded(path: string, what = path, limit = MAX_INPUT_BYTES): string {
  return readFileBounded(path, what, limit).toString('utf8');
}

/**
 * Reads the file at `path` whole (bounded), into `scratch` when it is a regular file that fits, else
 * into a new buffer with room to grow; `buffer` is what to pass as `scratch` next time. A long-lived
 * reader of a large file (the daemon and its policy store) reuses memory instead of faulting in
 * fresh pages on every read.
 */
export function readFileInto(
  path: string,
  what: string,
  scratch: Buffer,
  limit = MAX_INPUT_BYTES,
): { bytes: Buffer; buffer: Buffer } {
  const fd = openSync(path, constants.O_RDONLY);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      const bytes = readFdBounded(fd, what, limit);
      return { bytes, buffer: scratch };
    }
    if (st.size > limit) throw new InputTooLargeError(what, limit);
    // Room to grow, so the next read of a slightly larger file fits too.
    const buffer = scratch.length > st.size ? scratch : Buffer.allocUnsafeSlow(st.size + (st.size >> 3) + 1);
    return { bytes: readInto(fd, what, limit, buffer), buffer };
  } finally {
    closeSync(fd);
  }
}
