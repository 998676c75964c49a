/**
 * Native commands an IPsec script calls from PowerShell — `auditpol /set /subcategory:"IPsec Main
 * Mode" /failure:enable`, `netsh advfirewall monitor show mmsa` — run in-process against the same
 * state directory, as the Windows executables would: their text goes down the pipeline line by line
 * and $LASTEXITCODE is set (auditpol's 87 for a bad argument, netsh's 1).
 */
import { AuditPolicyError, runAuditpol } from '../../audit/policy.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { Netsh } from '../netsh/netsh.ts';
import type { CommandDef } from '../pwsh/runtime.ts';

const lines = (text: string): string[] => {
  const l = text.split('\n');
  if (l.at(-1) === '') l.pop();
  return l;
};

export function nativeCommands(stores: PolicyStores): CommandDef[] {
  const auditpol = (name: string): CommandDef => ({
    name,
    params: [{ name: 'ArgumentList', type: 'strings', position: 0, remaining: true }],
    invoke(call) {
      const args = (call.get<string[]>('ArgumentList') ?? []).map(String);
      try {
        const out = runAuditpol(stores.stateDir, args);
        call.runtime.setVariable('LASTEXITCODE', 0);
        return lines(out);
      } catch (err) {
        if (!(err instanceof AuditPolicyError)) throw err;
        call.runtime.host.stderr(`${err.message}\n`);
        call.runtime.setVariable('LASTEXITCODE', 87);
        return [];
      }
    },
  });
  const netsh = (name: string): CommandDef => ({
    name,
    params: [{ name: 'ArgumentList', type: 'strings', position: 0, remaining: true }],
    async invoke(call) {
      let out = '';
      const n = new Netsh(stores, { stdout: (t) => (out += t), stderr: (t) => call.runtime.host.stderr(t) });
      const code = await n.run((call.get<string[]>('ArgumentList') ?? []).map(String));
      call.runtime.setVariable('LASTEXITCODE', code);
      return lines(out);
    },
  });
  return [auditpol('auditpol'), auditpol('auditpol.exe'), netsh('netsh'), netsh('netsh.exe')];
}
