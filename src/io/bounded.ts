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
    if (total > limit) throw new InputTooLargeError(what, limit);
    chunks.push(Buffer.from(chunk.subarray(0, n)));
  }
  return Buffer.concat(chunks, total);
}

/** Reads `path` whole as UTF-8 text, at most `limit` octets (errors as readFileSync's: ENOENT …). */
export function readTextBounded(path: string, what = path, limit = MAX_INPUT_BYTES): string {
  const fd = openSync(path, constants.O_RDONLY);
  try {
    return readFdBounded(fd, what, limit).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
