/**
 * Typed errors with stable codes. Every layer throws a subclass of ConsecError; the CLI maps codes to
 * PowerShell- or netsh-shaped messages and exit statuses. Messages never contain secrets.
 */
export class ConsecError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The file system refused us (EACCES, EPERM): said as such, with what consec needs root for. */
export class PermissionDeniedError extends ConsecError {
  constructor(path: string, needs: string, options?: { cause?: unknown }) {
    super('ERR_PERMISSION_DENIED', `permission denied: ${path} (consec needs root ${needs})`, options);
  }
}

/** A PermissionDeniedError for an EACCES/EPERM error of `path`; any other error as it is. */
export function permissionDenied(err: unknown, path: string, needs: string): unknown {
  const code = (err as { code?: string }).code;
  return code === 'EACCES' || code === 'EPERM' ? new PermissionDeniedError(path, needs, { cause: err }) : err;
}

/** A system call or native facility failed (errno-style `sysCode` such as EPERM, ENOENT). */
export class NativeIoError extends ConsecError {
  readonly sysCode: string;
  readonly syscall: string;
  constructor(syscall: string, sysCode: string, message: string, options?: { cause?: unknown }) {
    super('ERR_NATIVE_IO', message, options);
    this.syscall = syscall;
    this.sysCode = sysCode;
  }
}

/** The native addon is missing or could not be loaded. */
export class NativeAddonMissingError extends ConsecError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NATIVE_ADDON_MISSING', message, options);
  }
}

/** A lab cannot run here: not root, a tool missing, or no /dev/net/tun. */
export class LabPrerequisiteError extends ConsecError {
  constructor(message: string) {
    super('ERR_LAB_PREREQUISITE', message);
  }
}

/** A command run inside a lab host failed. */
export class LabCommandError extends ConsecError {
  readonly exitCode: number | null;
  readonly stderr: string;
  constructor(message: string, exitCode: number | null, stderr: string) {
    super('ERR_LAB_COMMAND', message);
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** A lab topology description is invalid (unknown host, duplicate name, bad address). */
export class LabTopologyError extends ConsecError {
  constructor(message: string) {
    super('ERR_LAB_TOPOLOGY', message);
  }
}

/** Waiting for a lab condition (a socket, a log line, an SA) ran out of time. */
export class LabTimeoutError extends ConsecError {
  constructor(message: string) {
    super('ERR_LAB_TIMEOUT', message);
  }
}

/** A strongSwan peer could not be configured, started or driven. */
export class PeerError extends ConsecError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PEER', message, options);
  }
}
