/** consec in the lab benchmarks: a policy store written with the Windows cmdlets, and cleaning up after it. */
import type { Lab } from '../../src/lab/lab.ts';
import { consecArgv } from '../../test/helpers.ts';
import { freshStateDir, ps } from '../../test/pwsh-helpers.ts';

export interface BenchPolicy {
  local: string;
  remote: string;
  psk: string;
  /** The quick mode proposal's parameters. */
  qm: string;
  /** Tunnel mode between the two hosts (else transport). */
  tunnel: boolean;
  /** Main mode key exchange groups offered, in order (default DH19). */
  keyExchanges?: string[];
}

/** A policy store: Require both ways between `local` and `remote`, PSK, AES-256/SHA-256 main mode. */
export async function consecPolicy(o: BenchPolicy): Promise<string> {
  const dir = freshStateDir('consec-bench-');
  const mode = o.tunnel ? `-Mode Tunnel -LocalTunnelEndpoint ${o.local} -RemoteTunnelEndpoint ${o.remote} ` : '';
  const groups = o.keyExchanges ?? ['DH19'];
  const r = await ps(
    [
      `$qm = New-NetIPsecQuickModeCryptoProposal ${o.qm}`,
      '$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "QM" -Proposal $qm',
      `$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "${o.psk}"`,
      '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
      ...groups.map(
        (g, i) => `$mm${i} = New-NetIPsecMainModeCryptoProposal -Encryption AES256 -Hash SHA256 -KeyExchange ${g}`,
      ),
      `$mmSet = New-NetIPsecMainModeCryptoSet -DisplayName "MM" -Proposal ${groups.map((_, i) => `$mm${i}`).join(',')}`,
      `New-NetIPsecMainModeRule -DisplayName "MM" -LocalAddress ${o.local} -RemoteAddress ${o.remote} -MainModeCryptoSet $mmSet.Name | Out-Null`,
      `New-NetIPsecRule -DisplayName "bench" ${mode}-LocalAddress ${o.local} -RemoteAddress ${o.remote} ` +
        '-InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null',
    ].join('\n'),
    dir,
  );
  if (r.errors) throw new Error(r.err);
  return dir;
}

/**
 * consec's fail-closed table outlives the daemon on purpose (Require stays in force without it);
 * the next peer on these hosts needs it gone: `consec daemon --remove-filters`.
 */
export async function removeFilters(lab: Lab, ...hosts: string[]): Promise<void> {
  for (const h of hosts)
    await lab.exec(h, consecArgv(['daemon', '--remove-filters'], freshStateDir('consec-bench-rm-')));
}
