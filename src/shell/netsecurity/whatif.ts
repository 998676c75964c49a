/**
 * What-if queries over the compiled active policy. Find-NetIPsecRule is Windows'; Test-NetIPsecFlow
 * is consec's own: for one flow it names the rule, the sets and proposals that would be negotiated,
 * what happens to the first packet, and the Kerberos/DNS lockouts of seed 001.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { compilePolicy, type Flow, flowLockoutWarning, type HostContext } from '../../filter/compile.ts';
import { entryToRange, inRange, v4ToNumber, v6ToBigint } from '../../filter/address.ts';
import { systemHostContext } from '../../filter/host-context.ts';
import { protocolNumber, parseProtocol } from '../../policy/endpoints.ts';
import {
  DEFAULT_MM_CRYPTO_SET,
  DEFAULT_PHASE1_AUTH_SET,
  DEFAULT_QM_CRYPTO_SET,
  type MainModeRule,
  type PolicyDocument,
  findSet,
} from '../../policy/model.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { type CommandCall, type CommandDef, PwshError } from '../pwsh/runtime.ts';
import { psObject } from '../pwsh/values.ts';
import { STORE_PARAMS } from './family.ts';
import { authProposalText, ipsecRuleView, mmProposalText, qmProposalText } from './views.ts';

const FLOW_PARAMS = [
  { name: 'RemoteAddress', type: 'string' as const, mandatory: true, position: 0 },
  { name: 'LocalAddress', type: 'string' as const },
  { name: 'Protocol', type: 'string' as const },
  { name: 'LocalPort', type: 'uint' as const, max: 65535 },
  { name: 'RemotePort', type: 'uint' as const, max: 65535 },
  { name: 'IcmpType', type: 'uint' as const, max: 255 },
];

function flowFrom(call: CommandCall, ctx: HostContext): Flow {
  const remote = call.get<string>('RemoteAddress') ?? '';
  const fam = isIPv4(remote) ? 4 : isIPv6(remote) ? 6 : 0;
  if (fam === 0)
    throw new PwshError(
      `The RemoteAddress "${remote}" is not an IP address.`,
      'InvalidArgument',
      'InvalidArgument',
      'CimException',
    );
  let local = call.get<string>('LocalAddress');
  if (local === undefined) {
    local = ctx.localAddresses.find((a) => (fam === 4 ? isIPv4(a) : isIPv6(a)));
    if (local === undefined) {
      throw new PwshError(
        `This host has no IPv${fam} address to use as LocalAddress; give -LocalAddress.`,
        'InvalidArgument',
        'InvalidArgument',
        'CimException',
      );
    }
  }
  if (fam === 4 ? !isIPv4(local) : !isIPv6(local)) {
    throw new PwshError(
      'LocalAddress and RemoteAddress must be of the same IP version.',
      'InvalidArgument',
      'InvalidArgument',
      'CimException',
    );
  }
  const proto = call.has('Protocol') ? protocolNumber(parseProtocol(call.get<string>('Protocol') ?? 'Any')) : undefined;
  return {
    direction: (call.get<string>('Direction') ?? 'Outbound') as Flow['direction'],
    local,
    remote,
    protocol: proto ?? -1,
    localPort: call.get<number>('LocalPort'),
    remotePort: call.get<number>('RemotePort'),
    icmpType: call.get<number>('IcmpType'),
  };
}

function context(call: CommandCall): HostContext {
  const ctx = systemHostContext();
  const dns = call.get<string[]>('DnsServer');
  const dcs = call.get<string[]>('DomainController');
  return { ...ctx, dnsServers: dns ?? ctx.dnsServers, domainControllers: dcs ?? ctx.domainControllers };
}

function mainModeRuleFor(doc: PolicyDocument, flow: Flow): MainModeRule | undefined {
  const fam = isIPv4(flow.remote) ? 4 : 6;
  const n4 = (a: string) => (fam === 4 ? v4ToNumber(a) : 0);
  const n6 = (a: string) => (fam === 6 ? v6ToBigint(a) : 0n);
  const covers = (entries: string[], addr: string): boolean =>
    entries.includes('Any') ||
    entries.some((e) => {
      const r = entryToRange(e);
      return r !== undefined && inRange(r, fam, n4(addr), n6(addr));
    });
  const width = (entries: string[]) => (entries.includes('Any') ? 2 : 1);
  return doc.mainModeRules
    .filter((r) => r.Enabled === 'True' && covers(r.LocalAddress, flow.local) && covers(r.RemoteAddress, flow.remote))
    .sort(
      (a, b) => width(a.RemoteAddress) - width(b.RemoteAddress) || width(a.LocalAddress) - width(b.LocalAddress),
    )[0];
}

function firstPacket(flow: Flow, action: string, security: string, reason: string): string {
  if (action === 'clear') return `Sent and accepted in clear (${reason}).`;
  if (flow.direction === 'Outbound') {
    return security === 'Require'
      ? 'Queued while IKE negotiates, then sent protected; dropped if the negotiation fails (Require).'
      : 'Queued while IKE negotiates, then sent protected; sent in clear if the negotiation fails (Request).';
  }
  return security === 'Require'
    ? 'Accepted only inside an IPsec SA; the same traffic in clear is dropped (Require).'
    : 'Accepted protected or in clear (Request).';
}

export function whatIfCommands(stores: PolicyStores): CommandDef[] {
  const testFlow: CommandDef = {
    name: 'Test-NetIPsecFlow',
    params: [
      ...FLOW_PARAMS,
      { name: 'Direction', type: 'string' },
      { name: 'DnsServer', type: 'strings' },
      { name: 'DomainController', type: 'strings' },
      ...STORE_PARAMS,
    ],
    invoke(call) {
      const direction = call.get<string>('Direction') ?? 'Outbound';
      const canonical = ['Outbound', 'Inbound'].find((d) => d.toLowerCase() === direction.toLowerCase());
      if (!canonical)
        throw new PwshError(
          `Cannot bind parameter 'Direction'. Use Outbound or Inbound.`,
          'CannotConvertArgumentNoMessage',
          'InvalidArgument',
          'ParameterBindingException',
        );
      const ctx = context(call);
      const flow = { ...flowFrom(call, ctx), direction: canonical as Flow['direction'] };
      const doc = stores.read(call.get<string>('PolicyStore') ?? call.get<string>('GPOSession') ?? 'ActiveStore');
      const policy = compilePolicy(doc, ctx);
      const d = policy.classify(flow);
      const rule = d.filter?.rule;
      const reason =
        d.filter === undefined
          ? 'no connection security rule matches'
          : d.filter.kind === 'negotiate'
            ? `rule "${d.filter.label}" asks for no security ${flow.direction.toLowerCase()}`
            : d.filter.kind === 'exemption'
              ? `authentication exemption "${d.filter.label}"`
              : d.filter.label;
      const p1 = rule ? findSet(doc, 'phase1AuthSets', rule.Phase1AuthSet || DEFAULT_PHASE1_AUTH_SET) : undefined;
      const p2 = rule?.Phase2AuthSet ? findSet(doc, 'phase2AuthSets', rule.Phase2AuthSet) : undefined;
      const qm = rule
        ? findSet(doc, 'quickModeCryptoSets', rule.QuickModeCryptoSet || DEFAULT_QM_CRYPTO_SET)
        : undefined;
      const mmRule = rule ? mainModeRuleFor(doc, flow) : undefined;
      const mm = rule
        ? findSet(doc, 'mainModeCryptoSets', mmRule?.MainModeCryptoSet || DEFAULT_MM_CRYPTO_SET)
        : undefined;
      const warnings = [
        ...policy.warnings.filter((w) => !w.startsWith('IPsec rule "') || !w.includes('requires IPsec with Kerberos')),
      ];
      const lockout = flowLockoutWarning(d, doc, flow, ctx);
      if (lockout) warnings.push(lockout);
      for (const w of warnings) call.runtime.warn(w);
      const negotiate = d.action === 'negotiate';
      return [
        psObject('Consec.NetIPsecFlowDecision', {
          Direction: flow.direction,
          LocalAddress: flow.local,
          RemoteAddress: flow.remote,
          Protocol: flow.protocol < 0 ? 'Any' : parseProtocol(flow.protocol),
          LocalPort: flow.localPort ?? 'Any',
          RemotePort: flow.remotePort ?? 'Any',
          Decision: negotiate ? d.security : 'Clear',
          Reason: negotiate ? `rule "${d.filter?.label}"` : reason,
          Rule: rule?.DisplayName ?? '',
          RuleName: rule?.Name ?? '',
          Mode: rule?.Mode ?? '',
          InboundSecurity: rule?.InboundSecurity ?? '',
          OutboundSecurity: rule?.OutboundSecurity ?? '',
          KeyModule: negotiate ? (rule?.KeyModule ?? '') : '',
          MainModeRule: negotiate ? (mmRule?.DisplayName ?? '(none: default main mode settings)') : '',
          MainModeCryptoSet: negotiate ? (mm?.DisplayName ?? '') : '',
          MainModeProposals: negotiate ? (mm?.Proposal ?? []).map(mmProposalText) : [],
          Phase1AuthSet: negotiate ? (p1?.DisplayName ?? '') : '',
          Phase1Methods: negotiate ? (p1?.Proposal ?? []).map(authProposalText) : [],
          Phase2AuthSet: negotiate ? (p2?.DisplayName ?? '') : '',
          QuickModeCryptoSet: negotiate ? (qm?.DisplayName ?? '') : '',
          QuickModeProposals: negotiate ? (qm?.Proposal ?? []).map(qmProposalText) : [],
          PerfectForwardSecrecyGroup: negotiate ? (qm?.PerfectForwardSecrecyGroup ?? '') : '',
          FirstPacket: firstPacket(flow, d.action, d.security, reason),
          Warnings: warnings,
        }),
      ];
    },
  };

  const findRule: CommandDef = {
    name: 'Find-NetIPsecRule',
    params: [...FLOW_PARAMS, ...STORE_PARAMS],
    invoke(call) {
      const ctx = context(call);
      const flow = flowFrom(call, ctx);
      const store = call.get<string>('PolicyStore') ?? call.get<string>('GPOSession') ?? 'ActiveStore';
      const doc = stores.read(store);
      return compilePolicy(doc, ctx)
        .matchAll(flow)
        .filter((f) => f.rule)
        .map((f) => ipsecRuleView(f.rule as NonNullable<typeof f.rule>, { store, type: 'Local' }));
    },
  };
  return [testFlow, findRule];
}
