/**
 * `consec fleet …` (joining a fleet, its directory: hosts, containers, links, security filtering;
 * the fleet's state), `consec gpupdate` and `consec gpresult`, as a Windows admin knows the last two.
 */
import { rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { Etcd3 } from 'etcd3';
import { ConsecError } from '../errors.ts';
import { controlRequest, NoDaemonError } from '../daemon/control.ts';
import { editDirectory, fleetStatus } from '../fleet/admin.ts';
import { type FleetConfig, fleetFile, readFleetConfig, writeFleetConfig } from '../fleet/config.ts';
import { containerChain, type Directory, type GpoLink } from '../fleet/directory.ts';
import { connectFleet, loadGpo } from '../fleet/gpo.ts';
import { readGroupPolicy, removeGroupPolicy } from '../policy/group-policy.ts';
import { PolicyStores } from '../policy/store.ts';

const out = (line = ''): void => void process.stdout.write(`${line}\n`);

function joined(stateDir: string): FleetConfig {
  const config = readFleetConfig(stateDir);
  if (!config) throw new ConsecError('ERR_FLEET', 'this host has not joined a fleet (consec fleet join)');
  return config;
}

async function withFleet<T>(stateDir: string, work: (etcd: Etcd3, config: FleetConfig) => Promise<T>): Promise<T> {
  const config = joined(stateDir);
  const etcd = connectFleet(config);
  try {
    return await work(etcd, config);
  } finally {
    etcd.close();
  }
}

/** A GPO's name within the domain, given as "Isolation" or "corp.example\\Isolation". */
const gpoName = (gpo: string): string => gpo.slice(gpo.indexOf('\\') + 1);

const yesNo = (v: string): boolean => {
  if (/^(yes|true|1)$/i.test(v)) return true;
  if (/^(no|false|0)$/i.test(v)) return false;
  throw new ConsecError('ERR_USAGE', `"${v}" is not yes or no`);
};

/** A container path of the fleet's domain ("corp.example/Servers"), checked. */
function containerPath(dir: Directory, path: string): string {
  const chain = containerChain(dir.domain, path.replace(/\/+$/, ''));
  return chain[chain.length - 1] as string;
}

function ensureContainer(dir: Directory, path: string) {
  const p = containerPath(dir, path);
  let c = dir.containers.get(p.toLowerCase());
  if (!c) dir.containers.set(p.toLowerCase(), (c = { path: p, blockInheritance: false, links: [] }));
  return c;
}

export function addFleetCommands(program: Command, stateDir: () => string): void {
  const fleet = program
    .command('fleet')
    .description("this host's membership of a fleet: Group Policy held in an etcd v3 cluster")
    .addHelpText(
      'after',
      `
A host that joined a fleet edits the fleet's GPOs (its domain's "-PolicyStore domain\\GPO") in
Open-NetGPO / Save-NetGPO sessions: Open-NetGPO reads the GPO from the cluster, Save-NetGPO writes it
back only if nobody saved it since (else a conflict error, and nothing is saved). Its daemon applies
the GPOs linked to its container (and those above it) whose security filtering includes it, as soon
as they change; gpupdate /force reads them again at once, gpresult shows what applied.

Examples:
  consec fleet join --endpoints https://192.0.2.21:2379 https://192.0.2.22:2379 \\
      --ca ca.pem --cert host.pem --key host.key --domain corp.example --host alice
  consec fleet gpo 'corp.example\\Isolation'      # the GPO's revision and rules in the cluster
  consec fleet host alice --container corp.example/Servers --group 'SQL Servers'
  consec fleet link Isolation --container corp.example --order 1
  consec fleet filter Isolation --apply 'SQL Servers'
  consec fleet status                            # every host: applied revision, errors, last contact`,
    );
  fleet
    .command('join')
    .description(
      'join a fleet: its etcd endpoints, the TLS files to reach them with, its domain; kept in fleet.json (0600)',
    )
    .requiredOption('--endpoints <url...>', 'the cluster members, https://ADDRESS:PORT')
    .requiredOption('--ca <file>', "the CA certificate (PEM) of the cluster's certificates")
    .requiredOption('--cert <file>', "this host's client certificate (PEM; its CN is its etcd user)")
    .requiredOption('--key <file>', "this host's private key (PEM)")
    .requiredOption('--domain <name>', 'the domain of the fleet\'s GPOs ("corp.example" in corp.example\\Isolation)')
    .option('--host <name>', "this host's name in the fleet (its certificate's CN)", hostname())
    .action((opts: { endpoints: string[]; ca: string; cert: string; key: string; domain: string; host: string }) => {
      writeFleetConfig(stateDir(), {
        endpoints: opts.endpoints,
        ca: resolve(opts.ca),
        cert: resolve(opts.cert),
        key: resolve(opts.key),
        domain: opts.domain,
        host: opts.host,
      });
      out(`joined the fleet of ${opts.domain} as ${opts.host}`);
    });
  fleet
    .command('leave')
    .description(
      "leave the fleet: fleet.json and the fleet policy this host applied go (the daemon drops its GPOs' rules)",
    )
    .action(() => {
      const config = joined(stateDir());
      removeGroupPolicy(new PolicyStores(stateDir()).policyDir);
      rmSync(fleetFile(stateDir()), { force: true });
      out(`left the fleet of ${config.domain}`);
    });
  fleet
    .command('access')
    .description(
      'give every host exactly the etcd rights the directory gives it (after a failed change, or a change made by hand)',
    )
    .action(() =>
      withFleet(stateDir(), async (etcd, config) => {
        const r = await editDirectory(etcd, config.domain, () => {}, { repair: true });
        out(`access rights of ${r.dir.hosts.size} hosts in line with the directory`);
      }),
    );
  fleet
    .command('gpo <name>')
    .description("a GPO as the fleet's cluster holds it: its revision and its rules")
    .action((name: string) =>
      withFleet(stateDir(), async (etcd) => {
        const r = await loadGpo(etcd, name);
        out(JSON.stringify({ name, revision: r.revision, rules: r.doc.rules.map((x) => x.DisplayName) }));
      }),
    );
  fleet
    .command('host <name>')
    .description('place a host in a container and its groups (creates its etcd role: what it may read)')
    .option('--container <path>', 'its container, the domain first (corp.example/Servers)')
    .option('--group <name...>', 'the groups it is a member of (security filtering)')
    .option('--remove', 'take the host out of the directory (and its etcd role)')
    .action((host: string, opts: { container?: string; group?: string[]; remove?: boolean }) =>
      withFleet(stateDir(), async (etcd, config) => {
        const h = host.toLowerCase();
        const r = await editDirectory(etcd, config.domain, (dir) => {
          if (opts.remove) {
            dir.hosts.delete(h);
            return;
          }
          const old = dir.hosts.get(h);
          dir.hosts.set(h, {
            container: opts.container ? containerPath(dir, opts.container) : old?.container,
            groups: opts.group ?? old?.groups ?? [],
          });
        });
        out(`${opts.remove ? 'removed' : 'placed'} ${h} (directory revision ${r.revision})`);
      }),
    );
  fleet
    .command('container <path>')
    .description('create a container (OU), or change whether it blocks inheritance')
    .option('--block-inheritance <yes|no>', 'whether GPOs linked above it (unless enforced) stop here')
    .action((path: string, opts: { blockInheritance?: string }) =>
      withFleet(stateDir(), async (etcd, config) => {
        const r = await editDirectory(etcd, config.domain, (dir) => {
          const c = ensureContainer(dir, path);
          if (opts.blockInheritance !== undefined) c.blockInheritance = yesNo(opts.blockInheritance);
        });
        out(`container ${path} (directory revision ${r.revision})`);
      }),
    );
  fleet
    .command('link <gpo>')
    .description('link a GPO to a container (New-GPLink / Set-GPLink), or change or remove its link')
    .requiredOption('--container <path>', 'the container, the domain first (corp.example/Servers)')
    .option('--order <n>', 'its link order there (1 = the highest precedence; default: last)')
    .option('--enforced <yes|no>', 'enforced: containers below cannot override or block it')
    .option('--enabled <yes|no>', 'whether the link is processed')
    .option('--remove', 'remove the link')
    .action(
      (
        gpo: string,
        opts: { container: string; order?: string; enforced?: string; enabled?: string; remove?: boolean },
      ) =>
        withFleet(stateDir(), async (etcd, config) => {
          const name = gpoName(gpo);
          const r = await editDirectory(etcd, config.domain, (dir) => {
            const c = ensureContainer(dir, opts.container);
            const i = c.links.findIndex((l) => l.gpo.toLowerCase() === name.toLowerCase());
            const old: GpoLink | undefined = c.links[i];
            if (i >= 0) c.links.splice(i, 1);
            if (opts.remove) {
              if (!old) throw new ConsecError('ERR_NOT_FOUND', `${name} is not linked to ${c.path}`);
              return;
            }
            const link: GpoLink = {
              gpo: old?.gpo ?? name,
              enabled: opts.enabled !== undefined ? yesNo(opts.enabled) : (old?.enabled ?? true),
              enforced: opts.enforced !== undefined ? yesNo(opts.enforced) : (old?.enforced ?? false),
            };
            const order = opts.order === undefined ? (i >= 0 ? i + 1 : c.links.length + 1) : Number(opts.order);
            if (!Number.isInteger(order) || order < 1 || order > c.links.length + 1)
              throw new ConsecError('ERR_USAGE', `--order ${opts.order}: 1 to ${c.links.length + 1} in ${c.path}`);
            c.links.splice(order - 1, 0, link);
          });
          out(`${opts.remove ? 'unlinked' : 'linked'} ${name} at ${opts.container} (directory revision ${r.revision})`);
        }),
    );
  fleet
    .command('filter <gpo>')
    .description('security filtering: the hosts and groups a GPO applies to (Set-GPPermission … GpoApply)')
    .option('--apply <name...>', 'host names and groups ("Authenticated Users": every host, the default)')
    .action((gpo: string, opts: { apply?: string[] }) =>
      withFleet(stateDir(), async (etcd, config) => {
        const name = gpoName(gpo).toLowerCase();
        const r = await editDirectory(etcd, config.domain, (dir) => {
          if (!opts.apply?.length || opts.apply.some((a) => /^authenticated users$/i.test(a))) dir.filters.delete(name);
          else dir.filters.set(name, { apply: opts.apply });
        });
        out(
          `security filtering of ${gpo}: ${opts.apply?.join(', ') ?? 'Authenticated Users'} (directory revision ${r.revision})`,
        );
      }),
    );
  fleet
    .command('status')
    .description('every host of the fleet: its container, the revision it applied, its error, its last contact')
    .option('--json', 'as JSON')
    .action((opts: { json?: boolean }) =>
      withFleet(stateDir(), async (etcd, config) => {
        const rows = await fleetStatus(etcd, config.domain);
        if (opts.json) return out(JSON.stringify(rows, null, 2));
        out(['Host', 'Container', 'Revision', 'GPOs', 'Last contact', 'Error'].join('\t'));
        for (const r of rows) {
          const s = r.status as { revision?: string; gpos?: { name: string }[]; reportedAt?: string; error?: string };
          out(
            [
              r.host,
              r.container,
              s?.revision ?? '-',
              s?.gpos?.map((g) => g.name).join(', ') || '-',
              s?.reportedAt ?? 'never',
              s?.error ?? '',
            ].join('\t'),
          );
        }
      }),
    );

  program
    .command('gpupdate')
    .description("read the fleet's GPOs that target this host again now and apply them (gpupdate /force)")
    .argument('[switches...]', '/force: apply again even if unchanged; /target:computer')
    .action(async (switches: string[]) => {
      const bad = switches.filter((s) => !/^[/-](force|target:computer|wait:\d+)$/i.test(s));
      if (bad.length) throw new ConsecError('ERR_USAGE', `gpupdate: not a switch consec knows: ${bad.join(' ')}`);
      const force = switches.some((s) => /^[/-]force$/i.test(s));
      joined(stateDir());
      out('Updating policy...');
      try {
        const r = (await controlRequest(stateDir(), 'gpupdate', { force }, 60_000)) as {
          revision: string;
          changed: boolean;
        };
        out('');
        out(
          `Computer Policy update has completed successfully (fleet revision ${r.revision}${r.changed ? ', changed' : ''}).`,
        );
      } catch (err) {
        if (err instanceof NoDaemonError)
          throw new ConsecError(
            'ERR_NO_DAEMON',
            'the consec daemon is not running: it applies the fleet policy when it starts',
          );
        throw err;
      }
    });

  program
    .command('gpresult')
    .description(
      'the Group Policy this host applied (gpresult /r): GPOs, where they are linked, revisions, what was filtered out',
    )
    .argument('[switches...]', '/r, /scope computer (accepted); --json')
    .option('--json', 'as JSON')
    .action((_switches: string[], opts: { json?: boolean }) => {
      const stores = new PolicyStores(stateDir());
      const applied = readGroupPolicy(stores.policyDir);
      const config = readFleetConfig(stateDir());
      if (opts.json) {
        out(
          JSON.stringify(applied ? { ...applied, gpos: applied.gpos.map(({ text: _t, ...g }) => g) } : null, null, 2),
        );
        return;
      }
      out('');
      out('COMPUTER SETTINGS');
      out('------------------');
      if (!config || !applied) {
        out(config ? '    No fleet policy has been applied yet.' : '    This host has not joined a fleet.');
        return;
      }
      out(`    ${applied.host} in ${applied.container}`);
      out(`    Last time Group Policy was applied: ${applied.appliedAt}`);
      out(`    Group Policy was applied from:      ${config.endpoints.join(' ')}`);
      out(`    Domain Name:                        ${applied.domain}`);
      out(`    Fleet revision:                     ${applied.revision}`);
      out('');
      out('    Applied Group Policy Objects');
      out('    -----------------------------');
      // gpresult lists the highest precedence first.
      for (const g of [...applied.gpos].reverse())
        out(
          `        ${g.name.split('\\').pop()}  (linked at ${g.container}, link order ${g.linkOrder}${g.enforced ? ', enforced' : ''}, revision ${g.revision})`,
        );
      if (applied.gpos.length === 0) out('        N/A');
      if (applied.denied.length) {
        out('');
        out('    The following GPOs were not applied because they were filtered out');
        out('    -------------------------------------------------------------------');
        for (const d of applied.denied) {
          out(`        ${d.name.split('\\').pop()}`);
          out(`            Filtering:  ${d.reason}`);
        }
      }
      out('');
      out('    The computer is a part of the following security groups');
      out('    -------------------------------------------------------');
      for (const g of ['Authenticated Users', 'Domain Computers', ...applied.groups]) out(`        ${g}`);
    });
}
