/**
 * Network location as Windows shows and sets it: Get-NetConnectionProfile, Set-NetConnectionProfile
 * (-NetworkCategory Public|Private, by -InterfaceAlias or -InterfaceIndex, or piped profiles), and
 * the text of `netsh advfirewall monitor show currentprofile`. Which profiles are in force decides
 * which connection security rules the daemon applies (src/filter/location.ts).
 */
import { ConsecError } from '../../errors.ts';
import { activeProfiles, connectionProfiles, setNetworkCategory } from '../../filter/location.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { type CommandDef, PwshError } from '../pwsh/runtime.ts';
import { getProperty, psObject } from '../pwsh/values.ts';

const TYPE = 'Microsoft.Management.Infrastructure.CimInstance#ROOT/StandardCimv2/MSFT_NetConnectionProfile';

const notFound = (what: string): PwshError =>
  new PwshError(
    `No MSFT_NetConnectionProfile objects found with property '${what}'.`,
    'CmdletizationQuery_NotFound',
    'ObjectNotFound',
    'CimJobException',
  );

export function locationCommands(stores: PolicyStores): CommandDef[] {
  const select = (alias?: string[], index?: number[]) =>
    connectionProfiles(stores.stateDir).filter(
      (p) =>
        (!alias || alias.some((a) => a.toLowerCase() === p.InterfaceAlias.toLowerCase())) &&
        (!index || index.includes(p.InterfaceIndex)),
    );
  return [
    {
      name: 'Get-NetConnectionProfile',
      params: [
        { name: 'InterfaceAlias', type: 'strings' },
        { name: 'InterfaceIndex', type: 'uint' },
        { name: 'NetworkCategory', type: 'string' },
      ],
      invoke(call) {
        const alias = call.get<string[]>('InterfaceAlias');
        const one = call.get<number>('InterfaceIndex');
        const index = one === undefined ? undefined : [one];
        const category = call.get<string>('NetworkCategory');
        const found = select(alias, index).filter(
          (p) => !category || p.NetworkCategory.toLowerCase() === category.toLowerCase(),
        );
        if (found.length === 0 && (alias || index))
          throw notFound(
            alias ? `InterfaceAlias' equal to '${alias.join(', ')}` : `InterfaceIndex' equal to '${index?.join(', ')}`,
          );
        return found.map((p) => psObject(TYPE, { ...p }));
      },
    },
    {
      name: 'Set-NetConnectionProfile',
      mutating: true,
      params: [
        { name: 'InterfaceAlias', type: 'strings' },
        { name: 'InterfaceIndex', type: 'uint' },
        { name: 'InputObject', type: 'object', pipeline: true },
        { name: 'NetworkCategory', type: 'string', mandatory: true },
      ],
      invoke(call) {
        const piped = (call.input ?? [])
          .map((o) => getProperty(o, 'InterfaceAlias'))
          .filter((a): a is string => typeof a === 'string');
        const alias = call.get<string[]>('InterfaceAlias') ?? (piped.length ? piped : undefined);
        const one = call.get<number>('InterfaceIndex');
        const index = one === undefined ? undefined : [one];
        if (!alias && !index)
          throw new PwshError(
            'Give -InterfaceAlias, -InterfaceIndex, or pipe Get-NetConnectionProfile objects.',
            'InvalidArgument',
            'InvalidArgument',
            'ArgumentException',
          );
        const targets = select(alias, index);
        if (targets.length === 0)
          throw notFound(
            alias ? `InterfaceAlias' equal to '${alias.join(', ')}` : `InterfaceIndex' equal to '${index?.join(', ')}`,
          );
        const category = call.get<string>('NetworkCategory') as string;
        for (const t of targets) {
          if (call.whatIf) {
            call.runtime.host.stdout(`What if: Performing operation "Set" on Target "${t.InterfaceAlias}".\n`);
            continue;
          }
          try {
            setNetworkCategory(stores.stateDir, t.InterfaceAlias, category);
          } catch (err) {
            if (err instanceof ConsecError)
              throw new PwshError(err.message, 'InvalidArgument', 'InvalidArgument', 'CimException');
            throw err;
          }
        }
        return [];
      },
    },
  ];
}

/** `netsh advfirewall monitor show currentprofile`: each profile in force and its networks (netsh adds "Ok."). */
export function currentProfileText(stateDir: string): string {
  const list = connectionProfiles(stateDir);
  let out = '\n';
  for (const profile of activeProfiles(list.map((p) => p.NetworkCategory))) {
    const category = profile === 'Domain' ? 'DomainAuthenticated' : profile;
    out += `${profile} Profile:\n${'-'.repeat(70)}\n`;
    for (const name of new Set(list.filter((p) => p.NetworkCategory === category).map((p) => p.Name)))
      out += `${name}\n`;
    out += '\n';
  }
  return out.replace(/\n$/, '');
}
