/**
 * consec command line: the Windows command surfaces (pwsh, netsh), the daemon, and the lab.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { readFdBounded, readTextBounded } from '../io/bounded.ts';
import { addFleetCommands } from './fleet.ts';
import { Command, CommanderError } from 'commander';
import { stateDirFromEnv } from '../policy/store.ts';
import { ConsecError } from '../errors.ts';
import { TOPOLOGIES } from '../lab/topology.ts';
import { consecVersion } from '../version.ts';

// Each command loads its own modules when it runs: `consec pwsh` never loads the IKE daemon, nor the
// daemon the lab (a command's start-up time is the modules it reads).

function stateDir(program: Command): string {
  return (program.opts().stateDir as string | undefined) ?? stateDirFromEnv();
}

export function buildProgram(): Command {
  const program = new Command('consec')
    .description('Windows-style IPsec (connection security rules) for Linux hosts')
    .version(consecVersion(), '-V, --version', "print consec's version")
    .option('--state-dir <dir>', 'where policy and state live (default: $CONSEC_HOME or /var/lib/consec)')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('pwsh')
    .description('run NetSecurity cmdlets (New-NetIPsecRule, Get-NetIPsecRule, …) as written for Windows')
    .usage("[-Command '<cmdlets>' | -File <script.ps1> | <script.ps1> | -]")
    .argument('[args...]', 'PowerShell-style arguments: -Command, -File, a script path, or - for stdin')
    .allowUnknownOption()
    .helpOption('--help')
    .addHelpText(
      'after',
      `
Runs Windows PowerShell as admins write it for the NetSecurity module: functions, param blocks,
try/catch, pipelines, Format-Table/List, ConvertTo-Json. Policy goes to the state directory's
PersistentStore unless -PolicyStore names another (a GPO: domain\\GPO). A running daemon
applies changes within seconds; live views (Get-NetIPsecMainModeSA, …) ask it.

Examples:
  consec pwsh -Command 'New-NetIPsecRule -DisplayName "Require inbound" -InboundSecurity Require -OutboundSecurity Request'
  consec pwsh -File domain-isolation.ps1
  consec pwsh -Command 'Get-NetIPsecRule | Format-Table DisplayName, Mode, InboundSecurity'
  consec pwsh -Command 'Test-NetIPsecFlow 192.0.2.30 -Protocol TCP -RemotePort 445'   # what-if
  consec pwsh -Command 'Get-NetIPsecMainModeSA | Format-List'                          # live SAs

Exit status: 0 when no error record was written, 1 otherwise.`,
    )
    .action(async (args: string[]) => {
      const { parsePwshArgs, runPwsh } = await import('../shell/pwsh-cli.ts');
      const invocation = parsePwshArgs(args, () => readFdBounded(0, 'Standard input').toString('utf8'));
      process.exitCode = await runPwsh(invocation, stateDir(program), {
        stdout: (t) => process.stdout.write(t),
        stderr: (t) => process.stderr.write(t),
      });
    });

  program
    .command('netsh')
    .description('run netsh advfirewall commands (consec, mainmode, set/show global, monitor) as written for Windows')
    .argument(
      '[words...]',
      'the words after "netsh", e.g. advfirewall consec show rule name=all; or -f FILE (a netsh script)',
    )
    .option('--hints', "consec's hints (a keyword read another way, a default that applies) as WARNING lines on stderr")
    .allowUnknownOption()
    .helpOption('--help')
    .addHelpText(
      'after',
      `
The netsh advfirewall contexts: consec (connection security rules), mainmode, firewall (rules),
set/show global (IPsec and main mode settings), set store, monitor (live SAs), with netsh's own
output and errors.

Examples:
  consec netsh advfirewall consec add rule name=web endpoint1=any endpoint2=192.0.2.0/24 action=requireinrequestout
  consec netsh advfirewall consec show rule name=all
  consec netsh advfirewall set global ipsec defaultkeymodules ikev1first
  consec netsh advfirewall monitor show mmsa
  consec netsh -f policy.netsh                        # a netsh script, one session`,
    )
    .action(async (words: string[], opts: { hints?: boolean }) => {
      const [{ PolicyStores }, { fleetStores }, { Netsh }, { splitLine }] = await Promise.all([
        import('../policy/store.ts'),
        import('../shell/netsecurity/cmdlets.ts'),
        import('../shell/netsh/netsh.ts'),
        import('../shell/netsh/syntax.ts'),
      ]);
      const stores = new PolicyStores(stateDir(program));
      fleetStores(stores);
      const netsh = new Netsh(
        stores,
        { stdout: (t) => process.stdout.write(t), stderr: (t) => process.stderr.write(t) },
        { hints: opts.hints === true },
      );
      // netsh -f FILE: a script of commands, one session (set store holds for the lines after it).
      if (words[0]?.toLowerCase() === '-f' && words.length === 2) {
        let script: string;
        try {
          script = readTextBounded(words[1] as string, `The netsh script ${words[1]}`);
        } catch (err) {
          process.stdout.write(`The system cannot read the file specified: ${(err as Error).message}\n\n`);
          process.exitCode = 1;
          return;
        }
        process.exitCode = await netsh.runScript(script);
        return;
      }
      // One argument holding a whole command line (e.g. from a script) is split like netsh does.
      process.exitCode = await netsh.run(words.length === 1 ? splitLine(words[0] as string) : words);
    });

  program
    .command('auditpol')
    .description(
      'audit policy for the Security log, as Windows auditpol: /set /subcategory:"IPsec Main Mode" /success:enable …',
    )
    .argument('[words...]', 'the words after "auditpol", e.g. /get /category:*')
    .allowUnknownOption()
    .helpOption('--help')
    .addHelpText(
      'after',
      `
Examples:
  consec auditpol /set /subcategory:"IPsec Main Mode" /success:enable /failure:enable
  consec auditpol /get /category:*
The events go to the Security log (consec pwsh -Command 'Get-WinEvent -LogName Security') and
to the journal (journalctl CONSEC_EVENT_ID=4653).`,
    )
    .action(async (words: string[]) => {
      const [{ AuditPolicyError, runAuditpol }, { splitLine }] = await Promise.all([
        import('../audit/policy.ts'),
        import('../shell/netsh/syntax.ts'),
      ]);
      try {
        process.stdout.write(
          runAuditpol(stateDir(program), words.length === 1 ? splitLine(words[0] as string) : words),
        );
      } catch (err) {
        if (!(err instanceof AuditPolicyError)) throw err;
        process.stderr.write(`${err.message}\n`);
        process.exitCode = 87; // ERROR_INVALID_PARAMETER, as auditpol exits
      }
    });

  const ike = program.command('ike').description('IKEv2 keying: negotiate what the active policy asks for');
  ike
    .command('initiate')
    .description('negotiate an IKE SA and child SA with a peer, as the active policy for that peer says')
    .argument('<remote>', 'the peer address')
    .option('--local <address>', "local address (default: this host's first address of the same family)")
    .option('--ping', 'send three pings through the new child SA and report the replies')
    .option('--verbose', 'print the exchanges')
    .option('--keep', 'leave the SA at the peer on exit (default: delete it)')
    .option(
      '--wireshark-keys <dir>',
      "append the SA keys to Wireshark's ikev2_decryption_table and esp_sa files in DIR (they are secrets)",
    )
    .action(
      async (
        remote: string,
        opts: { local?: string; ping?: boolean; verbose?: boolean; wiresharkKeys?: string; keep?: boolean },
      ) => {
        const { runInitiate } = await import('../ike/cli.ts');
        process.exitCode = await runInitiate({ remote, ...opts }, stateDir(program), (l) =>
          process.stdout.write(`${l}\n`),
        );
      },
    );

  program
    .command('daemon')
    .description('run the keying and data-plane service that enforces the active policy')
    .addHelpText(
      'after',
      `
In the foreground, logging JSON lines; as a service see "consec service install". It keys with
IKEv2, IKEv1 and AuthIP as the rules say, protects traffic in its userspace data plane (a TUN
device), and keeps a fail-closed nftables table so Require traffic never passes in clear, even
when the daemon is killed (consec daemon --remove-filters lifts it). Without --listen it runs on
every global address of the host, IPv4 and IPv6, following them as they come and go.
Signals: SIGHUP re-reads the policy; SIGTERM/SIGINT delete the SAs at the peers and stop.

Examples:
  consec daemon                                    # every address
  consec daemon --listen 192.0.2.1 --metrics 127.0.0.1:9464
  consec daemon --remove-filters --force          # stop it and remove its filters`,
    )
    .option(
      '--listen <address...>',
      'only these addresses (default: every global address of the host, followed as addresses come and go)',
    )
    .option('--encap', 'encapsulate ESP in UDP 4500 even without a NAT (for hosts without kernel ESP)')
    .option(
      '--no-offload',
      'userspace data plane: no TUN offloads (the kernel hands over MTU-sized packets, not 64 KiB TCP/UDP super-packets)',
    )
    .option(
      '--dataplane <kind>',
      "auto (the kernel's ESP where it has it, else userspace), kernel (netlink XFRM), userspace (ESP on a TUN device) or none (negotiate only)",
      'auto',
    )
    .option(
      '--remove-filters',
      "remove consec's fail-closed nftables table, routing rule and routes, then exit (refused while a daemon runs)",
    )
    .option('--force', 'with --remove-filters: stop the running daemon first (its SAs deleted at the peers)')
    .option('--wireshark-keys <dir>', "append each child SA's keys to DIR/esp_sa for Wireshark (mode 0600)")
    .option('--manual-sas <file>', 'install the manual SAs of a YAML file (keys and SPIs, no IKE); mode 0600')
    .option('--dpd <seconds>', 'liveness check after this many seconds without traffic from a peer (0: off)', '30')
    .option('--metrics <addr>', 'serve Prometheus metrics at http://ADDRESS:PORT/metrics (e.g. 127.0.0.1:9464)')
    .option(
      '--log-level <level>',
      'info (every SA set up and taken down, the default), warn (problems only) or error; audit events go to the Security log either way',
      'info',
    )
    .action(
      async (opts: {
        listen?: string[];
        encap?: boolean;
        offload: boolean;
        dpd: string;
        metrics?: string;
        dataplane: string;
        removeFilters?: boolean;
        force?: boolean;
        wiresharkKeys?: string;
        manualSas?: string;
        logLevel: string;
      }) => {
        // (Prometheus' client is loaded only by a daemon that serves metrics.)
        if (opts.metrics) (await import('../daemon/metrics.ts')).parseListen(opts.metrics);
        const { runDaemon } = await import('../daemon/main.ts');
        const dpd = Number(opts.dpd);
        if (!Number.isFinite(dpd) || dpd < 0)
          throw new ConsecError('ERR_USAGE', `--dpd ${opts.dpd}: not a number of seconds`);
        if (!['info', 'warn', 'error'].includes(opts.logLevel))
          throw new ConsecError('ERR_USAGE', `--log-level ${opts.logLevel}: use info, warn or error`);
        if (!['auto', 'kernel', 'userspace', 'none'].includes(opts.dataplane))
          throw new ConsecError('ERR_USAGE', `--dataplane ${opts.dataplane}: use auto, kernel, userspace or none`);
        process.exitCode = await runDaemon(stateDir(program), {
          listen: opts.listen,
          encap: opts.encap,
          offload: opts.offload,
          dpd,
          dataplane: opts.dataplane as 'auto' | 'kernel' | 'userspace' | 'none',
          removeFilters: opts.removeFilters,
          force: opts.force,
          wiresharkKeys: opts.wiresharkKeys,
          manualSas: opts.manualSas,
          metrics: opts.metrics,
          logLevel: opts.logLevel as 'info' | 'warn' | 'error',
        });
      },
    );

  addFleetCommands(program, () => stateDir(program));

  const service = program
    .command('service')
    .description('install consec as a systemd service that starts before the network (Type=notify)')
    .addHelpText(
      'after',
      `
Examples:
  consec service install --now     # /etc/systemd/system/consec.service, enabled and started
  consec service status            # state, PID, the daemon's status line (exit 0 running, 3 not)
  consec service unit              # the unit file install writes
  journalctl -u consec             # its log`,
    );
  service
    .command('install')
    .description(
      'write consec.service (before network-pre.target, hardened, restarted on failure) and enable it; --now starts it',
    )
    .option('--now', 'start the service now as well')
    .option('--unit-dir <dir>', 'write the unit here instead of /etc/systemd/system (packaging, tests)')
    .action(async (opts: { now?: boolean; unitDir?: string }) => {
      const { installService, thisCommand } = await import('../daemon/service.ts');
      process.exitCode = await installService(
        { command: thisCommand(), stateDir: resolve(stateDir(program)), unitDir: opts.unitDir, now: opts.now },
        (l) => process.stdout.write(`${l}\n`),
      );
    });
  service
    .command('uninstall')
    .description('stop, disable and remove consec.service (the policy in the state directory stays)')
    .option('--unit-dir <dir>', 'the directory the unit was written to')
    .action(async (opts: { unitDir?: string }) => {
      const { uninstallService } = await import('../daemon/service.ts');
      process.exitCode = await uninstallService(opts, (l) => process.stdout.write(`${l}\n`));
    });
  service
    .command('status')
    .description("the service as systemd sees it, with the daemon's status line (exit 0 running, 3 not)")
    .action(async () => {
      const { serviceStatus } = await import('../daemon/service.ts');
      process.exitCode = await serviceStatus((l) => process.stdout.write(`${l}\n`));
    });
  service
    .command('unit')
    .description('print the unit file install would write')
    .action(async () => {
      const { thisCommand, unitText } = await import('../daemon/service.ts');
      process.stdout.write(unitText({ command: thisCommand(), stateDir: resolve(stateDir(program)) }));
    });

  const lab = program.command('lab').description('network-namespace lab: TEST-NET hosts joined by veth pairs');
  lab
    .command('demo')
    .description('build a two-host lab, apply a Windows-syntax policy, show the SAs and ESP on the wire')
    .option('--domain', 'domain isolation instead: a KDC, two members, AuthIP with Kerberos')
    .action(async (opts: { domain?: boolean }) => {
      if (opts.domain) {
        const { runDomainDemo } = await import('../lab/demo-domain.ts');
        process.exitCode = await runDomainDemo((l) => process.stdout.write(`${l}\n`));
      } else {
        const { runDemo } = await import('../lab/demo.ts');
        process.exitCode = await runDemo();
      }
    });
  lab
    .command('up')
    .description('build a topology and keep it until Ctrl-C (enter a host with: ip netns exec NAMESPACE bash)')
    .argument('[topology]', `one of: ${Object.keys(TOPOLOGIES).join(', ')}`, 'host-to-host')
    .option(
      '--guest <host=kind>',
      'replace a host with a User-Mode Linux guest with kernel IPsec (kind: strongswan or libreswan); repeatable',
      (v: string, all: string[]) => [...all, v],
      [] as string[],
    )
    .action(async (name: string, opts: { guest: string[] }) => {
      const make = TOPOLOGIES[name];
      if (!make)
        throw new ConsecError(
          'ERR_LAB_TOPOLOGY',
          `unknown topology "${name}"; choose one of: ${Object.keys(TOPOLOGIES).join(', ')}`,
        );
      const [{ Lab }, { LabDomain }, { EtcdCluster }, { LabPki }, { writeFleetConfig }, uml] = await Promise.all([
        import('../lab/lab.ts'),
        import('../lab/kdc.ts'),
        import('../lab/etcd.ts'),
        import('../lab/pki.ts'),
        import('../fleet/config.ts'),
        import('../lab/uml.ts'),
      ]);
      const spec = make();
      const built = await Lab.create(spec);
      for (const h of spec.hosts) {
        const addrs = spec.links
          .flatMap((l) => [l.a, l.b])
          .filter((i) => i.host === h.name)
          .map((i) => `${i.name} ${i.addresses.join(' ')}`);
        process.stdout.write(`${h.name.padEnd(8)} ${built.ns(h.name).padEnd(20)} ${addrs.join('; ')}\n`);
      }
      if (name === 'domain') {
        // The domain controller's KDC, and alice and bob joined (carol stays outside the domain).
        const dom = await LabDomain.create(built);
        for (const member of ['alice', 'bob']) await dom.join(member);
        process.stdout.write(
          `realm    ${dom.realm}: KDC on dc (${built.address('dc')}); members alice, bob; carol is not a member\n` +
            `         a member's Kerberos environment: KRB5_CONFIG=${dom.krb5Conf} KRB5_KTNAME=FILE:${dom.keytab('alice')} (alice)\n`,
        );
      }
      if (name === 'fleet') {
        // The fleet's etcd cluster (access control on), its domain controller, and three member
        // hosts joined with their own certificates; the admin workstation joined as an admin.
        const cluster = await EtcdCluster.start(built, ['etcd1', 'etcd2', 'etcd3'], LabPki.create());
        await cluster.enableAuth(['admin']);
        const dom = await LabDomain.create(built);
        const dirs: Record<string, string> = {};
        for (const host of ['admin', 'alice', 'bob', 'carol']) {
          if (host !== 'admin') await dom.join(host);
          const dir = mkdtempSync(join(tmpdir(), `consec-fleet-${host}-`));
          built.adopt(dir);
          writeFleetConfig(dir, {
            endpoints: cluster.endpoints,
            ...cluster.credentials(host),
            domain: 'corp.example',
            host,
          });
          dirs[host] = dir;
        }
        process.stdout.write(
          [
            `etcd     a 3-member cluster: ${cluster.endpoints.join(' ')} (TLS, client certificates, access control on)`,
            `realm    ${dom.realm}: KDC on dc (${built.address('dc')}); members alice, bob, carol`,
            `admin    state directory ${dirs.admin} (an etcd root identity): ip netns exec ${built.ns('admin')} consec --state-dir ${dirs.admin} fleet status`,
            ...['alice', 'bob', 'carol'].map(
              (h) =>
                `${h.padEnd(8)} state directory ${dirs[h]}: KRB5_CONFIG=${dom.krb5Conf} KRB5_KTNAME=FILE:${dom.keytab(h)} ip netns exec ${built.ns(h)} consec --state-dir ${dirs[h]} daemon --listen ${built.address(h)}`,
            ),
            `         place a host first (it gets its etcd role): consec --state-dir ${dirs.admin} fleet host alice --container corp.example/Servers`,
            '',
          ].join('\n'),
        );
      }
      for (const g of opts.guest) {
        const [host = '', kind = ''] = g.split('=');
        if (!uml.isGuestKind(kind))
          throw new ConsecError('ERR_LAB_TOPOLOGY', `--guest ${g}: the kind is one of ${uml.GUEST_KINDS.join(', ')}`);
        const guest = await uml.Guest.boot(built, host, { kind, log: (m) => process.stdout.write(`${m}\n`) });
        process.stdout.write(
          `${host.padEnd(8)} UML guest (${kind}, booted in ${guest.bootMs} ms); run commands in it with: consec lab guest-exec ${guest.dir} -- CMD…\n`,
        );
      }
      process.stdout.write('lab is up; Ctrl-C tears it down\n');
      await new Promise<void>(() => {});
    });
  lab
    .command('guest-exec')
    .description('run a command in a running lab guest (the directory `lab up --guest` printed)')
    .argument('<dir>', "the guest's shared directory")
    .argument('<command...>', 'command and arguments')
    .action(async (dir: string, command: string[]) => {
      const { guestShell, shellQuote } = await import('../lab/uml.ts');
      const r = await guestShell(dir, command.map(shellQuote).join(' '), { allowFailure: true, timeoutMs: 600_000 });
      process.stdout.write(r.stdout);
      process.exitCode = r.code;
    });
  lab
    .command('guest-image')
    .description('build (or find cached) the guest image of a kind: strongswan or libreswan')
    .argument('<kind>', 'strongswan or libreswan')
    .action(async (kind: string) => {
      const { ensureGuestImage, GUEST_KINDS, isGuestKind } = await import('../lab/uml.ts');
      if (!isGuestKind(kind))
        throw new ConsecError('ERR_LAB_TOPOLOGY', `unknown guest kind "${kind}": one of ${GUEST_KINDS.join(', ')}`);
      const image = await ensureGuestImage(kind, (m) => process.stdout.write(`${m}\n`));
      process.stdout.write(`${image.path}${image.built ? '' : ' (cached)'}\n`);
    });
  lab
    .command('cleanup')
    .description('remove namespaces left behind by crashed lab runs')
    .action(async () => {
      const { Lab } = await import('../lab/lab.ts');
      const removed = await Lab.cleanupStale();
      process.stdout.write(removed.length ? `removed ${removed.join(' ')}\n` : 'nothing to clean up\n');
    });
  lab
    .command('topologies')
    .description('list the built-in topologies')
    .action(() => {
      for (const [name, make] of Object.entries(TOPOLOGIES)) {
        const spec = make();
        process.stdout.write(`${name.padEnd(14)} hosts: ${spec.hosts.map((h) => h.name).join(', ')}\n`);
      }
    });
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof ConsecError) {
      process.stderr.write(`consec: ${err.message}\n`);
      return err.code === 'ERR_NOT_YET_AVAILABLE' ? 2 : 1;
    }
    process.stderr.write(`consec: unexpected error: ${(err as Error).message}\n`);
    if (process.env.CONSEC_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
    return 1;
  }
}
