/**
 * PowerShell tokenizer for the subset admins use in IPsec scripts. Like PowerShell's own, it is
 * mode-driven: in command mode `10.0.1.20/24` and `AES256` are barewords and `-Name` is a parameter;
 * in expression mode `-eq` is an operator and `.Name` is member access. The parser asks for the next
 * token in the mode it is in.
 */

export interface Extent {
  /** Offset of the first character in the script. */
  start: number;
  end: number;
}

export type StringPart = string | { variable: string; extent: Extent } | { subexpression: string; extent: Extent };

export type Token =
  | { kind: 'newline' | 'semi' | 'pipe' | 'comma' | 'eof'; extent: Extent }
  | { kind: 'lparen' | 'rparen' | 'lbrace' | 'rbrace' | 'lbracket' | 'rbracket'; extent: Extent }
  | { kind: 'atparen' | 'atbrace' | 'dollarparen'; extent: Extent }
  | { kind: 'dot'; extent: Extent }
  /** `=`, or a compound assignment `+=` `-=` `*=` `/=` `%=` (op is the arithmetic operator). */
  | { kind: 'assign'; op?: string; extent: Extent }
  | { kind: 'variable'; name: string; splat: boolean; extent: Extent }
  | { kind: 'string'; parts: StringPart[]; expandable: boolean; extent: Extent }
  | { kind: 'number'; value: number; extent: Extent }
  | { kind: 'parameter'; name: string; colon: boolean; extent: Extent }
  | { kind: 'operator'; op: string; extent: Extent }
  | { kind: 'word'; value: string; extent: Extent };

export type LexMode = 'command' | 'expression';

export class PwshSyntaxError extends Error {
  constructor(
    message: string,
    readonly extent: Extent,
    readonly errorId: string,
  ) {
    super(message);
  }
}

/** Comparison and logical operators, lowercase, without the dash. */
export const OPERATORS = new Set([
  'eq',
  'ne',
  'gt',
  'ge',
  'lt',
  'le',
  'like',
  'notlike',
  'match',
  'notmatch',
  'contains',
  'notcontains',
  'in',
  'notin',
  'and',
  'or',
  'xor',
  'band',
  'bor',
  'bxor',
  'shl',
  'shr',
  'not',
  'replace',
  'join',
  'split',
  'is',
  'isnot',
  'as',
  'f',
]);
// The case-sensitive (c) and explicitly insensitive (i) variants.
for (const op of [...OPERATORS]) {
  if (!['and', 'or', 'xor', 'not', 'is', 'isnot', 'as', 'join', 'f'].includes(op)) {
    OPERATORS.add(`c${op}`);
    OPERATORS.add(`i${op}`);
  }
}

const WORD_END = new Set([' ', '\t', '\r', '\n', '|', ';', ',', ')', '}', '(', '{', '\f', '\v']);
const DASHES = new Set(['-', '\u2013', '\u2014', '\u2015']); // PowerShell accepts en/em dashes too
const QUOTES_SINGLE = new Set(["'", '\u2018', '\u2019', '\u201a', '\u201b']);
const QUOTES_DOUBLE = new Set(['"', '\u201c', '\u201d', '\u201e']);
const VAR_CHAR = /[A-Za-z0-9_?:]/;
const CONTINUATION = /^`[ \t]*\r?\n/;

export class Lexer {
  private pos = 0;

  constructor(readonly source: string) {}

  get offset(): number {
    return this.pos;
  }

  /** Rewinds to an offset (the parser backtracks after peeking in one mode). */
  reset(offset: number): void {
    this.pos = offset;
  }

  peek(mode: LexMode): Token {
    const save = this.pos;
    const t = this.next(mode);
    this.pos = save;
    return t;
  }

  /** True when the character at the current position (before skipping spaces) is whitespace. */
  atSpace(): boolean {
    const c = this.source[this.pos];
    return (
      c === ' ' ||
      c === '\t' ||
      c === undefined ||
      (c === '`' && CONTINUATION.test(this.source.slice(this.pos, this.pos + 256)))
    );
  }

  next(mode: LexMode): Token {
    this.skipSpaceAndComments();
    const s = this.source;
    const start = this.pos;
    const c = s[start];
    const ext = (end: number): Extent => ({ start, end });
    if (c === undefined) return { kind: 'eof', extent: ext(start) };
    const simple = (kind: 'newline' | 'semi' | 'pipe' | 'comma', len = 1): Token => {
      this.pos += len;
      return { kind, extent: ext(this.pos) };
    };
    if (c === '\r' || c === '\n') {
      this.pos += c === '\r' && s[start + 1] === '\n' ? 2 : 1;
      return { kind: 'newline', extent: ext(this.pos) };
    }
    if (c === ';') return simple('semi');
    if (c === '|') {
      if (s[start + 1] === '|')
        throw new PwshSyntaxError(
          "The token '||' is not a valid statement separator in this version.",
          ext(start + 2),
          'InvalidEndOfLine',
        );
      return simple('pipe');
    }
    if (c === ',') return simple('comma');
    const punct: Record<string, 'lparen' | 'rparen' | 'lbrace' | 'rbrace' | 'lbracket' | 'rbracket'> = {
      '(': 'lparen',
      ')': 'rparen',
      '{': 'lbrace',
      '}': 'rbrace',
    };
    const p = punct[c];
    if (p) {
      this.pos++;
      return { kind: p, extent: ext(this.pos) };
    }
    if (c === '@' && (s[start + 1] === '"' || s[start + 1] === "'")) return this.hereString(start);
    if (c === '@' && (s[start + 1] === '(' || s[start + 1] === '{')) {
      this.pos += 2;
      return { kind: s[start + 1] === '(' ? 'atparen' : 'atbrace', extent: ext(this.pos) };
    }
    if (c === '$' && s[start + 1] === '(') {
      this.pos += 2;
      return { kind: 'dollarparen', extent: ext(this.pos) };
    }
    if (c === '$' || (c === '@' && VAR_CHAR.test(s[start + 1] ?? ''))) return this.variable(start, c === '@');
    if (QUOTES_SINGLE.has(c)) return this.singleQuoted(start);
    if (QUOTES_DOUBLE.has(c)) return this.doubleQuoted(start);

    if (mode === 'expression') {
      if (c === '[') {
        this.pos++;
        return { kind: 'lbracket', extent: ext(this.pos) };
      }
      if (c === ']') {
        this.pos++;
        return { kind: 'rbracket', extent: ext(this.pos) };
      }
      // The range operator (1..10).
      if (c === '.' && s[start + 1] === '.') {
        this.pos += 2;
        return { kind: 'operator', op: '..', extent: ext(this.pos) };
      }
      if (c === '.' && !/\d/.test(s[start + 1] ?? '')) {
        this.pos++;
        return { kind: 'dot', extent: ext(this.pos) };
      }
      if (c === '=' && s[start + 1] !== '=') {
        this.pos++;
        return { kind: 'assign', extent: ext(this.pos) };
      }
      if (DASHES.has(c) && /[A-Za-z]/.test(s[start + 1] ?? '')) {
        let end = start + 1;
        while (end < s.length && /[A-Za-z]/.test(s[end] as string)) end++;
        const op = s.slice(start + 1, end).toLowerCase();
        if (OPERATORS.has(op)) {
          this.pos = end;
          return { kind: 'operator', op, extent: ext(end) };
        }
        throw new PwshSyntaxError(
          `Unexpected token '-${s.slice(start + 1, end)}' in expression or statement.`,
          ext(end),
          'UnexpectedToken',
        );
      }
      if (c === '!' && s[start + 1] !== '=') {
        this.pos++;
        return { kind: 'operator', op: 'not', extent: ext(this.pos) };
      }
      if ('+-*/%'.includes(c) && s[start + 1] === '=') {
        this.pos += 2;
        return { kind: 'assign', op: c, extent: ext(this.pos) };
      }
      if ((c === '+' || c === '-') && s[start + 1] === c) {
        this.pos += 2;
        return { kind: 'operator', op: c + c, extent: ext(this.pos) };
      }
      if ('+-*/%'.includes(c)) {
        this.pos++;
        return { kind: 'operator', op: c, extent: ext(this.pos) };
      }
      const num = /^(0x[0-9a-f]+|\d+(\.\d+)?([eE][+-]?\d+)?)(kb|mb|gb)?/i.exec(s.slice(start));
      if (num?.[0] && WORD_END_OR_OP(s[start + num[0].length])) {
        this.pos += num[0].length;
        return { kind: 'number', value: parseNumber(num[0]), extent: ext(this.pos) };
      }
      // A bare word in expression mode is a command name (e.g. the start of a nested pipeline).
    } else {
      if (DASHES.has(c) && /[A-Za-z_?]/.test(s[start + 1] ?? '')) {
        let end = start + 1;
        while (end < s.length && /[A-Za-z0-9_?-]/.test(s[end] as string)) end++;
        const name = s.slice(start + 1, end);
        const colon = s[end] === ':';
        this.pos = colon ? end + 1 : end;
        return { kind: 'parameter', name, colon, extent: ext(end) };
      }
      if (c === '=') {
        this.pos++;
        return { kind: 'assign', extent: ext(this.pos) };
      }
    }
    return this.word(start);
  }

  private skipSpaceAndComments(): void {
    const s = this.source;
    for (;;) {
      const c = s[this.pos];
      if (c === ' ' || c === '\t' || c === '\f' || c === '\v' || c === '\u00a0') {
        this.pos++;
      } else if (c === '`' && CONTINUATION.test(s.slice(this.pos, this.pos + 256))) {
        // Line continuation: a backtick at the end of a line (trailing blanks tolerated).
        this.pos += (CONTINUATION.exec(s.slice(this.pos, this.pos + 256)) as RegExpExecArray)[0].length;
      } else if (c === '#') {
        while (this.pos < s.length && s[this.pos] !== '\n' && s[this.pos] !== '\r') this.pos++;
      } else if (c === '<' && s[this.pos + 1] === '#') {
        const end = s.indexOf('#>', this.pos + 2);
        if (end < 0)
          throw new PwshSyntaxError(
            'Missing the block comment terminator #>.',
            { start: this.pos, end: s.length },
            'MissingEndOfComment',
          );
        this.pos = end + 2;
      } else {
        return;
      }
    }
  }

  private variable(start: number, splat: boolean): Token {
    const s = this.source;
    let i = start + 1;
    let name: string;
    if (s[i] === '{') {
      const end = s.indexOf('}', i);
      if (end < 0)
        throw new PwshSyntaxError(
          'Missing closing } in variable name.',
          { start, end: s.length },
          'MissingEndCurlyBrace',
        );
      name = s.slice(i + 1, end);
      i = end + 1;
    } else {
      const begin = i;
      if (s[i] === '_' && !/[A-Za-z0-9_]/.test(s[i + 1] ?? '')) i++;
      else if (s[i] === '$' || s[i] === '?' || s[i] === '^') i++;
      else {
        while (i < s.length && /[A-Za-z0-9_]/.test(s[i] as string)) i++;
        // Scope or drive qualifier: $env:NAME, $script:x, $global:x
        if (s[i] === ':' && /[A-Za-z_]/.test(s[i + 1] ?? '') && i > begin) {
          i++;
          while (i < s.length && /[A-Za-z0-9_]/.test(s[i] as string)) i++;
        }
      }
      name = s.slice(begin, i);
      if (name === '') {
        // A lone $ is literal text in PowerShell command mode.
        return this.word(start);
      }
    }
    this.pos = i;
    return { kind: 'variable', name, splat, extent: { start, end: i } };
  }

  private singleQuoted(start: number): Token {
    const s = this.source;
    let i = start + 1;
    let out = '';
    for (;;) {
      const c = s[i];
      if (c === undefined)
        throw new PwshSyntaxError(
          "The string is missing the terminator: '.",
          { start, end: s.length },
          'TerminatorExpectedAtEndOfString',
        );
      if (QUOTES_SINGLE.has(c)) {
        if (QUOTES_SINGLE.has(s[i + 1] ?? '')) {
          out += "'";
          i += 2;
          continue;
        }
        i++;
        break;
      }
      out += c;
      i++;
    }
    this.pos = i;
    return { kind: 'string', parts: [out], expandable: false, extent: { start, end: i } };
  }

  private doubleQuoted(start: number): Token {
    const { parts, next } = this.expandable(start + 1, undefined, start);
    this.pos = next;
    return { kind: 'string', parts, expandable: true, extent: { start, end: next } };
  }

  /**
   * `@"` … `"@` and `@'` … `'@`: the text between the header's line and a line that starts with the
   * closing quote and @; quotes inside are plain text; the double-quoted kind expands.
   */
  private hereString(start: number): Token {
    const s = this.source;
    const q = s[start + 1] as string;
    let i = start + 2;
    while (s[i] === ' ' || s[i] === '\t') i++;
    if (s[i] === '\r') i++;
    if (s[i] !== '\n')
      throw new PwshSyntaxError(
        'No characters are allowed after a here-string header but before the end of the line.',
        { start, end: i },
        'UnexpectedCharactersAfterHereStringHeader',
      );
    const bodyStart = i + 1;
    const close = s.indexOf(`\n${q}@`, i);
    if (close < 0)
      throw new PwshSyntaxError(
        `The string is missing the terminator: ${q}@.`,
        { start, end: s.length },
        'TerminatorExpectedAtEndOfString',
      );
    const bodyEnd = Math.max(bodyStart, s[close - 1] === '\r' ? close - 1 : close);
    const end = close + 3;
    this.pos = end;
    if (q === "'")
      return { kind: 'string', parts: [s.slice(bodyStart, bodyEnd)], expandable: false, extent: { start, end } };
    const { parts } = this.expandable(bodyStart, bodyEnd, start);
    return { kind: 'string', parts, expandable: true, extent: { start, end } };
  }

  /**
   * Expandable text from `i`: up to the closing double quote (`stop` undefined; `""` is a quote) or
   * up to `stop` (a here-string, where quotes are plain). Backtick escapes, `$name` and `$( … )`.
   */
  private expandable(i: number, stop: number | undefined, start: number): { parts: StringPart[]; next: number } {
    const s = this.source;
    const parts: StringPart[] = [];
    let text = '';
    const flush = (): void => {
      if (text) parts.push(text);
      text = '';
    };
    for (;;) {
      if (stop !== undefined && i >= stop) break;
      const c = s[i];
      if (c === undefined)
        throw new PwshSyntaxError(
          'The string is missing the terminator: ".',
          { start, end: s.length },
          'TerminatorExpectedAtEndOfString',
        );
      if (stop === undefined && QUOTES_DOUBLE.has(c)) {
        if (QUOTES_DOUBLE.has(s[i + 1] ?? '')) {
          text += '"';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      if (c === '`') {
        const e = s[i + 1] ?? '';
        text += ESCAPES[e] ?? e;
        i += 2;
        continue;
      }
      if (c === '$' && s[i + 1] === '(') {
        // $( … ) inside a string: find the matching parenthesis (single-quoted text inside is skipped).
        let depth = 0;
        let j = i + 1;
        let quote = '';
        for (; j < s.length; j++) {
          const d = s[j] as string;
          if (quote) {
            if (d === quote) quote = '';
          } else if (d === "'") quote = d;
          else if (d === '(') depth++;
          else if (d === ')' && --depth === 0) break;
        }
        if (j >= s.length) {
          throw new PwshSyntaxError(
            "Missing closing ')' in subexpression.",
            { start: i, end: s.length },
            'MissingEndParenthesisInSubexpression',
          );
        }
        flush();
        parts.push({ subexpression: s.slice(i + 2, j), extent: { start: i, end: j + 1 } });
        i = j + 1;
        continue;
      }
      if (c === '$' && /[A-Za-z_{:?]/.test(s[i + 1] ?? '')) {
        const save = this.pos;
        const v = this.variable(i, false);
        this.pos = save;
        if (v.kind === 'variable') {
          flush();
          parts.push({ variable: v.name, extent: v.extent });
          i = v.extent.end;
          continue;
        }
      }
      text += c;
      i++;
    }
    flush();
    return { parts, next: i };
  }

  private word(start: number): Token {
    const s = this.source;
    let i = start;
    let out = '';
    while (i < s.length && !WORD_END.has(s[i] as string)) {
      if (s[i] === '`' && i + 1 < s.length) {
        out += s[i + 1];
        i += 2;
        continue;
      }
      // A quoted part inside a bare word is part of the same argument, without its quotes:
      // auditpol /subcategory:"IPsec Main Mode" passes `/subcategory:IPsec Main Mode` (as PowerShell does).
      const c = s[i] as string;
      const quotes =
        i > start
          ? QUOTES_DOUBLE.has(c)
            ? QUOTES_DOUBLE
            : QUOTES_SINGLE.has(c)
              ? QUOTES_SINGLE
              : undefined
          : undefined;
      if (quotes) {
        let j = i + 1;
        while (j < s.length && !quotes.has(s[j] as string)) {
          if (quotes === QUOTES_DOUBLE && s[j] === '`' && j + 1 < s.length) j++;
          out += s[j];
          j++;
        }
        if (j >= s.length)
          throw new PwshSyntaxError(
            'The string is missing the terminator: ' + c + '.',
            { start: i, end: j },
            'TerminatorExpectedAtEndOfString',
          );
        i = j + 1;
        continue;
      }
      out += s[i];
      i++;
    }
    if (i === start) {
      throw new PwshSyntaxError(
        `Unexpected token '${s[start]}' in expression or statement.`,
        { start, end: start + 1 },
        'UnexpectedToken',
      );
    }
    this.pos = i;
    return { kind: 'word', value: out, extent: { start, end: i } };
  }
}

const ESCAPES: Record<string, string> = {
  n: '\n',
  r: '\r',
  t: '\t',
  '0': '\0',
  a: '\x07',
  b: '\b',
  f: '\f',
  v: '\v',
  e: '\x1b',
};

function WORD_END_OR_OP(c: string | undefined): boolean {
  return c === undefined || WORD_END.has(c) || c === ']' || c === '.' || '+-*/%=!'.includes(c);
}

function parseNumber(text: string): number {
  const m = /^(.*?)(kb|mb|gb)?$/i.exec(text) as RegExpExecArray;
  const base = m[1] as string;
  const v = base.toLowerCase().startsWith('0x') ? Number.parseInt(base, 16) : Number(base);
  const mult = { kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as 'kb'] ?? 1;
  return v * mult;
}
