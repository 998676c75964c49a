/**
 * Files a root process appends to (the Wireshark key log, the IKE debug log and its rotation):
 * never through a symbolic link, never into a file consec did not create, never readable by
 * others, never in a directory someone else may write to. A new file is created with O_EXCL and
 * O_NOFOLLOW, mode 0600, and its inode is recorded in the state directory (own-files.json); an
 * existing one is appended to only when it is that same regular file (same device and inode, one
 * link, ours, 0600). Rotation renames only files consec created, onto a name that is free or its own.
 */
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, renameSync, type Stats } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';
import { writeFileAtomic } from './atomic.ts';
import { readTextBounded } from './bounded.ts';

const { O_WRONLY, O_APPEND, O_CREAT, O_EXCL, O_NOFOLLOW } = constants;

export class UnsafeFileError extends ConsecError {
  constructor(message: string) {
    super('ERR_UNSAFE_FILE', message);
  }
}

const euid = (): number => process.geteuid?.() ?? 0;
const code = (err: unknown): string | undefined => (err as { code?: string }).code;

/**
 * A directory a root process may write into: a real directory (not a link), owned by us, writable by
 * nobody else (as sshd's StrictModes asks). Created (mode 0700, with its parents) when missing.
 */
export function safeDirectory(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) throw new UnsafeFileError(`${dir} is a symbolic link: give the real directory`);
  if (!st.isDirectory()) throw new UnsafeFileError(`${dir} is not a directory`);
  if (st.uid !== euid())
    throw new UnsafeFileError(`${dir} belongs to user ${st.uid}: consec writes only into directories of its own user`);
  if ((st.mode & 0o022) !== 0)
    throw new UnsafeFileError(
      `${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}): chmod go-w`,
    );
}

const registrySchema = z.record(z.string(), z.string());

/** The files consec created and may append to, by absolute path: their device and inode. */
export class OwnFiles {
  constructor(private readonly stateDir: string) {}

  private get file(): string {
    return join(this.stateDir, 'own-files.json');
  }

  private load(): Record<string, string> {
    try {
      return registrySchema.parse(JSON.parse(readTextBounded(this.file)));
    } catch {
      return {};
    }
  }

  private save(entries: Record<string, string>): void {
    mkdirSync(this.stateDir, { recursive: true, mode: 0o700 });
    writeFileAtomic(this.file, `${JSON.stringify(entries, null, 2)}\n`);
  }

  /** Is `st` (the file now at `path`) the one consec created there? */
  isOwn(path: string, st: Stats): boolean {
    return (
      this.load()[resolve(path)] === `${st.dev}:${st.ino}` &&
      st.isFile() &&
      st.nlink === 1 &&
      st.uid === euid() &&
      (st.mode & 0o077) === 0
    );
  }

  record(path: string, st: Stats): void {
    this.save({ ...this.load(), [resolve(path)]: `${st.dev}:${st.ino}` });
  }

  /** `from` was renamed to `to` (rotation). */
  moved(from: string, to: string): void {
    const all = new Map(Object.entries(this.load()));
    const id = all.get(resolve(from));
    all.delete(resolve(from));
    if (id) all.set(resolve(to), id);
    this.save(Object.fromEntries(all));
  }
}

/** Why an existing `path` is not one consec may append to, for the error message. */
function notOwn(path: string): UnsafeFileError {
  let what = 'a file consec did not create';
  try {
    const st = lstatSync(path);
    if (st.isSymbolicLink()) what = 'a symbolic link';
    else if (!st.isFile()) what = 'not a regular file';
  } catch {
    // gone meanwhile: the generic reason stands
  }
  return new UnsafeFileError(
    `${path} exists and is ${what}: consec appends only to files it created; choose a new path`,
  );
}

/**
 * Opens `path` to append to it: a new file (created 0600, no link followed, recorded in `own`), or
 * the file consec created there before. Anything else is refused with UnsafeFileError.
 */
export function openOwnAppend(path: string, own: OwnFiles): { fd: number; size: number } {
  safeDirectory(dirname(path));
  try {
    const fd = openSync(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    own.record(path, fstatSync(fd));
    return { fd, size: 0 };
  } catch (err) {
    if (code(err) !== 'EEXIST') throw err;
  }
  let fd: number;
  try {
    fd = openSync(path, O_WRONLY | O_APPEND | O_NOFOLLOW);
  } catch (err) {
    if (code(err) === 'ELOOP') throw notOwn(path);
    throw err;
  }
  const st = fstatSync(fd);
  if (!own.isOwn(path, st)) {
    closeSync(fd);
    throw notOwn(path);
  }
  return { fd, size: st.size };
}

/**
 * Records `path` as consec's own when it looks so (regular, one link, ours, 0600) — only for files
 * inside the state directory, where no one else can have created them (a version that kept no record
 * of its files wrote them).
 */
export function adoptOwn(path: string, own: OwnFiles): void {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (st.isFile() && st.nlink === 1 && st.uid === euid() && (st.mode & 0o077) === 0 && !own.isOwn(path, st))
    own.record(path, st);
}

/**
 * Checks, without writing, that consec may append to `path` (the settings commands refuse a path
 * that is not): absent in a safe directory, or the file consec created there.
 */
export function checkOwnPath(path: string, own: OwnFiles): void {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (err) {
    if (code(err) !== 'ENOENT') throw err;
    const dir = dirname(path);
    try {
      safeDirectory(dir);
    } catch (e) {
      if (e instanceof UnsafeFileError) throw e;
      throw new UnsafeFileError(`${dir}: ${(e as Error).message}`);
    }
    return;
  }
  if (st.isSymbolicLink() || !own.isOwn(path, st)) throw notOwn(path);
}

/**
 * Renames the file consec has open as `fd` at `path` to `older` (size rotation; default `path.1`):
 * only when `path` is still that file and `older` is free or consec's own (the old generation, replaced).
 */
export function rotateOwn(path: string, fd: number, own: OwnFiles, older = `${path}.1`): void {
  const open = fstatSync(fd);
  const now = lstatSync(path);
  if (now.isSymbolicLink() || now.dev !== open.dev || now.ino !== open.ino || !own.isOwn(path, now)) throw notOwn(path);
  moveOwn(path, older, own);
}

/**
 * Renames consec's own file `from` to `to` (older generations shifting up), when `to` is free or
 * consec's own too; `from` absent is nothing to do. Anything else is refused with UnsafeFileError.
 */
export function moveOwn(from: string, to: string, own: OwnFiles): void {
  let st: Stats;
  try {
    st = lstatSync(from);
  } catch (err) {
    if (code(err) === 'ENOENT') return;
    throw err;
  }
  if (st.isSymbolicLink() || !own.isOwn(from, st)) throw notOwn(from);
  try {
    const target = lstatSync(to);
    if (target.isSymbolicLink() || !own.isOwn(to, target)) throw notOwn(to);
  } catch (err) {
    if (code(err) !== 'ENOENT') throw err;
  }
  renameSync(from, to);
  own.moved(from, to);
}
