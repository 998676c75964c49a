/**
 * The .NET types PowerShell scripts name in IPsec work: type literals (`[string]`, `[int]`,
 * `[ipaddress]`, `[guid]` …), casts, `-is`/`-as`, and the static members admins call
 * (`[guid]::NewGuid()`, `[ipaddress]::Parse()`, `[string]::IsNullOrEmpty()`). Unknown types fail
 * as PowerShell fails ("Unable to find type"), never silently.
 */
import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import type { Extent } from './lexer.ts';
import { PwshError } from './error-record.ts';
import { enumerate, Hashtable, isPSObject, psObject, PS_TYPE, ScriptBlock, toBool, toText } from './values.ts';

/** A type literal's value (`[string]` on its own): what `-is`, `-as` and static calls take. */
export class TypeRef {
  constructor(
    /** The canonical key (lower case, without `System.`), e.g. `int32`, `net.ipaddress`, `string[]`. */
    readonly key: string,
    /** The full .NET name as PowerShell prints it. */
    readonly fullName: string,
  ) {}

  toString(): string {
    return this.fullName;
  }
}

const KNOWN: Record<string, string> = {
  string: 'System.String',
  int32: 'System.Int32',
  int64: 'System.Int64',
  double: 'System.Double',
  boolean: 'System.Boolean',
  'object[]': 'System.Object[]',
  'string[]': 'System.String[]',
  'int32[]': 'System.Int32[]',
  object: 'System.Object',
  'collections.hashtable': 'System.Collections.Hashtable',
  'net.ipaddress': 'System.Net.IPAddress',
  guid: 'System.Guid',
  'management.automation.switchparameter': 'System.Management.Automation.SwitchParameter',
  'management.automation.scriptblock': 'System.Management.Automation.ScriptBlock',
  char: 'System.Char',
  byte: 'System.Byte',
  uint32: 'System.UInt32',
  'management.automation.pscustomobject': 'System.Management.Automation.PSCustomObject',
  'microsoft.management.infrastructure.ciminstance': 'Microsoft.Management.Infrastructure.CimInstance',
  'microsoft.management.infrastructure.ciminstance[]': 'Microsoft.Management.Infrastructure.CimInstance[]',
};

const ALIASES: Record<string, string> = {
  int: 'int32',
  long: 'int64',
  bool: 'boolean',
  array: 'object[]',
  'int[]': 'int32[]',
  hashtable: 'collections.hashtable',
  ipaddress: 'net.ipaddress',
  switch: 'management.automation.switchparameter',
  scriptblock: 'management.automation.scriptblock',
  pscustomobject: 'management.automation.pscustomobject',
  single: 'double',
  float: 'double',
  decimal: 'double',
  uint: 'uint32',
  ciminstance: 'microsoft.management.infrastructure.ciminstance',
  'ciminstance[]': 'microsoft.management.infrastructure.ciminstance[]',
};

/** The type a literal names, or PowerShell's "Unable to find type" error. */
export function resolveType(name: string, extent?: Extent): TypeRef {
  let key = name.trim().toLowerCase().replace(/\s+/g, '');
  if (key.startsWith('system.')) key = key.slice(7);
  key = ALIASES[key] ?? key;
  const full = KNOWN[key];
  if (!full)
    throw new PwshError(
      `Unable to find type [${name}].`,
      'TypeNotFound',
      'InvalidOperation',
      'RuntimeException',
      extent,
      name,
      'TypeName',
    );
  return new TypeRef(key, full);
}

function castError(v: unknown, t: TypeRef, extent: Extent | undefined, why: string, id: string): PwshError {
  return new PwshError(
    `Cannot convert value "${toText(v)}" to type "${t.fullName}". Error: "${why}"`,
    id,
    'InvalidArgument',
    'RuntimeException',
    extent,
  );
}

/** .NET rounds to even when an integer cast meets a half. */
const roundHalfEven = (n: number): number => {
  const r = Math.round(n);
  return Math.abs(n % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
};

/** `[type]value`. */
export function castTo(t: TypeRef, v: unknown, extent?: Extent): unknown {
  switch (t.key) {
    case 'string':
      return v === null || v === undefined ? '' : toText(v);
    case 'int32':
    case 'int64':
    case 'uint32':
    case 'byte': {
      if (v === null || v === undefined) return 0;
      const text = toText(v).trim();
      const n =
        typeof v === 'number'
          ? v
          : typeof v === 'boolean'
            ? Number(v)
            : /^0x[0-9a-f]+$/i.test(text)
              ? Number(text)
              : Number(text);
      if (text === '' || !Number.isFinite(n))
        throw castError(v, t, extent, 'Input string was not in a correct format.', 'InvalidCastFromStringToInteger');
      return roundHalfEven(n);
    }
    case 'double': {
      if (v === null || v === undefined) return 0;
      const n = Number(toText(v));
      if (!Number.isFinite(n))
        throw castError(
          v,
          t,
          extent,
          'Input string was not in a correct format.',
          'InvalidCastFromStringToDoubleOrSingle',
        );
      return n;
    }
    case 'boolean':
    case 'management.automation.switchparameter':
      return toBool(v);
    case 'object':
    case 'microsoft.management.infrastructure.ciminstance':
      return v;
    case 'object[]':
    case 'microsoft.management.infrastructure.ciminstance[]':
      return v === null || v === undefined ? [] : enumerate(v);
    case 'string[]':
      return v === null || v === undefined ? [] : enumerate(v).map(toText);
    case 'int32[]':
      return enumerate(v).map((x) => castTo(new TypeRef('int32', 'System.Int32'), x, extent));
    case 'collections.hashtable':
      if (v instanceof Hashtable) return v;
      throw castError(v, t, extent, `Invalid cast.`, 'ConvertToFinalInvalidCastException');
    case 'management.automation.scriptblock':
      if (v instanceof ScriptBlock) return v;
      throw castError(v, t, extent, 'Invalid cast.', 'ConvertToFinalInvalidCastException');
    case 'net.ipaddress': {
      const text = toText(v).trim();
      if (!isIP(text))
        throw castError(v, t, extent, 'An invalid IP address was specified.', 'InvalidCastParseTargetInvocation');
      return ipAddress(text);
    }
    case 'guid': {
      const text = toText(v)
        .trim()
        .replace(/^\{(.*)\}$/, '$1');
      if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(text))
        throw castError(
          v,
          t,
          extent,
          'Guid should contain 32 digits with 4 dashes (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).',
          'InvalidCastParseTargetInvocation',
        );
      return guid(text.toLowerCase());
    }
    case 'char':
      return toText(v).slice(0, 1);
    case 'management.automation.pscustomobject':
      if (v instanceof Hashtable)
        return psObject('System.Management.Automation.PSCustomObject', Object.fromEntries(v.entries()));
      return v;
  }
  return v;
}

function ipAddress(text: string): unknown {
  return psObject(
    'System.Net.IPAddress',
    { IPAddressToString: text, AddressFamily: isIP(text) === 4 ? 'InterNetwork' : 'InterNetworkV6' },
    text,
  );
}

function guid(text: string): unknown {
  return psObject('System.Guid', { Guid: text }, text);
}

/** `value -is [type]`. */
export function isOfType(v: unknown, t: TypeRef): boolean {
  switch (t.key) {
    case 'string':
      return typeof v === 'string';
    case 'int32':
    case 'int64':
      return typeof v === 'number' && Number.isInteger(v);
    case 'double':
      return typeof v === 'number';
    case 'boolean':
      return typeof v === 'boolean';
    case 'object':
      return v !== null && v !== undefined;
    case 'object[]':
      return Array.isArray(v);
    case 'collections.hashtable':
      return v instanceof Hashtable;
    case 'management.automation.scriptblock':
      return v instanceof ScriptBlock;
  }
  return (
    isPSObject(v) &&
    v[PS_TYPE].toLowerCase()
      .replace(/^system\./, '')
      .endsWith(t.key)
  );
}

/** `[type]::Member` and `[type]::Method(args)`. */
export function staticMember(t: TypeRef, name: string, args: unknown[] | undefined, extent?: Extent): unknown {
  const member = `${t.key}::${name.toLowerCase()}${args ? '()' : ''}`;
  switch (member) {
    case 'guid::newguid()':
      return guid(randomUUID());
    case 'guid::empty':
      return guid('00000000-0000-0000-0000-000000000000');
    case 'net.ipaddress::parse()':
      return castTo(t, args?.[0], extent);
    case 'string::isnullorempty()':
      return args?.[0] === null || args?.[0] === undefined || toText(args[0]) === '';
    case 'string::isnullorwhitespace()':
      return args?.[0] === null || args?.[0] === undefined || toText(args[0]).trim() === '';
    case 'string::join()':
      return enumerate(args?.[1]).map(toText).join(toText(args?.[0]));
    case 'string::empty':
      return '';
    case 'byte::maxvalue':
      return 255;
    case 'byte::minvalue':
      return 0;
    case 'int32::maxvalue':
      return 2147483647;
    case 'int32::minvalue':
      return -2147483648;
  }
  throw new PwshError(
    args
      ? `Method invocation failed because [${t.fullName}] does not contain a method named '${name}'.`
      : `The property '${name}' cannot be found on type [${t.fullName}].`,
    args ? 'MethodNotFound' : 'PropertyNotFound',
    'InvalidOperation',
    'RuntimeException',
    extent,
  );
}
