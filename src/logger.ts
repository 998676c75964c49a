/** What consec's modules log through (pino's logger in the daemon; a quiet one in tests and benchmarks). */
export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}
