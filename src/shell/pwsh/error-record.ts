/** A PowerShell error record: message, FullyQualifiedErrorId, category, exception type, position. */
import type { Extent } from './lexer.ts';

export class PwshError extends Error {
  constructor(
    message: string,
    readonly errorId: string,
    readonly category: string,
    readonly exceptionType: string,
    readonly extent?: Extent,
    readonly target: string = '',
    readonly targetType: string = '',
  ) {
    super(message);
  }
}
