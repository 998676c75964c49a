/**
 * `netsh advfirewall firewall add|delete|set|show rule`: firewall rules over the same stores as
 * New-NetFirewallRule, with netsh's keywords (dir=, action=allow|block|bypass, security=…,
 * rmtcomputergrp=…) and its output layout.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { parseAddressList, parsePortList, parseProtocol } from '../../policy/endpoints.ts';
import { type FirewallRule, firewallRule } from '../../policy/model.ts';
import type { PolicyStores } from '../../policy/store.ts';
import { type Args, INTERFACE_TYPES, NetshError, oneOf, parseArgs, parseSetRule, profiles, yesNo } from './syntax.ts';

const DIRECTIONS: Record<string, FirewallRule['Direction']> = { in: 'Inbound', out: 'Outbound' };
const EDGE: Record<string, FirewallRule['EdgeTraversalPolicy']> = {
  yes: 'Allow',
  no: 'Block',
  deferapp: 'DeferToApp',
  deferuser: 'DeferToUser',
};
/** security= as the Authentication and Encryption pair of the security filter. */
const SECURITY: Record<string, [FirewallRule['Authentication'], FirewallRule['Encryption']]> = {
  notrequired: ['NotRequired', 'NotRequired'],
  authenticate: ['Required', 'NotRequired'],
  authenc: ['Required', 'Required'],
  authdynenc: ['Required', 'Dynamic'],
  authnoencap: ['NoEncap', 'NotRequired'],
};

const RULE_KEYS = [
  'name',
  'dir',
  'action',
  'program',
  'service',
  'description',
  'enable',
  'profile',
  'localip',
  'remoteip',
  'localport',
  'remoteport',
  'protocol',
  'interfacetype',
  'rmtcomputergrp',
  'rmtusrgrp',
  'edge',
  'security',
];
const SELECT_KEYS = [
  'name',
  'group',
  'dir',
  'profile',
  'program',
  'service',
  'localip',
  'remoteip',
  'localport',
  'remoteport',
  'protocol',
];

const LINE = '-'.repeat(70);
const field = (label: string, value: string): string => `${`${label}:`.padEnd(38)}${value}\n`;

/** protocol= with netsh's icmpv4:type,code form: the protocol and its ICMP type. */
function protocolArg(value: string): { protocol: string; icmp?: string[] } {
  const m = /^(icmpv4|icmpv6):(\d{1,3}|any),(\d{1,3}|any)$/i.exec(value);
  if (!m) return { protocol: parseProtocol(value) };
  const [type, code] = [m[2] as string, m[3] as string];
  if (type.toLowerCase() === 'any') return { protocol: parseProtocol(m[1] as string) };
  if (Number(type) > 255 || (code.toLowerCase() !== 'any' && Number(code) > 255))
    throw new NetshError(`A specified value is not valid: protocol=${value} (ICMP type and code are 0-255 or any).`);
  return {
    protocol: parseProtocol(m[1] as string),
    icmp: [code.toLowerCase() === 'any' ? type : `${type}:${code}`],
  };
}

function accountList(key: string, value: string): never {
  throw new NetshError(
    `${key}= requires Active Directory: it authorizes accounts by their SIDs (${value}), and consec, which knows its peers by Kerberos principal or certificate, has no directory to resolve SIDs against.`,
  );
}

function applyArgs(rule: FirewallRule, args: Args): void {
  for (const [k, v] of args) {
    switch (k) {
      case 'name':
        rule.DisplayName = v;
        break;
      case 'dir':
        rule.Direction = oneOf('dir', v, DIRECTIONS);
        break;
      case 'action': {
        const a = oneOf('action', v, { allow: 'allow', block: 'block', bypass: 'bypass' } as const);
        rule.Action = a === 'block' ? 'Block' : 'Allow';
        rule.OverrideBlockRules = a === 'bypass';
        break;
      }
      case 'program':
        rule.Program = v.toLowerCase() === 'any' ? 'Any' : v;
        break;
      case 'service':
        rule.Service = v.toLowerCase() === 'any' ? 'Any' : v;
        break;
      case 'description':
        rule.Description = v;
        break;
      case 'enable':
        rule.Enabled = yesNo('enable', v) ? 'True' : 'False';
        break;
      case 'profile':
        rule.Profile = profiles(v);
        break;
      case 'localip':
        rule.LocalAddress = parseAddressList('localip', [v]);
        break;
      case 'remoteip':
        rule.RemoteAddress = parseAddressList('remoteip', [v]);
        break;
      case 'localport':
        rule.LocalPort = parsePortList('localport', [v]);
        break;
      case 'remoteport':
        rule.RemotePort = parsePortList('remoteport', [v]);
        break;
      case 'protocol': {
        const p = protocolArg(v);
        rule.Protocol = p.protocol;
        rule.IcmpType = p.icmp ?? ['Any'];
        break;
      }
      case 'interfacetype':
        rule.InterfaceType = [oneOf('interfacetype', v, INTERFACE_TYPES)];
        break;
      case 'rmtcomputergrp':
      case 'rmtusrgrp':
        if (v.trim() && v.trim().toLowerCase() !== 'any') accountList(k, v);
        break;
      case 'edge':
        rule.EdgeTraversalPolicy = oneOf('edge', v, EDGE);
        break;
      case 'security':
        [rule.Authentication, rule.Encryption] = oneOf('security', v, SECURITY);
        break;
    }
  }
}

function selectRules(rules: FirewallRule[], args: Args): FirewallRule[] {
  const name = args.get('name');
  const group = args.get('group');
  if (name === undefined && group === undefined) throw new NetshError('A rule name is needed: name=<rule name>|all.');
  const probe = firewallRule({ DisplayName: 'probe' });
  const wanted = new Map(args);
  wanted.delete('name');
  wanted.delete('group');
  applyArgs(probe, wanted);
  return rules.filter((r) => {
    if (
      name !== undefined
        ? name.toLowerCase() !== 'all' && r.DisplayName.toLowerCase() !== name.toLowerCase()
        : r.Group.toLowerCase() !== (group as string).toLowerCase()
    )
      return false;
    const same = (k: keyof FirewallRule) => JSON.stringify(r[k]) === JSON.stringify(probe[k]);
    if (wanted.has('dir') && !same('Direction')) return false;
    if (wanted.has('program') && r.Program.toLowerCase() !== probe.Program.toLowerCase()) return false;
    if (wanted.has('service') && r.Service.toLowerCase() !== probe.Service.toLowerCase()) return false;
    if (wanted.has('localip') && !same('LocalAddress')) return false;
    if (wanted.has('remoteip') && !same('RemoteAddress')) return false;
    if (wanted.has('localport') && !same('LocalPort')) return false;
    if (wanted.has('remoteport') && !same('RemotePort')) return false;
    if (wanted.has('protocol') && !same('Protocol')) return false;
    if (
      wanted.has('profile') &&
      !probe.Profile.includes('Any') &&
      !r.Profile.includes('Any') &&
      !probe.Profile.some((p) => r.Profile.includes(p))
    )
      return false;
    return true;
  });
}

const listText = (list: string[]): string =>
  list.map((e) => (isIPv4(e) ? `${e}/32` : isIPv6(e) ? `${e}/128` : e)).join(',');

function showRule(r: FirewallRule, verbose: boolean): string {
  let out = `\n${field('Rule Name', r.DisplayName)}${LINE}\n`;
  if (verbose) out += field('Description', r.Description);
  out += field('Enabled', r.Enabled === 'True' ? 'Yes' : 'No');
  out += field('Direction', r.Direction === 'Inbound' ? 'In' : 'Out');
  out += field('Profiles', r.Profile.includes('Any') ? 'Domain,Private,Public' : r.Profile.join(','));
  out += field('Grouping', r.Group);
  out += field('LocalIP', listText(r.LocalAddress));
  out += field('RemoteIP', listText(r.RemoteAddress));
  out += field('Protocol', r.Protocol);
  if (r.Protocol === 'TCP' || r.Protocol === 'UDP') {
    out += field('LocalPort', r.LocalPort.join(','));
    out += field('RemotePort', r.RemotePort.join(','));
  }
  if (r.Protocol === 'ICMPv4' || r.Protocol === 'ICMPv6') out += field('Type:Code', r.IcmpType.join(','));
  out += field(
    'Edge traversal',
    r.EdgeTraversalPolicy === 'Block' ? 'No' : r.EdgeTraversalPolicy === 'Allow' ? 'Yes' : r.EdgeTraversalPolicy,
  );
  if (verbose) {
    out += field('Program', r.Program);
    out += field('Service', r.Service);
    out += field('InterfaceTypes', r.InterfaceType.join(','));
    const security = Object.entries(SECURITY).find(([, [a, e]]) => a === r.Authentication && e === r.Encryption)?.[0];
    out += field(
      'Security',
      {
        notrequired: 'NotRequired',
        authenticate: 'Authenticate',
        authenc: 'AuthEnc',
        authdynenc: 'AuthDynEnc',
        authnoencap: 'AuthNoEncap',
      }[security ?? 'notrequired'] ?? 'NotRequired',
    );
    out += field('Rule source', 'Local Setting');
  }
  out += field('Action', r.OverrideBlockRules ? 'Bypass' : r.Action);
  return out;
}

/** One `netsh advfirewall firewall <verb> rule …` command against `store`. */
export async function firewallCommand(
  stores: PolicyStores,
  store: string,
  verb: 'add' | 'delete' | 'set' | 'show',
  words: string[],
): Promise<string> {
  switch (verb) {
    case 'add': {
      const args = parseArgs(words, RULE_KEYS);
      for (const k of ['name', 'dir', 'action'])
        if (!args.has(k))
          throw new NetshError(
            `A required parameter is missing: ${k}=. Usage: add rule name=<string> dir=in|out action=allow|block|bypass [...]`,
          );
      if ((args.get('name') as string).toLowerCase() === 'all')
        throw new NetshError('"all" cannot be used as a rule name.');
      await stores.update(store, (doc) => {
        const rule = firewallRule({ DisplayName: args.get('name') as string });
        applyArgs(rule, args);
        doc.firewallRules.push(rule);
      });
      return '';
    }
    case 'delete': {
      const args = parseArgs(
        words,
        SELECT_KEYS.filter((k) => k !== 'group'),
      );
      const n = await stores.update(store, (doc) => {
        const gone = new Set(selectRules(doc.firewallRules, args));
        if (gone.size === 0) throw new NetshError('No rules match the specified criteria.');
        doc.firewallRules = doc.firewallRules.filter((r) => !gone.has(r));
        return gone.size;
      });
      return `\nDeleted ${n} rule(s).`;
    }
    case 'set': {
      const { sel, changes } = parseSetRule(words, SELECT_KEYS, RULE_KEYS);
      const n = await stores.update(store, (doc) => {
        const rules = selectRules(doc.firewallRules, sel);
        if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
        for (const r of rules) applyArgs(r, changes);
        return rules.length;
      });
      return `\nUpdated ${n} rule(s).`;
    }
    default: {
      const verbose = words.some((w) => w.toLowerCase() === 'verbose');
      const args = parseArgs(
        words.filter((w) => w.toLowerCase() !== 'verbose'),
        ['name', 'profile', 'type', 'dir'],
      );
      // consec keeps no dynamic (in-memory) firewall rules: every rule is in a store.
      if (args.get('type')?.toLowerCase() === 'dynamic') throw new NetshError('No rules match the specified criteria.');
      args.delete('type');
      const rules = selectRules(stores.read(store).firewallRules, args);
      if (rules.length === 0) throw new NetshError('No rules match the specified criteria.');
      return rules.map((r) => showRule(r, verbose)).join('');
    }
  }
}
