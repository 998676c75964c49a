/**
 * The firewall-rule side of NetSecurity that IPsec scripts call alongside the IPsec cmdlets:
 * New/Get/Set/Remove/Enable/Disable/Rename/Copy-NetFirewallRule (through the family generator),
 * and the filter objects Windows keeps a rule's conditions in — Get-NetFirewall{Address,Port,
 * Security,Application,Service,Interface}Filter for firewall and IPsec rules, piped either way,
 * and Set-NetFirewall{Address,Port,Security}Filter, which edit the rules behind them.
 */
import { PolicyValidationError } from '../../policy/endpoints.ts';
import {
  Action,
  Authentication,
  Direction,
  DynamicTransport,
  EdgeTraversal,
  Encryption,
  InterfaceType,
} from '../../policy/enums.ts';
import { type FirewallRule, firewallRule, type IPsecRule, type MainModeRule } from '../../policy/model.ts';
import { editable, type PolicyStores } from '../../policy/store.ts';
import { type CommandCall, type CommandDef, type ParamDef, PwshError, wildcardMatch } from '../pwsh/runtime.ts';
import { enumerate, getProperty, type PSObject, toText } from '../pwsh/values.ts';
import {
  applyAddresses,
  applyRuleCommon,
  applyTrafficConditions,
  type Family,
  readWithSources,
  RULE_COMMON,
  STORE_PARAMS,
  storeName,
} from './family.ts';
import {
  addressFilterView,
  applicationFilterView,
  firewallRuleView,
  interfaceFilterView,
  interfaceTypeFilterView,
  portFilterView,
  securityFilterView,
  serviceFilterView,
  viewModel,
} from './views.ts';

/** ICMP types as Windows writes them: a type (0-255) or type:code, or Any. */
function parseIcmpTypes(values: readonly (string | number)[]): string[] {
  const out = values
    .flatMap((v) => String(v).split(','))
    .map((v) => v.trim())
    .filter(Boolean)
    .map((v) => {
      if (v.toLowerCase() === 'any') return 'Any';
      const m = /^(\d{1,3})(?::(\d{1,3}|\*))?$/.exec(v);
      if (!m || Number(m[1]) > 255 || (m[2] !== undefined && m[2] !== '*' && Number(m[2]) > 255))
        throw new PolicyValidationError(
          'IcmpType',
          `The ICMP type "${v}" is not valid: use a type 0-255, optionally with a code (3:4), or Any.`,
        );
      return m[2] === undefined ? String(Number(m[1])) : `${Number(m[1])}:${m[2]}`;
    });
  if (out.length === 0) return ['Any'];
  if (out.length > 1 && out.includes('Any'))
    throw new PolicyValidationError('IcmpType', '"Any" cannot be combined with other values in IcmpType.');
  return [...new Set(out)];
}

/**
 * -RemoteMachine/-RemoteUser/-LocalUser authorize Active Directory accounts by SID. consec knows its
 * peers by Kerberos principal or certificate and has no directory to resolve SIDs, so a list it
 * could not evaluate is refused rather than stored as if enforced.
 */
function refuseAccountList(call: CommandCall, name: 'RemoteMachine' | 'RemoteUser' | 'LocalUser'): void {
  if (!call.has(name)) return;
  const v = (call.get<string>(name) ?? '').trim();
  if (v === '' || v.toLowerCase() === 'any') return;
  throw new PwshError(
    `-${name} requires Active Directory: it authorizes accounts by their SIDs (${v}), and consec, which knows its peers by Kerberos principal or certificate, has no directory to resolve SIDs against.`,
    'ActiveDirectoryRequired',
    'NotImplemented',
    'CimException',
  );
}

const FIREWALL_PROPERTIES: ParamDef[] = [
  ...RULE_COMMON,
  { name: 'Direction', type: 'enum', enum: Direction },
  { name: 'Action', type: 'enum', enum: Action },
  { name: 'EdgeTraversalPolicy', type: 'enum', enum: EdgeTraversal },
  { name: 'LooseSourceMapping', type: 'bool' },
  { name: 'LocalOnlyMapping', type: 'bool' },
  { name: 'Owner', type: 'string' },
  { name: 'Protocol', type: 'string' },
  { name: 'LocalPort', type: 'strings' },
  { name: 'RemotePort', type: 'strings' },
  { name: 'IcmpType', type: 'strings' },
  { name: 'DynamicTarget', type: 'enum', enum: DynamicTransport, aliases: ['DynamicTransport'] },
  { name: 'Program', type: 'string' },
  { name: 'Package', type: 'string' },
  { name: 'Service', type: 'string' },
  { name: 'InterfaceAlias', type: 'strings' },
  { name: 'InterfaceType', type: 'flags', enum: InterfaceType },
  { name: 'LocalUser', type: 'string' },
  { name: 'RemoteUser', type: 'string' },
  { name: 'RemoteMachine', type: 'string' },
  { name: 'Authentication', type: 'enum', enum: Authentication },
  { name: 'Encryption', type: 'enum', enum: Encryption },
  { name: 'OverrideBlockRules', type: 'bool' },
];

/** A firewall rule's own conditions (port filter extras, security filter), as Set-NetFirewall*Filter and the rule cmdlets set them. */
function applyConditions(o: FirewallRule, call: CommandCall): void {
  for (const k of ['RemoteMachine', 'RemoteUser', 'LocalUser'] as const) refuseAccountList(call, k);
  applyTrafficConditions(o, call);
  if (call.has('IcmpType')) o.IcmpType = parseIcmpTypes(call.get<string[]>('IcmpType') ?? []);
  if (call.has('DynamicTarget')) o.DynamicTarget = call.get('DynamicTarget') ?? 'Any';
  for (const k of ['Authentication', 'Encryption', 'OverrideBlockRules'] as const)
    if (call.has(k)) (o as unknown as Record<string, unknown>)[k] = call.get(k);
  for (const k of ['RemoteMachine', 'RemoteUser', 'LocalUser'] as const)
    if (call.has(k)) o[k] = (call.get<string>(k) ?? '').trim() || 'Any';
}

export const firewallRules: Family<FirewallRule> = {
  noun: 'NetFirewallRule',
  cimClass: 'MSFT_NetFirewallRule',
  collection: 'firewallRules',
  nameParam: { name: 'Name', type: 'string', aliases: ['ID'] },
  view: firewallRuleView,
  properties: FIREWALL_PROPERTIES,
  create: (d) => firewallRule({ DisplayName: d }),
  apply(o, call) {
    applyRuleCommon(o, call);
    applyConditions(o, call);
    for (const k of [
      'Direction',
      'Action',
      'EdgeTraversalPolicy',
      'LooseSourceMapping',
      'LocalOnlyMapping',
      'Owner',
      'Package',
    ] as const)
      if (call.has(k)) (o as unknown as Record<string, unknown>)[k] = call.get(k);
    if (call.has('Program')) o.Program = (call.get<string>('Program') ?? '').trim() || 'Any';
    if (call.has('Service')) o.Service = (call.get<string>('Service') ?? '').trim() || 'Any';
  },
  enableDisable: true,
};

type AnyRule = FirewallRule | IPsecRule | MainModeRule;
type RuleKind = 'firewallRules' | 'rules' | 'mainModeRules';

const ASSOCIATIONS: { param: string; kind: RuleKind; label: string }[] = [
  { param: 'AssociatedNetFirewallRule', kind: 'firewallRules', label: 'firewall rule' },
  { param: 'AssociatedNetIPsecRule', kind: 'rules', label: 'IPsec rule' },
  { param: 'AssociatedNetIPsecMainModeRule', kind: 'mainModeRules', label: 'main mode rule' },
];

const notBound = (label: string): PwshError =>
  new PwshError(
    `The input object is not a ${label}.`,
    'InputObjectNotBound',
    'InvalidArgument',
    'ParameterBindingException',
  );

/** The rules a filter cmdlet's -Associated… parameter (or pipeline input) names, with their kind. */
function associatedRules(
  call: CommandCall,
  kinds: readonly RuleKind[],
): { rule: AnyRule; kind: RuleKind }[] | undefined {
  for (const a of ASSOCIATIONS) {
    if (!kinds.includes(a.kind)) continue;
    const wanted = call.get<unknown[]>(a.param);
    if (wanted === undefined) continue;
    return enumerate(wanted).map((v) => {
      const m = viewModel<AnyRule>(v);
      if (!m || m.kind !== a.kind) throw notBound(a.label);
      return { rule: m.value, kind: a.kind };
    });
  }
  return undefined;
}

/** The filter properties a Get-NetFirewall…Filter call queries by (-Authentication Required …), as text. */
function matchesQuery(view: PSObject, call: CommandCall, names: readonly string[]): boolean {
  for (const n of names) {
    if (!call.has(n)) continue;
    const wanted = enumerate(call.get(n)).map(toText);
    const have = enumerate(getProperty(view, n)).map(toText);
    if (!wanted.some((w) => have.some((h) => wildcardMatch(h, w)))) return false;
  }
  return true;
}

/**
 * Get-NetFirewall…Filter: the filters of the rules piped in (-AssociatedNetFirewallRule and its
 * IPsec counterparts, by pipeline), else of every firewall rule then every IPsec rule of the store;
 * the filter's own properties query (Get-NetFirewallSecurityFilter -OverrideBlockRules $true).
 */
function getFilter(
  name: string,
  kinds: readonly RuleKind[],
  view: (r: AnyRule, kind: RuleKind) => PSObject,
  queries: readonly string[],
  stores: PolicyStores,
): CommandDef {
  const assoc = ASSOCIATIONS.filter((a) => kinds.includes(a.kind));
  return {
    name,
    params: [
      ...assoc.map((a, i) => ({ name: a.param, type: 'objects' as const, pipeline: i === 0 })),
      ...queries.map((q) => ({ name: q, type: 'strings' as const })),
      { name: 'All', type: 'switch' },
      ...STORE_PARAMS,
    ],
    invoke(call) {
      let out: PSObject[];
      // Pipeline input of another rule kind than the first association's binds by its type.
      const first = assoc[0]?.param;
      if (first && call.input !== undefined && call.has(first)) {
        out = enumerate(call.get<unknown[]>(first)).map((v) => {
          const m = viewModel<AnyRule>(v);
          if (!m || !kinds.includes(m.kind as RuleKind)) throw notBound(assoc.map((a) => a.label).join(' or '));
          return view(m.value, m.kind as RuleKind);
        });
      } else {
        const given = associatedRules(call, kinds);
        if (given) out = given.map(({ rule, kind }) => view(rule, kind));
        else {
          const docs = readWithSources(stores, storeName(call)).map(({ doc }) => doc);
          out = kinds.flatMap((k) => docs.flatMap((d) => (d[k] as AnyRule[]).map((r) => view(r, k))));
        }
      }
      return out.filter((v) => matchesQuery(v, call, queries));
    },
  };
}

/** One filter edit on a rule of any kind; what a kind has no such condition for is refused. */
function applyFilterEdit(o: AnyRule, kind: RuleKind, call: CommandCall, cmd: string): void {
  applyAddresses(o, call);
  if (kind === 'firewallRules') {
    applyConditions(o as FirewallRule, call);
    return;
  }
  const owned =
    kind === 'rules'
      ? ['LocalAddress', 'RemoteAddress', 'Protocol', 'LocalPort', 'RemotePort', 'InterfaceAlias', 'InterfaceType']
      : ['LocalAddress', 'RemoteAddress'];
  for (const p of [
    'Protocol',
    'LocalPort',
    'RemotePort',
    'IcmpType',
    'DynamicTarget',
    'InterfaceAlias',
    'InterfaceType',
    'Authentication',
    'Encryption',
    'OverrideBlockRules',
    'LocalUser',
    'RemoteUser',
    'RemoteMachine',
  ])
    if (call.has(p) && !owned.includes(p))
      throw new PwshError(
        `${cmd}: an ${kind === 'rules' ? 'IPsec rule' : 'IPsec main mode rule'} has no ${p} condition.`,
        'InvalidArgument',
        'InvalidArgument',
        'CimException',
      );
  if (kind === 'rules') applyTrafficConditions(o as IPsecRule, call);
}

/**
 * Set-NetFirewall…Filter: the filter objects piped in name their rules (firewall, IPsec or main
 * mode rules); without them, every firewall rule of the store. The parameters given are applied.
 */
function setFilter(
  name: string,
  params: ParamDef[],
  view: (r: AnyRule, kind: RuleKind) => PSObject,
  stores: PolicyStores,
): CommandDef {
  return {
    name,
    mutating: true,
    params: [
      { name: 'InputObject', type: 'objects', pipeline: true },
      ...params,
      { name: 'PassThru', type: 'switch' },
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const piped = call.get<unknown[]>('InputObject');
      const targets =
        piped === undefined
          ? undefined
          : enumerate(piped).map((v) => {
              const m = viewModel<AnyRule>(v);
              if (!m || !['firewallRules', 'rules', 'mainModeRules'].includes(m.kind))
                throw notBound('firewall filter object');
              return { kind: m.kind as RuleKind, name: m.value.Name.toLowerCase() };
            });
      const changed = await stores.update(storeName(call), (doc) => {
        const selected: { rule: AnyRule; kind: RuleKind }[] = targets
          ? targets.flatMap((t) =>
              (doc[t.kind] as AnyRule[])
                .filter((r) => r.Name.toLowerCase() === t.name)
                .map((rule) => ({ rule, kind: t.kind })),
            )
          : doc.firewallRules.map((rule) => ({ rule, kind: 'firewallRules' as const }));
        if (call.whatIf) {
          for (const { rule } of selected)
            call.runtime.host.stdout(
              `What if: Performing operation "Set" on Target "${rule.Name} (${rule.DisplayName})".\n`,
            );
          return [];
        }
        return selected.map(({ rule, kind }) => {
          // Firewall rules are copied with the store's draft; the large collections on write.
          const target = kind === 'firewallRules' ? rule : editable(doc, kind, rule as IPsecRule | MainModeRule);
          applyFilterEdit(target, kind, call, name);
          return { rule: target, kind };
        });
      });
      return call.get<boolean>('PassThru') ? changed.map(({ rule, kind }) => view(rule, kind)) : [];
    },
  };
}

export function firewallFilterCommands(stores: PolicyStores): CommandDef[] {
  const fw = (f: (r: FirewallRule) => PSObject) => (r: AnyRule) => f(r as FirewallRule);
  const port = (r: AnyRule) => portFilterView(r as FirewallRule | IPsecRule);
  const iface = (r: AnyRule) => interfaceFilterView(r as FirewallRule | IPsecRule);
  const ifaceType = (r: AnyRule) => interfaceTypeFilterView(r as FirewallRule | IPsecRule);
  const security: ParamDef[] = [
    { name: 'Authentication', type: 'enum', enum: Authentication },
    { name: 'Encryption', type: 'enum', enum: Encryption },
    { name: 'OverrideBlockRules', type: 'bool' },
    { name: 'LocalUser', type: 'string' },
    { name: 'RemoteUser', type: 'string' },
    { name: 'RemoteMachine', type: 'string' },
  ];
  const ports: ParamDef[] = [
    { name: 'Protocol', type: 'string' },
    { name: 'LocalPort', type: 'strings' },
    { name: 'RemotePort', type: 'strings' },
    { name: 'IcmpType', type: 'strings' },
    { name: 'DynamicTarget', type: 'enum', enum: DynamicTransport, aliases: ['DynamicTransport'] },
  ];
  const addresses: ParamDef[] = [
    { name: 'LocalAddress', type: 'strings' },
    { name: 'RemoteAddress', type: 'strings' },
  ];
  const names = (ps: ParamDef[]) => ps.map((p) => p.name);
  const all: RuleKind[] = ['firewallRules', 'rules', 'mainModeRules'];
  const withPorts: RuleKind[] = ['firewallRules', 'rules'];
  return [
    getFilter('Get-NetFirewallAddressFilter', all, (r) => addressFilterView(r), names(addresses), stores),
    getFilter('Get-NetFirewallPortFilter', withPorts, port, names(ports), stores),
    getFilter('Get-NetFirewallInterfaceFilter', withPorts, iface, ['InterfaceAlias'], stores),
    getFilter('Get-NetFirewallInterfaceTypeFilter', withPorts, ifaceType, ['InterfaceType'], stores),
    getFilter('Get-NetFirewallSecurityFilter', ['firewallRules'], fw(securityFilterView), names(security), stores),
    getFilter(
      'Get-NetFirewallApplicationFilter',
      ['firewallRules'],
      fw(applicationFilterView),
      ['Program', 'Package'],
      stores,
    ),
    getFilter('Get-NetFirewallServiceFilter', ['firewallRules'], fw(serviceFilterView), ['Service'], stores),
    setFilter('Set-NetFirewallSecurityFilter', security, fw(securityFilterView), stores),
    setFilter('Set-NetFirewallAddressFilter', addresses, (r) => addressFilterView(r), stores),
    setFilter('Set-NetFirewallPortFilter', ports, port, stores),
    setFilter('Set-NetFirewallInterfaceFilter', [{ name: 'InterfaceAlias', type: 'strings' }], iface, stores),
    setFilter(
      'Set-NetFirewallInterfaceTypeFilter',
      [{ name: 'InterfaceType', type: 'flags', enum: InterfaceType }],
      ifaceType,
      stores,
    ),
  ];
}
