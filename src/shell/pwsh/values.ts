/**
 * Runtime values of the PowerShell subset: strings, numbers, booleans, $null, arrays, hashtables,
 * script blocks and objects. Objects are plain JS objects whose type name sits under PS_TYPE;
 * property lookup is case-insensitive, as in PowerShell.
 */
import type { Statement } from './parser.ts';

export const PS_TYPE = Symbol('psTypeName');
/** How an object prints when converted to a string (e.g. inside an array in Format-List). */
export const PS_DISPLAY = Symbol('psDisplay');
/**
 * Properties an object has but its views do not list (a CIM instance's InstanceID, ElementName …):
 * `$o.InstanceID` finds them; Format-List and ConvertTo-Json show the object's own properties.
 */
export const PS_HIDDEN = Symbol('psHidden');

export interface PSObject {
  [PS_TYPE]: string;
  [PS_DISPLAY]?: string;
  [PS_HIDDEN]?: Record<string, unknown>;
  [key: string]: unknown;
}

export function psObject(typeName: string, props: Record<string, unknown>, display?: string): PSObject {
  const o = Object.assign(Object.create(null) as object, props) as PSObject;
  o[PS_TYPE] = typeName;
  if (display !== undefined) o[PS_DISPLAY] = display;
  return o;
}

export function isPSObject(v: unknown): v is PSObject {
  return typeof v === 'object' && v !== null && PS_TYPE in v;
}

export class Hashtable {
  private readonly map = new Map<string, { key: string; value: unknown }>();

  set(key: string, value: unknown): void {
    this.map.set(key.toLowerCase(), { key, value });
  }

  get(key: string): unknown {
    return this.map.get(key.toLowerCase())?.value;
  }

  has(key: string): boolean {
    return this.map.has(key.toLowerCase());
  }

  entries(): [string, unknown][] {
    return [...this.map.values()].map((e) => [e.key, e.value]);
  }

  get size(): number {
    return this.map.size;
  }
}

export class ScriptBlock {
  constructor(
    readonly body: Statement[],
    readonly text: string,
  ) {}

  toString(): string {
    return this.text;
  }
}

/** Marks the array `.PSObject.Properties` returns: it is also indexed by property name. */
export const PROPERTY_LIST: unique symbol = Symbol('consec.pwsh.propertyList');

/**
 * `$obj.PSObject`: what scripts use of PowerShell's wrapper — `.Properties` (each with Name, Value,
 * MemberType; indexed by name too: `.Properties['Name']`) and `.TypeNames`.
 */
function psObjectView(target: object): Record<string, unknown> {
  const entries: [string, unknown][] =
    target instanceof Hashtable ? [] : Object.entries(target as Record<string, unknown>);
  const properties = entries.map(([Name, Value]) => ({
    Name,
    Value,
    MemberType: 'NoteProperty',
    IsSettable: true,
    TypeNameOfValue: typeof Value === 'string' ? 'System.String' : 'System.Object',
  }));
  Object.defineProperty(properties, PROPERTY_LIST, { value: true });
  const typeName = (target as PSObject)[PS_TYPE];
  return { Properties: properties, TypeNames: typeName ? [typeName, 'System.Object'] : ['System.Object'] };
}

/** Case-insensitive property lookup on an object or hashtable; undefined when absent. */
export function getProperty(target: unknown, name: string): unknown {
  if (target === null || target === undefined) return undefined;
  if (target instanceof Hashtable) {
    if (target.has(name)) return target.get(name);
    if (name.toLowerCase() === 'psobject') return psObjectView(target);
    if (name.toLowerCase() === 'count' || name.toLowerCase() === 'keys') {
      return name.toLowerCase() === 'count' ? target.size : target.entries().map(([k]) => k);
    }
    return undefined;
  }
  if (Array.isArray(target)) {
    const lower = name.toLowerCase();
    if (lower === 'count' || lower === 'length') return target.length;
    // Member enumeration: $array.Name is the Name of each element.
    const values = target.map((t) => getProperty(t, name)).filter((v) => v !== undefined);
    return values.length === 0 ? undefined : values.length === 1 ? values[0] : values;
  }
  // Every single value has Count 1 (PowerShell 3+), so scripts can treat one result like many.
  if (name.toLowerCase() === 'count' && typeof target !== 'object') return 1;
  if (typeof target === 'string') {
    if (name.toLowerCase() === 'length') return target.length;
    return undefined;
  }
  if (typeof target === 'object') {
    const lower = name.toLowerCase();
    for (const key of Object.keys(target))
      if (key.toLowerCase() === lower) return (target as Record<string, unknown>)[key];
    const hidden = (target as PSObject)[PS_HIDDEN];
    if (hidden) for (const key of Object.keys(hidden)) if (key.toLowerCase() === lower) return hidden[key];
    if (lower === 'count') return 1;
    if (lower === 'psobject') return psObjectView(target);
  }
  return undefined;
}

/** Property names of an object in display order. */
export function propertyNames(v: unknown): string[] {
  if (v instanceof Hashtable) return v.entries().map(([k]) => k);
  if (typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof ScriptBlock)) return Object.keys(v);
  return [];
}

export function typeName(v: unknown): string {
  if (isPSObject(v)) return v[PS_TYPE];
  if (v instanceof Hashtable) return 'System.Collections.Hashtable';
  if (v instanceof ScriptBlock) return 'System.Management.Automation.ScriptBlock';
  if (Array.isArray(v)) return 'System.Object[]';
  if (typeof v === 'string') return 'System.String';
  if (typeof v === 'number') return Number.isInteger(v) ? 'System.Int32' : 'System.Double';
  if (typeof v === 'boolean') return 'System.Boolean';
  return 'System.Object';
}

/** PowerShell's string conversion ([string]$x), used for interpolation and string parameters. */
export function toText(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  if (Array.isArray(v)) return v.map(toText).join(' ');
  if (v instanceof Hashtable) return 'System.Collections.Hashtable';
  if (v instanceof ScriptBlock) return v.text;
  if (isPSObject(v)) return v[PS_DISPLAY] ?? v[PS_TYPE];
  // A nested record (an SA view's identity, say) reads as PowerShell shows a PSCustomObject.
  if (typeof v === 'object' && !Buffer.isBuffer(v) && Object.getPrototypeOf(v) === Object.prototype)
    return `@{${Object.entries(v as Record<string, unknown>)
      .map(([k, x]) => `${k}=${toText(x)}`)
      .join('; ')}}`;
  return String(v);
}

/** PowerShell truthiness. */
export function toBool(v: unknown): boolean {
  if (v === null || v === undefined) return false;
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'string') return v.length > 0;
  if (Array.isArray(v)) return v.length === 0 ? false : v.length === 1 ? toBool(v[0]) : true;
  return true;
}

/** Pipelines enumerate arrays: one output per element. */
export function enumerate(v: unknown): unknown[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

/** A pipeline's collected output as a value: nothing → $null, one item → itself, more → array. */
export function collapse(items: unknown[]): unknown {
  return items.length === 0 ? null : items.length === 1 ? items[0] : items;
}
