/** Atomic file replacement: temp file, fsync, rename, fsync of the directory. Readers see old or new, never half. */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;

export function writeFileAtomic(file: string, body: string, mode = 0o600): void {
  // A fresh name, created exclusively and never through a link: nothing planted at it is written to.
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  let created = false;
  try {
    const fd = openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
    created = true;
    try {
      // Every octet, or an error: a short write (the disk filled) must not be renamed into place.
      const data = Buffer.from(body, 'utf8');
      for (let off = 0; off < data.length;) {
        const n = writeSync(fd, data, off, data.length - off);
        if (n <= 0) throw Object.assign(new Error(`short write to ${tmp}`), { code: 'EIO' });
        off += n;
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    const dirFd = openSync(dirname(file), 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch (err) {
    if (created) rmSync(tmp, { force: true });
    throw err;
  }
}
