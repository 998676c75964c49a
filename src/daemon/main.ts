/**
 * `consec daemon`: runs in the foreground, logs JSON lines (pino) to stdout, answers and initiates
 * IKEv2 per the active policy of the state directory, follows policy changes, and on SIGINT/SIGTERM
 * deletes its SAs at the peers before exiting. Audit events are logged as `{"audit": {...}}` lines
 * until the monitoring service (issue 7) routes them.
 */
import { isIP } from 'node:net';
import pino from 'pino';
import type { AuditEvent } from '../audit/events.ts';
import { ConsecError } from '../errors.ts';
import { systemHostContext } from '../filter/host-context.ts';
import type { ChildSaSink } from '../ike/dataplane.ts';
import { PolicyStores } from '../policy/store.ts';
import { KeyingService } from './keying.ts';

export interface DaemonOptions {
  listen?: string[];
  encap?: boolean;
  /** Liveness check after this many seconds of silence (0: off). */
  dpd?: number;
}

export async function runDaemon(stateDir: string, o: DaemonOptions): Promise<number> {
  const log = pino({ base: { service: 'consec' }, timestamp: pino.stdTimeFunctions.isoTime });
  const ctx = systemHostContext();
  const addresses = o.listen && o.listen.length > 0 ? o.listen : ctx.localAddresses;
  for (const a of addresses)
    if (isIP(a) === 0) throw new ConsecError('ERR_USAGE', `--listen ${JSON.stringify(a)} is not an IP address`);
  if (addresses.length === 0) throw new ConsecError('ERR_USAGE', 'no address to listen on: give --listen ADDRESS');
  // The userspace ESP data plane arrives with issue 6; until then installed SAs are only logged.
  const dataplane: ChildSaSink = {
    install: (sa) =>
      log.info(
        {
          spiIn: sa.child.spiIn.toString('hex'),
          spiOut: sa.child.spiOut.toString('hex'),
          mode: sa.child.mode,
          remote: sa.remote,
        },
        'child SA ready for the data plane',
      ),
    delete: (spiIn) => log.info({ spiIn: spiIn.toString('hex') }, 'child SA removed from the data plane'),
  };
  const service = new KeyingService({
    stores: new PolicyStores(stateDir),
    addresses,
    ctx,
    dataplane,
    audit: { emit: (event: AuditEvent) => log.info({ audit: event }, `audit ${event.id}`) },
    timing: o.dpd !== undefined ? { dpdMs: o.dpd * 1000 } : undefined,
    forceUdpEncapsulation: o.encap,
    log,
  });
  await service.start();
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping: deleting SAs at the peers');
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      void service.stop().finally(resolve);
    };
    const onInt = () => stop('SIGINT');
    const onTerm = () => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
  log.info({}, 'stopped');
  return 0;
}
