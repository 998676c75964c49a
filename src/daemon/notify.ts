/**
 * systemd's service notification protocol (sd_notify(3)): `KEY=VALUE` lines in one AF_UNIX datagram
 * to $NOTIFY_SOCKET (a path, or an abstract name written "@name"). consec's unit is Type=notify:
 * READY=1 goes out only once the fail-closed filters are in the kernel and IKE listens, so units
 * ordered after consec (network-pre.target, hence the network itself) wait for that; STATUS= says
 * what runs (`systemctl status consec`); RELOADING=1 / READY=1 frame a SIGHUP reload; STOPPING=1
 * an orderly stop. Without $NOTIFY_SOCKET (not under systemd) nothing is sent.
 */
import { UnixDatagramSocket } from '../io/native.ts';

export interface Notifier {
  ready(status: string): void;
  status(status: string): void;
  reloading(): void;
  stopping(): void;
  close(): void;
}

const NONE: Notifier = { ready() {}, status() {}, reloading() {}, stopping() {}, close() {} };

/** A STATUS= value on one line (systemd shows the first line only). */
const oneLine = (s: string): string => s.replace(/[\r\n]+/g, ' ').slice(0, 200);

/** The notifier $NOTIFY_SOCKET asks for, or one that sends nothing. Never throws when sending. */
export function serviceNotifier(env: NodeJS.ProcessEnv = process.env, onError?: (err: Error) => void): Notifier {
  const where = env.NOTIFY_SOCKET;
  if (!where || (where[0] !== '/' && where[0] !== '@')) return NONE;
  const path = where[0] === '@' ? `\0${where.slice(1)}` : where;
  let sock: UnixDatagramSocket | undefined;
  const send = (text: string) => {
    try {
      sock ??= UnixDatagramSocket.open();
      sock.send(path, Buffer.from(text, 'utf8'));
    } catch (err) {
      onError?.(err as Error);
    }
  };
  return {
    ready: (status) => send(`READY=1\nSTATUS=${oneLine(status)}\nMAINPID=${process.pid}\n`),
    status: (status) => send(`STATUS=${oneLine(status)}\n`),
    reloading: () => send(`RELOADING=1\nMONOTONIC_USEC=${(process.hrtime.bigint() / 1000n).toString()}\n`),
    stopping: () => send('STOPPING=1\n'),
    close: () => {
      sock?.close();
      sock = undefined;
    },
  };
}
