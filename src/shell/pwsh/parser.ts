/**
 * Recursive-descent parser for the PowerShell subset: statements (assignments, pipelines, if/elseif/
 * else, foreach, for, while, do-while/until, break, continue, function with param() blocks and
 * parameter attributes, return, throw, exit, try/catch/finally with typed catch), commands with
 * parameters and arguments, and expressions (variables, member access, strings, numbers, arrays,
 * hashtables, script blocks, comparison and logical operators).
 */
import { type Extent, Lexer, type LexMode, PwshSyntaxError, type StringPart, type Token } from './lexer.ts';

export type Expr =
  | { kind: 'constant'; value: string | number; bare: boolean; extent: Extent }
  | { kind: 'string'; parts: ExpandablePart[]; extent: Extent }
  | { kind: 'variable'; name: string; extent: Extent }
  /** `.Name`, or `.$name` / `.$( … )`: the member named by a value (`nameExpr`; `name` is then empty). */
  | { kind: 'member'; target: Expr; name: string; nameExpr?: Expr; extent: Extent }
  | { kind: 'method'; target: Expr; name: string; args: Expr[]; extent: Extent }
  | { kind: 'index'; target: Expr; index: Expr; extent: Extent }
  | { kind: 'array'; items: Expr[]; extent: Extent }
  | { kind: 'hashtable'; entries: { key: Expr; value: Pipeline }[]; extent: Extent }
  | { kind: 'scriptblock'; body: Statement[]; text: string; extent: Extent }
  | { kind: 'subexpression'; body: Statement[]; array: boolean; extent: Extent }
  | { kind: 'paren'; pipeline: Pipeline; extent: Extent }
  | { kind: 'binary'; op: string; left: Expr; right: Expr; extent: Extent }
  | { kind: 'unary'; op: string; operand: Expr; extent: Extent }
  | { kind: 'assign'; target: Expr; value: Pipeline; extent: Extent }
  | { kind: 'type'; name: string; extent: Extent }
  | { kind: 'cast'; type: string; operand: Expr; extent: Extent }
  | { kind: 'static'; type: string; name: string; args?: Expr[]; extent: Extent };

export type CommandElement =
  | { kind: 'parameter'; name: string; value?: Expr; extent: Extent }
  | { kind: 'argument'; value: Expr; extent: Extent }
  | { kind: 'splat'; name: string; extent: Extent };

export interface Command {
  kind: 'command';
  name: string;
  nameExtent: Extent;
  elements: CommandElement[];
  extent: Extent;
}

export interface Pipeline {
  kind: 'pipeline';
  elements: (Command | { kind: 'expression'; expr: Expr; extent: Extent })[];
  extent: Extent;
}

/** A parameter of a function: `[Parameter(Mandatory)] [string] $Name = 'default'`. */
export interface ParamDecl {
  name: string;
  /** The type literal's name, lower case (`string`, `int`, `switch`, `string[]` …). */
  type?: string;
  default?: Expr;
  mandatory: boolean;
  position?: number;
  /** `[Parameter(ValueFromPipeline)]`: bound to each pipeline item in the process block. */
  fromPipeline?: boolean;
  /** `[Parameter(ValueFromPipelineByPropertyName)]`: bound to the item's property of that name. */
  fromPropertyName?: boolean;
  /**
   * The parameter sets it belongs to (`[Parameter(ParameterSetName = 'X', Mandatory)]`, one entry
   * per attribute naming a set); absent: every set, with `mandatory` as given.
   */
  sets?: { name: string; mandatory: boolean }[];
  extent: Extent;
}

/** A function's named blocks (`begin { } process { } end { }`). */
export interface NamedBlocks {
  begin?: Statement[];
  process?: Statement[];
  end?: Statement[];
}

export type Statement =
  | Pipeline
  /** `$x = …`, or `$x += …` and the other compound forms (op: the arithmetic operator). */
  | { kind: 'assignment'; target: Expr; value: Pipeline; op?: string; extent: Extent }
  /** `$i++` / `$i--` as a statement (nothing is output). */
  | { kind: 'step'; target: Expr; delta: 1 | -1; extent: Extent }
  | { kind: 'if'; clauses: { cond: Pipeline; body: Statement[] }[]; otherwise?: Statement[]; extent: Extent }
  | { kind: 'foreach'; variable: string; collection: Pipeline; body: Statement[]; extent: Extent }
  | { kind: 'for'; init?: Statement; cond?: Pipeline; step?: Statement; body: Statement[]; extent: Extent }
  | { kind: 'while'; cond: Pipeline; body: Statement[]; extent: Extent }
  | { kind: 'do'; body: Statement[]; cond: Pipeline; until: boolean; extent: Extent }
  | {
      kind: 'function';
      name: string;
      params: ParamDecl[];
      body: Statement[];
      blocks?: NamedBlocks;
      /** `[CmdletBinding(DefaultParameterSetName = …)]`. */
      defaultSet?: string;
      extent: Extent;
    }
  | {
      kind: 'flow';
      keyword: 'return' | 'break' | 'continue' | 'throw' | 'exit';
      value?: Pipeline;
      extent: Extent;
    }
  | {
      kind: 'switch';
      value: Pipeline;
      /** How a non-script-block pattern matches: -eq, -like or -match. */
      match: 'exact' | 'wildcard' | 'regex';
      caseSensitive: boolean;
      clauses: { pattern: Expr | 'default'; body: Statement[] }[];
      extent: Extent;
    }
  | {
      kind: 'try';
      body: Statement[];
      catches: { types: string[]; body: Statement[]; extent: Extent }[];
      final?: Statement[];
      extent: Extent;
    }
  /**
   * `[CmdletBinding()] param( … )` opening a script file or a script block: its parameters, bound
   * from the arguments of the call (`& script.ps1 -Name x`, `-File script.ps1 -Name x`).
   */
  | { kind: 'param'; params: ParamDecl[]; defaultSet?: string; extent: Extent }
  /** `trap [Type] { … }`: handles terminating errors anywhere in the scope it stands in. */
  | { kind: 'trap'; types: string[]; body: Statement[]; extent: Extent };

const KEYWORDS = new Set([
  'if',
  'elseif',
  'else',
  'foreach',
  'for',
  'while',
  'do',
  'until',
  'switch',
  'function',
  'filter',
  'param',
  'begin',
  'process',
  'end',
  'try',
  'catch',
  'finally',
  'trap',
  'return',
  'break',
  'continue',
  'throw',
  'exit',
  'class',
  'enum',
  'workflow',
  'configuration',
]);

const COMPARISON =
  /^[ci]?(eq|ne|gt|ge|lt|le|like|notlike|match|notmatch|contains|notcontains|in|notin|replace|split)$|^(is|isnot|as|join|band|bor|bxor|shl|shr)$/;

/** A part of an expandable string: text, a variable, or a `$( … )` parsed with the script. */
export type ExpandablePart = Exclude<StringPart, { subexpression: string }> | { body: Statement[]; extent: Extent };

export function parseScript(source: string): Statement[] {
  return new Parser(source).parseScript();
}

/**
 * How deep parentheses, blocks, subexpressions and prefix operators may nest. Scripts admins write
 * nest a handful of levels; past this the parser stops with a parse error at that point instead of
 * running out of stack.
 */
export const MAX_NESTING = 200;

/** `[CmdletBinding(DefaultParameterSetName = 'X')]`: X. */
function defaultSetOf(lit: { name: string; args?: string }): string | undefined {
  if (lit.name.toLowerCase() !== 'cmdletbinding' || lit.args === undefined) return undefined;
  const m = /\bDefaultParameterSetName\s*=\s*(?:'([^']*)'|"([^"]*)")/i.exec(lit.args);
  return m ? (m[1] ?? m[2]) : undefined;
}

class Parser {
  private readonly lx: Lexer;

  constructor(
    private readonly source: string,
    /** Nesting levels already open around this source (a `$( … )` inside a string). */
    private depth = 0,
  ) {
    this.lx = new Lexer(source);
  }

  parseScript(): Statement[] {
    const body = this.statements();
    const t = this.lx.next('command');
    if (t.kind !== 'eof') throw this.unexpected(t);
    return body;
  }

  // ---- statements -------------------------------------------------------------------------------

  private statements(): Statement[] {
    const out: Statement[] = [];
    for (;;) {
      const t = this.lx.peek('command');
      if (t.kind === 'newline' || t.kind === 'semi') {
        this.lx.next('command');
        continue;
      }
      if (t.kind === 'eof' || t.kind === 'rbrace' || t.kind === 'rparen') return out;
      const param = out.length === 0 ? this.paramBlock() : undefined;
      out.push(param ?? this.statement());
      if (param) continue; // `{ param($a) "…" }`: the body may follow on the same line
      const end = this.lx.peek('command');
      if (
        end.kind !== 'newline' &&
        end.kind !== 'semi' &&
        end.kind !== 'eof' &&
        end.kind !== 'rbrace' &&
        end.kind !== 'rparen'
      ) {
        throw this.unexpected(end);
      }
    }
  }

  private statement(): Statement {
    const start = this.lx.offset;
    const w = this.lx.peek('command');
    if (w.kind === 'word') {
      const keyword = w.value.toLowerCase();
      const parse = Object.hasOwn(this.keywordParsers, keyword) ? this.keywordParsers[keyword] : undefined;
      if (parse) {
        this.lx.next('command');
        return this.nested(w.extent, () => parse(w.extent));
      }
    }
    const t = this.lx.peek('expression');
    if (t.kind === 'lbracket') {
      const typed = this.typedAssignment(start);
      if (typed) return typed;
    }
    if (t.kind === 'variable' && !t.splat) {
      let target = this.postfix(this.primary());
      // `$first, $rest = $list`: several variables assigned at once.
      if (this.lx.peek('expression').kind === 'comma') {
        const items = [target];
        while (this.lx.peek('expression').kind === 'comma') {
          this.lx.next('expression');
          const v = this.lx.peek('expression');
          if (v.kind !== 'variable' || v.splat) break;
          items.push(this.postfix(this.primary()));
        }
        const last = items[items.length - 1] as Expr;
        target = { kind: 'array', items, extent: { start: t.extent.start, end: last.extent.end } };
      }
      const eq = this.lx.peek('expression');
      if (target.kind === 'array' && (eq.kind !== 'assign' || eq.op)) {
        this.lx.reset(start); // `$a, $b` is an array expression after all
        return this.pipeline();
      }
      if (eq.kind === 'assign') {
        this.lx.next('expression');
        this.skipNewlines();
        const value = this.assignedValue();
        return {
          kind: 'assignment',
          target,
          value,
          op: eq.op,
          extent: { start: t.extent.start, end: value.extent.end },
        };
      }
      if (eq.kind === 'operator' && (eq.op === '++' || eq.op === '--')) {
        this.lx.next('expression');
        return {
          kind: 'step',
          target,
          delta: eq.op === '++' ? 1 : -1,
          extent: { start: t.extent.start, end: eq.extent.end },
        };
      }
      this.lx.reset(start);
    }
    // `++$i` / `--$i` as a statement.
    if (t.kind === 'operator' && (t.op === '++' || t.op === '--')) {
      this.lx.next('expression');
      const v = this.lx.peek('expression');
      if (v.kind === 'variable' && !v.splat) {
        const target = this.postfix(this.primary());
        return {
          kind: 'step',
          target,
          delta: t.op === '++' ? 1 : -1,
          extent: { start: t.extent.start, end: target.extent.end },
        };
      }
      this.lx.reset(start);
    }
    return this.pipeline();
  }

  /**
   * `[int]$n = …`, `[IPAddress] $ip = …`, `[ValidateNotNull()][string]$s = …`: an assignment whose
   * value is converted to the type next to the variable (undefined, nothing read, if this is not one).
   */
  private typedAssignment(start: number): Statement | undefined {
    let type: { name: string; args?: string } | undefined;
    try {
      while (this.lx.peek('expression').kind === 'lbracket') type = this.typeLiteral();
    } catch (err) {
      if (!(err instanceof PwshSyntaxError)) throw err;
      type = undefined;
    }
    // Decided by looking ahead only (a type, a plain variable, `=`): nothing is parsed twice.
    const v = this.lx.peek('expression');
    const plain = v.kind === 'variable' && !v.splat && !/^[.[]/.test(this.source[v.extent.end] ?? '');
    if (!type || type.args !== undefined || this.source.startsWith('::', this.lx.offset) || !plain) {
      this.lx.reset(start); // a cast or type expression: parsed as one
      return undefined;
    }
    const target = this.primary();
    const eq = this.lx.peek('expression');
    if (eq.kind !== 'assign' || eq.op) {
      this.lx.reset(start);
      return undefined;
    }
    this.lx.next('expression');
    this.skipNewlines();
    const value = this.assignedValue();
    const at = { start, end: value.extent.end };
    const cast: Expr = {
      kind: 'cast',
      type: type.name,
      operand: { kind: 'paren', pipeline: value, extent: value.extent },
      extent: at,
    };
    return {
      kind: 'assignment',
      target,
      value: { kind: 'pipeline', elements: [{ kind: 'expression', expr: cast, extent: at }], extent: at },
      extent: at,
    };
  }

  /**
   * A script's or script block's `param( … )`, after any attributes (`[CmdletBinding()]`); undefined
   * (nothing read) when the body does not open with one.
   */
  private paramBlock(): Extract<Statement, { kind: 'param' }> | undefined {
    const start = this.lx.offset;
    const at = this.lx.peek('command').extent;
    let defaultSet: string | undefined;
    try {
      while (this.lx.peek('expression').kind === 'lbracket') {
        defaultSet ??= defaultSetOf(this.typeLiteral());
        this.skipNewlines();
      }
    } catch (err) {
      if (!(err instanceof PwshSyntaxError)) throw err;
      this.lx.reset(start); // not attributes: the statement says what it is
      return undefined;
    }
    const w = this.lx.peek('command');
    if (w.kind !== 'word' || w.value.toLowerCase() !== 'param') {
      this.lx.reset(start);
      return undefined;
    }
    this.lx.next('command');
    this.skipNewlines();
    this.expect('command', 'lparen', "Missing '(' after 'param'.", 'MissingOpenParenthesisAfterKeyword');
    const params = this.paramList('rparen');
    return { kind: 'param', params, defaultSet, extent: this.from(at) };
  }

  /**
   * What an assignment assigns: a pipeline, or (as PowerShell allows) a statement whose output is
   * the value — `$x = if (…) { … } else { … }`, `$x = switch (…) { … }`, `$x = foreach (…) { … }`,
   * `$x = try { … } catch { … }` — or another assignment, whose value it passes on (`$a = $b = $null`).
   */
  private assignedValue(): Pipeline {
    const start = this.lx.offset;
    const w = this.lx.peek('command');
    const keyword = w.kind === 'word' ? w.value.toLowerCase() : '';
    let expr: Expr | undefined;
    if (['if', 'switch', 'foreach', 'for', 'while', 'do', 'try'].includes(keyword)) {
      const st = this.statement();
      expr = { kind: 'subexpression', body: [st], array: false, extent: st.extent };
    } else {
      // Parsed once as a pipeline; a lone variable (or member, or index) followed by `=` is a
      // chained assignment: `$a = $b = $null`.
      const p = this.pipeline();
      const only = p.elements.length === 1 ? p.elements[0] : undefined;
      const eq = this.lx.peek('expression');
      const assignable = only?.kind === 'expression' && ['variable', 'member', 'index'].includes(only.expr.kind);
      if (!assignable || eq.kind !== 'assign' || eq.op) return p;
      this.lx.next('expression');
      this.skipNewlines();
      const value = this.assignedValue();
      expr = { kind: 'assign', target: only.expr, value, extent: { start, end: value.extent.end } };
    }
    return { kind: 'pipeline', elements: [{ kind: 'expression', expr, extent: expr.extent }], extent: expr.extent };
  }

  // ---- keyword statements ------------------------------------------------------------------------

  private readonly keywordParsers: Record<string, ((at: Extent) => Statement) | undefined> = {
    if: (at) => this.ifStatement(at),
    foreach: (at) => this.foreachStatement(at),
    for: (at) => this.forStatement(at),
    while: (at) => {
      const cond = this.condition('while');
      const body = this.block('while');
      return { kind: 'while', cond, body, extent: this.from(at) };
    },
    do: (at) => {
      const body = this.block('do');
      this.skipNewlines();
      const k = this.lx.next('command');
      const word = k.kind === 'word' ? k.value.toLowerCase() : '';
      if (word !== 'while' && word !== 'until')
        throw new PwshSyntaxError(
          'Missing while or until keyword in do loop.',
          k.extent,
          'MissingWhileOrUntilInDoWhile',
        );
      const cond = this.condition(word);
      return { kind: 'do', body, cond, until: word === 'until', extent: this.from(at) };
    },
    function: (at) => this.functionStatement(at),
    filter: (at) => this.functionStatement(at, true),
    return: (at) => this.flow('return', at),
    throw: (at) => this.flow('throw', at),
    exit: (at) => this.flow('exit', at),
    break: (at) => ({ kind: 'flow', keyword: 'break', extent: at }),
    continue: (at) => ({ kind: 'flow', keyword: 'continue', extent: at }),
    try: (at) => this.tryStatement(at),
    trap: (at) => {
      this.skipNewlines();
      const types = this.lx.peek('expression').kind === 'lbracket' ? [this.typeLiteral().name] : [];
      return { kind: 'trap', types, body: this.block('trap'), extent: this.from(at) };
    },
    switch: (at) => this.switchStatement(at),
  };

  private switchStatement(at: Extent): Statement {
    let match: 'exact' | 'wildcard' | 'regex' = 'exact';
    let caseSensitive = false;
    for (;;) {
      const t = this.lx.peek('command');
      if (t.kind !== 'parameter') break;
      this.lx.next('command');
      const name = t.name.toLowerCase();
      if ('regex'.startsWith(name)) match = 'regex';
      else if ('wildcard'.startsWith(name)) match = 'wildcard';
      else if ('exact'.startsWith(name)) match = 'exact';
      else if ('casesensitive'.startsWith(name)) caseSensitive = true;
      else throw new PwshSyntaxError(`Invalid switch statement option '-${t.name}'.`, t.extent, 'InvalidSwitchFlag');
    }
    const value = this.condition('switch');
    this.skipNewlines();
    this.expect(
      'command',
      'lbrace',
      'Missing condition in switch statement clause.',
      'MissingSwitchConditionExpression',
    );
    const clauses: { pattern: Expr | 'default'; body: Statement[] }[] = [];
    for (;;) {
      this.skipNewlines();
      while (this.lx.peek('command').kind === 'semi') this.lx.next('command');
      this.skipNewlines();
      const t = this.lx.peek('command');
      if (t.kind === 'rbrace') {
        this.lx.next('command');
        break;
      }
      let pattern: Expr | 'default';
      if (t.kind === 'word' && t.value.toLowerCase() === 'default') {
        this.lx.next('command');
        pattern = 'default';
      } else if (t.kind === 'lbrace') pattern = this.primary('command');
      else pattern = this.commandArgument();
      clauses.push({ pattern, body: this.block('switch') });
    }
    return { kind: 'switch', value, match, caseSensitive, clauses, extent: this.from(at) };
  }

  /** The next token, which must be of `kind`; a parse error with PowerShell's wording otherwise. */
  private expect<K extends Token['kind']>(
    mode: LexMode,
    kind: K,
    message: string,
    errorId: string,
  ): Token & { kind: K } {
    const t = this.lx.next(mode);
    if (t.kind !== kind) throw new PwshSyntaxError(message, t.extent, errorId);
    return t as Token & { kind: K };
  }

  /** Inside a parameter list, where a comma separates parameters rather than array items. */
  private noArrayComma = false;

  /**
   * Parses with a comma making arrays (`arrays`) or separating items (parameter defaults, method
   * arguments), then restores the setting around it.
   */
  private withArrayComma<T>(arrays: boolean, parse: () => T): T {
    const before = this.noArrayComma;
    this.noArrayComma = !arrays;
    try {
      return parse();
    } finally {
      this.noArrayComma = before;
    }
  }

  /** The extent from `at` to what was read last. */
  private from(at: Extent): Extent {
    return { start: at.start, end: this.lx.offset };
  }

  /** `{ statements }` after a keyword. */
  private block(keyword: string): Statement[] {
    this.skipNewlines();
    this.expect('command', 'lbrace', `Missing statement block after ${keyword}.`, 'MissingStatementBlock');
    const body = this.statements();
    this.expect(
      'command',
      'rbrace',
      "Missing closing '}' in statement block or type definition.",
      'MissingEndCurlyBrace',
    );
    return body;
  }

  /** `( pipeline )` after if, elseif, while, until. */
  private condition(keyword: string): Pipeline {
    this.skipNewlines();
    this.expect(
      'command',
      'lparen',
      `Missing '(' after '${keyword}' in ${keyword} statement.`,
      'MissingOpenParenthesisAfterKeyword',
    );
    this.skipNewlines();
    const cond = this.pipeline();
    this.skipNewlines();
    this.expect(
      'command',
      'rparen',
      `Missing closing ')' after expression in '${keyword}' statement.`,
      'MissingEndParenthesisAfterStatement',
    );
    return cond;
  }

  private ifStatement(at: Extent): Statement {
    const clauses = [{ cond: this.condition('if'), body: this.block('if') }];
    let otherwise: Statement[] | undefined;
    for (;;) {
      // elseif / else may follow on a later line.
      const save = this.lx.offset;
      this.skipNewlines();
      const k = this.lx.peek('command');
      const word = k.kind === 'word' ? k.value.toLowerCase() : '';
      if (word === 'elseif') {
        this.lx.next('command');
        clauses.push({ cond: this.condition('elseif'), body: this.block('elseif') });
        continue;
      }
      if (word === 'else') {
        this.lx.next('command');
        otherwise = this.block('else');
        break;
      }
      this.lx.reset(save);
      break;
    }
    return { kind: 'if', clauses, otherwise, extent: this.from(at) };
  }

  private foreachStatement(at: Extent): Statement {
    this.skipNewlines();
    this.expect(
      'command',
      'lparen',
      "Missing '(' after 'foreach' in foreach statement.",
      'MissingOpenParenthesisAfterKeyword',
    );
    this.skipNewlines();
    const v = this.expect(
      'expression',
      'variable',
      'Missing variable name after foreach.',
      'MissingVariableNameAfterForeach',
    );
    const inWord = this.lx.next('command');
    if (inWord.kind !== 'word' || inWord.value.toLowerCase() !== 'in')
      throw new PwshSyntaxError("Missing 'in' after variable in foreach loop.", inWord.extent, 'MissingInInForeach');
    this.skipNewlines();
    const collection = this.pipeline();
    this.skipNewlines();
    this.expect('command', 'rparen', "Missing closing ')' in foreach statement.", 'MissingEndParenthesisAfterForeach');
    const body = this.block('foreach');
    return { kind: 'foreach', variable: v.name, collection, body, extent: this.from(at) };
  }

  private forStatement(at: Extent): Statement {
    this.skipNewlines();
    this.expect('command', 'lparen', "Missing '(' after 'for' in for statement.", 'MissingOpenParenthesisAfterKeyword');
    const part = (last: boolean): Statement | undefined => {
      this.skipNewlines();
      const t = this.lx.peek('command');
      const st = (last ? t.kind === 'rparen' : t.kind === 'semi') ? undefined : this.statement();
      this.skipNewlines();
      const end = this.lx.next('command');
      if (end.kind !== (last ? 'rparen' : 'semi'))
        throw new PwshSyntaxError(
          last ? "Missing closing ')' after expression in 'for' statement." : "Missing ';' in for statement.",
          end.extent,
          'MissingEndParenthesisAfterStatement',
        );
      return st;
    };
    const init = part(false);
    const cond = part(false);
    const step = part(true);
    if (cond && cond.kind !== 'pipeline')
      throw new PwshSyntaxError(
        'The condition of a for loop must be an expression.',
        cond.extent,
        'InvalidForCondition',
      );
    const body = this.block('for');
    return { kind: 'for', init, cond: cond as Pipeline | undefined, step, body, extent: this.from(at) };
  }

  private flow(keyword: 'return' | 'throw' | 'exit', at: Extent): Statement {
    const t = this.lx.peek('command');
    const value = ['newline', 'semi', 'eof', 'rbrace', 'rparen'].includes(t.kind) ? undefined : this.pipeline();
    return { kind: 'flow', keyword, value, extent: this.from(at) };
  }

  private tryStatement(at: Extent): Statement {
    const body = this.block('try');
    const catches: { types: string[]; body: Statement[]; extent: Extent }[] = [];
    let final: Statement[] | undefined;
    for (;;) {
      const save = this.lx.offset;
      this.skipNewlines();
      const k = this.lx.peek('command');
      const word = k.kind === 'word' ? k.value.toLowerCase() : '';
      if (word === 'catch' && final === undefined) {
        this.lx.next('command');
        const types: string[] = [];
        for (;;) {
          this.skipNewlines();
          if (this.lx.peek('expression').kind !== 'lbracket') break;
          types.push(this.typeLiteral().name);
          const comma = this.lx.peek('command');
          if (comma.kind === 'comma') this.lx.next('command');
          else break;
        }
        catches.push({ types, body: this.block('catch'), extent: k.extent });
        continue;
      }
      if (word === 'finally' && final === undefined) {
        this.lx.next('command');
        final = this.block('finally');
        continue;
      }
      this.lx.reset(save);
      break;
    }
    if (catches.length === 0 && final === undefined)
      throw new PwshSyntaxError(
        'The Try statement is missing its Catch or Finally block.',
        { start: at.start, end: this.lx.offset },
        'MissingCatchOrFinally',
      );
    return { kind: 'try', body, catches, final, extent: this.from(at) };
  }

  /**
   * `[Name]`, `[Name[]]`, `[Name(arguments)]` at the lexer's position: the name and, for an
   * attribute, the text inside its parentheses. Read from the source (type names hold dots).
   */
  private typeLiteral(): { name: string; args?: string; extent: Extent } {
    const open = this.lx.next('expression');
    const start = open.extent.start;
    let depth = 0;
    let i = start;
    let quote = '';
    for (; i < this.source.length; i++) {
      const c = this.source[i] as string;
      if (quote) {
        if (c === quote) quote = '';
      } else if (c === "'" || c === '"') quote = c;
      else if (c === '[' || c === '(') depth++;
      else if (c === ']' || c === ')') {
        depth--;
        if (depth === 0) break;
      }
    }
    if (i >= this.source.length)
      throw new PwshSyntaxError(
        'Missing ] at end of type token.',
        { start, end: this.source.length },
        'EndSquareBracketExpectedAtEndOfType',
      );
    const inner = this.source.slice(start + 1, i).trim();
    this.lx.reset(i + 1);
    const paren = inner.indexOf('(');
    const extent = { start, end: i + 1 };
    return paren < 0
      ? { name: inner, extent }
      : { name: inner.slice(0, paren).trim(), args: inner.slice(paren + 1, inner.lastIndexOf(')')), extent };
  }

  /** `[type]` on its own, `[type]operand` (a cast), or `[type]::Member` / `[type]::Method(args)`. */
  private typeExpression(at: Extent): Expr {
    this.lx.reset(at.start);
    const lit = this.typeLiteral();
    if (this.source.startsWith('::', this.lx.offset)) {
      const m = /[A-Za-z_][A-Za-z0-9_]*/y;
      m.lastIndex = this.lx.offset + 2;
      const name = m.exec(this.source)?.[0];
      if (!name)
        throw new PwshSyntaxError(
          'Missing property name after ::.',
          { start: at.start, end: this.lx.offset + 2 },
          'MissingPropertyName',
        );
      this.lx.reset(this.lx.offset + 2 + name.length);
      if (this.source[this.lx.offset] !== '(') return { kind: 'static', type: lit.name, name, extent: this.from(at) };
      this.lx.reset(this.lx.offset + 1);
      const args = this.methodArguments();
      return { kind: 'static', type: lit.name, name, args, extent: this.from(at) };
    }
    const next = this.lx.peek('expression');
    const operandFollows =
      ['variable', 'string', 'number', 'lparen', 'dollarparen', 'atparen', 'atbrace', 'lbracket'].includes(next.kind) &&
      next.extent.start === this.lx.offset;
    if (!operandFollows) return { kind: 'type', name: lit.name, extent: lit.extent };
    const operand = this.unary();
    return { kind: 'cast', type: lit.name, operand, extent: { start: at.start, end: operand.extent.end } };
  }

  /** A method call's arguments after its `(`, through the `)`. */
  private methodArguments(): Expr[] {
    const args: Expr[] = [];
    // A comma separates the arguments (it would make an array of them otherwise: `,` binds tighter
    // than comparison); an array argument is written in parentheses.
    const argument = (): Expr => this.withArrayComma(false, () => this.comparison());
    this.skipNewlines();
    if (this.lx.peek('expression').kind !== 'rparen') {
      args.push(argument());
      while (this.lx.peek('expression').kind === 'comma') {
        this.lx.next('expression');
        this.skipNewlines();
        args.push(argument());
      }
    }
    this.skipNewlines();
    this.expect('expression', 'rparen', "Missing ')' in method call.", 'MissingEndParenthesisInMethodCall');
    return args;
  }

  /** `param( … )`: attributes, type, `$name`, default. */
  private paramList(close: 'rparen'): ParamDecl[] {
    const out: ParamDecl[] = [];
    for (;;) {
      this.skipNewlines();
      const t = this.lx.peek('command');
      if (t.kind === close) {
        this.lx.next('command');
        return out;
      }
      let type: string | undefined;
      let mandatory = false;
      let fromPipeline = false;
      let fromPropertyName = false;
      let position: number | undefined;
      let sets: { name: string; mandatory: boolean }[] | undefined;
      const start = t.extent.start;
      while (this.lx.peek('expression').kind === 'lbracket') {
        const lit = this.typeLiteral();
        if (lit.args !== undefined) {
          if (lit.name.toLowerCase() === 'parameter') {
            const must =
              /\bmandatory\b(\s*=\s*\$true)?/i.test(lit.args) && !/\bmandatory\s*=\s*\$false/i.test(lit.args);
            const set = /\bParameterSetName\s*=\s*(?:'([^']*)'|"([^"]*)")/i.exec(lit.args);
            if (set) (sets ??= []).push({ name: set[1] ?? set[2] ?? '', mandatory: must });
            else mandatory ||= must;
            fromPipeline ||= /\bValueFromPipeline\b(?!ByPropertyName)(?!\s*=\s*\$false)/i.test(lit.args);
            fromPropertyName ||= /\bValueFromPipelineByPropertyName\b(?!\s*=\s*\$false)/i.test(lit.args);
            const pos = /\bposition\s*=\s*(\d+)/i.exec(lit.args);
            if (pos) position = Number(pos[1]);
          }
        } else type = lit.name.toLowerCase();
        this.skipNewlines();
      }
      const v = this.expect(
        'expression',
        'variable',
        'Missing parameter name (a variable such as $Name) in the parameter list.',
        'InvalidFunctionParameter',
      );
      let dflt: Expr | undefined;
      if (this.lx.peek('expression').kind === 'assign') {
        this.lx.next('expression');
        this.skipNewlines();
        // In a parameter list the comma ends the default (parenthesise an array default).
        dflt = this.withArrayComma(false, () => this.expression());
      }
      out.push({
        name: v.name,
        type,
        sets,
        default: dflt,
        mandatory,
        position,
        fromPipeline,
        fromPropertyName,
        extent: { start, end: this.lx.offset },
      });
      this.skipNewlines();
      const sep = this.lx.next('command');
      if (sep.kind === close) return out;
      if (sep.kind !== 'comma')
        throw new PwshSyntaxError(
          "Missing ')' in function parameter list.",
          sep.extent,
          'MissingEndParenthesisInFunctionParameterList',
        );
    }
  }

  /** `function`, or `filter` (its body is a process block: it runs once per pipeline item, with $_). */
  private functionStatement(at: Extent, filter = false): Statement {
    const nameTok = this.expect('command', 'word', 'Missing name after function keyword.', 'MissingNameAfterKeyword');
    let params: ParamDecl[] = [];
    let defaultSet: string | undefined;
    if (this.lx.peek('command').kind === 'lparen') {
      this.lx.next('command');
      params = this.paramList('rparen');
    }
    this.skipNewlines();
    this.expect('command', 'lbrace', 'Missing function body in function declaration.', 'MissingFunctionBody');
    // [CmdletBinding()] and other attributes, then param( … ), open the body.
    this.skipNewlines();
    const block = this.paramBlock();
    if (block) ({ params, defaultSet } = block);
    else
      while (this.lx.peek('expression').kind === 'lbracket') {
        this.typeLiteral(); // attributes without a param block
        this.skipNewlines();
      }
    // begin { } process { } end { }: named blocks instead of a plain body.
    let blocks: NamedBlocks | undefined;
    for (;;) {
      this.skipNewlines();
      const t = this.lx.peek('command');
      const word = t.kind === 'word' ? t.value.toLowerCase() : '';
      if (word !== 'begin' && word !== 'process' && word !== 'end') break;
      this.lx.next('command');
      blocks ??= {};
      blocks[word] = this.block(word);
    }
    const body = blocks ? [] : this.statements();
    this.skipNewlines();
    this.expect(
      'command',
      'rbrace',
      "Missing closing '}' in statement block or type definition.",
      'MissingEndCurlyBrace',
    );
    if (filter && !blocks)
      return {
        kind: 'function',
        name: nameTok.value,
        params,
        body: [],
        blocks: { process: body },
        defaultSet,
        extent: this.from(at),
      };
    return { kind: 'function', name: nameTok.value, params, body, blocks, defaultSet, extent: this.from(at) };
  }

  private pipeline(): Pipeline {
    const elements: Pipeline['elements'] = [];
    let start = -1;
    for (;;) {
      const el = this.pipelineElement(elements.length > 0);
      if (start < 0) start = el.extent.start;
      elements.push(el);
      const t = this.lx.peek('command');
      if (t.kind !== 'pipe') break;
      this.lx.next('command');
      this.skipNewlines();
      const after = this.lx.peek('command');
      if (after.kind === 'eof' || after.kind === 'newline' || after.kind === 'semi') {
        throw new PwshSyntaxError('An empty pipe element is not allowed.', after.extent, 'EmptyPipeElement');
      }
    }
    const last = elements[elements.length - 1] as { extent: Extent };
    return { kind: 'pipeline', elements, extent: { start, end: last.extent.end } };
  }

  private pipelineElement(afterPipe: boolean): Pipeline['elements'][number] {
    const t = this.lx.peek('command');
    // `[type]…` starts an expression (a cast, a type, a static member), never a command name.
    if (t.kind === 'word' && !/^[\d.[]/.test(t.value)) {
      // After a pipe a keyword is a command name (`| foreach { }` is ForEach-Object).
      if (!afterPipe && KEYWORDS.has(t.value.toLowerCase())) {
        throw new PwshSyntaxError(
          `The '${t.value}' keyword is not supported by consec's PowerShell subset (cmdlets, variables, pipelines, hashtables and script blocks are).`,
          t.extent,
          'KeywordNotSupported',
        );
      }
      return this.command();
    }
    // `. script.ps1` (dot-sourcing) and `& command|script|{ block }` (the call operator): a command
    // whose name is the operator, the target its first argument.
    if (t.kind === 'word' && (t.value === '&' || (t.value === '.' && !afterPipe))) return this.command();
    const expr = this.expression();
    return { kind: 'expression', expr, extent: expr.extent };
  }

  private command(): Command {
    const nameTok = this.lx.next('command') as Extract<Token, { kind: 'word' }>;
    const elements: CommandElement[] = [];
    let end = nameTok.extent.end;
    for (;;) {
      const t = this.lx.peek('command');
      if (['newline', 'semi', 'pipe', 'rparen', 'rbrace', 'eof'].includes(t.kind)) break;
      if (t.kind === 'parameter') {
        this.lx.next('command');
        if (t.colon) {
          const value = this.commandArgumentList();
          elements.push({
            kind: 'parameter',
            name: t.name,
            value,
            extent: { start: t.extent.start, end: value.extent.end },
          });
          end = value.extent.end;
        } else {
          elements.push({ kind: 'parameter', name: t.name, extent: t.extent });
          end = t.extent.end;
        }
        continue;
      }
      if (t.kind === 'variable' && t.splat) {
        this.lx.next('command');
        elements.push({ kind: 'splat', name: t.name, extent: t.extent });
        end = t.extent.end;
        continue;
      }
      const value = this.commandArgumentList();
      elements.push({ kind: 'argument', value, extent: value.extent });
      end = value.extent.end;
    }
    return {
      kind: 'command',
      name: nameTok.value,
      nameExtent: nameTok.extent,
      elements,
      extent: { start: nameTok.extent.start, end },
    };
  }

  /** `a, b, c` in command mode: one argument that is an array. */
  private commandArgumentList(): Expr {
    const first = this.commandArgument();
    const items = [first];
    for (;;) {
      const t = this.lx.peek('command');
      if (t.kind !== 'comma') break;
      this.lx.next('command');
      this.skipNewlines();
      items.push(this.commandArgument());
    }
    if (items.length === 1) return first;
    const last = items[items.length - 1] as Expr;
    return { kind: 'array', items, extent: { start: first.extent.start, end: last.extent.end } };
  }

  private commandArgument(): Expr {
    const t = this.lx.peek('command');
    if (t.kind === 'word') {
      this.lx.next('command');
      const num = /^-?\d+(\.\d+)?$/.test(t.value) ? Number(t.value) : undefined;
      return { kind: 'constant', value: num ?? t.value, bare: true, extent: t.extent };
    }
    if (t.kind === 'parameter') {
      // e.g. a negative number or a dash-word as a value after "-Param:"
      this.lx.next('command');
      return { kind: 'constant', value: `-${t.name}`, bare: true, extent: t.extent };
    }
    return this.postfix(this.primary('command'));
  }

  // ---- expressions ------------------------------------------------------------------------------

  private expression(): Expr {
    return this.logical();
  }

  private logical(): Expr {
    let left = this.comparison();
    for (;;) {
      const t = this.lx.peek('expression');
      if (t.kind !== 'operator' || !['and', 'or', 'xor'].includes(t.op)) return left;
      this.lx.next('expression');
      this.operand(`-${t.op}`);
      const right = this.comparison();
      left = { kind: 'binary', op: t.op, left, right, extent: { start: left.extent.start, end: right.extent.end } };
    }
  }

  private comparison(): Expr {
    let left = this.additive();
    for (;;) {
      const t = this.lx.peek('expression');
      if (t.kind !== 'operator' || !COMPARISON.test(t.op)) return left;
      this.lx.next('expression');
      this.operand(`-${t.op}`);
      const right = this.additive();
      left = { kind: 'binary', op: t.op, left, right, extent: { start: left.extent.start, end: right.extent.end } };
    }
  }

  private additive(): Expr {
    let left = this.multiplicative();
    for (;;) {
      const t = this.lx.peek('expression');
      if (t.kind !== 'operator' || (t.op !== '+' && t.op !== '-')) return left;
      this.lx.next('expression');
      this.operand(t.op);
      const right = this.multiplicative();
      left = { kind: 'binary', op: t.op, left, right, extent: { start: left.extent.start, end: right.extent.end } };
    }
  }

  private multiplicative(): Expr {
    let left = this.formatted();
    for (;;) {
      const t = this.lx.peek('expression');
      if (t.kind !== 'operator' || !['*', '/', '%'].includes(t.op)) return left;
      this.lx.next('expression');
      this.operand(t.op);
      const right = this.formatted();
      left = { kind: 'binary', op: t.op, left, right, extent: { start: left.extent.start, end: right.extent.end } };
    }
  }

  /** `-f`: binds tighter than arithmetic, looser than the comma (`"{0}{1}" -f 'a', 'b'`). */
  private formatted(): Expr {
    let left = this.range();
    for (;;) {
      const t = this.lx.peek('expression');
      if (t.kind !== 'operator' || t.op !== 'f') return left;
      this.lx.next('expression');
      this.operand(t.op);
      const right = this.range();
      left = { kind: 'binary', op: 'f', left, right, extent: { start: left.extent.start, end: right.extent.end } };
    }
  }

  /** `..`: between the comma and `-f` (about_Operator_Precedence): `1..10`, `$n..1`. */
  private range(): Expr {
    const left = this.arrayLiteral();
    const t = this.lx.peek('expression');
    if (t.kind !== 'operator' || t.op !== '..') return left;
    this.lx.next('expression');
    this.operand('..');
    const right = this.arrayLiteral();
    return { kind: 'binary', op: '..', left, right, extent: { start: left.extent.start, end: right.extent.end } };
  }

  private arrayLiteral(): Expr {
    const first = this.unary();
    const items = [first];
    while (!this.noArrayComma && this.lx.peek('expression').kind === 'comma') {
      this.lx.next('expression');
      this.skipNewlines();
      items.push(this.unary());
    }
    if (items.length === 1) return first;
    const last = items[items.length - 1] as Expr;
    return { kind: 'array', items, extent: { start: first.extent.start, end: last.extent.end } };
  }

  /** `$( … )` in a string is parsed now, one level deeper (its syntax errors are the script's). */
  private expandablePart(p: StringPart): ExpandablePart {
    if (typeof p === 'string' || !('subexpression' in p)) return p;
    return this.nested(p.extent, () => ({
      body: new Parser(p.subexpression, this.depth).parseScript(),
      extent: p.extent,
    }));
  }

  /** One level deeper for `f`; a parse error at `at` past MAX_NESTING. */
  private nested<T>(at: Extent, f: () => T): T {
    if (this.depth >= MAX_NESTING)
      throw new PwshSyntaxError(
        `The script is nested too deeply: more than ${MAX_NESTING} levels of parentheses, blocks or operators.`,
        at,
        'ScriptNestedTooDeeply',
      );
    this.depth++;
    try {
      return f();
    } finally {
      this.depth--;
    }
  }

  private unary(): Expr {
    const t = this.lx.peek('expression');
    const prefix = (t.kind === 'operator' && (t.op === 'not' || t.op === '-' || t.op === '+')) || t.kind === 'comma';
    return prefix ? this.nested(t.extent, () => this.unaryAt(t)) : this.unaryAt(t);
  }

  private unaryAt(t: Token): Expr {
    if (t.kind === 'operator' && (t.op === 'not' || t.op === '-' || t.op === '+')) {
      this.lx.next('expression');
      const operand = this.unary();
      return { kind: 'unary', op: t.op, operand, extent: { start: t.extent.start, end: operand.extent.end } };
    }
    if (t.kind === 'comma') {
      // Unary comma: a one-element array.
      this.lx.next('expression');
      const operand = this.unary();
      return { kind: 'array', items: [operand], extent: { start: t.extent.start, end: operand.extent.end } };
    }
    return this.postfix(this.primary());
  }

  private primary(mode: LexMode = 'expression'): Expr {
    const t = this.lx.next(mode);
    const opens = ['lparen', 'dollarparen', 'atparen', 'atbrace', 'lbrace', 'lbracket'].includes(t.kind);
    if (!opens) return this.primaryAt(t, mode);
    // Inside brackets a comma makes an array again, also in a parameter's default: `= (5800, 5900)`.
    return this.withArrayComma(true, () => this.nested(t.extent, () => this.primaryAt(t, mode)));
  }

  private primaryAt(t: Token, mode: LexMode): Expr {
    switch (t.kind) {
      case 'lbracket':
        return this.typeExpression(t.extent);
      case 'variable':
        return { kind: 'variable', name: t.name, extent: t.extent };
      case 'string':
        return t.expandable
          ? { kind: 'string', parts: t.parts.map((p) => this.expandablePart(p)), extent: t.extent }
          : { kind: 'constant', value: (t.parts[0] as string | undefined) ?? '', bare: false, extent: t.extent };
      case 'number':
        return { kind: 'constant', value: t.value, bare: false, extent: t.extent };
      case 'lparen': {
        this.skipNewlines();
        // `($a = …)`: an assignment in parentheses is an expression with the assigned value.
        const inner = this.statement();
        if (inner.kind !== 'pipeline' && inner.kind !== 'assignment') throw this.unexpected(this.lx.peek('command'));
        this.skipNewlines();
        const close = this.expect(
          'command',
          'rparen',
          "Missing closing ')' in expression.",
          'MissingEndParenthesisInExpression',
        );
        const extent = { start: t.extent.start, end: close.extent.end };
        return inner.kind === 'assignment'
          ? { kind: 'assign', target: inner.target, value: inner.value, extent }
          : { kind: 'paren', pipeline: inner, extent };
      }
      case 'dollarparen':
      case 'atparen': {
        const body = this.statements();
        const close = this.expect(
          'command',
          'rparen',
          "Missing closing ')' in subexpression.",
          'MissingEndParenthesisInSubexpression',
        );
        return {
          kind: 'subexpression',
          body,
          array: t.kind === 'atparen',
          extent: { start: t.extent.start, end: close.extent.end },
        };
      }
      case 'atbrace':
        return this.hashtable(t.extent.start);
      case 'lbrace': {
        const body = this.statements();
        const close = this.expect(
          'command',
          'rbrace',
          "Missing closing '}' in statement block or type definition.",
          'MissingEndCurlyBrace',
        );
        return {
          kind: 'scriptblock',
          body,
          text: this.source.slice(t.extent.end, close.extent.start),
          extent: { start: t.extent.start, end: close.extent.end },
        };
      }
      case 'word':
        if (mode === 'expression' && /^[A-Za-z]/.test(t.value)) {
          throw new PwshSyntaxError(
            `Unexpected token '${t.value}' in expression or statement.`,
            t.extent,
            'UnexpectedToken',
          );
        }
        return { kind: 'constant', value: t.value, bare: true, extent: t.extent };
      default:
        throw this.unexpected(t);
    }
  }

  /** Member access and indexing directly attached to a value: $x.Name, $x[0], (expr).Name. */
  private postfix(target: Expr): Expr {
    let e = target;
    for (;;) {
      const at = this.lx.offset;
      const c = this.source[at];
      if (c === '.' && /[A-Za-z_'"]/.test(this.source[at + 1] ?? '')) {
        this.lx.reset(at + 1);
        const nameTok = this.lx.next('command');
        let name: string;
        if (nameTok.kind === 'string') name = nameTok.parts.filter((p) => typeof p === 'string').join('');
        else if (nameTok.kind === 'word') {
          // A command-mode word may run past the member name ("Name.Other", "Name)"): cut at the first non-identifier.
          const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(nameTok.value) as RegExpExecArray;
          name = m[0];
          this.lx.reset(at + 1 + name.length);
        } else throw this.unexpected(nameTok);
        if (this.source[this.lx.offset] === '(') {
          this.lx.reset(this.lx.offset + 1);
          const args = this.methodArguments();
          e = { kind: 'method', target: e, name, args, extent: { start: e.extent.start, end: this.lx.offset } };
        } else {
          e = { kind: 'member', target: e, name, extent: { start: e.extent.start, end: this.lx.offset } };
        }
        continue;
      }
      if (c === '.' && this.source[at + 1] === '$') {
        // `$item.$property`: the member whose name a variable (or a subexpression) holds.
        this.lx.reset(at + 1);
        const nameExpr = this.primary();
        e = { kind: 'member', target: e, name: '', nameExpr, extent: { start: e.extent.start, end: this.lx.offset } };
        continue;
      }
      if (c === '[') {
        this.lx.reset(at + 1);
        const index = this.expression();
        const close = this.expect(
          'expression',
          'rbracket',
          'Array index expression is missing or not valid.',
          'MissingArrayIndexExpression',
        );
        e = { kind: 'index', target: e, index, extent: { start: e.extent.start, end: close.extent.end } };
        continue;
      }
      return e;
    }
  }

  private hashtable(start: number): Expr {
    const entries: { key: Expr; value: Pipeline }[] = [];
    for (;;) {
      const t = this.lx.peek('command');
      if (t.kind === 'newline' || t.kind === 'semi') {
        this.lx.next('command');
        continue;
      }
      if (t.kind === 'rbrace') {
        this.lx.next('command');
        return { kind: 'hashtable', entries, extent: { start, end: t.extent.end } };
      }
      let key: Expr;
      if (t.kind === 'word') {
        this.lx.next('command');
        // "Name=Value" without spaces arrives as one word.
        const eqAt = t.value.indexOf('=');
        if (eqAt > 0) {
          key = { kind: 'constant', value: t.value.slice(0, eqAt), bare: true, extent: t.extent };
          this.lx.reset(t.extent.start + eqAt);
        } else {
          key = { kind: 'constant', value: t.value, bare: true, extent: t.extent };
        }
      } else {
        key = this.primary('command');
      }
      this.expect(
        'expression',
        'assign',
        "Missing '=' operator after key in hash literal.",
        'MissingEqualsInHashLiteral',
      );
      this.skipNewlines();
      const value = this.assignedValue(); // `@{ Key = if (…) { … } else { … } }` as well
      entries.push({ key, value });
      const after = this.lx.peek('command');
      if (after.kind !== 'newline' && after.kind !== 'semi' && after.kind !== 'rbrace') {
        throw new PwshSyntaxError(
          "Missing statement after '=' in hash literal.",
          after.extent,
          'MissingStatementAfterAssignmentInHashLiteral',
        );
      }
    }
  }

  /** After a binary operator: newlines may follow, but the expression must go on. */
  private operand(op: string): void {
    this.skipNewlines();
    const t = this.lx.peek('expression');
    if (t.kind === 'eof' || t.kind === 'rparen' || t.kind === 'rbrace' || t.kind === 'semi' || t.kind === 'pipe') {
      throw new PwshSyntaxError(
        `You must provide a value expression following the '${op}' operator.`,
        t.extent,
        'ExpectedValueExpression',
      );
    }
  }

  private skipNewlines(): void {
    while (this.lx.peek('command').kind === 'newline') this.lx.next('command');
  }

  private unexpected(t: Token): PwshSyntaxError {
    const text = this.source.slice(t.extent.start, t.extent.end) || (t.kind === 'eof' ? 'end of input' : t.kind);
    if (t.kind === 'rparen')
      return new PwshSyntaxError("Unexpected token ')' in expression or statement.", t.extent, 'UnexpectedToken');
    if (t.kind === 'rbrace')
      return new PwshSyntaxError("Unexpected token '}' in expression or statement.", t.extent, 'UnexpectedToken');
    return new PwshSyntaxError(`Unexpected token '${text}' in expression or statement.`, t.extent, 'UnexpectedToken');
  }
}
