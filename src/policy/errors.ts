import { ConsecError } from '../errors.ts';

/** A policy store (or the fleet's applied Group Policy) that cannot be read, written or changed as asked. */
export class PolicyStoreError extends ConsecError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_POLICY_STORE', message, options);
  }
}
