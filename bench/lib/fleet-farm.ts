/**
 * Many fleet host agents in one process, for bench/fleet.ts's large fleets: each agent is a host
 * of its own (its certificate, its etcd client and connection, its state directory, its status
 * key) and does all a host's agent does — watch, read the GPOs at one revision, check them, write
 * fleet-gpos.json, report — but enforces nothing (no daemon behind it). Runs until killed.
 *
 *   node --import tsx bench/lib/fleet-farm.ts HOSTS.json
 */
import { readFileSync } from 'node:fs';
import { FleetAgent } from '../../src/fleet/agent.ts';
import type { FleetConfig } from '../../src/fleet/config.ts';

const hosts = JSON.parse(readFileSync(process.argv[2] as string, 'utf8')) as {
  config: FleetConfig;
  stateDir: string;
}[];
const quiet = { info: () => {}, warn: () => {}, error: (o: object, m?: string) => console.error(m, JSON.stringify(o)) };
const agents = hosts.map(
  (h) =>
    new FleetAgent({
      config: h.config,
      policyDir: `${h.stateDir}/policy`,
      log: quiet,
      version: 'bench',
      enforce: async () => {},
    }),
);
for (const a of agents) a.start();
process.stdout.write(`started ${agents.length}\n`);
process.on('SIGTERM', () => {
  void Promise.all(agents.map((a) => a.close())).then(() => process.exit(0));
});
setInterval(() => {}, 1 << 30);
