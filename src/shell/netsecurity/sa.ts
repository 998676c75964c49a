/**
 * Live security associations from the running daemon (control API): Get-NetIPsecMainModeSA,
 * Get-NetIPsecQuickModeSA and their Remove- cmdlets, which delete the SA at the peer through IKE,
 * and Get-NetIPsecStatistics (seed 000's name): SA counts, negotiations, traffic, drops by reason.
 * `Get-NetIPsecMainModeSA | Remove-NetIPsecMainModeSA` works as on Windows (by Name).
 */
import { type ControlMethod, controlRequest } from '../../daemon/control.ts';
import { ConsecError } from '../../errors.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { type CommandCall, type CommandDef, type ParamDef, PwshError } from '../pwsh/runtime.ts';
import { localOnly } from './family.ts';
import { psObject } from '../pwsh/values.ts';

const MM_TYPE = 'Microsoft.Management.Infrastructure.CimInstance#root/standardcimv2/MSFT_NetMainModeSA';
const QM_TYPE = 'Microsoft.Management.Infrastructure.CimInstance#root/standardcimv2/MSFT_NetQuickModeSA';

async function ask(stateDir: string, method: ControlMethod, name?: string): Promise<unknown> {
  try {
    return await controlRequest(stateDir, method, name === undefined ? {} : { name });
  } catch (err) {
    if (err instanceof ConsecError)
      throw new PwshError(
        err.message,
        err.code === 'ERR_NOT_FOUND' ? 'CmdletizationQuery_NotFound_Name' : 'WindowsError',
        err.code === 'ERR_NOT_FOUND' ? 'ObjectNotFound' : 'ResourceUnavailable',
        'CimException',
      );
    throw err;
  }
}

/** Names from -Name, or from the Name property of piped SA objects. */
function names(call: CommandCall): string[] {
  const given = call.get<string[]>('Name');
  if (given?.length) return given;
  return (call.input ?? []).map((o) => String((o as { Name?: unknown }).Name ?? '')).filter(Boolean);
}

export function saCommands(stores: PolicyStores): CommandDef[] {
  const remote: ParamDef[] = [
    { name: 'CimSession', type: 'any' },
    { name: 'ThrottleLimit', type: 'uint' },
    { name: 'AsJob', type: 'switch' },
  ];
  const get = (name: string, method: ControlMethod, type: string): CommandDef => ({
    name,
    params: [{ name: 'Name', type: 'strings', position: 0 }, { name: 'All', type: 'switch' }, ...remote],
    async invoke(call) {
      localOnly(call);
      const all = (await ask(stores.stateDir, method)) as Record<string, unknown>[];
      const wanted = call.get<string[]>('Name');
      const out = wanted?.length ? all.filter((v) => wanted.includes(String(v.Name))) : all;
      if (wanted?.length && out.length === 0)
        throw new PwshError(
          `No MSFT_Net${type === MM_TYPE ? 'MainMode' : 'QuickMode'}SA objects found with property 'Name' equal to '${wanted.join("', '")}'.`,
          'CmdletizationQuery_NotFound_Name',
          'ObjectNotFound',
          'CimJobException',
        );
      return out.map((v) => psObject(type, v));
    },
  });
  const remove = (name: string, method: ControlMethod): CommandDef => ({
    name,
    params: [
      { name: 'Name', type: 'strings', position: 0 },
      { name: 'InputObject', type: 'objects', pipeline: true },
      ...remote,
    ],
    mutating: true,
    async invoke(call) {
      localOnly(call);
      if (call.whatIf) {
        for (const n of names(call))
          call.runtime.host.stdout(`What if: Performing operation "Delete" on Target "${n}".\n`);
        return [];
      }
      for (const n of names(call)) await ask(stores.stateDir, method, n);
      return [];
    },
  });
  const stats: CommandDef = {
    name: 'Get-NetIPsecStatistics',
    params: remote,
    async invoke(call) {
      localOnly(call);
      const st = (await ask(stores.stateDir, 'stats')) as Record<string, unknown>;
      return [psObject('consec.NetIPsecStatistics', st)];
    },
  };
  return [
    stats,
    get('Get-NetIPsecMainModeSA', 'mmsa.list', MM_TYPE),
    get('Get-NetIPsecQuickModeSA', 'qmsa.list', QM_TYPE),
    remove('Remove-NetIPsecMainModeSA', 'mmsa.remove'),
    remove('Remove-NetIPsecQuickModeSA', 'qmsa.remove'),
  ];
}
