/**
 * One daemon per state directory: an exclusive flock(2) on `<state dir>/daemon.lock`, which holds
 * the owner's PID. The kernel drops the lock when the owner exits, however it exits (kill -9
 * included), so a restart never waits for a stale lock; a second daemon exits before it touches
 * anything, its control socket included, naming the first.
 */
import { closeSync, constants, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ConsecError } from '../errors.ts';
import { flockExclusive } from '../io/native.ts';

const { O_RDWR, O_CREAT, O_NOFOLLOW, O_RDONLY } = constants;

export class StateDirInUseError extends ConsecError {
  constructor(
    readonly stateDir: string,
    readonly pid: number | undefined,
  ) {
    super('ERR_STATE_DIR_IN_USE', `state directory ${stateDir} is in use by consec daemon PID ${pid ?? '(unknown)'}`);
  }
}

const lockFile = (stateDir: string) => join(stateDir, 'daemon.lock');

/** The PID written in the lock file (the owner's, while it holds the lock). */
function pidIn(stateDir: string): number | undefined {
  try {
    const pid = Number.parseInt(readFileSync(lockFile(stateDir), 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

export class StateDirLock {
  private constructor(private fd: number | undefined) {}

  /** Takes the state directory for this process, or throws StateDirInUseError naming the daemon that has it. */
  static acquire(stateDir: string): StateDirLock {
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const fd = openSync(lockFile(stateDir), O_RDWR | O_CREAT | O_NOFOLLOW, 0o600);
    if (!flockExclusive(fd)) {
      closeSync(fd);
      throw new StateDirInUseError(stateDir, pidIn(stateDir));
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
    return new StateDirLock(fd);
  }

  /** The PID of the daemon that has the state directory now, or undefined when none has. */
  static holder(stateDir: string): number | undefined {
    let fd: number;
    try {
      fd = openSync(lockFile(stateDir), O_RDONLY | O_NOFOLLOW);
    } catch {
      return undefined; // never locked here
    }
    try {
      return flockExclusive(fd) ? undefined : (pidIn(stateDir) ?? -1);
    } finally {
      closeSync(fd); // a lock taken for the test goes with the descriptor
    }
  }

  release(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }
}
