/**
 * Whose traffic a packet is: the user (UID) owning the local socket of a TCP or UDP flow, read
 * from the kernel's socket tables of this network namespace (/proc/net/tcp, tcp6, udp, udp6 — the
 * tables `ss` and `netstat` read). Windows' IPsec knows the user of a connection from the socket
 * (WFP's ALE layer); Extended Mode authenticates that user. Not on the packet path: read once per
 * negotiation.
 *
 * The tables list addresses as the kernel's 32-bit words printed in host byte order; ports as hex.
 * An IPv4 flow may belong to a dual-stack IPv6 socket (::ffff:a.b.c.d in tcp6/udp6).
 */
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { isIP } from 'node:net';
import { writeIp } from './addr.ts';

export interface FlowEnds {
  /** 6 (TCP) or 17 (UDP); anything else has no socket table here. */
  protocol: number;
  local: string;
  localPort: number;
  remote: string;
  remotePort: number;
}

const TABLES: Record<number, [string, string]> = { 6: ['tcp', 'tcp6'], 17: ['udp', 'udp6'] };
const LITTLE = endianness() === 'LE';

/** The 16 (or 4) address octets of a table's hex field, in network order. */
function tableAddress(hex: string): Buffer {
  const b = Buffer.from(hex, 'hex');
  if (LITTLE) for (let i = 0; i + 4 <= b.length; i += 4) b.subarray(i, i + 4).reverse();
  return b;
}

const V4_MAPPED = Buffer.from('00000000000000000000ffff', 'hex');

/** The IPv4-mapped IPv6 form of a v4 address's octets. */
const mapped = (v4: Buffer): Buffer => Buffer.concat([V4_MAPPED, v4]);

const ANY4 = Buffer.alloc(4);
const ANY6 = Buffer.alloc(16);

interface Row {
  local: Buffer;
  localPort: number;
  remote: Buffer;
  remotePort: number;
  uid: number;
}

/**
 * A reader of the kernel's socket tables that reads each table once (a table this kernel lacks
 * reads as empty): for looking up many connections at one moment.
 */
export function socketTables(): (table: string) => string {
  const read = new Map<string, string>();
  return (table) => {
    let text = read.get(table);
    if (text === undefined) {
      try {
        text = readFileSync(`/proc/net/${table}`, 'utf8');
      } catch {
        text = '';
      }
      read.set(table, text);
    }
    return text;
  };
}

/** The rows of one table (`read` gives its text; absent tables have none). */
function rows(text: string): Row[] {
  const out: Row[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    const [l, r, st, uid] = [f[1], f[2], f[3], f[7]];
    if (!l || !r || uid === undefined) continue;
    // TIME_WAIT (06) and SYN_RECV (03) rows are not sockets a process owns: the kernel prints uid 0.
    if (st === '06' || st === '03') continue;
    const [la, lp] = l.split(':');
    const [ra, rp] = r.split(':');
    if (!la || !lp || !ra || !rp) continue;
    out.push({
      local: tableAddress(la),
      localPort: parseInt(lp, 16),
      remote: tableAddress(ra),
      remotePort: parseInt(rp, 16),
      uid: Number(uid),
    });
  }
  return out;
}

/**
 * The UID owning the socket of this flow, or undefined (no such socket: forwarded traffic, a raw
 * socket, a protocol without a table, or the socket is gone). A connected socket (both ends equal)
 * wins over one bound to the local port alone.
 */
export function socketOwner(
  flow: FlowEnds,
  read: (table: string) => string = (t) => readFileSync(`/proc/net/${t}`, 'utf8'),
): number | undefined {
  const tables = TABLES[flow.protocol];
  const family = isIP(flow.local);
  if (!tables || family === 0 || isIP(flow.remote) !== family) return undefined;
  const octets = (a: string) => {
    const b = Buffer.alloc(family === 4 ? 4 : 16);
    writeIp(a, b);
    return b;
  };
  const local = octets(flow.local);
  const remote = octets(flow.remote);
  // An IPv4 flow: the v4 table, then dual-stack sockets in the v6 one; an IPv6 flow: the v6 table.
  const where: [string, Buffer, Buffer][] =
    family === 4
      ? [
          [tables[0], local, remote],
          [tables[1], mapped(local), mapped(remote)],
        ]
      : [[tables[1], local, remote]];
  let loose: number | undefined;
  for (const [table, l, r] of where) {
    let text: string;
    try {
      text = read(table);
    } catch {
      continue;
    }
    const any = l.length === 4 ? ANY4 : ANY6;
    for (const row of rows(text)) {
      if (row.localPort !== flow.localPort || !(row.local.equals(l) || row.local.equals(any))) continue;
      if (row.remotePort === flow.remotePort && row.remote.equals(r)) return row.uid;
      if (row.remotePort === 0 && row.remote.equals(any)) loose ??= row.uid;
    }
  }
  return loose;
}
