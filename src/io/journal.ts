/**
 * The systemd journal's native protocol (systemd.journal-fields, "Native Journal Protocol"): one
 * datagram per entry to /run/systemd/journal/socket, fields as `KEY=value\n`, or — for values with
 * a newline — `KEY\n`, the value's length as 64-bit little-endian, the value, `\n`. Entries too big
 * for one datagram would need a memfd; audit entries never are, and are refused instead.
 */
import { existsSync } from 'node:fs';
import { UnixDatagramSocket } from './native.ts';

export const JOURNAL_SOCKET = '/run/systemd/journal/socket';

/** Journal field names: upper case letters, digits, underscores; not starting with an underscore. */
const FIELD = /^[A-Z0-9][A-Z0-9_]*$/;

export function encodeJournalEntry(fields: Record<string, string | number>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, raw] of Object.entries(fields)) {
    if (!FIELD.test(key)) throw new RangeError(`not a journal field name: ${key}`);
    const value = Buffer.from(String(raw), 'utf8');
    if (!value.includes(0x0a)) {
      parts.push(Buffer.from(`${key}=`), value, Buffer.from('\n'));
      continue;
    }
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(value.length));
    parts.push(Buffer.from(`${key}\n`), len, value, Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

/** Decodes an entry (tests, and anyone checking what was sent). */
export function decodeJournalEntry(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < data.length) {
    const nl = data.indexOf(0x0a, i);
    if (nl < 0) throw new RangeError('journal entry: field without newline');
    const line = data.subarray(i, nl).toString('utf8');
    const eq = line.indexOf('=');
    if (eq >= 0) {
      out[line.slice(0, eq)] = line.slice(eq + 1);
      i = nl + 1;
      continue;
    }
    const len = Number(data.readBigUInt64LE(nl + 1));
    out[line] = data.subarray(nl + 9, nl + 9 + len).toString('utf8');
    i = nl + 9 + len + 1;
  }
  return out;
}

/** Sends entries to the journal, when this host has one (the socket exists). */
export class JournalSink {
  private sock?: UnixDatagramSocket;

  private constructor(private readonly path: string) {}

  /** A sink for `path` (default: the system journal, or $CONSEC_JOURNAL_SOCKET); undefined when there is no journal. */
  static open(path = process.env.CONSEC_JOURNAL_SOCKET ?? JOURNAL_SOCKET): JournalSink | undefined {
    return existsSync(path) ? new JournalSink(path) : undefined;
  }

  /** Sends one entry; throws on failure (the caller reports it). */
  send(fields: Record<string, string | number>): void {
    this.sock ??= UnixDatagramSocket.open();
    this.sock.send(this.path, encodeJournalEntry(fields));
  }

  close(): void {
    this.sock?.close();
    this.sock = undefined;
  }
}
