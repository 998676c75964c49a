/**
 * Get-Service for the Windows services behind IPsec (seed 000: `Get-Service IKEEXT | Select-Object
 * Status, StartType`). On a consec host the IKE and AuthIP keying modules (IKEEXT) and the IPsec
 * policy agent (PolicyAgent) are `consec daemon`: Running when its control socket answers, Stopped
 * otherwise; StartType Automatic when a systemd unit named consec*.service is enabled, else Manual.
 * Restart-Service IKEEXT (or PolicyAgent), which admin scripts run after changing policy so that
 * every SA is negotiated again under it, ends every main mode SA of the running daemon (their
 * quick mode SAs with them); the daemon reads policy changes by itself.
 */
import { existsSync, readdirSync } from 'node:fs';
import { controlRequest, NoDaemonError } from '../../daemon/control.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { type CommandDef, PwshError } from '../pwsh/runtime.ts';
import { psObject } from '../pwsh/values.ts';

export const SERVICE_TYPE = 'System.ServiceProcess.ServiceController';

const SERVICES: Record<string, string> = {
  IKEEXT: 'IKE and AuthIP IPsec Keying Modules',
  PolicyAgent: 'IPsec Policy Agent',
};

/** Enabled when some systemd target wants a consec unit (the usual `systemctl enable`). */
function startType(): 'Automatic' | 'Manual' {
  const root = '/etc/systemd/system';
  if (!existsSync(root)) return 'Manual';
  for (const d of readdirSync(root))
    if (d.endsWith('.wants') && readdirSync(`${root}/${d}`).some((u) => /^consec.*\.service$/.test(u)))
      return 'Automatic';
  return 'Manual';
}

async function status(stateDir: string): Promise<'Running' | 'Stopped'> {
  try {
    await controlRequest(stateDir, 'stats');
    return 'Running';
  } catch (err) {
    if (err instanceof NoDaemonError) return 'Stopped';
    throw err;
  }
}

const glob = (pattern: string): RegExp =>
  new RegExp(
    `^${pattern
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
    'i',
  );

/** The services that `patterns` name; an error record (as Windows writes it) for each name that matches none. */
function matching(patterns: string[], call: Parameters<CommandDef['invoke']>[0]): string[] {
  const names = new Set<string>();
  for (const p of patterns) {
    const hits = Object.keys(SERVICES).filter((n) => glob(p).test(n));
    if (hits.length === 0 && !/[*?]/.test(p))
      call.runtime.writeError(
        new PwshError(
          `Cannot find any service with service name '${p}'.`,
          'NoServiceFoundForGivenName',
          'ObjectNotFound',
          'ServiceCommandException',
        ),
        call.name,
      );
    for (const h of hits) names.add(h);
  }
  return [...names];
}

function serviceObject(name: string, running: 'Running' | 'Stopped', start: 'Automatic' | 'Manual'): unknown {
  return psObject(SERVICE_TYPE, {
    Status: running,
    Name: name,
    DisplayName: SERVICES[name],
    StartType: start,
    ServiceName: name,
    CanStop: running === 'Running',
    ServiceType: 'Win32ShareProcess',
  });
}

export function serviceCommands(stores: PolicyStores): CommandDef[] {
  return [
    {
      name: 'Get-Service',
      params: [{ name: 'Name', type: 'strings', position: 0 }],
      async invoke(call) {
        const names = matching(call.get<string[]>('Name') ?? ['*'], call);
        if (names.length === 0) return [];
        const [running, start] = [await status(stores.stateDir), startType()];
        return names.map((name) => serviceObject(name, running, start));
      },
    },
    {
      name: 'Restart-Service',
      params: [
        { name: 'Name', type: 'strings', position: 0, mandatory: true },
        { name: 'Force', type: 'switch' },
        { name: 'PassThru', type: 'switch' },
      ],
      async invoke(call) {
        const names = matching(call.get<string[]>('Name') ?? [], call);
        if (names.length === 0) return [];
        if ((await status(stores.stateDir)) === 'Stopped') {
          for (const name of names)
            call.runtime.writeError(
              new PwshError(
                `Service '${SERVICES[name]} (${name})' cannot be started due to the following error: Cannot start service ${name} on computer '.'. The consec daemon is not running: start it with its systemd unit or consec daemon.`,
                'StartServiceFailed',
                'OpenError',
                'ServiceCommandException',
              ),
              call.name,
            );
          return [];
        }
        // The keying service starts over: every main mode SA (and its quick mode SAs) ends, and
        // traffic negotiates new ones under the policy as it is now.
        const sas = (await controlRequest(stores.stateDir, 'mmsa.list')) as { Name?: unknown }[];
        for (const sa of sas)
          if (typeof sa.Name === 'string') await controlRequest(stores.stateDir, 'mmsa.remove', { name: sa.Name });
        return call.get<boolean>('PassThru') ? names.map((name) => serviceObject(name, 'Running', startType())) : [];
      },
    },
  ];
}
