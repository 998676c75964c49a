/**
 * `consec netsh advfirewall …`: the connection-security parts of netsh — consec and mainmode
 * rules (add, delete, set, show), firewall rules (firewall.ts), set/show global, monitor show
 * consec — over the same policy stores as the PowerShell front-end. Output is shaped like
 * netsh's ("Ok." on success).
 */
import { isIPv4, isIPv6 } from 'node:net';
import { currentProfileText } from '../netsecurity/location.ts';
import {
  DEBUGLOG_SIZE_KB,
  type DebugLogSettings,
  defaultDebugLogFile,
  updateDebugLogSettings,
} from '../../audit/debuglog.ts';
import { ConsecError } from '../../errors.ts';
import { controlRequest } from '../../daemon/control.ts';
import { parseAddressList, parsePortList, parseProtocol, PolicyValidationError } from '../../policy/endpoints.ts';
import type { EnumValue, TrafficExemption } from '../../policy/enums.ts';
import {
  type AuthSet,
  DEFAULT_MM_CRYPTO_SET,
  type IPsecRule,
  ipsecRule,
  type MainModeRule,
  mainModeRule,
  type PolicyDocument,
  findSet,
  DEFAULT_QM_CRYPTO_SET,
  DEFAULT_PHASE1_AUTH_SET,
  type MainModeCryptoSet,
} from '../../policy/model.ts';
import { PolicyStoreError, type PolicyStores } from '../../policy/store.ts';
import {
  AUTH2_KEYS,
  AUTH_KEYS,
  authMethodName,
  mmSecMethodText,
  parseAuth,
  parseMmSecMethods,
  parseQmSecMethods,
  QM_PFS,
  qmSecMethodText,
} from './methods.ts';
import { firewallCommand } from './firewall.ts';
import {
  type Args,
  INTERFACE_TYPES,
  matchWord,
  NetshError,
  oneOf,
  parseArgs,
  parseSetRule,
  profiles,
  yesNo,
  splitLine,
} from './syntax.ts';

export interface NetshHost {
  stdout(text: string): void;
  stderr(text: string): void;
}

export interface NetshOptions {
  /**
   * consec's own hints (a keyword read another way, a default that applies) as WARNING lines on
   * stderr. Off by default: netsh prints just "Ok.", and scripts compare its output.
   */
  hints?: boolean;
}

const ACTIONS: Record<string, [IPsecRule['InboundSecurity'], IPsecRule['OutboundSecurity']]> = {
  requireinrequestout: ['Require', 'Request'],
  requestinrequestout: ['Request', 'Request'],
  requireinrequireout: ['Require', 'Require'],
  requireinclearout: ['Require', 'None'],
  noauthentication: ['None', 'None'],
};
const ACTION_NAMES: Record<string, string> = {
  'Require/Request': 'RequireInRequestOut',
  'Request/Request': 'RequestInRequestOut',
  'Require/Require': 'RequireInRequireOut',
  'Require/None': 'RequireInClearOut',
  'None/None': 'NoAuthentication',
  'Request/None': 'RequestInClearOut',
};

const RULE_KEYS = [
  'name',
  'endpoint1',
  'endpoint2',
  'action',
  'description',
  'mode',
  'enable',
  'profile',
  'type',
  'localtunnelendpoint',
  'remotetunnelendpoint',
  'port1',
  'port2',
  'protocol',
  'interfacetype',
  ...AUTH_KEYS,
  ...AUTH2_KEYS,
  'qmpfs',
  'qmsecmethods',
  'exemptipsecprotectedconnections',
  'applyauthz',
];
const SELECT_KEYS = ['name', 'group', 'type', 'profile', 'endpoint1', 'endpoint2', 'port1', 'port2', 'protocol'];
const MM_RULE_KEYS = [
  'name',
  'mmsecmethods',
  'mmkeylifetime',
  'endpoint1',
  'endpoint2',
  'description',
  'enable',
  'profile',
  'type',
  ...AUTH_KEYS,
];

const LINE = '-'.repeat(70);
const field = (label: string, value: string): string => `${`${label}:`.padEnd(38)}${value}\n`;

function staticOnly(args: Args): void {
  const t = args.get('type');
  if (t !== undefined && oneOf('type', t, { static: 'static', dynamic: 'dynamic' }) === 'dynamic') {
    throw new NetshError(
      'type=dynamic rules (policy that lasts until the service restarts) are not supported by consec; use type=static.',
    );
  }
}

/** The rule's own sets, created by netsh add rule: named after the rule. */
const ownSet = (rule: { Name: string }, suffix: string): string => `${rule.Name}-${suffix}`;

function putSet<T extends { Name: string }>(list: T[], set: T): void {
  const i = list.findIndex((s) => s.Name === set.Name);
  if (i >= 0) list[i] = set;
  else list.push(set);
}

/** Applies add-rule keys to a rule (new or existing) and its own sets in `doc`. */
function applyRuleArgs(rule: IPsecRule, args: Args, doc: PolicyDocument): void {
  staticOnly(args);
  if (args.has('name')) rule.DisplayName = args.get('name') as string;
  if (args.has('description')) rule.Description = args.get('description') as string;
  if (args.has('endpoint1')) rule.LocalAddress = parseAddressList('endpoint1', [args.get('endpoint1') as string]);
  if (args.has('endpoint2')) rule.RemoteAddress = parseAddressList('endpoint2', [args.get('endpoint2') as string]);
  if (args.has('action'))
    [rule.InboundSecurity, rule.OutboundSecurity] = oneOf('action', args.get('action') as string, ACTIONS);
  if (args.has('mode'))
    rule.Mode = oneOf('mode', args.get('mode') as string, { transport: 'Transport', tunnel: 'Tunnel' } as const);
  if (args.has('enable')) rule.Enabled = yesNo('enable', args.get('enable') as string) ? 'True' : 'False';
  if (args.has('profile')) rule.Profile = profiles(args.get('profile') as string);
  if (args.has('localtunnelendpoint'))
    rule.LocalTunnelEndpoint = parseAddressList(
      'localtunnelendpoint',
      [args.get('localtunnelendpoint') as string],
      false,
    );
  if (args.has('remotetunnelendpoint'))
    rule.RemoteTunnelEndpoint = parseAddressList(
      'remotetunnelendpoint',
      [args.get('remotetunnelendpoint') as string],
      false,
    );
  if (args.has('protocol')) rule.Protocol = parseProtocol(args.get('protocol') as string);
  if (args.has('port1')) rule.LocalPort = parsePortList('port1', [args.get('port1') as string]);
  if (args.has('port2')) rule.RemotePort = parsePortList('port2', [args.get('port2') as string]);
  if (args.has('interfacetype'))
    rule.InterfaceType = [oneOf('interfacetype', args.get('interfacetype') as string, INTERFACE_TYPES)];
  if (args.has('exemptipsecprotectedconnections'))
    rule.EncryptedTunnelBypass = yesNo(
      'exemptipsecprotectedconnections',
      args.get('exemptipsecprotectedconnections') as string,
    );
  if (args.has('applyauthz')) rule.RequireAuthorization = yesNo('applyauthz', args.get('applyauthz') as string);
  if (rule.Mode !== 'Tunnel' && rule.InboundSecurity === 'Require' && rule.OutboundSecurity === 'None') {
    throw new NetshError('action=requireinclearout is valid only with mode=tunnel.');
  }
  for (const phase of [1, 2] as const) {
    const proposals = parseAuth(args, phase);
    if (!proposals) continue;
    const name = ownSet(rule, `auth${phase}`);
    const set: AuthSet = {
      Name: name,
      DisplayName: `${rule.DisplayName} (auth${phase})`,
      Description: 'Created by netsh for this rule.',
      Group: '',
      Proposal: proposals,
    };
    putSet(phase === 1 ? doc.phase1AuthSets : doc.phase2AuthSets, set);
    if (phase === 1) rule.Phase1AuthSet = name;
    else rule.Phase2AuthSet = name;
  }
  if (args.has('qmsecmethods') || args.has('qmpfs')) {
    const name = ownSet(rule, 'qm');
    const current = findSet(doc, 'quickModeCryptoSets', rule.QuickModeCryptoSet || name);
    const methods = args.get('qmsecmethods');
    const proposal =
      methods === undefined || methods.toLowerCase() === 'default'
        ? (current?.Proposal ?? findSet(doc, 'quickModeCryptoSets', DEFAULT_QM_CRYPTO_SET)?.Proposal ?? [])
        : parseQmSecMethods(methods);
    putSet(doc.quickModeCryptoSets, {
      Name: name,
      DisplayName: `${rule.DisplayName} (quick mode)`,
      Description: 'Created by netsh for this rule.',
      Group: '',
      Proposal: structuredClone(proposal),
      PerfectForwardSecrecyGroup: args.has('qmpfs')
        ? oneOf('qmpfs', args.get('qmpfs') as string, QM_PFS)
        : (current?.PerfectForwardSecrecyGroup ?? 'None'),
    });
    rule.QuickModeCryptoSet = name;
  }
}

/** Removes a rule's own sets once nothing refers to them. */
function dropOwnSets(doc: PolicyDocument, removed: { Name: string }[]): void {
  const used = new Set(
    [
      ...doc.rules.flatMap((r) => [r.Phase1AuthSet, r.Phase2AuthSet, r.QuickModeCryptoSet]),
      ...doc.mainModeRules.flatMap((r) => [r.Phase1AuthSet, r.MainModeCryptoSet]),
    ].map((n) => n.toLowerCase()),
  );
  const own = new Set(removed.flatMap((r) => ['auth1', 'auth2', 'qm', 'mm'].map((s) => ownSet(r, s).toLowerCase())));
  const keep = (s: { Name: string }) => !own.has(s.Name.toLowerCase()) || used.has(s.Name.toLowerCase());
  doc.phase1AuthSets = doc.phase1AuthSets.filter(keep);
  doc.phase2AuthSets = doc.phase2AuthSets.filter(keep);
  doc.quickModeCryptoSets = doc.quickModeCryptoSets.filter(keep);
  doc.mainModeCryptoSets = doc.mainModeCryptoSets.filter(keep);
}

/** Rules chosen by name=…|all (or group=…) and the optional endpoint/port/protocol/profile filters. */
function selectRules<R extends IPsecRule | MainModeRule>(rules: R[], args: Args): R[] {
  staticOnly(args);
  const name = args.get('name');
  const group = args.get('group');
  if (name === undefined && group === undefined) throw new NetshError('A rule name is needed: name=<rule name>|all.');
  let out = rules.filter((r) =>
    name !== undefined
      ? name.toLowerCase() === 'all' || r.DisplayName.toLowerCase() === name.toLowerCase()
      : r.Group.toLowerCase() === (group as string).toLowerCase(),
  );
  out = out.filter((r) => {
    const keep = [true];
    const check = (key: string, have: string[], parse: (v: string) => string[]) => {
      const v = args.get(key);
      if (v !== undefined && parse(v).join(',') !== have.join(',')) keep[0] = false;
    };
    check('endpoint1', r.LocalAddress, (v) => parseAddressList('endpoint1', [v]));
    check('endpoint2', r.RemoteAddress, (v) => parseAddressList('endpoint2', [v]));
    if ('Protocol' in r) {
      check('port1', r.LocalPort, (v) => parsePortList('port1', [v]));
      check('port2', r.RemotePort, (v) => parsePortList('port2', [v]));
      check('protocol', [r.Protocol], (v) => [parseProtocol(v)]);
    }
    if (args.has('profile')) {
      const wanted = profiles(args.get('profile') as string);
      if (!wanted.includes('Any') && !r.Profile.includes('Any') && !wanted.some((p) => r.Profile.includes(p)))
        keep[0] = false;
    }
    return keep[0];
  });
  return out;
}

function endpointText(list: string[]): string {
  return list.map((e) => (isIPv4(e) ? `${e}/32` : isIPv6(e) ? `${e}/128` : e)).join(',');
}

function profileText(p: string[]): string {
  return p.includes('Any') ? 'Domain,Private,Public' : p.join(',');
}

function showRule(r: IPsecRule, doc: PolicyDocument, verbose: boolean): string {
  const p1 = findSet(doc, 'phase1AuthSets', r.Phase1AuthSet || DEFAULT_PHASE1_AUTH_SET);
  const p2 = r.Phase2AuthSet ? findSet(doc, 'phase2AuthSets', r.Phase2AuthSet) : undefined;
  const qm = findSet(doc, 'quickModeCryptoSets', r.QuickModeCryptoSet || DEFAULT_QM_CRYPTO_SET);
  let out = `\n${field('Rule Name', r.DisplayName)}${LINE}\n`;
  if (verbose && r.Description) out += field('Description', r.Description);
  out += field('Enabled', r.Enabled === 'True' ? 'Yes' : 'No');
  out += field('Profiles', profileText(r.Profile));
  out += field('Type', 'Static');
  out += field('Mode', r.Mode);
  if (r.Mode === 'Tunnel') {
    out += field('LocalTunnelEndpoint', endpointText(r.LocalTunnelEndpoint) || 'Any');
    out += field('RemoteTunnelEndpoint', endpointText(r.RemoteTunnelEndpoint) || 'Any');
  }
  out += field('Endpoint1', endpointText(r.LocalAddress));
  out += field('Endpoint2', endpointText(r.RemoteAddress));
  if (r.Protocol === 'TCP' || r.Protocol === 'UDP') {
    out += field('Port1', r.LocalPort.join(','));
    out += field('Port2', r.RemotePort.join(','));
  }
  out += field('Protocol', r.Protocol);
  out += field(
    'Action',
    ACTION_NAMES[`${r.InboundSecurity}/${r.OutboundSecurity}`] ?? `${r.InboundSecurity}In${r.OutboundSecurity}Out`,
  );
  if (r.InboundSecurity !== 'None' || r.OutboundSecurity !== 'None') {
    out += field('Auth1', (p1?.Proposal ?? []).map(authMethodName).join(','));
    for (const p of p1?.Proposal ?? []) {
      if (p.AuthenticationMethod === 'PreSharedKey') out += field('Auth1PSK', '********');
      if (p.AuthenticationMethod === 'Certificate') out += field('Auth1CAName', p.Authority ?? '');
    }
    if (p2) out += field('Auth2', p2.Proposal.map(authMethodName).join(','));
    out += field('QuickModeSecMethods', (qm?.Proposal ?? []).map(qmSecMethodText).join(','));
    if (qm && qm.PerfectForwardSecrecyGroup !== 'None') out += field('QuickModePFS', qm.PerfectForwardSecrecyGroup);
  }
  if (r.Mode === 'Tunnel') {
    out += field('ApplyAuthorization', r.RequireAuthorization ? 'Yes' : 'No');
    out += field('ExemptIPsecProtectedConnections', r.EncryptedTunnelBypass ? 'Yes' : 'No');
  }
  return out;
}

function showMainModeRule(r: MainModeRule, doc: PolicyDocument): string {
  const mm = findSet(doc, 'mainModeCryptoSets', r.MainModeCryptoSet || DEFAULT_MM_CRYPTO_SET);
  const p1 = findSet(doc, 'phase1AuthSets', r.Phase1AuthSet || DEFAULT_PHASE1_AUTH_SET);
  let out = `\n${field('Rule Name', r.DisplayName)}${LINE}\n`;
  out += field('Enabled', r.Enabled === 'True' ? 'Yes' : 'No');
  out += field('Profiles', profileText(r.Profile));
  out += field('Type', 'Static');
  out += field('Endpoint1', endpointText(r.LocalAddress));
  out += field('Endpoint2', endpointText(r.RemoteAddress));
  out += field('Auth1', (p1?.Proposal ?? []).map(authMethodName).join(','));
  out += field('MainModeSecMethods', (mm?.Proposal ?? []).map(mmSecMethodText).join(','));
  out += field('KeyLifetime', `${mm?.MaxMinutes ?? 480}min,${mm?.MaxSessions ?? 0}sess`);
  return out;
}

const EXEMPTIONS: Record<string, EnumValue<typeof TrafficExemption>> = {
  none: 'None',
  neighbordiscovery: 'NeighborDiscovery',
  icmp: 'Icmp',
  dhcp: 'Dhcp',
  routerdiscovery: 'RouterDiscovery',
  notconfigured: 'NotConfigured',
};

function showGlobal(doc: PolicyDocument): string {
  const s = doc.settings;
  const mm = findSet(doc, 'mainModeCryptoSets', DEFAULT_MM_CRYPTO_SET);
  const crl = {
    None: '0:Disabled',
    AttemptCrlCheck: '1:Enabled',
    RequireCrlCheck: '2:Enabled',
    NotConfigured: 'NotConfigured',
  }[s.CertValidationLevel];
  const nat = {
    None: 'Never',
    Server: 'Server behind NAT',
    Both: 'Server and client behind NAT',
    NotConfigured: 'NotConfigured',
  }[s.AllowIPsecThroughNAT];
  const ex = s.Exemptions.map((e) => (e === 'Dhcp' ? 'DHCP' : e === 'Icmp' ? 'ICMP' : e)).join(',');
  const onOff = (v: string) => (v === 'True' ? 'Enable' : v === 'False' ? 'Disable' : 'NotConfigured');
  let out = `\nGlobal Settings:\n${LINE}\nIPsec:\n`;
  out += `${'StrongCRLCheck'.padEnd(38)}${crl}\n`;
  out += `${'SAIdleTimeMin'.padEnd(38)}${s.MaxSAIdleTimeSeconds / 60}min\n`;
  out += `${'DefaultExemptions'.padEnd(38)}${ex}\n`;
  out += `${'IPsecThroughNAT'.padEnd(38)}${nat}\n`;
  out += `${'AuthzUserGrp'.padEnd(38)}${s.RemoteUserTunnelAuthorizationList || 'None'}\n`;
  out += `${'AuthzComputerGrp'.padEnd(38)}${s.RemoteMachineTunnelAuthorizationList || 'None'}\n`;
  out += `${'AuthzUserGrpTransport'.padEnd(38)}${s.RemoteUserTransportAuthorizationList || 'None'}\n`;
  out += `${'AuthzComputerGrpTransport'.padEnd(38)}${s.RemoteMachineTransportAuthorizationList || 'None'}\n`;
  out += `${'DefaultKeyModules (consec)'.padEnd(38)}${s.DefaultKeyModuleOrder === 'IKEv1First' ? 'IKEv1,IKEv2' : 'IKEv2,IKEv1'}\n\n`;
  out += `${'StatefulFTP'.padEnd(38)}${onOff(s.EnableStatefulFtp)}\n`;
  out += `${'StatefulPPTP'.padEnd(38)}${onOff(s.EnableStatefulPptp)}\n\n`;
  out += 'Main Mode:\n';
  out += `${'KeyLifetime'.padEnd(38)}${mm?.MaxMinutes ?? 480}min,${mm?.MaxSessions ?? 0}sess\n`;
  out += `${'SecMethods'.padEnd(38)}${(mm?.Proposal ?? []).map(mmSecMethodText).join(',')}\n`;
  out += `${'ForceDH'.padEnd(38)}${mm?.ForceDiffieHellman ? 'Yes' : 'No'}\n`;
  return out;
}

export class Netsh {
  /** The store commands of this session change (`set store gpo=domain\GPO`, `set store local`). */
  private store = 'PersistentStore';

  constructor(
    private readonly stores: PolicyStores,
    private readonly host: NetshHost,
    private readonly o: NetshOptions = {},
  ) {}

  /**
   * A netsh script (`netsh -f FILE`): each line a command of one session (a `set store` holds for
   * the lines after it), blank lines and comments (#) skipped; the status of the last failing line.
   */
  async runScript(text: string): Promise<number> {
    let status = 0;
    for (const line of text.split(/\r?\n/)) {
      if (!line.trim() || line.trimStart().startsWith('#')) continue;
      let words: string[];
      try {
        words = splitLine(line);
      } catch (err) {
        this.host.stdout(`${(err as Error).message}\n\n`);
        status = 1;
        continue;
      }
      const code = await this.run(words);
      if (code !== 0) status = code;
    }
    return status;
  }

  /** Runs one netsh command (the words after "netsh"); resolves with the exit status. */
  async run(input: readonly string[]): Promise<number> {
    const words = [...input];
    if (words[0]?.toLowerCase() === 'netsh') words.shift();
    try {
      const text = await this.dispatch(words);
      this.host.stdout(`${text}\nOk.\n\n`);
      return 0;
    } catch (err) {
      if (
        err instanceof NetshError ||
        err instanceof PolicyValidationError ||
        err instanceof PolicyStoreError ||
        err instanceof ConsecError
      ) {
        this.host.stdout(`${err.message}\n\n`);
        return 1;
      }
      throw err;
    }
  }

  private warn(message: string): void {
    if (this.o.hints) this.host.stderr(`WARNING: ${message}\n`);
  }

  private async dispatch(words: string[]): Promise<string> {
    if (words[0]?.toLowerCase() === 'wfp')
      throw new NetshError(
        "netsh wfp is the diagnostics of the Windows Filtering Platform, which consec does not have: for IKE and IPsec, use consec's IKE debug log (netsh advfirewall set global ipsec debuglog …) and Get-WinEvent.",
      );
    matchWord(words.shift(), ['advfirewall'], 'context');
    const section = matchWord(words.shift(), ['consec', 'mainmode', 'firewall', 'set', 'show', 'monitor'], 'command');
    switch (section) {
      case 'firewall': {
        const verb = matchWord(words.shift(), ['add', 'delete', 'set', 'show'], 'command');
        matchWord(words.shift(), ['rule'], 'command');
        return firewallCommand(this.stores, this.store, verb as 'add' | 'delete' | 'set' | 'show', words);
      }
      case 'consec':
      case 'mainmode': {
        const verb = matchWord(words.shift(), ['add', 'delete', 'set', 'show'], 'command');
        matchWord(words.shift(), ['rule'], 'command');
        return section === 'consec' ? this.consec(verb, words) : this.mainmode(verb, words);
      }
      case 'set': {
        const what = matchWord(words.shift(), ['global', 'store'], 'command');
        return what === 'store' ? this.setStore(words) : this.setGlobal(words);
      }
      case 'show': {
        const what = matchWord(words.shift(), ['global', 'currentprofile'], 'command');
        if (what === 'currentprofile') return currentProfileText(this.stores.stateDir);
        return showGlobal(this.stores.read('ActiveStore'));
      }
      case 'monitor': {
        matchWord(words.shift(), ['show'], 'command');
        const what = matchWord(words.shift(), ['consec', 'mmsa', 'qmsa', 'currentprofile', 'global'], 'command');
        if (what === 'global') return showGlobal(this.stores.read('ActiveStore'));
        if (what === 'consec') return this.monitorConsec(words);
        if (what === 'mmsa' || what === 'qmsa') return this.monitorSas(what, words);
        return currentProfileText(this.stores.stateDir);
      }
    }
    throw new NetshError('The following command was not found.');
  }

  private async consec(verb: string, words: string[]): Promise<string> {
    switch (verb) {
      case 'add': {
        const args = parseArgs(words, RULE_KEYS);
        for (const k of ['name', 'endpoint1', 'endpoint2', 'action']) {
          if (!args.has(k))
            throw new NetshError(
              `A required parameter is missing: ${k}=. Usage: add rule name=<string> endpoint1=<addresses> endpoint2=<addresses> action=<action> [...]`,
            );
        }
        if ((args.get('name') as string).toLowerCase() === 'all')
          throw new NetshError('"all" cannot be used as a rule name.');
        const action = args.get('action') as string;
        if (action.toLowerCase() !== 'noauthentication' && !args.has('auth1')) {
          this.warn('no auth1 given: the default phase 1 authentication set (computer Kerberos) applies.');
        }
        await this.stores.update(this.store, (doc) => {
          if (doc.rules.some((r) => r.DisplayName.toLowerCase() === (args.get('name') as string).toLowerCase())) {
            throw new NetshError(`A rule named "${args.get('name')}" already exists; rule names must be unique.`);
          }
          const rule = ipsecRule({ DisplayName: args.get('name') as string });
          applyRuleArgs(rule, args, doc);
          doc.rules.push(rule);
        });
        return '';
      }
      case 'delete': {
        const args = parseArgs(
          words,
          SELECT_KEYS.filter((k) => k !== 'group'),
        );
        const n = await this.stores.update(this.store, (doc) => {
          const gone = selectRules(doc.rules, args);
          if (gone.length === 0) throw new NetshError('No rules match the specified criteria.');
          const names = new Set(gone.map((r) => r.Name));
          doc.rules = doc.rules.filter((r) => !names.has(r.Name));
          dropOwnSets(doc, gone);
          return gone.length;
        });
        return `\nDeleted ${n} rule(s).`;
      }
      case 'set': {
        const { sel, changes } = parseSetRule(words, SELECT_KEYS, RULE_KEYS);
        const n = await this.stores.update(this.store, (doc) => {
          const rules = selectRules(doc.rules, sel);
          if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
          if (changes.has('name') && rules.length > 1) throw new NetshError('Cannot give several rules the same name.');
          for (const r of rules) applyRuleArgs(r, changes, doc);
          return rules.length;
        });
        return `\nUpdated ${n} rule(s).`;
      }
      default: {
        const verbose = words.some((w) => w.toLowerCase() === 'verbose');
        const args = parseArgs(
          words.filter((w) => w.toLowerCase() !== 'verbose'),
          ['name', 'profile', 'type'],
        );
        const doc = this.stores.read(this.store);
        const rules = selectRules(doc.rules, args);
        if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
        return rules.map((r) => showRule(r, doc, verbose)).join('');
      }
    }
  }

  private async mainmode(verb: string, words: string[]): Promise<string> {
    switch (verb) {
      case 'add': {
        const args = parseArgs(words, MM_RULE_KEYS);
        for (const k of ['name', 'mmsecmethods', 'auth1'])
          if (!args.has(k)) throw new NetshError(`A required parameter is missing: ${k}=.`);
        staticOnly(args);
        await this.stores.update(this.store, (doc) => {
          if (
            doc.mainModeRules.some((r) => r.DisplayName.toLowerCase() === (args.get('name') as string).toLowerCase())
          ) {
            throw new NetshError(
              `A main mode rule named "${args.get('name')}" already exists; rule names must be unique.`,
            );
          }
          const rule = mainModeRule({ DisplayName: args.get('name') as string });
          this.applyMainModeArgs(rule, args, doc);
          doc.mainModeRules.push(rule);
        });
        return '';
      }
      case 'delete': {
        const args = parseArgs(words, ['name', 'type', 'profile', 'endpoint1', 'endpoint2']);
        const n = await this.stores.update(this.store, (doc) => {
          const gone = selectRules(doc.mainModeRules, args);
          if (gone.length === 0) throw new NetshError('No rules match the specified criteria.');
          const names = new Set(gone.map((r) => r.Name));
          doc.mainModeRules = doc.mainModeRules.filter((r) => !names.has(r.Name));
          dropOwnSets(doc, gone);
          return gone.length;
        });
        return `\nDeleted ${n} rule(s).`;
      }
      case 'set': {
        const { sel, changes } = parseSetRule(
          words,
          ['name', 'type', 'profile', 'endpoint1', 'endpoint2'],
          MM_RULE_KEYS,
        );
        const n = await this.stores.update(this.store, (doc) => {
          const rules = selectRules(doc.mainModeRules, sel);
          if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
          for (const r of rules) this.applyMainModeArgs(r, changes, doc);
          return rules.length;
        });
        return `\nUpdated ${n} rule(s).`;
      }
      default: {
        const args = parseArgs(
          words.filter((w) => w.toLowerCase() !== 'verbose'),
          ['name', 'profile', 'type'],
        );
        const doc = this.stores.read(this.store);
        const rules = selectRules(doc.mainModeRules, args);
        if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
        return rules.map((r) => showMainModeRule(r, doc)).join('');
      }
    }
  }

  private applyMainModeArgs(rule: MainModeRule, args: Args, doc: PolicyDocument): void {
    if (args.has('name')) rule.DisplayName = args.get('name') as string;
    if (args.has('description')) rule.Description = args.get('description') as string;
    if (args.has('endpoint1')) rule.LocalAddress = parseAddressList('endpoint1', [args.get('endpoint1') as string]);
    if (args.has('endpoint2')) rule.RemoteAddress = parseAddressList('endpoint2', [args.get('endpoint2') as string]);
    if (args.has('enable')) rule.Enabled = yesNo('enable', args.get('enable') as string) ? 'True' : 'False';
    if (args.has('profile')) rule.Profile = profiles(args.get('profile') as string);
    const proposals = parseAuth(args, 1);
    if (proposals) {
      const name = ownSet(rule, 'auth1');
      putSet(doc.phase1AuthSets, {
        Name: name,
        DisplayName: `${rule.DisplayName} (auth1)`,
        Description: 'Created by netsh for this rule.',
        Group: '',
        Proposal: proposals,
      });
      rule.Phase1AuthSet = name;
    }
    if (args.has('mmsecmethods') || args.has('mmkeylifetime')) {
      const name = ownSet(rule, 'mm');
      const current = findSet(doc, 'mainModeCryptoSets', rule.MainModeCryptoSet || name);
      const life = args.has('mmkeylifetime') ? parseKeyLifetime(args.get('mmkeylifetime') as string) : undefined;
      putSet(doc.mainModeCryptoSets, {
        Name: name,
        DisplayName: `${rule.DisplayName} (main mode)`,
        Description: 'Created by netsh for this rule.',
        Group: '',
        Proposal: args.has('mmsecmethods')
          ? parseMmSecMethods(args.get('mmsecmethods') as string)
          : (current?.Proposal ?? []),
        MaxMinutes: life?.minutes ?? current?.MaxMinutes ?? 480,
        MaxSessions: life?.sessions ?? current?.MaxSessions ?? 0,
        ForceDiffieHellman: current?.ForceDiffieHellman ?? false,
      });
      rule.MainModeCryptoSet = name;
    }
  }

  /**
   * `set global ipsec debuglog enable|disable | file PATH | size KB` (seed 000). Windows' netsh has
   * no such keyword (it traces IKEEXT with `netsh wfp capture`); consec takes it for its IKE trace.
   */
  private debugLog(value: string): string {
    const [what = '', ...rest] = value.split(/\s+/);
    const arg = rest.join(' ').replace(/^"(.*)"$/, '$1');
    const verb = matchWord(what, ['enable', 'disable', 'file', 'size'], 'value');
    let change: Partial<DebugLogSettings>;
    if (verb === 'enable' || verb === 'disable') {
      if (arg) throw new NetshError(`A specified value is not valid: debuglog ${verb} takes no argument.`);
      change = { enabled: verb === 'enable' };
    } else if (verb === 'file') {
      if (!arg) throw new NetshError('A value is missing: set global ipsec debuglog file <path>.');
      change = { file: arg };
    } else {
      const kb = Number(arg);
      if (!/^\d+$/.test(arg) || kb < DEBUGLOG_SIZE_KB.min || kb > DEBUGLOG_SIZE_KB.max)
        throw new NetshError(
          `A specified value is not valid: debuglog size must be ${DEBUGLOG_SIZE_KB.min}-${DEBUGLOG_SIZE_KB.max} (KB).`,
        );
      change = { sizeKb: kb };
    }
    let next: DebugLogSettings;
    try {
      next = updateDebugLogSettings(this.stores.stateDir, change);
    } catch (err) {
      throw new NetshError(`A specified value is not valid: ${(err as Error).message}.`);
    }
    this.warn(
      '"debuglog" is not a Windows netsh keyword (seed 000 writes it; Windows traces IKEEXT with netsh wfp capture); ' +
        `consec's IKE debug log is ${next.enabled ? 'on' : 'off'}: ${next.file ?? defaultDebugLogFile(this.stores.stateDir)}, ${next.sizeKb} KB.`,
    );
    return '';
  }

  /**
   * `set global ipsec defaultkeymodules ikev2first|ikev1first`: consec's own keyword (Windows has no
   * such setting) for the order a `-KeyModule Default` rule tries the keying modules in.
   */
  private async defaultKeyModules(value: string): Promise<string> {
    const order = oneOf('defaultkeymodules', value, { ikev2first: 'IKEv2First', ikev1first: 'IKEv1First' } as const);
    await this.stores.update(this.store, (doc) => {
      doc.settings.DefaultKeyModuleOrder = order;
    });
    this.warn(
      `"defaultkeymodules" is consec's own keyword, not Windows netsh: rules with KeyModule Default now try ${order === 'IKEv1First' ? 'IKEv1, then IKEv2' : 'IKEv2, then IKEv1'}.`,
    );
    return '';
  }

  /**
   * `set store local` or `set store gpo="domain\GPO name"` (Microsoft's command-line guide edits a GPO
   * this way): the commands after it in this session read and change that store.
   */
  private async setStore(words: string[]): Promise<string> {
    const word = words[0] ?? '';
    if (word.toLowerCase() === 'local' && words.length === 1) {
      this.store = 'PersistentStore';
      return '';
    }
    const usage = 'Usage: set store local | gpo=<domain>\\<GPO name>';
    if (words.length !== 1 || !/^gpo=/i.test(word)) throw new NetshError(usage);
    const gpo = parseArgs(words, ['gpo']).get('gpo');
    if (!gpo) throw new NetshError(usage);
    if (this.stores.resolve(gpo).kind !== 'gpo') throw new NetshError(`"${gpo}" is not a GPO store name.`);
    // A GPO of the fleet: read from its cluster now; the commands after it change it there.
    await this.stores.prefetch(gpo);
    this.store = gpo;
    return '';
  }

  private async setGlobal(words: string[]): Promise<string> {
    const section = matchWord(words.shift(), ['ipsec', 'mainmode', 'statefulftp', 'statefulpptp'], 'setting');
    if (section === 'statefulftp' || section === 'statefulpptp') {
      const v = oneOf(section, words[0] ?? '', {
        enable: 'True',
        disable: 'False',
        notconfigured: 'NotConfigured',
      } as const);
      await this.stores.update(this.store, (doc) => {
        doc.settings[section === 'statefulftp' ? 'EnableStatefulFtp' : 'EnableStatefulPptp'] = v;
      });
      return '';
    }
    let key = (words.shift() ?? '').toLowerCase();
    const value = words.join(' ');
    if (!value) throw new NetshError(`A value is missing: set global ${section} ${key} <value>.`);
    if (section === 'ipsec') {
      if (key === 'debuglog') return this.debugLog(value);
      if (key === 'defaultkeymodules') return this.defaultKeyModules(value);
      if (key === 'exemptions') {
        this.warn('"exemptions" is not a netsh keyword (seed 000 writes it); consec reads it as "defaultexemptions".');
        key = 'defaultexemptions';
      }
      await this.stores.update(this.store, (doc) => {
        const s = doc.settings;
        switch (key) {
          case 'strongcrlcheck':
            s.CertValidationLevel = oneOf(key, value, {
              '0': 'None',
              '1': 'AttemptCrlCheck',
              '2': 'RequireCrlCheck',
              notconfigured: 'NotConfigured',
            } as const);
            break;
          case 'saidletimemin': {
            const n = Number(value);
            if (!/^\d+$/.test(value) || n < 5 || n > 60)
              throw new NetshError('A specified value is not valid: saidletimemin must be 5-60 (minutes).');
            s.MaxSAIdleTimeSeconds = n * 60;
            break;
          }
          case 'defaultexemptions': {
            const items = value.split(',').map((v) => v.trim().toLowerCase());
            const out = new Set<EnumValue<typeof TrafficExemption>>();
            for (const item of items) {
              if (item === 'neighbor') {
                this.warn('"neighbor" is read as "neighbordiscovery".');
                out.add('NeighborDiscovery');
              } else if (item === 'nodefaultexempt') {
                this.warn(
                  '"nodefaultexempt" is the Windows Server 2003 registry setting NoDefaultExempt, not a netsh value; it is ignored.',
                );
              } else out.add(oneOf('defaultexemptions', item, EXEMPTIONS));
            }
            if (out.size > 1) out.delete('None');
            s.Exemptions = ['None', 'NeighborDiscovery', 'Icmp', 'RouterDiscovery', 'Dhcp', 'NotConfigured'].filter(
              (e) => out.has(e as never),
            ) as typeof s.Exemptions;
            if (s.Exemptions.length === 0) s.Exemptions = ['None'];
            break;
          }
          case 'ipsecthroughnat':
            s.AllowIPsecThroughNAT = oneOf(key, value, {
              never: 'None',
              serverbehindnat: 'Server',
              serverandclientbehindnat: 'Both',
              notconfigured: 'NotConfigured',
            } as const);
            break;
          case 'authzusergrp':
            s.RemoteUserTunnelAuthorizationList = value.toLowerCase() === 'none' ? '' : value;
            break;
          case 'authzcomputergrp':
            s.RemoteMachineTunnelAuthorizationList = value.toLowerCase() === 'none' ? '' : value;
            break;
          case 'authzusergrptransport':
            s.RemoteUserTransportAuthorizationList = value.toLowerCase() === 'none' ? '' : value;
            break;
          case 'authzcomputergrptransport':
            s.RemoteMachineTransportAuthorizationList = value.toLowerCase() === 'none' ? '' : value;
            break;
          default:
            throw new NetshError(
              `The following command was not found: set global ipsec ${key}. Settings: strongcrlcheck, saidletimemin, defaultexemptions, ipsecthroughnat, authzusergrp, authzcomputergrp, authzusergrptransport, authzcomputergrptransport, debuglog, defaultkeymodules.`,
            );
        }
      });
      return '';
    }
    await this.stores.update(this.store, (doc) => {
      // The first change to the defaults puts a copy of the built-in set into the store.
      let set = doc.mainModeCryptoSets.find((x) => x.Name === DEFAULT_MM_CRYPTO_SET);
      if (!set) {
        set = structuredClone(findSet(doc, 'mainModeCryptoSets', DEFAULT_MM_CRYPTO_SET) as MainModeCryptoSet);
        doc.mainModeCryptoSets.push(set);
      }
      switch (key) {
        case 'mmkeylifetime': {
          const life = parseKeyLifetime(value);
          set.MaxMinutes = life.minutes ?? set.MaxMinutes;
          set.MaxSessions = life.sessions ?? set.MaxSessions;
          break;
        }
        case 'mmsecmethods':
          if (value.toLowerCase() === 'default')
            throw new NetshError('mmsecmethods default: give the methods explicitly (consec keeps one default set).');
          set.Proposal = parseMmSecMethods(value);
          break;
        case 'mmforcedh':
          set.ForceDiffieHellman = yesNo(key, value);
          break;
        default:
          throw new NetshError(
            `The following command was not found: set global mainmode ${key}. Settings: mmkeylifetime, mmsecmethods, mmforcedh.`,
          );
      }
    });
    return '';
  }

  /** `monitor show mmsa|qmsa [address]`: the daemon's SAs in netsh's layout (reference §5.4–5.5). */
  private async monitorSas(what: 'mmsa' | 'qmsa', words: string[]): Promise<string> {
    const address = words.shift();
    let sas: Record<string, unknown>[];
    try {
      sas = (await controlRequest(this.stores.stateDir, what === 'mmsa' ? 'mmsa.list' : 'qmsa.list')) as Record<
        string,
        unknown
      >[];
    } catch (err) {
      throw new NetshError((err as Error).message);
    }
    const field = (label: string, value: unknown) => `${`${label}:`.padEnd(38)}${String(value)}`;
    const stamp = new Date().toLocaleString('en-US');
    const blocks: string[] = [];
    for (const sa of sas) {
      const local = String(what === 'mmsa' ? sa.LocalEndpoint : sa.LocalTunnelEndpoint || sa.LocalEndpoint);
      const remote = String(what === 'mmsa' ? sa.RemoteEndpoint : sa.RemoteTunnelEndpoint || sa.RemoteEndpoint);
      if (address && !`${local} ${remote} ${sa.LocalEndpoint} ${sa.RemoteEndpoint}`.includes(address)) continue;
      const lines =
        what === 'mmsa'
          ? [
              `Main Mode SA at ${stamp}`,
              '-'.repeat(70),
              field('Local IP Address', sa.LocalEndpoint),
              field('Remote IP Address', sa.RemoteEndpoint),
              field(
                'Auth1',
                (sa.LocalFirstId as { AuthenticationMethod: string }).AuthenticationMethod.replace(
                  'Machine',
                  'Computer',
                ),
              ),
              field('Auth2', 'None'),
              field(
                'MM Offer',
                `${sa.CipherAlgorithm}-${sa.HashAlgorithm} ${String(sa.GroupId).replace('DH', 'DH Group ')}`,
              ),
              field('Cookie Pair', sa.CookiePair),
              field('Health Cert', 'No'),
            ]
          : [
              `Quick Mode SA at ${stamp}`,
              '-'.repeat(70),
              field('Local IP Address', sa.LocalEndpoint),
              field('Remote IP Address', sa.RemoteEndpoint),
              ...(sa.EncapsulationMode === 'Tunnel'
                ? [
                    field('Local Tunnel Endpoint', sa.LocalTunnelEndpoint),
                    field('Remote Tunnel Endpoint', sa.RemoteTunnelEndpoint),
                  ]
                : []),
              field('Local Port', 'Any'),
              field('Remote Port', 'Any'),
              field('Protocol', 'Any'),
              field('Direction', 'Both'),
              field(
                'QM Offer',
                `${sa.Protocol}:${sa.IntegrityAlgorithm}-${sa.EncryptionAlgorithm}+${Math.round(Number(sa.LifetimeSeconds) / 60)}min+${sa.LifetimeKilobytes}kb`,
              ),
              field('PFS', sa.PfsGroupId),
              field('Inbound SPI', sa.InboundSpi),
              field('Outbound SPI', sa.OutboundSpi),
            ];
      blocks.push(lines.join('\n'));
    }
    return blocks.length ? `${blocks.join('\n\n')}\n\nOk.` : 'No SAs match the specified criteria.\n\nOk.';
  }

  private monitorConsec(words: string[]): string {
    const doc = this.stores.read('ActiveStore');
    const rest = words.filter((w) => w.toLowerCase() !== 'rule' && w.toLowerCase() !== 'verbose');
    const args = parseArgs(rest, ['name', 'profile', 'type', 'remote']);
    let rules = doc.rules.filter((r) => r.Enabled === 'True');
    if (args.has('name') || args.has('profile'))
      rules = selectRules(rules, args.has('name') ? args : new Map([...args, ['name', 'all']]));
    const remote = args.get('remote');
    if (remote !== undefined) {
      this.warn(
        '"remote=" is not a documented netsh keyword (seed 000 uses it); consec shows the rules whose Endpoint2 covers that address.',
      );
      const single = parseAddressList('remote', [remote]);
      rules = rules.filter(
        (r) =>
          r.RemoteAddress.includes('Any') ||
          r.RemoteAddress.some((e) => e === single[0] || coversEntry(e, single[0] as string)),
      );
    }
    if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
    return `\nConnection Security Rules (effective policy):\n${rules.map((r) => showRule(r, doc, false)).join('')}`;
  }
}

function coversEntry(entry: string, address: string): boolean {
  const [base = '', len] = entry.split('/');
  if (len === undefined || !isIPv4(base) || !isIPv4(address)) return false;
  const n = (a: string) => a.split('.').reduce((x, o) => x * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  return Math.floor(n(base) / size) === Math.floor(n(address) / size);
}

function parseKeyLifetime(value: string): { minutes?: number; sessions?: number } {
  const out: { minutes?: number; sessions?: number } = {};
  for (const part of value.split(',')) {
    const m = /^(\d+)(min|sess)$/i.exec(part.trim());
    if (!m) throw new NetshError(`A specified value is not valid: mmkeylifetime=${value} (use <n>min,<n>sess).`);
    if ((m[2] as string).toLowerCase() === 'min') {
      const n = Number(m[1]);
      if (n < 1 || n > 2879) throw new NetshError('mmkeylifetime minutes must be 1-2879.');
      out.minutes = n;
    } else out.sessions = Number(m[1]);
  }
  return out;
}
