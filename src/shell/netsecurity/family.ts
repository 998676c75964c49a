/**
 * One generator for the cmdlet families that every stored NetSecurity object has
 * (New/Get/Set/Remove/Rename/Copy, plus Enable/Disable for rules): selection by Name, DisplayName,
 * query properties or pipeline input; -PolicyStore/-GPOSession; -PassThru; -WhatIf; Windows'
 * not-found errors. Each noun supplies only its properties and how to apply them.
 */
import { parseAddressList, parsePortList, parseProtocol } from '../../policy/endpoints.ts';
import { Enabled, Profile } from '../../policy/enums.ts';
import type {
  CollectionName,
  FirewallRule,
  IPsecRule,
  MainModeRule,
  NamedObject,
  PolicyDocument,
  TrafficConditions,
} from '../../policy/model.ts';
import { editable, nameInUse, type PolicyStores } from '../../policy/store.ts';
import { type CommandCall, type CommandDef, type ParamDef, PwshError } from '../pwsh/runtime.ts';
import { wildcardMatch } from '../pwsh/runtime.ts';
import { enumerate, getProperty, isPSObject, type PSObject, toText, typeName } from '../pwsh/values.ts';
import { CIM, type Source, viewModel } from './views.ts';

export interface Family<M extends NamedObject> {
  /** Noun after the verb, e.g. NetIPsecRule. */
  noun: string;
  /** CIM class named in not-found errors. */
  cimClass: string;
  collection: CollectionName;
  /** Parameter that carries Name (IPsecRuleName for rules), with its aliases. */
  nameParam: ParamDef;
  view(m: M, source: Source): PSObject;
  /** Settable properties (New and Set). */
  properties: ParamDef[];
  /** Extra parameters of New only (e.g. -Default). */
  newOnly?: ParamDef[];
  /** Properties New requires besides DisplayName. */
  mandatory?: string[];
  /** A fresh object with defaults. */
  create(displayName: string): M;
  /** Copies the bound properties of `call` onto `target` (mutating it). */
  apply(target: M, call: CommandCall, doc: PolicyDocument): void;
  /** After New/Set: extra changes to the document (e.g. the main mode rule of -MainModeCryptoSet). */
  afterWrite?(target: M, call: CommandCall, doc: PolicyDocument, isNew: boolean): void;
  /** Well-known Name given by -Default. */
  defaultName?: string;
  /** Rules have Enable/Disable. */
  enableDisable?: boolean;
  /** Objects elsewhere that refer to this one by Name (blocks Remove, follows Rename). */
  references?: { collection: CollectionName; property: string; label: string }[];
  /** Extra cleanup when objects are removed. */
  onRemove?(removed: M[], doc: PolicyDocument): void;
  /**
   * Objects of other collections that select this family's objects when piped into Get- (Windows'
   * -AssociatedNetIPsecPhase1AuthSet …): a set selects the objects whose `property` names it (an
   * empty property names the set whose Name is `defaultName`).
   */
  associated?: { collection: CollectionName; property: string; defaultName?: string }[];
}

export const STORE_PARAMS: ParamDef[] = [
  { name: 'PolicyStore', type: 'string' },
  { name: 'GPOSession', type: 'string' },
  { name: 'CimSession', type: 'any' },
  { name: 'ThrottleLimit', type: 'uint' },
  { name: 'AsJob', type: 'switch' },
];

const COMMON_PROPS: ParamDef[] = [
  { name: 'DisplayName', type: 'string' },
  { name: 'Description', type: 'string' },
  { name: 'Group', type: 'string' },
];

export const RULE_COMMON: ParamDef[] = [
  { name: 'Enabled', type: 'enum', enum: Enabled },
  { name: 'Profile', type: 'flags', enum: Profile },
  { name: 'Platform', type: 'strings' },
  { name: 'LocalAddress', type: 'strings' },
  { name: 'RemoteAddress', type: 'strings' },
];

export function applyRuleCommon(o: IPsecRule | MainModeRule | FirewallRule, call: CommandCall): void {
  if (call.has('Enabled')) o.Enabled = call.get('Enabled') ?? 'True';
  if (call.has('Profile')) o.Profile = call.get('Profile') ?? ['Any'];
  if (call.has('Platform')) o.Platform = call.get<string[]>('Platform') ?? [];
  applyAddresses(o, call);
}

/** -LocalAddress/-RemoteAddress of any rule (the address filter). */
export function applyAddresses(o: { LocalAddress: string[]; RemoteAddress: string[] }, call: CommandCall): void {
  if (call.has('LocalAddress'))
    o.LocalAddress = parseAddressList('LocalAddress', call.get<string[]>('LocalAddress') ?? []);
  if (call.has('RemoteAddress'))
    o.RemoteAddress = parseAddressList('RemoteAddress', call.get<string[]>('RemoteAddress') ?? []);
}

/** -Protocol, ports and interfaces, which connection security and firewall rules share (port and interface filters). */
export function applyTrafficConditions(o: TrafficConditions, call: CommandCall): void {
  if (call.has('Protocol')) o.Protocol = parseProtocol(call.get<string>('Protocol') ?? 'Any');
  if (call.has('LocalPort')) o.LocalPort = parsePortList('LocalPort', call.get<string[]>('LocalPort') ?? []);
  if (call.has('RemotePort')) o.RemotePort = parsePortList('RemotePort', call.get<string[]>('RemotePort') ?? []);
  if (call.has('InterfaceAlias')) o.InterfaceAlias = call.get<string[]>('InterfaceAlias') ?? [];
  if (call.has('InterfaceType')) o.InterfaceType = call.get('InterfaceType') ?? ['Any'];
}

/**
 * consec manages the computer it runs on: -CimSession (a session to another computer, or a list of
 * computer names) is refused with a clear error rather than silently run here.
 */
export function localOnly(call: CommandCall): void {
  if (!call.has('CimSession')) return;
  const sessions = enumerate(call.get('CimSession')).map(toText);
  throw new PwshError(
    `consec manages the local computer only: -CimSession names a remote computer (${sessions.join(', ')}); run the command on that computer instead.`,
    'RemoteComputerNotSupported',
    'NotImplemented',
    'CimException',
  );
}

/** The store a call names (GPOSession values are GPO store names in consec). */
export function storeName(call: CommandCall): string {
  localOnly(call);
  if (call.get('AsJob'))
    throw new PwshError(
      'The -AsJob parameter is not supported by consec.',
      'NotSupported',
      'NotImplemented',
      'PSNotSupportedException',
    );
  const gpo = call.get<string>('GPOSession');
  const store = call.get<string>('PolicyStore');
  if (gpo && store) {
    throw new PwshError(
      'Parameter set cannot be resolved using the specified named parameters: use either -PolicyStore or -GPOSession.',
      'AmbiguousParameterSet',
      'InvalidArgument',
      'ParameterBindingException',
    );
  }
  return gpo || store || 'PersistentStore';
}

/** Documents to read from for a store, each with where its objects come from. */
export function readWithSources(stores: PolicyStores, name: string): { doc: PolicyDocument; source: Source }[] {
  const s = stores.resolve(name);
  switch (s.kind) {
    case 'active':
      return stores.activeParts().map(({ doc, store, type }) => ({ doc, source: { store, type } }));
    case 'gpo':
    case 'rsop':
      return [{ doc: stores.read(name), source: { store: s.name, type: 'GroupPolicy' } }];
    case 'defaults':
      return [{ doc: stores.read(name), source: { store: s.name, type: 'Hardcoded' } }];
    case 'persistent':
      return [{ doc: stores.read(name), source: { store: s.name, type: 'Local' } }];
  }
}

const hasWildcard = (s: string): boolean => /[*?[]/.test(s);

/** `call` with values for parameters it was not given (edits made on an object passed back). */
function withEdits(call: CommandCall, edits: Map<string, unknown> | undefined): CommandCall {
  if (!edits) return call;
  return {
    ...call,
    has: (n) => call.has(n) || edits.has(n),
    get: <T>(n: string) => (call.has(n) ? call.get<T>(n) : (edits.get(n) as T | undefined)),
  };
}

function notFound(f: Family<NamedObject>, property: string, value: string): PwshError {
  return new PwshError(
    `No ${f.cimClass} objects found with property '${property}' equal to '${value}'.  Verify the value of the property and retry.`,
    `CmdletizationQuery_NotFound_${property}`,
    'ObjectNotFound',
    'CimJobException',
    undefined,
    value,
    'String',
  );
}

/**
 * What the objects piped in (or given as -InputObject) select, as a test on this family's objects:
 * our own views by Name; a rule given to a set cmdlet selects the set it uses (Windows'
 * -AssociatedNetIPsecRule), and on Get- a set given to a rule cmdlet the rules that use it
 * (-AssociatedNetIPsecPhase1AuthSet …); another object by its Name property. An object of another
 * CIM class is refused as PowerShell's binder refuses it.
 */
function pipedSelection(
  items: unknown[],
  f: Family<NamedObject>,
  call: CommandCall,
  associations: boolean,
): (o: NamedObject) => boolean {
  const names = new Set<string>();
  const tests: ((o: NamedObject) => boolean)[] = [];
  const fromPipeline = call.input !== undefined;
  for (const i of items) {
    const m = viewModel<NamedObject>(i);
    if (m?.kind === f.collection) {
      names.add(m.value.Name.toLowerCase());
      continue;
    }
    const ref = m && f.references?.find((r) => r.collection === m.kind);
    if (m && ref) {
      const name = String((m.value as unknown as Record<string, unknown>)[ref.property] ?? '');
      names.add((name || (f.defaultName ?? '')).toLowerCase());
      continue;
    }
    // A firewall profile piped into Get-NetFirewallRule (or Get-NetIPsecRule) selects the rules that apply in it.
    if (m?.kind === 'profiles' && fromPipeline && (f.collection === 'firewallRules' || f.collection === 'rules')) {
      const profile = m.value.Name;
      tests.push((o) => {
        const p = (o as unknown as { Profile: string[] }).Profile;
        return p.includes('Any') || p.includes(profile);
      });
      continue;
    }
    const assoc = m && associations ? f.associated?.find((a) => a.collection === m.kind) : undefined;
    if (m && assoc) {
      const set = m.value.Name.toLowerCase();
      tests.push((o) => {
        const uses =
          String((o as unknown as Record<string, unknown>)[assoc.property] ?? '') || (assoc.defaultName ?? '');
        return uses.toLowerCase() === set;
      });
      continue;
    }
    const cimType = isPSObject(i) ? typeName(i) : '';
    const name = cimType.startsWith(CIM) ? undefined : getProperty(i, 'Name');
    if (typeof name === 'string') {
      names.add(name.toLowerCase());
      continue;
    }
    if (fromPipeline)
      throw new PwshError(
        'The input object cannot be bound to any parameters for the command either because the command does not take pipeline input or the input and its properties do not match any of the parameters that take pipeline input.',
        'InputObjectNotBound',
        'InvalidArgument',
        'ParameterBindingException',
      );
    throw new PwshError(
      `Cannot bind argument to parameter 'InputObject', because PSTypeNames of the argument do not match the PSTypeName required by the parameter: ${CIM}${f.cimClass}.`,
      'MismatchedPSTypeName',
      'InvalidArgument',
      'ParameterBindingException',
    );
  }
  return (o) => names.has(o.Name.toLowerCase()) || tests.some((t) => t(o));
}

/**
 * The objects a call selects: by Name / DisplayName (wildcards), Group, pipeline input, and (Get)
 * any query property. Explicit values without wildcards that match nothing are errors.
 */
function select<M extends NamedObject>(
  f: Family<M>,
  call: CommandCall,
  items: M[],
  queryParams: ParamDef[],
  associations = false,
): M[] {
  let out = items;
  const names = call.get<string[]>(f.nameParam.name);
  const piped = call.get<unknown[]>('InputObject');
  if (piped !== undefined) {
    const wanted = pipedSelection(enumerate(piped), f as unknown as Family<NamedObject>, call, associations);
    out = out.filter((o) => wanted(o));
  }
  const byValues = (property: string, values: string[] | undefined, get: (o: M) => string): void => {
    if (values === undefined) return;
    for (const v of values) {
      if (!hasWildcard(v) && !out.some((o) => get(o).toLowerCase() === v.toLowerCase())) {
        throw notFound(f as unknown as Family<NamedObject>, property, v);
      }
    }
    out = out.filter((o) => values.some((v) => wildcardMatch(get(o), v)));
  };
  byValues('Name', names, (o) => o.Name);
  byValues('DisplayName', call.get<string[]>('DisplayName'), (o) => o.DisplayName);
  for (const q of queryParams) {
    const values = call.get<unknown>(q.name);
    if (values === undefined) continue;
    const list = enumerate(values).map(toText);
    out = out.filter((o) => {
      const prop = (q.name === 'DisplayGroup' ? 'Group' : q.name) as keyof M;
      const have = enumerate(o[prop]).map(toText);
      return list.some((v) => have.some((h) => wildcardMatch(h, v)));
    });
  }
  return out;
}

export function familyCommands<M extends NamedObject>(f: Family<M>, stores: PolicyStores): CommandDef[] {
  const nameAsArray: ParamDef = { ...f.nameParam, type: 'strings', position: 0 };
  const selectors: ParamDef[] = [
    nameAsArray,
    { name: 'DisplayName', type: 'strings' },
    { name: 'InputObject', type: 'objects', pipeline: true },
  ];
  const queryParams: ParamDef[] = [
    { name: 'Description', type: 'strings' },
    { name: 'Group', type: 'strings' },
    { name: 'DisplayGroup', type: 'strings' },
    ...f.properties
      .filter((p) => !['DisplayName', 'Description', 'Group', 'Proposal'].includes(p.name) && p.type !== 'objects')
      .filter((p) => !(f.newOnly ?? []).some((n) => n.name === p.name))
      .map((p) => ({ name: p.name, type: 'strings' as const, aliases: p.aliases })),
  ];
  const all = (name: string): { item: M; source: Source }[] =>
    readWithSources(stores, name).flatMap(({ doc, source }) =>
      (doc[f.collection] as unknown as M[]).map((item) => ({ item, source })),
    );
  const viewsOf = (name: string, items: M[]): PSObject[] => {
    // One store: every object's source is that store (no need to read it).
    const s = stores.resolve(name);
    if (s.kind !== 'active') {
      const type = s.kind === 'persistent' ? 'Local' : s.kind === 'defaults' ? 'Hardcoded' : 'GroupPolicy';
      return items.map((i) => f.view(i, { store: s.name, type }));
    }
    const sources = new Map(all(name).map(({ item, source }) => [item.Name.toLowerCase(), source]));
    return items.map((i) => f.view(i, sources.get(i.Name.toLowerCase()) ?? { store: name, type: 'Local' }));
  };
  const whatIf = (call: CommandCall, operation: string, targets: string[]): boolean => {
    if (!call.whatIf) return false;
    for (const t of targets)
      call.runtime.host.stdout(`What if: Performing operation "${operation}" on Target "${t}".\n`);
    return true;
  };
  const collection = (doc: PolicyDocument): M[] => doc[f.collection] as unknown as M[];
  const label = (o: M): string => `${o.Name} (${o.DisplayName})`;

  /** Mutates the selected objects of a writable store under its lock. */
  const groupQuery = queryParams.filter((q) => q.name === 'Group' || q.name === 'DisplayGroup');
  const mutate = async (
    call: CommandCall,
    verb: string,
    change: (doc: PolicyDocument, selected: M[]) => M[],
  ): Promise<M[]> => {
    const name = storeName(call);
    return stores.update(name, (doc) => {
      // Set-* selects by group (its other properties are values to set); the other verbs by any
      // query property too (Disable-NetIPsecRule -Mode Tunnel).
      const found = select(f, call, collection(doc), verb === 'Set' ? groupQuery : queryParams);
      if (whatIf(call, verb, found.map(label))) return [];
      // Rules are shared with the transaction's working copy: edited as copies (copy on write).
      const large = f.collection === 'rules' || f.collection === 'mainModeRules' ? f.collection : undefined;
      const selected = large
        ? found.map((o) => editable(doc, large, o as unknown as IPsecRule) as unknown as M)
        : found;
      return change(doc, selected);
    });
  };

  /**
   * Properties changed on our views passed back with -InputObject ($rule.QuickModeCryptoSet = "…";
   * Set-NetIPsecRule -InputObject $rule), by the object's Name: as Windows saves a modified CIM
   * instance. Each edit is converted and checked like the parameter of the same name.
   */
  const settable: ParamDef[] = [
    { name: 'DisplayName', type: 'string' },
    { name: 'Description', type: 'string' },
    ...f.properties,
  ];
  const inputEdits = (call: CommandCall): Map<string, Map<string, unknown>> => {
    const out = new Map<string, Map<string, unknown>>();
    for (const i of enumerate(call.get<unknown[]>('InputObject') ?? [])) {
      const m = viewModel<M>(i);
      if (m?.kind !== f.collection) continue;
      const shown = f.view(m.value, { store: '', type: 'Local' });
      const edits = new Map<string, unknown>();
      for (const p of settable) {
        const now = getProperty(i, p.name);
        const was = getProperty(shown, p.name);
        if (JSON.stringify(now) === JSON.stringify(was)) continue;
        edits.set(p.name === 'DisplayName' ? 'NewDisplayName' : p.name, call.runtime.convertValue(p, now));
      }
      if (edits.size > 0) out.set(m.value.Name.toLowerCase(), edits);
    }
    return out;
  };

  const newCmd: CommandDef = {
    name: `New-${f.noun}`,
    mutating: true,
    params: [
      { ...f.nameParam, position: undefined },
      ...COMMON_PROPS.map((p) => (p.name === 'DisplayName' ? { ...p, mandatory: true } : p)),
      ...f.properties.map((p) => ((f.mandatory ?? []).includes(p.name) ? { ...p, mandatory: true } : p)),
      ...(f.newOnly ?? []),
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const store = storeName(call);
      const displayName = call.get<string>('DisplayName') ?? '';
      const created = await stores.update(store, (doc) => {
        const o = f.create(displayName);
        const explicit = call.get<string>(f.nameParam.name);
        if (call.get<boolean>('Default')) {
          if (explicit)
            throw new PwshError(
              'The -Default and -Name parameters cannot be used together.',
              'AmbiguousParameterSet',
              'InvalidArgument',
              'ParameterBindingException',
            );
          o.Name = f.defaultName ?? o.Name;
        } else if (explicit) o.Name = explicit;
        o.Description = call.get<string>('Description') ?? '';
        o.Group = call.get<string>('Group') ?? '';
        f.apply(o, call, doc);
        if (whatIf(call, 'Create', [label(o)])) return undefined;
        if (nameInUse(doc, f.collection, o.Name)) {
          throw new PwshError(
            `Cannot create a file when that file already exists: a ${f.noun} named "${o.Name}" already exists in ${store}.`,
            'Windows System Error 183',
            'ResourceExists',
            'CimException',
          );
        }
        collection(doc).push(o);
        f.afterWrite?.(o, call, doc, true);
        return o;
      });
      return created ? viewsOf(store, [created]) : [];
    },
  };

  const getCmd: CommandDef = {
    name: `Get-${f.noun}`,
    params: [
      ...selectors,
      ...queryParams,
      { name: 'All', type: 'switch' },
      { name: 'TracePolicyStore', type: 'switch' },
      ...STORE_PARAMS,
    ],
    invoke(call) {
      const store = storeName(call);
      const items = all(store).map((x) => x.item);
      // ActiveStore: a GPO object hides the local object of the same Name.
      const byName = new Map<string, M>();
      for (const i of items) byName.set(i.Name.toLowerCase(), i);
      return viewsOf(store, select(f, call, [...byName.values()], queryParams, true));
    },
  };

  const setCmd: CommandDef = {
    name: `Set-${f.noun}`,
    mutating: true,
    params: [
      ...selectors,
      ...groupQuery,
      { name: 'NewDisplayName', type: 'string' },
      { name: 'Description', type: 'string' },
      ...f.properties,
      { name: 'PassThru', type: 'switch' },
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const store = storeName(call);
      const edits = inputEdits(call);
      const changed = await mutate(call, 'Set', (doc, selected) => {
        for (const o of selected) {
          // Edits made on an object passed back, then the parameters given (which win).
          const c = withEdits(call, edits.get(o.Name.toLowerCase()));
          const nd = c.get<string>('NewDisplayName');
          if (nd !== undefined) o.DisplayName = nd;
          const d = c.get<string>('Description');
          if (d !== undefined) o.Description = d;
          f.apply(o, c, doc);
          f.afterWrite?.(o, c, doc, false);
        }
        return selected;
      });
      return call.get<boolean>('PassThru') ? viewsOf(store, changed) : [];
    },
  };

  const removeCmd: CommandDef = {
    name: `Remove-${f.noun}`,
    mutating: true,
    params: [
      ...selectors,
      ...queryParams,
      { name: 'All', type: 'switch' },
      { name: 'PassThru', type: 'switch' },
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const store = storeName(call);
      const removed = await mutate(call, 'Delete', (doc, selected) => {
        for (const ref of f.references ?? []) {
          for (const o of selected) {
            const user = (doc[ref.collection] as unknown as Record<string, unknown>[]).find(
              (r) => String(r[ref.property]).toLowerCase() === o.Name.toLowerCase(),
            );
            if (user) {
              throw new PwshError(
                `${f.noun} "${o.Name}" is used by ${ref.label} "${String(user.Name)}" (${ref.property}) and cannot be removed.`,
                'ObjectInUse',
                'ResourceBusy',
                'CimException',
              );
            }
          }
        }
        const gone = new Set(selected.map((o) => o.Name.toLowerCase()));
        (doc[f.collection] as unknown as M[]) = collection(doc).filter((o) => !gone.has(o.Name.toLowerCase()));
        f.onRemove?.(selected, doc);
        return selected;
      });
      return call.get<boolean>('PassThru') ? removed.map((o) => f.view(o, { store, type: 'Local' })) : [];
    },
  };

  const renameCmd: CommandDef = {
    name: `Rename-${f.noun}`,
    mutating: true,
    params: [
      ...selectors,
      { name: 'NewName', type: 'string', mandatory: true },
      { name: 'PassThru', type: 'switch' },
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const store = storeName(call);
      const newNameValue = call.get<string>('NewName') ?? '';
      const renamed = await mutate(call, 'Rename', (doc, selected) => {
        if (selected.length > 1) {
          throw new PwshError(
            `Cannot rename ${selected.length} objects to the same Name "${newNameValue}".`,
            'MultipleObjectsRename',
            'InvalidArgument',
            'CimException',
          );
        }
        for (const o of selected) {
          for (const ref of f.references ?? []) {
            const users = doc[ref.collection] as unknown as Record<string, unknown>[];
            for (const r of users) {
              if (String(r[ref.property]).toLowerCase() !== o.Name.toLowerCase()) continue;
              const large =
                ref.collection === 'rules' || ref.collection === 'mainModeRules' ? ref.collection : undefined;
              const target = large
                ? (editable(doc, large, r as unknown as IPsecRule) as unknown as Record<string, unknown>)
                : r;
              target[ref.property] = newNameValue;
            }
          }
          o.Name = newNameValue;
        }
        return selected;
      });
      return call.get<boolean>('PassThru') ? viewsOf(store, renamed) : [];
    },
  };

  const copyCmd: CommandDef = {
    name: `Copy-${f.noun}`,
    mutating: true,
    params: [
      ...selectors,
      ...queryParams.filter((q) => !selectors.some((s) => s.name === q.name)),
      { name: 'NewName', type: 'string' },
      { name: 'NewPolicyStore', type: 'string' },
      { name: 'NewGPOSession', type: 'string' },
      { name: 'PassThru', type: 'switch' },
      ...STORE_PARAMS,
    ],
    async invoke(call) {
      const from = storeName(call);
      const to = call.get<string>('NewGPOSession') || call.get<string>('NewPolicyStore') || from;
      // Copy-NetIPsecRule -Group "Telnet Management" -Enabled False: the query properties select.
      const source = select(f, call, collection(stores.read(from)), queryParams);
      const newNameValue = call.get<string>('NewName');
      if (to.toLowerCase() === from.toLowerCase() && !newNameValue) {
        throw new PwshError(
          'Copying within the same policy store needs -NewName.',
          'CopyNeedsNewName',
          'InvalidArgument',
          'CimException',
        );
      }
      if (newNameValue && source.length > 1) {
        throw new PwshError(
          `Cannot copy ${source.length} objects to the same Name "${newNameValue}".`,
          'MultipleObjectsCopy',
          'InvalidArgument',
          'CimException',
        );
      }
      if (whatIf(call, 'Copy', source.map(label))) return [];
      const copies = source.map((o) => ({ ...structuredClone(o), Name: newNameValue ?? o.Name }));
      await stores.update(to, (doc) => {
        collection(doc).push(...copies);
      });
      return call.get<boolean>('PassThru') ? viewsOf(to, copies) : [];
    },
  };

  const cmds = [newCmd, getCmd, setCmd, removeCmd, renameCmd, copyCmd];
  if (f.enableDisable) {
    for (const [verb, value] of [
      ['Enable', 'True'],
      ['Disable', 'False'],
    ] as const) {
      cmds.push({
        name: `${verb}-${f.noun}`,
        mutating: true,
        params: [...selectors, ...queryParams, { name: 'PassThru', type: 'switch' }, ...STORE_PARAMS],
        async invoke(call) {
          const store = storeName(call);
          const changed = await mutate(call, verb, (_doc, selected) => {
            for (const o of selected) (o as unknown as { Enabled: string }).Enabled = value;
            return selected;
          });
          return call.get<boolean>('PassThru') ? viewsOf(store, changed) : [];
        },
      });
    }
  }
  return cmds;
}
