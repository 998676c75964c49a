/**
 * The interpreter: runs parsed statements, evaluates expressions with PowerShell's semantics
 * (case-insensitive comparison, array filtering, member enumeration), binds command parameters the
 * way PowerShell does (names, unique prefixes, aliases, positions, switches, splatting, pipeline
 * input) and reports errors as PowerShell error records. Commands come from a registry; nothing
 * here knows about IPsec.
 */
import { dirname, resolve as resolvePath } from 'node:path';
import { ConsecError } from '../../errors.ts';
import { readTextBounded } from '../../io/bounded.ts';
import { type EnumDef, EnumConversionError, parseEnum, parseFlags } from '../../policy/enums.ts';
import { PwshError } from './error-record.ts';
import { type Extent, PwshSyntaxError } from './lexer.ts';
import { castTo, isOfType, resolveType, staticMember, TypeRef } from './types.ts';

export { PwshError } from './error-record.ts';
import {
  type Command,
  type CommandElement,
  type Expr,
  type NamedBlocks,
  type ParamDecl,
  parseScript,
  type Pipeline,
  type Statement,
} from './parser.ts';
import {
  collapse,
  enumerate,
  getProperty,
  Hashtable,
  isPSObject,
  type PSObject,
  PROPERTY_LIST,
  psObject,
  ScriptBlock,
  toBool,
  toText,
} from './values.ts';

export type ParamType =
  'string' | 'strings' | 'switch' | 'bool' | 'uint' | 'enum' | 'flags' | 'object' | 'objects' | 'scriptblock' | 'any';

export interface ParamDef {
  name: string;
  type: ParamType;
  enum?: EnumDef;
  aliases?: string[];
  mandatory?: boolean;
  position?: number;
  /** Binds pipeline input (ValueFromPipeline). */
  pipeline?: boolean;
  /** Collects positional arguments left over (ValueFromRemainingArguments). */
  remaining?: boolean;
  min?: number;
  max?: number;
  /** [ValidateNotNullOrEmpty()]: an explicit $null or '' is an error, never "not given". */
  notNullOrEmpty?: boolean;
}

export interface CommandCall {
  readonly name: string;
  /** Bound, converted parameter values by canonical name. */
  readonly args: ReadonlyMap<string, unknown>;
  /** Pipeline input, when the command is not first in its pipeline. */
  readonly input: unknown[] | undefined;
  readonly whatIf: boolean;
  readonly runtime: Runtime;
  has(name: string): boolean;
  get<T>(name: string): T | undefined;
}

export interface CommandDef {
  name: string;
  params: ParamDef[];
  /** Changes state: gets -WhatIf and -Confirm. */
  mutating?: boolean;
  /**
   * Runs whatever it is given, without binding its arguments: for commands that only answer why
   * they cannot run here (the ActiveDirectory module's), so no parameter of theirs is ever unknown.
   */
  unbound?: boolean;
  invoke(call: CommandCall): Promise<unknown[]> | unknown[];
}

export interface Host {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** A PowerShell error record. */
/** Nested script block invocations allowed (PowerShell's CallDepthOverflow limit). */
export const MAX_CALL_DEPTH = 100;

const COMMON_PARAMS: ParamDef[] = [
  { name: 'ErrorAction', type: 'string', aliases: ['ea'] },
  { name: 'WarningAction', type: 'string', aliases: ['wa'] },
  { name: 'InformationAction', type: 'string', aliases: ['infa'] },
  { name: 'ErrorVariable', type: 'string', aliases: ['ev'] },
  { name: 'WarningVariable', type: 'string', aliases: ['wv'] },
  { name: 'OutVariable', type: 'string', aliases: ['ov'] },
  { name: 'OutBuffer', type: 'uint', aliases: ['ob'] },
  { name: 'PipelineVariable', type: 'string', aliases: ['pv'] },
  { name: 'Verbose', type: 'switch', aliases: ['vb'] },
  { name: 'Debug', type: 'switch', aliases: ['db'] },
];
const MUTATING_PARAMS: ParamDef[] = [
  { name: 'WhatIf', type: 'switch', aliases: ['wi'] },
  { name: 'Confirm', type: 'switch', aliases: ['cf'] },
];

const TYPE_LABEL: Record<ParamType, string> = {
  string: 'System.String',
  strings: 'System.String[]',
  switch: 'System.Management.Automation.SwitchParameter',
  bool: 'System.Boolean',
  uint: 'System.UInt32',
  enum: 'System.Enum',
  flags: 'System.Enum',
  object: 'Microsoft.Management.Infrastructure.CimInstance',
  objects: 'Microsoft.Management.Infrastructure.CimInstance[]',
  scriptblock: 'System.Management.Automation.ScriptBlock',
  any: 'System.Object',
};

class StopScript extends Error {}

/** Loop and function control (not errors): `break`, `continue`, `return`, `exit`. */
class BreakSignal {
  readonly keyword = 'break';
}
class ContinueSignal {
  readonly keyword = 'continue';
}
class ReturnSignal {
  constructor(readonly value: unknown[]) {}
}
class ExitSignal {
  constructor(readonly code: number) {}
}

/**
 * A terminating error: `throw`, a cmdlet error under -ErrorAction Stop (or $ErrorActionPreference
 * 'Stop'), or a statement-terminating error (parameter binding, unknown command, an expression
 * failing) inside `try`. A `catch` takes it; uncaught it is written and ends the script — except a
 * statement-terminating one outside `try`, after which the script goes on, as in PowerShell.
 */
class TerminatingError extends Error {
  constructor(
    readonly record: PwshError,
    readonly commandName: string | undefined,
    readonly extent: Extent | undefined,
  ) {
    super(record.message);
  }
}

/** Exception types a `catch [Type]` names, as PowerShell's hierarchy nests them (by last name segment). */
const RUNTIME_EXCEPTIONS = new Set([
  'runtimeexception',
  'parameterbindingexception',
  'commandnotfoundexception',
  'actionpreferencestopexception',
  'parseexception',
  'scriptcalldepthexception',
  'sessionstateunauthorizedaccessexception',
]);

function catchMatches(record: PwshError, typeName: string): boolean {
  const want = (typeName.split('.').pop() ?? typeName).toLowerCase();
  const have = record.exceptionType.toLowerCase();
  if (want === 'exception' || want === 'systemexception' || want === have) return true;
  return want === 'runtimeexception' && RUNTIME_EXCEPTIONS.has(have);
}

/** A user function: `function Name { param(…) … }`. */
interface FunctionDef {
  name: string;
  params: ParamDecl[];
  body: Statement[];
  blocks?: NamedBlocks;
  defaultSet?: string;
}

/**
 * The text of a file a script names (resolved from the current directory, Windows' `\` separators
 * accepted), without its byte-order mark; bounded (readTextBounded) and described as `what` when
 * it is too large.
 */
export function readScriptFile(name: string, what: string): string {
  return readTextBounded(resolvePath(name.replace(/\\/g, '/')), what).replace(/^\uFEFF/, '');
}

/**
 * `$PSCmdlet` in an advanced function or script: the parameter set its call bound, and
 * ShouldProcess, which under -WhatIf says what would be done (PowerShell's wording) and answers
 * $false, else $true.
 */
export class CmdletContext {
  constructor(
    readonly ParameterSetName: string,
    private readonly whatIf: boolean,
    private readonly functionName: string,
  ) {}

  /** The "What if:" line for ShouldProcess(target[, action]), or undefined when the action may go ahead. */
  shouldProcess(args: unknown[]): string | undefined {
    if (!this.whatIf) return undefined;
    const target = toText(args[0]);
    const action = args.length > 1 ? toText(args[1]) : this.functionName;
    return `What if: Performing the operation "${action}" on target "${target}".`;
  }
}

/**
 * The parameter set a call binds (PowerShell's resolution): the sets every bound parameter belongs
 * to; of several, the default (`DefaultParameterSetName`), else the one whose mandatory parameters
 * are all given. Undefined when the function declares no sets; null when none can be chosen.
 */
function parameterSet(fn: FunctionDef, bound: ReadonlyMap<string, unknown>): string | undefined | null {
  const all = new Set(fn.params.flatMap((p) => (p.sets ?? []).map((x) => x.name)));
  if (all.size === 0) return undefined;
  let candidates = [...all];
  for (const p of fn.params)
    if (bound.has(p.name) && p.sets) candidates = candidates.filter((c) => p.sets?.some((x) => x.name === c));
  if (candidates.length === 1) return candidates[0] as string;
  if (candidates.length === 0) return null;
  if (fn.defaultSet && candidates.includes(fn.defaultSet)) return fn.defaultSet;
  const complete = candidates.filter((c) =>
    fn.params.every((p) => bound.has(p.name) || !p.sets?.some((x) => x.name === c && x.mandatory)),
  );
  return complete.length === 1 ? (complete[0] as string) : null;
}

/** An error raised while a command ran, carrying which command and where. */
class CommandFailure extends Error {
  constructor(
    readonly error: unknown,
    readonly commandName: string,
    readonly extent: Extent,
    /** The cmdlet itself failed (a non-terminating error), not the binding of its parameters. */
    readonly fromInvoke = false,
    /** -ErrorAction given to this command. */
    readonly errorAction?: string,
    /** -ErrorVariable given to this command ('+name' appends). */
    readonly errorVariable?: string,
  ) {
    super('command failed');
  }
}

/** Output of Format-* commands: already rendered text. */
export class FormattedOutput {
  constructor(readonly text: string) {}
}

export interface RuntimeOptions {
  /** Shown in error positions: "At <scriptName>:line char:col"; "line" for -Command. */
  scriptName?: string;
  env?: NodeJS.ProcessEnv;
  /** Out-Default: renders the objects that reach the host, as they come (see format.ts). */
  outDefault: (write: (text: string) => void) => OutDefaultSink;
}

/** Out-Default of the host: objects as they come; `end` when a top-level statement is done. */
export interface OutDefaultSink {
  items(items: readonly unknown[]): void;
  end(): void;
}

/** Where a statement's output goes: the caller's output, or the host's Out-Default. */
type Emit = (items: unknown[]) => void;

export class Runtime {
  /** Variable scopes, global first; a function call runs in a new innermost scope. */
  private readonly scopes: Map<string, unknown>[] = [new Map()];
  private readonly functions = new Map<string, FunctionDef>();
  /** The host's Out-Default: pre-formatted output prints as is; objects are formatted as they come. */
  private readonly out: OutDefaultSink;
  /** `try` blocks open around what runs now: their catch takes terminating errors. */
  private tryDepth = 0;
  private source = '';
  private callDepth = 0;
  errorCount = 0;

  constructor(
    readonly host: Host,
    private readonly commands: ReadonlyMap<string, CommandDef>,
    private readonly options: RuntimeOptions,
  ) {
    this.out = options.outDefault((text) => host.stdout(text));
    this.vars.set('erroractionpreference', 'Continue');
    this.vars.set('error', []);
    this.vars.set('?', true);
    this.vars.set('warningpreference', 'Continue');
    this.vars.set('whatifpreference', false);
    if (options.scriptName) {
      // The running script's own path and folder (scripts dot-source their helpers from there).
      const path = resolvePath(options.scriptName);
      this.vars.set('pscommandpath', path);
      this.vars.set('psscriptroot', dirname(path));
    }
  }

  /** The innermost scope: where assignments create variables. */
  private get vars(): Map<string, unknown> {
    return this.scopes[this.scopes.length - 1] as Map<string, unknown>;
  }

  /** A variable's value from the innermost scope that has it. */
  private lookup(lower: string): unknown {
    for (let i = this.scopes.length - 1; i >= 0; i--) {
      const scope = this.scopes[i] as Map<string, unknown>;
      if (scope.has(lower)) return scope.get(lower);
    }
    return undefined;
  }

  setVariable(name: string, value: unknown): void {
    this.vars.set(name.toLowerCase(), value);
  }

  getVariable(name: string): unknown {
    return this.lookup(name.toLowerCase());
  }

  /** Writes a warning the way PowerShell does ("WARNING: …" on the warning stream). */
  warn(message: string): void {
    if (String(this.getVariable('WarningPreference')).toLowerCase() === 'silentlycontinue') return;
    this.host.stderr(`WARNING: ${message}\n`);
  }

  /** Parses and runs a whole script; returns the number of errors written. A syntax error runs nothing. */
  async run(source: string, scriptArgs: readonly string[] = []): Promise<number> {
    this.source = source;
    let statements: Statement[];
    try {
      statements = parseScript(source);
    } catch (err) {
      if (err instanceof PwshSyntaxError) {
        this.writeError(
          new PwshError(err.message, err.errorId, 'ParserError', 'ParentContainsErrorRecordException', err.extent),
          undefined,
          true,
        );
        return this.errorCount;
      }
      throw err;
    }
    try {
      const head = statements[0];
      if (head?.kind === 'param') {
        // `-File script.ps1 -Name value -Switch 42`: bound to the script's param block.
        const none = { start: 0, end: 0 };
        const elements: CommandElement[] = scriptArgs.map((a) => {
          const named = /^-([A-Za-z_?][\w-]*)(:(.*))?$/s.exec(a);
          if (!named)
            return { kind: 'argument', value: { kind: 'constant', value: a, bare: true, extent: none }, extent: none };
          const value =
            named[2] === undefined
              ? undefined
              : { kind: 'constant' as const, value: named[3] ?? '', bare: true, extent: none };
          return { kind: 'parameter', name: named[1] as string, value, extent: none };
        });
        const fn = {
          name: this.options.scriptName ?? '',
          params: head.params,
          body: statements.slice(1),
          defaultSet: head.defaultSet,
        };
        const call: Command = { kind: 'command', name: fn.name, nameExtent: none, elements, extent: head.extent };
        try {
          await this.callFunction(fn, call, undefined, true, this.hostOutput);
        } catch (err) {
          // Arguments that do not bind: PowerShell's binding error, and the script does not run.
          if (!(err instanceof CommandFailure)) throw err;
          this.statementError(err, head);
        }
      } else await this.runStatements(statements, this.hostOutput, this.endOfStatement);
    } catch (err) {
      // `return x` at a script's top level ends it with x as its last output.
      if (err instanceof ReturnSignal) this.hostOutput(err.value);
      else if (err instanceof TerminatingError) {
        this.out.end();
        this.writeError(err.record, err.commandName, false, err.extent, false);
      } else if (!(
        err instanceof StopScript ||
        err instanceof ExitSignal ||
        err instanceof BreakSignal ||
        err instanceof ContinueSignal
      ))
        throw err;
    } finally {
      // What Out-Default still holds (a script's returned value, a table) is written before the end.
      this.out.end();
    }
    return this.errorCount;
  }

  /**
   * Runs statements in order; what each outputs goes to `emit` (the host at top level, or the
   * caller); `afterEach`: the script's own statements, each one's output ends there (Out-Default).
   */
  async runStatements(statements: readonly Statement[], emit: Emit, afterEach?: () => void): Promise<void> {
    const traps = statements.filter((s): s is Extract<Statement, { kind: 'trap' }> => s.kind === 'trap');
    // A trap handles a terminating error anywhere in its scope, wherever it stands in it: its body
    // runs with $_; then `break` rethrows, `continue` goes on silently, and without either the error
    // is written and the script goes on with the next statement.
    for (const st of statements) {
      if (st.kind === 'trap') continue;
      try {
        await this.runStatement(st, emit);
      } catch (err) {
        afterEach?.(); // what the statement wrote before the error comes first
        if (!(err instanceof TerminatingError)) throw err;
        const trap = traps.find((t) => t.types.length === 0 || t.types.some((ty) => catchMatches(err.record, ty)));
        if (!trap) throw err;
        const outcome = await this.runTrap(trap, err, emit);
        if (outcome === 'break') throw err;
        if (outcome === 'write') this.writeError(err.record, err.commandName, false, err.extent, false);
      }
      afterEach?.();
    }
  }

  private async runTrap(
    trap: Extract<Statement, { kind: 'trap' }>,
    err: TerminatingError,
    emit: (items: unknown[]) => void,
  ): Promise<'break' | 'continue' | 'write'> {
    const record = errorRecord(err.record);
    const saved = [this.vars.get('_'), this.vars.get('psitem')];
    this.vars.set('_', record);
    this.vars.set('psitem', record);
    try {
      await this.runStatements(trap.body, emit);
      return 'write';
    } catch (signal) {
      if (signal instanceof BreakSignal) return 'break';
      if (signal instanceof ContinueSignal) return 'continue';
      throw signal;
    } finally {
      this.vars.set('_', saved[0]);
      this.vars.set('psitem', saved[1]);
    }
  }

  private async runStatement(st: Statement, emit: (items: unknown[]) => void): Promise<void> {
    switch (st.kind) {
      case 'if': {
        for (const c of st.clauses) if (toBool(await this.condition(c.cond))) return this.runStatements(c.body, emit);
        if (st.otherwise) await this.runStatements(st.otherwise, emit);
        return;
      }
      case 'while':
        while (toBool(await this.condition(st.cond))) if (await this.loopBody(st.body, emit)) break;
        return;
      case 'do':
        for (;;) {
          if (await this.loopBody(st.body, emit)) break;
          const c = toBool(await this.condition(st.cond));
          if (st.until ? c : !c) break;
        }
        return;
      case 'for':
        if (st.init) await this.runStatement(st.init, emit);
        while (!st.cond || toBool(await this.condition(st.cond))) {
          if (await this.loopBody(st.body, emit)) break;
          if (st.step) await this.runStatement(st.step, () => {});
        }
        return;
      case 'foreach': {
        const items = enumerate(await this.condition(st.collection));
        for (const item of items) {
          this.vars.set(st.variable.toLowerCase(), item);
          if (await this.loopBody(st.body, emit)) break;
        }
        return;
      }
      case 'function':
        this.functions.set(st.name.toLowerCase(), {
          name: st.name,
          params: st.params,
          body: st.body,
          blocks: st.blocks,
          defaultSet: st.defaultSet,
        });
        return;
      case 'try':
        return this.tryStatement(st, emit);
      case 'trap':
        return;
      case 'param':
        // A param block whose call bound nothing (a script block run by a cmdlet, a script run
        // without arguments): each parameter not set yet gets its default.
        for (const p of st.params)
          if (!this.vars.has(p.name.toLowerCase())) this.vars.set(p.name.toLowerCase(), await this.paramDefault(p));
        return;
      case 'switch':
        return this.switchStatement(st, emit);
      case 'flow':
        return this.flow(st);
    }
    // $?: whether the last statement succeeded.
    const global = this.scopes[0] as Map<string, unknown>;
    try {
      if (st.kind === 'assignment') {
        const value = await this.pipelineValue(st.value);
        // `$x += v` is `$x = $x + v` (arrays append, strings concatenate, numbers add).
        await this.assign(st.target, st.op ? binaryOp(st.op, await this.expr(st.target), value, st.extent) : value);
      } else if (st.kind === 'step') {
        // `$i++` / `$i--`: an unset variable counts from 0, as in PowerShell.
        const current = (await this.expr(st.target)) ?? 0;
        await this.assign(st.target, binaryOp(st.delta > 0 ? '+' : '-', current, 1, st.extent));
      } else emit(await this.pipeline(st, undefined, emit));
      global.set('?', true);
    } catch (err) {
      global.set('?', false);
      this.statementError(err, st);
    }
  }

  /** $Error: the error records of this session, newest first (as PowerShell keeps them). */
  private recordError(e: PwshError): void {
    const global = this.scopes[0] as Map<string, unknown>;
    const list = (global.get('error') as unknown[] | undefined) ?? [];
    list.unshift(errorRecord(e));
    if (list.length > 256) list.length = 256;
    global.set('error', list);
  }

  /** A loop's body once; true when it said `break`. */
  private async loopBody(body: readonly Statement[], emit: (items: unknown[]) => void): Promise<boolean> {
    try {
      await this.runStatements(body, emit);
    } catch (err) {
      if (err instanceof BreakSignal) return true;
      if (err instanceof ContinueSignal) return false;
      throw err;
    }
    return false;
  }

  /** A condition or collection: its errors are the statement's (terminating inside try). */
  private async condition(p: Pipeline): Promise<unknown> {
    try {
      return await this.pipelineValue(p);
    } catch (err) {
      this.statementError(err, p);
      return null;
    }
  }

  private async flow(st: Extract<Statement, { kind: 'flow' }>): Promise<void> {
    const value = st.value ? await this.pipeline(st.value) : [];
    switch (st.keyword) {
      case 'break':
        throw new BreakSignal();
      case 'continue':
        throw new ContinueSignal();
      case 'return':
        throw new ReturnSignal(value);
      case 'exit':
        throw new ExitSignal(Number(collapse(value) ?? 0) || 0);
      case 'throw': {
        const v = collapse(value);
        const rec = isErrorRecord(v)
          ? (v[ERROR_RECORD] as PwshError)
          : new PwshError(
              v === null || v === undefined ? 'ScriptHalted' : toText(v),
              v === null || v === undefined ? 'ScriptHalted' : toText(v),
              'OperationStopped',
              'RuntimeException',
              st.extent,
              toText(v),
              v === null || v === undefined ? '' : 'String',
            );
        this.recordError(rec);
        throw new TerminatingError(rec, undefined, st.extent);
      }
    }
  }

  /** switch: each value against each clause in order; every matching clause runs (break ends it all). */
  private async switchStatement(
    st: Extract<Statement, { kind: 'switch' }>,
    emit: (items: unknown[]) => void,
  ): Promise<void> {
    const values = enumerate(await this.condition(st.value));
    const saved = [this.vars.get('_'), this.vars.get('psitem')];
    try {
      for (const value of values) {
        this.vars.set('_', value);
        this.vars.set('psitem', value);
        let matched = false;
        try {
          for (const clause of st.clauses) {
            if (clause.pattern === 'default') continue;
            if (!(await this.switchMatches(st, clause.pattern, value))) continue;
            matched = true;
            await this.runStatements(clause.body, emit);
          }
          if (!matched)
            for (const clause of st.clauses)
              if (clause.pattern === 'default') await this.runStatements(clause.body, emit);
        } catch (err) {
          if (err instanceof BreakSignal) return;
          if (!(err instanceof ContinueSignal)) throw err;
        }
      }
    } finally {
      this.vars.set('_', saved[0]);
      this.vars.set('psitem', saved[1]);
    }
  }

  private async switchMatches(
    st: Extract<Statement, { kind: 'switch' }>,
    pattern: Expr,
    value: unknown,
  ): Promise<boolean> {
    if (pattern.kind === 'scriptblock') {
      const out: unknown[] = [];
      await this.runStatements(pattern.body, (items) => out.push(...items));
      return toBool(collapse(out));
    }
    const p = await this.expr(pattern);
    const op = { exact: 'eq', wildcard: 'like', regex: 'match' }[st.match];
    return toBool(binaryOp(st.caseSensitive ? `c${op}` : op, value, p, st.extent));
  }

  private async tryStatement(st: Extract<Statement, { kind: 'try' }>, emit: (items: unknown[]) => void): Promise<void> {
    try {
      let caught: TerminatingError | undefined;
      this.tryDepth++;
      try {
        await this.runStatements(st.body, emit);
      } catch (err) {
        if (!(err instanceof TerminatingError)) throw err;
        caught = err;
      } finally {
        this.tryDepth--;
      }
      if (!caught) return;
      const rec = caught.record;
      const clause = st.catches.find((c) => c.types.length === 0 || c.types.some((t) => catchMatches(rec, t)));
      if (!clause) throw caught;
      const record = errorRecord(rec);
      const saved = [this.vars.get('_'), this.vars.get('psitem')];
      this.vars.set('_', record);
      this.vars.set('psitem', record);
      try {
        await this.runStatements(clause.body, emit);
      } finally {
        this.vars.set('_', saved[0]);
        this.vars.set('psitem', saved[1]);
      }
    } finally {
      if (st.final) await this.runStatements(st.final, emit);
    }
  }

  /**
   * What reaches the host's Out-Default: a top-level statement's output, and what a function called
   * there writes, as it is written (scalars and list entries at once, a table once it ends: at the
   * end of its top-level statement, `endOfStatement`, or when something else is written).
   */
  private readonly hostOutput: Emit = (items) => {
    for (const item of items) {
      if (item instanceof FormattedOutput) {
        this.out.end();
        this.host.stdout(item.text);
      } else this.out.items([item]);
    }
  };

  private readonly endOfStatement = (): void => this.out.end();

  /**
   * An error in a simple statement: control signals and terminating errors go on up; a cmdlet's own
   * error is written and the script goes on (a terminating error under Stop); anything else is
   * statement-terminating — caught by an enclosing try, else written and the script goes on.
   */
  private statementError(caught: unknown, element?: { extent: Extent }): void {
    if (
      caught instanceof StopScript ||
      caught instanceof TerminatingError ||
      caught instanceof BreakSignal ||
      caught instanceof ContinueSignal ||
      caught instanceof ReturnSignal ||
      caught instanceof ExitSignal
    )
      throw caught;
    const { record, commandName, extent } = this.errorOf(caught, element);
    // -ErrorVariable: the command's errors, whatever -ErrorAction does with them.
    if (caught instanceof CommandFailure && caught.errorVariable) {
      const v = caught.errorVariable;
      const name = v.replace(/^\+/, '');
      const before = v.startsWith('+') ? enumerate(this.getVariable(name)) : [];
      this.setVariable(name, [...before, errorRecord(record, caught.fromInvoke ? commandName : undefined)]);
    }
    const action =
      caught instanceof CommandFailure && caught.errorAction
        ? caught.errorAction.toLowerCase()
        : String(this.getVariable('ErrorActionPreference')).toLowerCase();
    const fromCmdlet = caught instanceof CommandFailure && caught.fromInvoke;
    if (fromCmdlet && (action === 'silentlycontinue' || action === 'ignore')) {
      if (action === 'silentlycontinue') this.recordError(record);
      return;
    }
    if (action === 'stop' || (!fromCmdlet && this.tryDepth > 0)) {
      this.recordError(record);
      throw new TerminatingError(record, commandName, extent);
    }
    this.writeError(record, commandName, false, extent);
  }

  /** The error record for what went wrong, with the command and position it belongs to. */
  private errorOf(
    caught: unknown,
    element?: { extent: Extent },
  ): { record: PwshError; commandName?: string; extent?: Extent } {
    let err = caught;
    let commandName: string | undefined;
    if (caught instanceof CommandFailure) {
      err = caught.error;
      commandName = caught.commandName;
      element = { extent: caught.extent };
    }
    let record: PwshError;
    if (err instanceof PwshError) record = err;
    else if (err instanceof ConsecError) {
      record = new PwshError(
        err.message,
        err.code === 'ERR_POLICY_INVALID' ? 'InvalidArgument' : err.code,
        err.code === 'ERR_POLICY_STORE' ? 'WriteError' : 'InvalidArgument',
        err.code === 'ERR_POLICY_STORE' ? 'CimException' : 'CimException',
        element?.extent,
      );
    } else {
      record = new PwshError(
        `${(err as Error).message}`,
        'UnexpectedError',
        'NotSpecified',
        (err as Error).name || 'Exception',
        element?.extent,
      );
      if (process.env.CONSEC_DEBUG) this.host.stderr(`${(err as Error).stack}\n`);
    }
    return { record, commandName, extent: element?.extent };
  }

  /** Writes an error record in Windows PowerShell's layout. */
  writeError(
    e: PwshError,
    commandName?: string,
    parserError = false,
    fallbackExtent?: Extent,
    /** False for a terminating error already in $Error since it was raised. */
    record = true,
  ): void {
    this.errorCount++;
    if (record) this.recordError(e);
    const lines: string[] = [];
    const extent = e.extent ?? fallbackExtent;
    const position = extent ? this.position(extent) : [];
    if (parserError) {
      lines.push(...position, e.message);
    } else {
      // A command that was not found is named by its own text, with an empty command in CategoryInfo.
      const prefix = commandName ?? (e.errorId === 'CommandNotFoundException' ? e.target : undefined);
      lines.push(`${prefix ? `${prefix} : ` : ''}${e.message}`, ...position);
    }
    const cmd = commandName ?? '';
    lines.push(
      `    + CategoryInfo          : ${e.category}: (${e.target}:${e.targetType}) [${cmd}], ${e.exceptionType}`,
    );
    lines.push(`    + FullyQualifiedErrorId : ${e.errorId}${cmd ? `,${cmd}` : ''}`);
    this.host.stderr(`${lines.join('\n')}\n \n`);
  }

  private position(extent: Extent): string[] {
    const before = this.source.slice(0, extent.start);
    const line = before.split('\n').length;
    const lineStart = before.lastIndexOf('\n') + 1;
    let lineEnd = this.source.indexOf('\n', lineStart);
    if (lineEnd < 0) lineEnd = this.source.length;
    const text = this.source.slice(lineStart, lineEnd).replace(/\r$/, '');
    const col = extent.start - lineStart;
    const width = Math.max(1, Math.min(extent.end, lineStart + text.length) - extent.start);
    const where = this.options.scriptName ? `${this.options.scriptName}:${line}` : `line:${line}`;
    return [`At ${where} char:${col + 1}`, `+ ${text}`, `+ ${' '.repeat(col)}${'~'.repeat(width)}`];
  }

  // ---- pipelines and commands -------------------------------------------------------------------

  /**
   * The value a pipeline gives an assignment: a lone expression keeps its value ($x = @('a') stays
   * an array); command output is collected (one item becomes a scalar).
   */
  async pipelineValue(p: Pipeline): Promise<unknown> {
    const only = p.elements[0];
    if (p.elements.length === 1 && only?.kind === 'expression') return this.expr(only.expr);
    return collapse(await this.pipeline(p));
  }

  /**
   * Runs a pipeline and returns its output; with `stream`, a function at its end writes its output
   * there as it goes (PowerShell's pipeline: what a function outputs moves on at once), so its
   * output and its host writes (Write-Host) keep their order.
   */
  async pipeline(p: Pipeline, initialInput?: unknown[], stream?: Emit): Promise<unknown[]> {
    let input = initialInput;
    for (const [i, el] of p.elements.entries()) {
      const fn =
        stream && i === p.elements.length - 1 && el.kind === 'command' && this.functions.get(el.name.toLowerCase());
      if (fn && el.kind === 'command') {
        // (A wrapper: the function's own statements are not the caller's top level.)
        await this.callFunction(fn, el, input, false, (items) => stream(items));
        return [];
      }
      if (el.kind === 'expression') {
        if (i > 0) {
          throw new PwshError(
            'Expressions are only allowed as the first element of a pipeline.',
            'ExpressionsMustBeFirstInPipeline',
            'ParserError',
            'ParseException',
            el.extent,
          );
        }
        input = enumerate(await this.expr(el.expr));
      } else {
        input = await this.command(el, i === 0 ? initialInput : input);
      }
    }
    return input ?? [];
  }

  private async command(cmd: Command, input: unknown[] | undefined): Promise<unknown[]> {
    if (cmd.name === '.' || cmd.name === '&') return this.invokeOperator(cmd, input);
    const fn = this.functions.get(cmd.name.toLowerCase());
    if (fn) return this.callFunction(fn, cmd, input);
    const def = this.commands.get(cmd.name.toLowerCase());
    if (!def) {
      throw new PwshError(
        `The term '${cmd.name}' is not recognized as the name of a cmdlet, function, script file, or operable program. Check the spelling of the name, or if a path was included, verify that the path is correct and try again.`,
        'CommandNotFoundException',
        'ObjectNotFound',
        'CommandNotFoundException',
        cmd.nameExtent,
        cmd.name,
        'String',
      );
    }
    let call: CommandCall | undefined;
    try {
      call = await this.bind(def, cmd, input);
      // -ErrorVariable name starts empty for this command; +name keeps what it held.
      const ev = call.get<string>('ErrorVariable');
      if (ev && !ev.startsWith('+')) this.setVariable(ev, []);
      return await def.invoke(call);
    } catch (err) {
      if (err instanceof StopScript || err instanceof CommandFailure || err instanceof TerminatingError) throw err;
      // Binding errors point at the offending element; others at the whole command.
      const extent = err instanceof PwshError && err.extent ? err.extent : cmd.extent;
      throw new CommandFailure(
        err,
        def.name,
        extent,
        call !== undefined,
        call?.get<string>('ErrorAction'),
        call?.get<string>('ErrorVariable'),
      );
    }
  }

  private async bind(def: CommandDef, cmd: Command, input: unknown[] | undefined): Promise<CommandCall> {
    const params = [...def.params, ...COMMON_PARAMS, ...(def.mutating ? MUTATING_PARAMS : [])];
    const bound = new Map<string, unknown>();
    if (def.unbound)
      return {
        name: def.name,
        args: bound,
        input,
        whatIf: false,
        runtime: this,
        has: () => false,
        get: () => undefined,
      };
    const positional: { value: unknown; extent: Extent }[] = [];
    const elements: CommandElement[] = [...cmd.elements];
    const bindNamed = async (p: ParamDef, raw: unknown, extent: Extent): Promise<void> => {
      if (bound.has(p.name)) {
        throw new PwshError(
          `Cannot bind parameter because parameter '${p.name}' is specified more than once. To provide multiple values to parameters that can accept multiple values, use the array syntax. For example, "-parameter value1,value2,value3".`,
          'ParameterAlreadyBound',
          'InvalidArgument',
          'ParameterBindingException',
          extent,
        );
      }
      bound.set(p.name, this.convert(p, raw, extent));
    };
    for (let i = 0; i < elements.length; i++) {
      const el = elements[i] as CommandElement;
      if (el.kind === 'splat') {
        const v = this.getVariable(el.name);
        if (v instanceof Hashtable) {
          for (const [k, val] of v.entries()) {
            const p = this.resolveParam(params, k, el.extent);
            await bindNamed(p, p.type === 'switch' ? toBool(val) : val, el.extent);
          }
        } else {
          for (const val of enumerate(v)) positional.push({ value: val, extent: el.extent });
        }
        continue;
      }
      if (el.kind === 'argument') {
        positional.push({ value: await this.expr(el.value), extent: el.extent });
        continue;
      }
      const p = this.resolveParam(params, el.name, el.extent);
      if (el.value !== undefined) {
        await bindNamed(p, await this.expr(el.value), el.extent);
      } else if (p.type === 'switch') {
        await bindNamed(p, true, el.extent);
      } else {
        const next = elements[i + 1];
        if (!next || next.kind !== 'argument') {
          throw new PwshError(
            `Missing an argument for parameter '${p.name}'. Specify a parameter of type '${TYPE_LABEL[p.type]}' and try again.`,
            'MissingArgument',
            'InvalidArgument',
            'ParameterBindingException',
            el.extent,
          );
        }
        i++;
        await bindNamed(p, await this.expr(next.value), { start: el.extent.start, end: next.extent.end });
      }
    }
    const byPosition = params
      .filter((p) => p.position !== undefined)
      .sort((a, b) => (a.position ?? 0) - (b.position ?? 0));
    const remaining = params.find((p) => p.remaining);
    const rest: unknown[] = [];
    for (const arg of positional) {
      const p = byPosition.find((q) => !bound.has(q.name));
      if (!p && remaining && (bound.has(remaining.name) || rest.length > 0)) {
        rest.push(arg.value);
        continue;
      }
      if (!p) {
        throw new PwshError(
          `A positional parameter cannot be found that accepts argument '${toText(arg.value)}'.`,
          'PositionalParameterNotFound',
          'InvalidArgument',
          'ParameterBindingException',
          arg.extent,
          '',
          '',
        );
      }
      bound.set(p.name, this.convert(p, arg.value, arg.extent));
    }
    if (remaining && rest.length > 0) {
      bound.set(remaining.name, [...enumerate(bound.get(remaining.name)), ...rest.flatMap((r) => enumerate(r))]);
    }
    const pipelineParam = params.find((p) => p.pipeline);
    if (input !== undefined && pipelineParam && !bound.has(pipelineParam.name)) {
      bound.set(
        pipelineParam.name,
        pipelineParam.type === 'objects' || pipelineParam.type === 'strings' ? input : collapse(input),
      );
    }
    const missing = params.filter((p) => p.mandatory && !bound.has(p.name)).map((p) => p.name);
    if (missing.length > 0) {
      throw new PwshError(
        `Cannot process command because of one or more missing mandatory parameters: ${missing.join(' ')}.`,
        'MissingMandatoryParameter',
        'InvalidArgument',
        'ParameterBindingException',
        cmd.extent,
      );
    }
    // -WhatIf, or an advanced function's -WhatIf passed down ($WhatIfPreference), unless -WhatIf:$false.
    const whatIf = bound.has('WhatIf') ? bound.get('WhatIf') === true : toBool(this.getVariable('WhatIfPreference'));
    return {
      name: def.name,
      args: bound,
      input,
      whatIf,
      runtime: this,
      has: (n) => bound.has(n),
      get: <T>(n: string) => bound.get(n) as T | undefined,
    };
  }

  private resolveParam(params: ParamDef[], name: string, extent: Extent): ParamDef {
    const lower = name.toLowerCase();
    const exact = params.find(
      (p) => p.name.toLowerCase() === lower || p.aliases?.some((a) => a.toLowerCase() === lower),
    );
    if (exact) return exact;
    const prefixed = params.filter((p) => p.name.toLowerCase().startsWith(lower));
    if (prefixed.length === 1) return prefixed[0] as ParamDef;
    if (prefixed.length > 1) {
      throw new PwshError(
        `Parameter cannot be processed because the parameter name '${name}' is ambiguous. Possible matches include: ${prefixed.map((p) => `-${p.name}`).join(' ')}.`,
        'AmbiguousParameter',
        'InvalidArgument',
        'ParameterBindingException',
        extent,
      );
    }
    throw new PwshError(
      `A parameter cannot be found that matches parameter name '${name}'.`,
      'NamedParameterNotFound',
      'InvalidArgument',
      'ParameterBindingException',
      extent,
    );
  }

  /**
   * A value converted as binding it to `p` would (a property edited on an object passed back with
   * -InputObject is checked like the parameter of the same name).
   */
  convertValue(p: ParamDef, raw: unknown): unknown {
    return this.convert(p, raw, { start: 0, end: 0 });
  }

  private convert(p: ParamDef, raw: unknown, extent: Extent): unknown {
    if (
      p.notNullOrEmpty &&
      (raw === null || raw === undefined || raw === '' || (Array.isArray(raw) && raw.length === 0))
    )
      throw new PwshError(
        `Cannot validate argument on parameter '${p.name}'. The argument is null or empty. Provide an argument that is not null or empty, and then try the command again.`,
        'ParameterArgumentValidationError',
        'InvalidData',
        'ParameterBindingValidationException',
        extent,
      );
    const cannot = (detail: string): PwshError =>
      new PwshError(
        `Cannot bind parameter '${p.name}'. ${detail}`,
        'CannotConvertArgumentNoMessage',
        'InvalidArgument',
        'ParameterBindingException',
        extent,
      );
    const asText = (v: unknown): string => {
      if (isPSObject(v)) {
        const name = getProperty(v, 'Name');
        if (typeof name === 'string') return name;
      }
      return toText(v);
    };
    const single = (v: unknown): unknown => {
      if (Array.isArray(v)) {
        if (v.length === 1) return v[0];
        throw new PwshError(
          `Cannot convert 'System.Object[]' to the type '${TYPE_LABEL[p.type]}' required by parameter '${p.name}'. Specified method is not supported.`,
          'CannotConvertArgument',
          'InvalidArgument',
          'ParameterBindingException',
          extent,
        );
      }
      return v;
    };
    try {
      switch (p.type) {
        case 'any':
        case 'object':
          return raw;
        case 'objects':
          return enumerate(raw);
        case 'string':
          return asText(single(raw));
        case 'strings':
          return enumerate(raw).map(asText);
        case 'switch':
          return toBool(raw);
        case 'scriptblock': {
          const v = single(raw);
          if (!(v instanceof ScriptBlock))
            throw cannot(
              `Cannot convert the "${toText(v)}" value of type "${typeof v}" to type "System.Management.Automation.ScriptBlock".`,
            );
          return v;
        }
        case 'bool': {
          const v = single(raw);
          if (typeof v === 'boolean') return v;
          if (typeof v === 'number') return v !== 0;
          const t = toText(v).toLowerCase();
          if (t === 'true' || t === '$true' || t === '1') return true;
          if (t === 'false' || t === '$false' || t === '0') return false;
          throw cannot(
            `Cannot convert value "${toText(v)}" to type "System.Boolean". Boolean parameters accept only Boolean values and numbers, such as $True, $False, 1 or 0.`,
          );
        }
        case 'uint': {
          const v = single(raw);
          const n = typeof v === 'number' ? v : /^\s*\d+\s*$/.test(toText(v)) ? Number(toText(v)) : Number.NaN;
          if (!Number.isInteger(n) || n < 0)
            throw cannot(
              `Cannot convert value "${toText(v)}" to type "System.UInt32". Error: "Input string was not in a correct format."`,
            );
          if (p.max !== undefined && n > p.max) {
            throw new PwshError(
              `Cannot validate argument on parameter '${p.name}'. The ${n} argument is greater than the maximum allowed range of ${p.max}. Supply an argument that is less than or equal to ${p.max} and then try the command again.`,
              'ParameterArgumentValidationError',
              'InvalidData',
              'ParameterBindingValidationException',
              extent,
            );
          }
          if (p.min !== undefined && n < p.min) {
            throw new PwshError(
              `Cannot validate argument on parameter '${p.name}'. The ${n} argument is less than the minimum allowed range of ${p.min}. Supply an argument that is greater than or equal to ${p.min} and then try the command again.`,
              'ParameterArgumentValidationError',
              'InvalidData',
              'ParameterBindingValidationException',
              extent,
            );
          }
          return n;
        }
        case 'enum':
          return parseEnum(p.enum as EnumDef, toText(single(raw)));
        case 'flags':
          return parseFlags(p.enum as EnumDef, enumerate(raw).map(toText));
      }
    } catch (err) {
      if (err instanceof EnumConversionError) throw cannot(err.message);
      throw err;
    }
  }

  // ---- expressions ------------------------------------------------------------------------------

  async expr(e: Expr): Promise<unknown> {
    switch (e.kind) {
      case 'constant':
        return e.value;
      case 'string': {
        let out = '';
        for (const part of e.parts) {
          if (typeof part === 'string') out += part;
          else if ('variable' in part) out += toText(this.variable(part.variable));
          else {
            const values: unknown[] = [];
            await this.runStatements(part.body, (items) => values.push(...items));
            out += toText(collapse(values));
          }
        }
        return out;
      }
      case 'variable':
        return this.variable(e.name);
      case 'member': {
        const target = await this.expr(e.target);
        return getProperty(target, e.nameExpr ? toText(await this.expr(e.nameExpr)) : e.name) ?? null;
      }
      case 'method':
        return this.method(
          await this.expr(e.target),
          e.name,
          await Promise.all(e.args.map((a) => this.expr(a))),
          e.extent,
        );
      case 'index': {
        const target = await this.expr(e.target);
        const index = await this.expr(e.index);
        if (target instanceof Hashtable) return target.get(toText(index)) ?? null;
        if (Array.isArray(target) && PROPERTY_LIST in target && typeof index === 'string') {
          const lower = index.toLowerCase();
          return target.find((p) => String((p as { Name: string }).Name).toLowerCase() === lower) ?? null;
        }
        if (Array.isArray(target) || typeof target === 'string') {
          const n = Number(index);
          const i = n < 0 ? target.length + n : n;
          return (Array.isArray(target) ? target[i] : target[i]) ?? null;
        }
        return null;
      }
      case 'array': {
        const out: unknown[] = [];
        for (const item of e.items) out.push(await this.expr(item));
        return out;
      }
      case 'hashtable': {
        const h = new Hashtable();
        for (const entry of e.entries)
          h.set(toText(await this.expr(entry.key)), collapse(await this.pipeline(entry.value)));
        return h;
      }
      case 'scriptblock':
        return new ScriptBlock(e.body, e.text);
      case 'subexpression': {
        const out: unknown[] = [];
        await this.runStatements(e.body, (items) => out.push(...items));
        return e.array ? out : collapse(out);
      }
      case 'paren':
        return collapse(await this.pipeline(e.pipeline));
      case 'unary': {
        const v = await this.expr(e.operand);
        if (e.op === 'not') return !toBool(v);
        const n = toNumber(v, e.extent);
        return e.op === '-' ? -n : n;
      }
      case 'binary':
        return this.binary(e);
      case 'assign': {
        const value = await this.pipelineValue(e.value);
        await this.assign(e.target, value);
        return value;
      }
      case 'type':
        return resolveType(e.name, e.extent);
      case 'cast':
        return castTo(resolveType(e.type, e.extent), await this.expr(e.operand), e.extent);
      case 'static': {
        const args = e.args ? await Promise.all(e.args.map((a) => this.expr(a))) : undefined;
        return staticMember(resolveType(e.type, e.extent), e.name, args, e.extent);
      }
    }
  }

  private variable(name: string): unknown {
    const lower = name.toLowerCase().replace(/^(script|global|local|private):/, '');
    if (lower === 'true') return true;
    if (lower === 'false') return false;
    if (lower === 'null') return null;
    if (lower.startsWith('env:')) return (this.options.env ?? process.env)[name.slice(4)] ?? null;
    // Unset variables are $null, as in PowerShell without Set-StrictMode.
    if (name.toLowerCase().startsWith('global:') || name.toLowerCase().startsWith('script:'))
      return (this.scopes[0] as Map<string, unknown>).get(lower) ?? null;
    return this.lookup(lower) ?? null;
  }

  private async assign(target: Expr, value: unknown): Promise<void> {
    if (target.kind === 'array') {
      // `$a, $b, $rest = $list`: one element each, the last variable takes what is left.
      const items = enumerate(value);
      const n = target.items.length;
      for (let i = 0; i < n; i++) {
        const rest = i === n - 1 ? items.slice(i) : items.slice(i, i + 1);
        await this.assign(target.items[i] as Expr, rest.length === 0 ? null : rest.length === 1 ? rest[0] : rest);
      }
      return;
    }
    if (target.kind === 'variable') {
      const lower = target.name.toLowerCase();
      if (['true', 'false', 'null'].includes(lower)) {
        throw new PwshError(
          `Cannot overwrite variable ${target.name} because it is read-only or constant.`,
          'VariableNotWritable',
          'WriteError',
          'SessionStateUnauthorizedAccessException',
          target.extent,
        );
      }
      if (lower.startsWith('env:')) {
        (this.options.env ?? process.env)[target.name.slice(4)] = toText(value);
        return;
      }
      this.setVariable(lower.replace(/^(script|global|local|private):/, ''), value);
      return;
    }
    if (target.kind === 'member') {
      const obj = await this.expr(target.target);
      // `$h.$key = …`: the member a value names.
      const name = target.nameExpr ? toText(await this.expr(target.nameExpr)) : target.name;
      if (obj instanceof Hashtable) {
        obj.set(name, value);
        return;
      }
      if (typeof obj === 'object' && obj !== null && !Array.isArray(obj)) {
        const key = Object.keys(obj).find((k) => k.toLowerCase() === name.toLowerCase());
        if (key !== undefined) {
          (obj as Record<string, unknown>)[key] = value;
          return;
        }
      }
      throw new PwshError(
        `The property '${name}' cannot be found on this object. Verify that the property exists and can be set.`,
        'PropertyAssignmentException',
        'InvalidOperation',
        'RuntimeException',
        target.extent,
      );
    }
    throw new PwshError(
      'The assignment expression is not valid. The input to an assignment operator must be an object that is able to accept assignments, such as a variable or a property.',
      'InvalidLeftHandSide',
      'ParserError',
      'ParseException',
      target.extent,
    );
  }

  private method(target: unknown, name: string, args: unknown[], extent: Extent): unknown {
    const lower = name.toLowerCase();
    if (target instanceof CmdletContext && (lower === 'shouldprocess' || lower === 'shouldcontinue')) {
      if (lower === 'shouldcontinue') return true; // asked only where ShouldProcess already agreed; no prompt here
      const line = target.shouldProcess(args);
      if (line !== undefined) this.host.stdout(`${line}\n`);
      return line === undefined;
    }
    if (typeof target === 'string') {
      const a0 = toText(args[0]);
      switch (lower) {
        case 'toupper':
          return target.toUpperCase();
        case 'tolower':
          return target.toLowerCase();
        case 'trim':
          return target.trim();
        case 'contains':
          return target.includes(a0);
        case 'startswith':
          return target.startsWith(a0);
        case 'endswith':
          return target.endsWith(a0);
        case 'replace':
          return target.split(a0).join(toText(args[1]));
        case 'split':
          return target.split(a0 === '' ? /\s/ : a0);
        case 'tostring':
          return target;
      }
    }
    if (lower === 'tostring') return toText(target);
    throw new PwshError(
      `Method invocation failed because [${typeof target === 'string' ? 'System.String' : 'System.Object'}] does not contain a method named '${name}'.`,
      'MethodNotFound',
      'InvalidOperation',
      'RuntimeException',
      extent,
    );
  }

  private async binary(e: Extract<Expr, { kind: 'binary' }>): Promise<unknown> {
    if (e.op === 'and') return toBool(await this.expr(e.left)) && toBool(await this.expr(e.right));
    if (e.op === 'or') return toBool(await this.expr(e.left)) || toBool(await this.expr(e.right));
    const left = await this.expr(e.left);
    const right = await this.expr(e.right);
    if (e.op === 'xor') return toBool(left) !== toBool(right);
    return binaryOp(e.op, left, right, e.extent);
  }

  /**
   * Calls a user function, or a script with a param block (`&` in a scope of its own, `.` in the
   * caller's: `shared`): arguments bound to its parameters as PowerShell binds them (named with
   * unique prefixes, switches, then positional in order; the rest in $args); returns what it
   * output (and what `return` gave), unless `emit` takes the output as it is written.
   */
  private async callFunction(
    fn: FunctionDef,
    cmd: Command,
    input: unknown[] | undefined,
    shared = false,
    /**
     * Where output goes as it is written: the host for a script run from the command line, the
     * statement's own output for a function at the end of a statement's pipeline (see `pipeline`).
     */
    emit?: (items: unknown[]) => void,
  ): Promise<unknown[]> {
    this.checkCallDepth(cmd.extent);
    const bound = new Map<string, unknown>();
    const positional: unknown[] = [];
    const elements = cmd.elements;
    const fail = (message: string, id: string, extent: Extent): never => {
      throw new CommandFailure(
        new PwshError(message, id, 'InvalidArgument', 'ParameterBindingException', extent),
        fn.name,
        extent,
      );
    };
    let commonTakesValue = false;
    let commonName = '';
    /** -WhatIf given to the function (a common parameter, not one of its own), and its value. */
    let whatIfGiven: boolean | undefined;
    const find = (name: string, extent: Extent): ParamDecl | undefined => {
      const lower = name.toLowerCase();
      const exact = fn.params.find((p) => p.name.toLowerCase() === lower);
      if (exact) return exact;
      const prefixed = fn.params.filter((p) => p.name.toLowerCase().startsWith(lower));
      if (prefixed.length === 1) return prefixed[0];
      if (prefixed.length > 1)
        fail(
          `Parameter cannot be processed because the parameter name '${name}' is ambiguous. Possible matches include: ${prefixed.map((p) => `-${p.name}`).join(' ')}.`,
          'AmbiguousParameter',
          extent,
        );
      // Common parameters of advanced functions (and -WhatIf/-Confirm) are accepted; they have no
      // effect here but -WhatIf (see the scope below), and those with a value take it.
      const common = [...COMMON_PARAMS, ...MUTATING_PARAMS].find(
        (c) => c.name.toLowerCase().startsWith(lower) || c.aliases?.includes(lower),
      );
      if (common) {
        commonTakesValue = common.type !== 'switch';
        commonName = common.name;
        return undefined;
      }
      return fail(
        `A parameter cannot be found that matches parameter name '${name}'.`,
        'NamedParameterNotFound',
        extent,
      );
    };
    for (let i = 0; i < elements.length; i++) {
      const el = elements[i] as CommandElement;
      if (el.kind === 'argument') {
        positional.push(await this.expr(el.value));
        continue;
      }
      if (el.kind === 'splat') {
        const v = this.getVariable(el.name);
        if (v instanceof Hashtable) {
          for (const [k, val] of v.entries()) {
            const p = find(k, el.extent);
            if (p) bound.set(p.name, val);
          }
        } else positional.push(...enumerate(v));
        continue;
      }
      commonTakesValue = false;
      commonName = '';
      const p = find(el.name, el.extent);
      let value: unknown;
      if (el.value !== undefined) value = await this.expr(el.value);
      else if (!p && commonTakesValue && elements[i + 1]?.kind === 'argument') {
        i++; // `-ErrorAction Stop`: the common parameter's value, not a positional argument
        continue;
      } else if (!p || p.type === 'switch') value = true;
      else {
        const next = elements[i + 1];
        if (!next || next.kind !== 'argument')
          fail(
            `Missing an argument for parameter '${p.name}'. Specify a parameter of type '${p.type ?? 'System.Object'}' and try again.`,
            'MissingArgument',
            el.extent,
          );
        i++;
        value = await this.expr((next as { value: Expr }).value);
      }
      if (!p && commonName === 'WhatIf') whatIfGiven = toBool(value);
      if (p) bound.set(p.name, value);
    }
    const byPosition = fn.params
      .filter((p) => p.type !== 'switch')
      .map((p, i) => ({ p, order: p.position ?? 1000 + i }))
      .sort((a, b) => a.order - b.order);
    const args: unknown[] = [];
    for (const v of positional) {
      const next = byPosition.find(({ p }) => !bound.has(p.name));
      if (next) bound.set(next.p.name, v);
      else args.push(v);
    }
    const set = parameterSet(fn, bound);
    if (set === null)
      fail(
        'Parameter set cannot be resolved using the specified named parameters.',
        'AmbiguousParameterSet',
        cmd.extent,
      );
    const missing = fn.params.filter(
      (p) => !bound.has(p.name) && (p.mandatory || p.sets?.some((x) => x.name === set && x.mandatory)),
    );
    if (missing.length)
      fail(
        `Cannot process command because of one or more missing mandatory parameters: ${missing.map((p) => p.name).join(' ')}.`,
        'MissingMandatoryParameter',
        cmd.extent,
      );
    const scope = shared ? this.vars : new Map<string, unknown>();
    const psBound = new Hashtable();
    for (const [k, v] of bound) psBound.set(k, v);
    scope.set('psboundparameters', psBound);
    // -WhatIf given to the function: $PSCmdlet.ShouldProcess and the cmdlets it calls heed it
    // (-WhatIf:$false turns the caller's preference off inside).
    if (whatIfGiven !== undefined) scope.set('whatifpreference', whatIfGiven);
    const preference = whatIfGiven ?? toBool(this.getVariable('WhatIfPreference'));
    scope.set('pscmdlet', new CmdletContext(set ?? '__AllParameterSets', preference, fn.name));
    scope.set('args', args);
    scope.set('input', input ?? []);
    if (!shared) this.scopes.push(scope);
    this.callDepth++;
    const out: unknown[] = [];
    const output = emit ?? ((items: unknown[]) => out.push(...items));
    try {
      for (const p of fn.params)
        scope.set(
          p.name.toLowerCase(),
          bound.has(p.name) ? convertTo(p.type, bound.get(p.name)) : await this.paramDefault(p),
        );
      if (fn.blocks) await this.runNamedBlocks(fn.blocks, fn.params, scope, input, output);
      // A script run from the command line (its param block bound to the arguments): its own
      // statements are the top level, each one's output ends with it.
      else await this.runStatements(fn.body, output, output === this.hostOutput ? this.endOfStatement : undefined);
    } catch (err) {
      if (err instanceof ReturnSignal) output(err.value);
      else throw err;
    } finally {
      this.callDepth--;
      if (!shared) this.scopes.pop();
    }
    return out;
  }

  /** An unbound parameter's value: its default, $false for a switch, else $null. */
  private async paramDefault(p: ParamDecl): Promise<unknown> {
    return convertTo(p.type, p.default ? await this.expr(p.default) : p.type === 'switch' ? false : null);
  }

  /** PowerShell's limit on nested invocations, with its error, instead of running out of stack. */
  private checkCallDepth(extent?: Extent): void {
    if (this.callDepth >= MAX_CALL_DEPTH)
      throw new PwshError(
        'The script failed due to call depth overflow.',
        'CallDepthOverflow',
        'InvalidOperation',
        'ScriptCallDepthException',
        extent,
      );
  }

  /**
   * `. target` runs a script file or script block in the current scope (its functions and variables
   * stay); `& target` runs it in a scope of its own, or calls a command by its name. Script paths
   * resolve from the current directory, `\` as a separator too.
   */
  private async invokeOperator(cmd: Command, input: unknown[] | undefined): Promise<unknown[]> {
    const [first, ...rest] = cmd.elements;
    if (first?.kind !== 'argument')
      throw new PwshError(
        `Missing expression after '${cmd.name}' in pipeline element.`,
        'MissingExpression',
        'ParserError',
        'ParseException',
        cmd.nameExtent,
      );
    const target = await this.expr(first.value);
    let body: readonly Statement[];
    if (target instanceof ScriptBlock) body = target.body;
    else {
      const name = toText(target);
      if (cmd.name === '&' && !/\.ps1$/i.test(name)) return this.command({ ...cmd, name, elements: rest }, input);
      let text: string;
      try {
        text = readScriptFile(name, `The script ${name}`);
      } catch {
        throw new PwshError(
          `The term '${name}' is not recognized as the name of a cmdlet, function, script file, or operable program. Check the spelling of the name, or if a path was included, verify that the path is correct and try again.`,
          'CommandNotFoundException',
          'ObjectNotFound',
          'CommandNotFoundException',
          first.value.extent,
          name,
          'String',
        );
      }
      body = parseScript(text);
    }
    const own = cmd.name === '&';
    // A script (or script block) with a param block binds the call's arguments like a function.
    const head = body[0];
    if (head?.kind === 'param') {
      const name = target instanceof ScriptBlock ? '' : toText(target);
      return this.callFunction(
        { name, params: head.params, body: body.slice(1), defaultSet: head.defaultSet },
        { ...cmd, elements: rest },
        input,
        !own,
      );
    }
    this.checkCallDepth(cmd.extent);
    if (own) {
      const scope = new Map<string, unknown>();
      scope.set('input', input ?? []);
      this.scopes.push(scope);
    }
    this.callDepth++;
    const out: unknown[] = [];
    try {
      await this.runStatements(body, (items) => out.push(...items));
    } catch (err) {
      if (err instanceof ReturnSignal) out.push(...err.value);
      else throw err;
    } finally {
      this.callDepth--;
      if (own) this.scopes.pop();
    }
    return out;
  }

  /**
   * begin once; process once per pipeline item ($_ and a ValueFromPipeline parameter set to it), or
   * once without pipeline input; end once.
   */
  private async runNamedBlocks(
    blocks: NamedBlocks,
    params: readonly ParamDecl[],
    scope: Map<string, unknown>,
    input: unknown[] | undefined,
    emit: Emit,
  ): Promise<void> {
    if (blocks.begin) await this.runStatements(blocks.begin, emit);
    if (blocks.process) {
      const piped = params.find((p) => p.fromPipeline);
      const byName = params.filter((p) => p.fromPropertyName);
      for (const item of input ?? [undefined]) {
        if (input) {
          scope.set('_', item);
          scope.set('psitem', item);
          if (piped) scope.set(piped.name.toLowerCase(), convertTo(piped.type, item));
          // ValueFromPipelineByPropertyName: the item's property of the parameter's name, if it has one.
          for (const p of byName) {
            const v = getProperty(item, p.name);
            if (v !== undefined && v !== null) scope.set(p.name.toLowerCase(), convertTo(p.type, v));
          }
        }
        await this.runStatements(blocks.process, emit);
      }
    }
    if (blocks.end) await this.runStatements(blocks.end, emit);
  }

  /** Runs a script block with $_ set; returns its output. */
  async invokeScriptBlock(sb: ScriptBlock, dollarUnder: unknown): Promise<unknown[]> {
    this.checkCallDepth();
    this.callDepth++;
    const had = this.vars.has('_');
    const saved = this.vars.get('_');
    this.vars.set('_', dollarUnder);
    this.vars.set('psitem', dollarUnder);
    try {
      const out: unknown[] = [];
      await this.runStatements(sb.body, (items) => out.push(...items));
      return out;
    } finally {
      this.callDepth--;
      if (had) this.vars.set('_', saved);
      else this.vars.delete('_');
    }
  }
}

// ---- operators ----------------------------------------------------------------------------------

/** [int]$v as PowerShell converts it, or its cast error. */
function toNumber(v: unknown, extent?: Extent): number {
  const n = typeof v === 'number' ? v : Number(toText(v));
  if (Number.isNaN(n) || (typeof v === 'string' && v.trim() === '')) {
    throw new PwshError(
      `Cannot convert value "${toText(v)}" to type "System.Int32".`,
      'InvalidCastFromStringToInteger',
      'InvalidArgument',
      'RuntimeException',
      extent,
    );
  }
  return n;
}

function wildcardToRegExp(pattern: string, caseSensitive: boolean): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i);
      if (end > i) {
        re += `[${pattern.slice(i + 1, end).replace(/[\\^]/g, '\\$&')}]`;
        i = end;
      } else re += '\\[';
    } else if (c === '`' && i + 1 < pattern.length) {
      re += (pattern[++i] as string).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    } else re += c.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, caseSensitive ? 's' : 'is');
}

/** PowerShell wildcard match (-like), case-insensitive unless asked otherwise. */
export function wildcardMatch(value: string, pattern: string, caseSensitive = false): boolean {
  return wildcardToRegExp(pattern, caseSensitive).test(value);
}

function compareScalars(a: unknown, b: unknown, cs: boolean): number {
  if (typeof a === 'number') {
    const n = typeof b === 'number' ? b : Number(toText(b));
    if (!Number.isNaN(n)) return a === n ? 0 : a < n ? -1 : 1;
  }
  if (typeof a === 'boolean') {
    const bb = toBool(b);
    return a === bb ? 0 : a ? 1 : -1;
  }
  const x = toText(a);
  const y = toText(b);
  const l = cs ? x : x.toLowerCase();
  const r = cs ? y : y.toLowerCase();
  return l === r ? 0 : l < r ? -1 : 1;
}

function scalarOp(op: string, a: unknown, b: unknown, cs: boolean): boolean {
  switch (op) {
    case 'eq':
      return compareScalars(a, b, cs) === 0;
    case 'ne':
      return compareScalars(a, b, cs) !== 0;
    case 'gt':
      return compareScalars(a, b, cs) > 0;
    case 'ge':
      return compareScalars(a, b, cs) >= 0;
    case 'lt':
      return compareScalars(a, b, cs) < 0;
    case 'le':
      return compareScalars(a, b, cs) <= 0;
    case 'like':
      return wildcardMatch(toText(a), toText(b), cs);
    case 'notlike':
      return !wildcardMatch(toText(a), toText(b), cs);
    case 'match':
      return new RegExp(toText(b), cs ? '' : 'i').test(toText(a));
    case 'notmatch':
      return !new RegExp(toText(b), cs ? '' : 'i').test(toText(a));
    default:
      return false;
  }
}

/** The most elements a range (`1..n`) makes: enough for any policy script, bounded for memory. */
const MAX_RANGE = 1_000_000;

export function binaryOp(rawOp: string, left: unknown, right: unknown, extent?: Extent): unknown {
  let op = rawOp;
  let cs = false;
  if (/^[ci](eq|ne|gt|ge|lt|le|like|notlike|match|notmatch|contains|notcontains|in|notin|replace|split)$/.test(op)) {
    cs = op.startsWith('c');
    op = op.slice(1);
  }
  switch (op) {
    case '..': {
      // Whole numbers from left to right, either way round, both ends included.
      const from = Math.round(toNumber(left, extent));
      const to = Math.round(toNumber(right, extent));
      const n = Math.abs(to - from) + 1;
      if (n > MAX_RANGE)
        throw new PwshError(
          `The range ${from}..${to} has ${n} elements, more than the ${MAX_RANGE} a range may have.`,
          'RangeTooLarge',
          'InvalidOperation',
          'RuntimeException',
          extent,
        );
      const step = to >= from ? 1 : -1;
      return Array.from({ length: n }, (_, i) => from + i * step);
    }
    case 'f':
      return formatComposite(toText(left), enumerate(right), extent);
    case 'is':
    case 'isnot': {
      const t = right instanceof TypeRef ? right : resolveType(toText(right), extent);
      return isOfType(left, t) === (op === 'is');
    }
    case 'as': {
      const t = right instanceof TypeRef ? right : resolveType(toText(right), extent);
      try {
        return castTo(t, left, extent);
      } catch {
        return null;
      }
    }
    case 'eq':
    case 'ne':
    case 'gt':
    case 'ge':
    case 'lt':
    case 'le':
    case 'like':
    case 'notlike':
    case 'match':
    case 'notmatch':
      // With a collection on the left, comparison operators filter it.
      if (Array.isArray(left)) return left.filter((l) => scalarOp(op, l, right, cs));
      return scalarOp(op, left, right, cs);
    case 'contains':
      return enumerate(left).some((l) => compareScalars(l, right, cs) === 0);
    case 'notcontains':
      return !enumerate(left).some((l) => compareScalars(l, right, cs) === 0);
    case 'in':
      return enumerate(right).some((r) => compareScalars(left, r, cs) === 0);
    case 'notin':
      return !enumerate(right).some((r) => compareScalars(left, r, cs) === 0);
    case 'replace': {
      const [pattern, replacement] = enumerate(right);
      return toText(left).replace(new RegExp(toText(pattern), cs ? 'g' : 'gi'), toText(replacement ?? ''));
    }
    case 'join':
      return enumerate(left).map(toText).join(toText(right));
    case 'band':
    case 'bor':
    case 'bxor':
    case 'shl':
    case 'shr': {
      // Bitwise operators on whole numbers (32-bit, as on [int]).
      const a = Math.trunc(toNumber(left, extent));
      const b = Math.trunc(toNumber(right, extent));
      if (op === 'shl') return a << b;
      if (op === 'shr') return a >> b;
      return op === 'band' ? a & b : op === 'bor' ? a | b : a ^ b;
    }
    case 'split':
      return toText(left).split(new RegExp(toText(right), cs ? '' : 'i'));
    case '+':
      if (Array.isArray(left)) return [...left, ...enumerate(right)];
      if (typeof left === 'number') return left + toNumber(right, extent);
      return toText(left) + toText(right);
    case '-':
    case '*':
    case '/':
    case '%': {
      if (op === '*' && typeof left === 'string') return left.repeat(toNumber(right, extent));
      const a = toNumber(left, extent);
      const b = toNumber(right, extent);
      return op === '-' ? a - b : op === '*' ? a * b : op === '/' ? a / b : a % b;
    }
    default:
      throw new PwshError(
        `The operator '-${rawOp}' is not supported.`,
        'OperatorNotSupported',
        'InvalidOperation',
        'RuntimeException',
        extent,
      );
  }
}

/** The error record `$_` holds in a catch block (its text is the message). */
const ERROR_RECORD = Symbol('errorRecord');

/** An error record as scripts see it; a cmdlet's own error names the cmdlet (Id,Get-NetIPsecRule). */
function errorRecord(e: PwshError, commandName?: string): PSObject {
  const o = psObject(
    'System.Management.Automation.ErrorRecord',
    {
      Exception: psObject(`System.${e.exceptionType}`, { Message: e.message }, e.message),
      FullyQualifiedErrorId: commandName ? `${e.errorId},${commandName}` : e.errorId,
      CategoryInfo: `${e.category}: (${e.target}:${e.targetType}) [${commandName ?? ''}], ${e.exceptionType}`,
      TargetObject: e.target,
    },
    e.message,
  );
  (o as unknown as Record<symbol, unknown>)[ERROR_RECORD] = e;
  return o;
}

function isErrorRecord(v: unknown): v is PSObject & { [ERROR_RECORD]: PwshError } {
  return isPSObject(v) && ERROR_RECORD in v;
}

/** A function parameter's value as its type literal converts it. */
function convertTo(type: string | undefined, v: unknown): unknown {
  switch (type) {
    case undefined:
      return v;
    case 'switch':
    case 'bool':
    case 'boolean':
      return toBool(v);
    case 'string':
      return v === null ? '' : toText(v);
    case 'int':
    case 'int32':
    case 'long':
    case 'double':
      return v === null ? 0 : Number(toText(v));
    case 'string[]':
      return enumerate(v).map(toText);
    case 'array':
    case 'object[]':
      return enumerate(v);
    default:
      return v;
  }
}

/**
 * .NET composite formatting as `-f` does it: `{index[,alignment][:format]}`, `{{` and `}}`; number
 * formats D, N, F, X and P with an optional precision.
 */
export function formatComposite(format: string, args: unknown[], extent?: Extent): string {
  const fail = (): never => {
    throw new PwshError(
      `Error formatting a string: Index (zero based) must be greater than or equal to zero and less than the size of the argument list..`,
      'FormatError',
      'InvalidOperation',
      'RuntimeException',
      extent,
      format,
      'String',
    );
  };
  return format.replace(
    /\{\{|\}\}|\{(\d+)(?:\s*,\s*(-?\d+))?(?::([^}]*))?\}/g,
    (m, index?: string, align?: string, spec?: string) => {
      if (m === '{{') return '{';
      if (m === '}}') return '}';
      const i = Number(index);
      if (i >= args.length) fail();
      let text = formatValue(args[i], spec);
      const width = Number(align ?? 0);
      if (width > 0) text = text.padStart(width);
      else if (width < 0) text = text.padEnd(-width);
      return text;
    },
  );
}

function formatValue(v: unknown, spec: string | undefined): string {
  const m = spec ? /^([DdNnFfXxPp])(\d*)$/.exec(spec) : null;
  if (!m || (typeof v !== 'number' && !(typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v)))) return toText(v);
  const n = Number(v);
  const kind = (m[1] as string).toUpperCase();
  const digits = m[2] ? Number(m[2]) : undefined;
  switch (kind) {
    case 'D':
      return (n < 0 ? '-' : '') + String(Math.trunc(Math.abs(n))).padStart(digits ?? 0, '0');
    case 'X': {
      const hex = (Math.trunc(n) >>> 0).toString(16).padStart(digits ?? 0, '0');
      return m[1] === 'X' ? hex.toUpperCase() : hex;
    }
    case 'F':
      return n.toFixed(digits ?? 2);
    case 'N':
      return n.toLocaleString('en-US', { minimumFractionDigits: digits ?? 2, maximumFractionDigits: digits ?? 2 });
    case 'P':
      return `${(n * 100).toLocaleString('en-US', { minimumFractionDigits: digits ?? 2, maximumFractionDigits: digits ?? 2 })} %`;
  }
  return toText(v);
}
