/**
 * A host's membership of a fleet (`consec fleet join`): the etcd cluster that holds the fleet's
 * Group Policy, the TLS material this host talks to it with, and the fleet's domain (the first part
 * of a GPO's name, "corp.example\Isolation"). Kept in `<state dir>/fleet.json`, mode 0600, written
 * atomically; the certificate files stay where the admin put them (read at each connection).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { readJsonFile } from '../io/json-file.ts';

export class FleetError extends ConsecError {
  constructor(message: string, code = 'ERR_FLEET') {
    super(code, message);
  }
}

const fleetSchema = z.strictObject({
  endpoints: z.array(z.string().regex(/^https:\/\/[^\s/]+$/, 'an https://host:port URL')).min(1),
  ca: z.string().min(1),
  cert: z.string().min(1),
  key: z.string().min(1),
  domain: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$/, 'a DNS domain name'),
  /** This host's name in the fleet, lower case: its directory entry, its status key, its etcd user (its certificate's CN). */
  host: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'a host name')
    .transform((h) => h.toLowerCase()),
});

export type FleetConfig = z.infer<typeof fleetSchema>;

export const fleetFile = (stateDir: string): string => join(stateDir, 'fleet.json');

/** This host's fleet membership, or undefined when it has not joined one. A broken file is an error. */
export function readFleetConfig(stateDir: string): FleetConfig | undefined {
  return readJsonFile(fleetFile(stateDir), fleetSchema, (m) => new FleetError(m));
}

/** Joins the fleet: checks the settings and the files they name, then writes fleet.json (0600). */
export function writeFleetConfig(stateDir: string, config: FleetConfig): void {
  const r = fleetSchema.safeParse(config);
  if (!r.success) throw new FleetError(r.error.issues.map((i) => `--${i.path.join('.')}: ${i.message}`).join('; '));
  for (const k of ['ca', 'cert', 'key'] as const) {
    try {
      readFileSync(config[k]);
    } catch (err) {
      throw new FleetError(`--${k} ${config[k]}: ${(err as Error).message}`);
    }
  }
  writeFileAtomic(fleetFile(stateDir), `${JSON.stringify(r.data, null, 2)}\n`, 0o600);
}
