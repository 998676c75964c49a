/**
 * Get-Service for the Windows services behind IPsec (seed 000: `Get-Service IKEEXT | Select-Object
 * Status, StartType`). On a consec host the IKE and AuthIP keying modules (IKEEXT) and the IPsec
 * policy agent (PolicyAgent) are `consec daemon`: Running when its control socket answers, Stopped
 * otherwise; StartType Automatic when a systemd unit named consec*.service is enabled, else Manual.
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

export function serviceCommands(stores: PolicyStores): CommandDef[] {
  return [
    {
      name: 'Get-Service',
      params: [{ name: 'Name', type: 'strings', position: 0 }],
      async invoke(call) {
        const patterns = call.get<string[]>('Name') ?? ['*'];
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
        if (names.size === 0) return [];
        const [running, start] = [await status(stores.stateDir), startType()];
        return [...names].map((name) =>
          psObject(SERVICE_TYPE, {
            Status: running,
            Name: name,
            DisplayName: SERVICES[name],
            StartType: start,
            ServiceName: name,
            CanStop: running === 'Running',
            ServiceType: 'Win32ShareProcess',
          }),
        );
      },
    },
  ];
}
