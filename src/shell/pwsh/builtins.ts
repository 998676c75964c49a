/** The general-purpose cmdlets IPsec scripts pipe into. */
import { InputTooLargeError } from '../../io/bounded.ts';
import { convertToJson, formatDefault, formatList, formatTable } from './format.ts';
import { binaryOp, type CommandCall, type CommandDef, FormattedOutput, PwshError, readScriptFile } from './runtime.ts';
import { collapse, enumerate, getProperty, Hashtable, psObject, ScriptBlock, toBool, toText } from './values.ts';

const input = (c: CommandCall): unknown[] => enumerate(c.get('InputObject') ?? c.input ?? []);

const WHERE_OPERATORS = [
  'EQ',
  'NE',
  'GT',
  'GE',
  'LT',
  'LE',
  'Like',
  'NotLike',
  'Match',
  'NotMatch',
  'Contains',
  'NotContains',
  'In',
  'NotIn',
  'CEQ',
  'CNE',
  'CLike',
  'CMatch',
];

const whereObject: CommandDef = {
  name: 'Where-Object',
  params: [
    { name: 'FilterScript', type: 'any', position: 0, aliases: ['Property'] },
    { name: 'Value', type: 'any', position: 1 },
    { name: 'InputObject', type: 'objects', pipeline: true },
    ...WHERE_OPERATORS.map((op) => ({ name: op, type: 'switch' as const })),
  ],
  async invoke(c) {
    const filter = c.get<unknown>('FilterScript');
    const out: unknown[] = [];
    if (filter instanceof ScriptBlock) {
      for (const item of input(c))
        if (toBool(collapse(await c.runtime.invokeScriptBlock(filter, item)))) out.push(item);
      return out;
    }
    // Simplified syntax: Where-Object Property -EQ Value (or just Where-Object Property: truthy).
    const property = toText(filter);
    const op = WHERE_OPERATORS.find((o) => c.get<boolean>(o));
    for (const item of input(c)) {
      const v = getProperty(item, property);
      const keep = op ? binaryOp(op.toLowerCase(), v, c.get('Value')) : v;
      if (toBool(Array.isArray(keep) ? keep.length > 0 : keep)) out.push(item);
    }
    return out;
  },
};

const forEachObject: CommandDef = {
  name: 'ForEach-Object',
  params: [
    { name: 'Process', type: 'any', position: 0, aliases: ['MemberName'] },
    { name: 'InputObject', type: 'objects', pipeline: true },
  ],
  async invoke(c) {
    const p = c.get<unknown>('Process');
    const out: unknown[] = [];
    for (const item of input(c)) {
      if (p instanceof ScriptBlock) out.push(...(await c.runtime.invokeScriptBlock(p, item)));
      else out.push(...enumerate(getProperty(item, toText(p))));
    }
    return out;
  },
};

/** Select-Object: properties (names, wildcards or @{Name=…;Expression={…}}), -First, -Last, -ExpandProperty, -Unique. */
const selectObject: CommandDef = {
  name: 'Select-Object',
  params: [
    { name: 'Property', type: 'any', position: 0 },
    { name: 'ExpandProperty', type: 'string' },
    { name: 'First', type: 'uint' },
    { name: 'Last', type: 'uint' },
    { name: 'Skip', type: 'uint' },
    { name: 'Unique', type: 'switch' },
    { name: 'InputObject', type: 'objects', pipeline: true },
  ],
  async invoke(c) {
    let items = input(c);
    const skip = c.get<number>('Skip') ?? 0;
    items = items.slice(skip);
    if (c.has('First')) items = items.slice(0, c.get<number>('First'));
    if (c.has('Last')) items = items.slice(Math.max(0, items.length - (c.get<number>('Last') ?? 0)));
    const expand = c.get<string>('ExpandProperty');
    if (expand !== undefined) {
      return items.flatMap((i) => {
        const v = getProperty(i, expand);
        if (v === undefined)
          throw new PwshError(
            `Property "${expand}" cannot be found.`,
            'ExpandPropertyNotFound',
            'InvalidArgument',
            'PSArgumentException',
          );
        return enumerate(v);
      });
    }
    const props = c.get<unknown>('Property');
    if (props === undefined) return c.get<boolean>('Unique') ? unique(items) : items;
    const specs = enumerate(props);
    const out: unknown[] = [];
    for (const item of items) {
      const o: Record<string, unknown> = {};
      for (const spec of specs) {
        if (spec instanceof Hashtable) {
          const name = toText(spec.get('Name') ?? spec.get('Label') ?? spec.get('n') ?? spec.get('l'));
          const expr = spec.get('Expression') ?? spec.get('e');
          o[name] =
            expr instanceof ScriptBlock
              ? collapse(await c.runtime.invokeScriptBlock(expr, item))
              : getProperty(item, toText(expr));
          continue;
        }
        const name = toText(spec);
        if (/[*?]/.test(name)) {
          const re = new RegExp(
            `^${name
              .replace(/[.+^${}()|[\]\\]/g, '\\$&')
              .replace(/\*/g, '.*')
              .replace(/\?/g, '.')}$`,
            'i',
          );
          for (const k of Object.keys(item as object)) if (re.test(k)) o[k] = getProperty(item, k);
        } else {
          const actual = Object.keys(item as object).find((k) => k.toLowerCase() === name.toLowerCase()) ?? name;
          o[actual] = getProperty(item, name) ?? null;
        }
      }
      out.push(psObject('Selected.System.Management.Automation.PSCustomObject', o));
    }
    return c.get<boolean>('Unique') ? unique(out) : out;
  },
};

function unique(items: unknown[]): unknown[] {
  const seen = new Set<string>();
  return items.filter((i) => {
    const key = JSON.stringify(i, (_k, v: unknown) => (v instanceof Hashtable ? v.entries() : v));
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

const sortObject: CommandDef = {
  name: 'Sort-Object',
  params: [
    { name: 'Property', type: 'strings', position: 0 },
    { name: 'Descending', type: 'switch' },
    { name: 'Unique', type: 'switch' },
    { name: 'InputObject', type: 'objects', pipeline: true },
  ],
  invoke(c) {
    const props = c.get<string[]>('Property') ?? [];
    const dir = c.get<boolean>('Descending') ? -1 : 1;
    const key = (i: unknown): unknown[] => (props.length ? props.map((p) => getProperty(i, p)) : [i]);
    const cmp = (a: unknown, b: unknown): number => {
      if (typeof a === 'number' && typeof b === 'number') return a - b;
      return toText(a).localeCompare(toText(b), 'en', { sensitivity: 'base' });
    };
    const sorted = [...input(c)].sort((a, b) => {
      const ka = key(a);
      const kb = key(b);
      for (let i = 0; i < ka.length; i++) {
        const r = cmp(ka[i], kb[i]);
        if (r !== 0) return r * dir;
      }
      return 0;
    });
    return c.get<boolean>('Unique') ? unique(sorted) : sorted;
  },
};

const formatListCmd: CommandDef = {
  name: 'Format-List',
  params: [
    { name: 'Property', type: 'strings', position: 0 },
    { name: 'InputObject', type: 'objects', pipeline: true },
    { name: 'Force', type: 'switch' },
  ],
  invoke: (c) => [new FormattedOutput(formatList(input(c), c.get<string[]>('Property')))],
};

const formatTableCmd: CommandDef = {
  name: 'Format-Table',
  params: [
    { name: 'Property', type: 'strings', position: 0 },
    { name: 'AutoSize', type: 'switch' },
    { name: 'Wrap', type: 'switch' },
    { name: 'HideTableHeaders', type: 'switch' },
    { name: 'InputObject', type: 'objects', pipeline: true },
  ],
  invoke: (c) => [new FormattedOutput(formatTable(input(c), c.get<string[]>('Property')))],
};

const convertToJsonCmd: CommandDef = {
  name: 'ConvertTo-Json',
  params: [
    { name: 'InputObject', type: 'objects', pipeline: true, position: 0 },
    { name: 'Depth', type: 'uint', min: 1, max: 100 },
    { name: 'Compress', type: 'switch' },
  ],
  invoke: (c) => [convertToJson(input(c), c.get<number>('Depth') ?? 2, c.get<boolean>('Compress') ?? false)],
};

const outString: CommandDef = {
  name: 'Out-String',
  params: [
    { name: 'InputObject', type: 'objects', pipeline: true },
    { name: 'Stream', type: 'switch' },
    { name: 'Width', type: 'uint' },
  ],
  invoke(c) {
    const items = input(c);
    const text = items.map((i) => (i instanceof FormattedOutput ? i.text : formatDefault([i]))).join('');
    return c.get<boolean>('Stream') ? text.split('\n') : [text];
  },
};

const outNull: CommandDef = {
  name: 'Out-Null',
  params: [{ name: 'InputObject', type: 'objects', pipeline: true }],
  invoke: () => [],
};

const writeOutput: CommandDef = {
  name: 'Write-Output',
  params: [{ name: 'InputObject', type: 'objects', pipeline: true, position: 0, remaining: true }],
  invoke: (c) => input(c),
};

const writeHost: CommandDef = {
  name: 'Write-Host',
  params: [
    { name: 'Object', type: 'any', position: 0, remaining: true },
    { name: 'NoNewline', type: 'switch' },
    { name: 'ForegroundColor', type: 'string' },
    { name: 'BackgroundColor', type: 'string' },
    { name: 'Separator', type: 'string' },
  ],
  invoke(c) {
    const text = enumerate(c.get('Object'))
      .map(toText)
      .join(c.get<string>('Separator') ?? ' ');
    c.runtime.host.stdout(c.get<boolean>('NoNewline') ? text : `${text}\n`);
    return [];
  },
};

const writeWarning: CommandDef = {
  name: 'Write-Warning',
  params: [{ name: 'Message', type: 'string', position: 0, mandatory: true }],
  invoke(c) {
    c.runtime.warn(c.get<string>('Message') ?? '');
    return [];
  },
};

/** Write-Verbose / Write-Debug: shown ("VERBOSE: …") with -Verbose or when the preference says Continue. */
const streamWriter = (name: string, label: string, preference: string): CommandDef => ({
  name,
  params: [{ name: 'Message', type: 'string', position: 0, mandatory: true }],
  invoke(c) {
    const on =
      (label === 'VERBOSE' && c.get<boolean>('Verbose') === true) ||
      String(c.runtime.getVariable(preference) ?? '').toLowerCase() === 'continue';
    if (on) c.runtime.host.stderr(`${label}: ${c.get<string>('Message') ?? ''}\n`);
    return [];
  },
});

const writeError: CommandDef = {
  name: 'Write-Error',
  params: [
    { name: 'Message', type: 'string', position: 0, mandatory: true },
    { name: 'Category', type: 'string' },
    { name: 'ErrorId', type: 'string' },
  ],
  invoke(c) {
    throw new PwshError(
      c.get<string>('Message') ?? '',
      c.get<string>('ErrorId') ?? 'Microsoft.PowerShell.Commands.WriteErrorException',
      c.get<string>('Category') ?? 'NotSpecified',
      'WriteErrorException',
    );
  },
};

/** The modules whose commands consec has; others are not found, as on a host without them. */
const MODULES = new Set(['netsecurity']);

const importModule: CommandDef = {
  name: 'Import-Module',
  params: [
    { name: 'Name', type: 'strings', position: 0, mandatory: true },
    { name: 'Force', type: 'switch' },
  ],
  invoke(c) {
    for (const name of c.get<string[]>('Name') ?? [])
      if (!MODULES.has(name.toLowerCase()))
        throw new PwshError(
          `The specified module '${name}' was not loaded because no valid module file was found in any module directory.`,
          'Modules_ModuleNotFound',
          'ResourceUnavailable',
          'FileNotFoundException',
          undefined,
          name,
          'String',
        );
    return [];
  },
};

const readHost: CommandDef = {
  name: 'Read-Host',
  params: [
    { name: 'Prompt', type: 'string', position: 0 },
    { name: 'AsSecureString', type: 'switch' },
  ],
  invoke() {
    throw new PwshError(
      'PowerShell is in NonInteractive mode. Read and Prompt functionality is not available.',
      'System.InvalidOperationException',
      'InvalidOperation',
      'PSInvalidOperationException',
    );
  },
};

/**
 * Commands of the ActiveDirectory and GroupPolicy modules that admin scripts call to find their
 * domain or make a GPO: answered with a clear error (consec keeps GPO stores as local files and has
 * no directory), not "not recognized".
 */
const AD_COMMANDS = [
  'Get-ADDomain',
  'Get-ADDomainController',
  'Get-ADComputer',
  'Get-ADGroup',
  'Get-ADGroupMember',
  'Get-ADUser',
  'New-GPO',
  'Get-GPO',
  'New-GPLink',
  'Set-GPLink',
];

const activeDirectory = (name: string): CommandDef => ({
  name,
  params: [],
  unbound: true,
  invoke() {
    throw new PwshError(
      `${name} requires Active Directory: consec has no directory to query (its Group Policy stores are local files, named -PolicyStore domain\\GPO).`,
      'ActiveDirectoryRequired',
      'NotImplemented',
      'CommandNotFoundException',
    );
  },
});

/** .NET types whose objects stand for Active Directory accounts (a SID is only known to the directory). */
const DIRECTORY_TYPES = ['system.security.principal.ntaccount', 'system.security.principal.securityidentifier'];

/** New-Object: PSObject/PSCustomObject with -Property; directory account types answered clearly; nothing else. */
const newObject: CommandDef = {
  name: 'New-Object',
  params: [
    { name: 'TypeName', type: 'string', position: 0 },
    { name: 'ArgumentList', type: 'any', position: 1, aliases: ['Args'] },
    { name: 'Property', type: 'any' },
  ],
  invoke(c) {
    const type = (c.get<string>('TypeName') ?? '').trim();
    const lower = type.toLowerCase().replace(/^system\.management\.automation\./, '');
    if (lower === 'psobject' || lower === 'pscustomobject') {
      const props = c.get<unknown>('Property');
      const fields: Record<string, unknown> = {};
      if (props instanceof Hashtable) for (const [k, v] of props.entries()) fields[k] = v;
      return [psObject('System.Management.Automation.PSCustomObject', fields)];
    }
    if (DIRECTORY_TYPES.includes(lower))
      throw new PwshError(
        `New-Object ${type} requires Active Directory: an account's SID is known only to the directory, and consec has none.`,
        'ActiveDirectoryRequired',
        'NotImplemented',
        'PSArgumentException',
      );
    throw new PwshError(
      `Cannot find type [${type}]: consec's PowerShell creates PSObject and PSCustomObject only.`,
      'TypeNotFound',
      'InvalidType',
      'PSArgumentException',
    );
  },
};

const measureObject: CommandDef = {
  name: 'Measure-Object',
  params: [{ name: 'InputObject', type: 'objects', pipeline: true }],
  invoke: (c) => [
    psObject('Microsoft.PowerShell.Commands.GenericMeasureInfo', {
      Count: input(c).length,
      Average: null,
      Sum: null,
      Maximum: null,
      Minimum: null,
      Property: null,
    }),
  ],
};

/**
 * Get-Content: a text file's lines (or, with -Raw, its whole text), as admin scripts read their
 * configuration; Windows' `\\` separators accepted. Bounded like scripts and stores (16 MiB).
 */
const getContent: CommandDef = {
  name: 'Get-Content',
  params: [
    { name: 'Path', type: 'strings', position: 0, pipeline: true, aliases: ['LiteralPath', 'PSPath'] },
    { name: 'Raw', type: 'switch' },
    { name: 'Encoding', type: 'string' },
  ],
  invoke(c) {
    const out: unknown[] = [];
    for (const path of c.get<string[]>('Path') ?? []) {
      let text: string;
      try {
        text = readScriptFile(path, `The file ${path}`);
      } catch (err) {
        if (err instanceof InputTooLargeError)
          throw new PwshError(err.message, 'InputTooLarge', 'InvalidData', 'IOException');
        throw new PwshError(
          `Cannot find path '${path}' because it does not exist.`,
          'PathNotFound',
          'ObjectNotFound',
          'ItemNotFoundException',
          undefined,
          path,
          'String',
        );
      }
      if (c.get<boolean>('Raw')) out.push(text);
      else out.push(...text.replace(/\r?\n$/, '').split(/\r?\n/));
    }
    return out;
  },
};

/** JSON values as PowerShell makes them: objects are PSCustomObjects, arrays arrays. */
function fromJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v !== null && typeof v === 'object') {
    const fields: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) fields[k] = fromJson(x);
    return psObject('System.Management.Automation.PSCustomObject', fields);
  }
  return v;
}

/** ConvertFrom-Json: the pipeline's lines joined (as Get-Content gives them) and parsed. */
const convertFromJson: CommandDef = {
  name: 'ConvertFrom-Json',
  params: [{ name: 'InputObject', type: 'objects', pipeline: true, position: 0 }],
  invoke(c) {
    const text = input(c).map(toText).join('\n');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new PwshError(
        `Conversion from JSON failed with error: ${(err as Error).message}`,
        'System.ArgumentException',
        'NotSpecified',
        'ArgumentException',
      );
    }
    // A top-level array is one object on the pipeline, as in Windows PowerShell 5.1.
    return [fromJson(parsed)];
  },
};

/** Clears the console of an interactive host; a script's output to a pipe or file keeps everything. */
const clearHost: CommandDef = {
  name: 'Clear-Host',
  params: [],
  invoke: () => [],
};

export function builtinCommands(): CommandDef[] {
  return [
    clearHost,
    getContent,
    convertFromJson,
    newObject,
    ...AD_COMMANDS.map(activeDirectory),
    whereObject,
    forEachObject,
    selectObject,
    sortObject,
    formatListCmd,
    formatTableCmd,
    convertToJsonCmd,
    outString,
    outNull,
    writeOutput,
    writeHost,
    writeWarning,
    streamWriter('Write-Verbose', 'VERBOSE', 'VerbosePreference'),
    streamWriter('Write-Debug', 'DEBUG', 'DebugPreference'),
    writeError,
    importModule,
    readHost,
    measureObject,
  ];
}
