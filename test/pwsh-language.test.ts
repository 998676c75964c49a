import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolicyStores } from '../src/policy/store.ts';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { formatList } from '../src/shell/pwsh/format.ts';
import { parseScript } from '../src/shell/pwsh/parser.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

const dir = freshStateDir();

describe('PowerShell subset: syntax', () => {
  it('backtick continuation, comments and block comments', async () => {
    const r = await ps(
      [
        '# a comment',
        'Write-Output `',
        '  "one" <# inline #> `',
        '  # not a continuation target',
        '',
        '<#',
        'block',
        '#>',
        'Write-Output two',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(r.out, 'one\ntwo\n');
  });

  it('strings: single quotes are literal, double quotes expand $var, $(...) and backtick escapes', async () => {
    const r = await ps(
      [
        "$name = 'World'",
        "$h = @{ Key = 'v' }",
        "Write-Output 'It''s $name'",
        'Write-Output "Hello $name, `"quoted`" `$name tab:`t. ${name}! $($h.Key) $env:CONSEC_TEST_VAR"',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(r.out, 'It\'s $name\nHello World, "quoted" $name tab:\t. World! v \n');
  });

  it('hashtables, splatting, arrays, member access and indexing', async () => {
    const r = await ps(
      [
        '$p = @{',
        '  Object = "splatted"',
        '  Separator = "-"',
        '}',
        'Write-Host @p',
        '$a = 1, 2, 3',
        'Write-Output $a.Count $a[-1] $a[0]',
        "$x = @(Write-Output 'only')",
        'Write-Output $x.Count',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, 'splatted\n3\n3\n1\n1\n');
  });

  it('operators: case-insensitive comparison, wildcards, regex, containment, logic, array filtering', async () => {
    const r = await ps(
      [
        "'ABC' -eq 'abc'",
        "'ABC' -ceq 'abc'",
        "'Server-to-Server IPsec' -like '*to-server*'",
        "'DH14' -match '^dh\\d+$'",
        '@(1, 2, 3) -contains 2',
        '2 -in 1, 2',
        '-not $false -and (1 -lt 2)',
        '(1, 2, 3, 4 -gt 2) -join ","',
        "'a,b' -split ','",
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(r.out, 'True\nFalse\nTrue\nTrue\nTrue\nTrue\nTrue\n3,4\na\nb\n');
  });

  it('compound assignment (+= -= *= /= %=) and ++/-- as admin scripts count and collect with them', async () => {
    const r = await ps(
      [
        '$n = 0; $n++; $n++; $n--; "n=$n"',
        '$total = 10; $total += 5; $total -= 3; $total *= 2; $total /= 4; $total %= 5; "total=$total"',
        '$rules = @(); $rules += "a"; $rules += "b"; "$($rules -join ",") $($rules.Count)"',
        '$s = "x"; $s += "y"; $s',
        'for ($i = 0; $i -lt 3; $i++) { "i=$i" }',
        '$c = 5; ++$c; --$c; --$c; "c=$c"',
        '$unset++; "unset=$unset"',
        '$h = @{}; $h.k = 1; $h.k += 2; $h.k',
        '$z = 2; $z - 1',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(r.out, 'n=1\ntotal=1\na,b 2\nxy\ni=0\ni=1\ni=2\nc=4\nunset=1\n3\n1\n');
  });

  it('the range operator as admin scripts loop with it: 1..n either way, with variables, into pipelines; bounded', async () => {
    const r = await ps(
      [
        '1..5 -join ","',
        '5..1 -join ","',
        '$n = 3; (1..$n).Count',
        '1..3 | ForEach-Object { "rule $_" }',
        '"{0}" -f (2..4 -join "-")',
        '(1..2000000).Count',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, '1,2,3,4,5\n5,4,3,2,1\n3\nrule 1\nrule 2\nrule 3\n2-3-4\n');
    assert.match(r.err, /The range 1\.\.2000000 has 2000000 elements, more than the 1000000 a range may have\./);
  });

  it('filter: a function whose body runs once per pipeline item with $_, parameters bound as for functions', async () => {
    const r = await ps(
      ['filter Double { $_ * 2 }', '1, 2, 3 | Double', 'filter Tag { param($p) "$p-$_" }', "'a', 'b' | Tag -p x"].join(
        '\n',
      ),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(r.out, '2\n4\n6\nx-a\nx-b\n');
  });

  it('[Parameter(ValueFromPipelineByPropertyName)]: each piped object binds its properties of those names (NetSecurity objects too)', async () => {
    const d = freshStateDir();
    const r = await ps(
      [
        'New-NetIPsecRule -DisplayName "r1" -RemoteAddress 192.0.2.9 -InboundSecurity Require -OutboundSecurity Request | Out-Null',
        'function Show-Rule { param([Parameter(ValueFromPipelineByPropertyName)][string]$DisplayName, [Parameter(ValueFromPipelineByPropertyName = $true)]$InboundSecurity) process { "$DisplayName in=$InboundSecurity" } }',
        'Get-NetIPsecRule | Show-Rule',
        '[pscustomobject]@{ DisplayName = "x" } | Show-Rule',
      ].join('\n'),
      d,
    );
    assert.equal(r.err, '');
    assert.equal(r.out, 'r1 in=Require\nx in=\n');
  });

  it('pipelines with Where-Object (script block and simplified syntax), Select-Object, Sort-Object, ForEach-Object', async () => {
    const r = await ps(
      [
        '$items = @{N="b"; V=2}, @{N="a"; V=1}, @{N="c"; V=3}',
        '$items | Where-Object { $_.V -ge 2 } | ForEach-Object { $_.N }',
        '$items | Where-Object N -eq "a" | ForEach-Object { $_.V }',
        '$items | Sort-Object -Property N | Select-Object -First 2 | ForEach-Object { $_.N }',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out.split('\n').slice(0, 5).join(','), 'b,c,1,a,b');
  });

  it('a syntax error reports the position and runs nothing', async () => {
    const r = await ps("Write-Output 'runs?'\nWrite-Output (1 +\n 2\n", dir);
    assert.equal(r.out, '');
    assert.equal(r.errors, 1);
    assert.match(r.err, /^At line:\d+ char:\d+\n/);
    assert.match(r.err, /Missing closing '\)' in expression\./);
    const cut = await ps('Write-Output (1 +', dir);
    assert.match(cut.err, /You must provide a value expression following the '\+' operator\./);
    assert.match(r.err, /CategoryInfo {10}: ParserError/);
    const q = await ps('Write-Output "unterminated', dir);
    assert.match(q.err, /The string is missing the terminator: "\./);
  });

  it('unsupported language keywords are named, not misparsed', async () => {
    const r = await ps('class Server { [string] $Name }', dir);
    assert.equal(r.out, '');
    assert.match(r.err, /The 'class' keyword is not supported/);
  });

  it('an unknown command is reported like PowerShell and the script continues', async () => {
    const r = await ps('Get-Nothing -Foo\nWrite-Output after', dir);
    assert.equal(r.out, 'after\n');
    assert.match(
      r.err,
      /^Get-Nothing : The term 'Get-Nothing' is not recognized as the name of a cmdlet, function, script file, or operable program\./,
    );
    assert.match(r.err, /\+ CategoryInfo {10}: ObjectNotFound: \(Get-Nothing:String\) \[\], CommandNotFoundException/);
  });

  it('$ErrorActionPreference = "Stop" ends the script at the first error', async () => {
    const r = await ps("$ErrorActionPreference = 'Stop'\nGet-Nothing\nWrite-Output after", dir);
    assert.equal(r.out, '');
    assert.equal(r.errors, 1);
  });

  it('the parser never throws anything but a syntax error, whatever the input (fuzzed)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (src) => {
        try {
          parseScript(src);
        } catch (e) {
          assert.equal((e as Error).constructor.name, 'PwshSyntaxError', `${(e as Error).stack}`);
        }
      }),
      { numRuns: 3000 },
    );
    const alphabet = fc.constantFrom(...'$@(){}[]\'"`#<>|;,=-.: \nabcxyz0129'.split(''));
    fc.assert(
      fc.property(
        fc.array(alphabet, { maxLength: 120 }).map((a) => a.join('')),
        (src) => {
          try {
            parseScript(src);
          } catch (e) {
            assert.equal(
              (e as Error).constructor.name,
              'PwshSyntaxError',
              `${JSON.stringify(src)}: ${(e as Error).stack}`,
            );
          }
        },
      ),
      { numRuns: 5000 },
    );
  });
});

describe('formatting of nested records (views the daemon sends)', () => {
  it('Format-List shows a nested record as PowerShell shows a PSCustomObject, never [object Object]', () => {
    const view = { Name: '1', LocalFirstId: { Identity: '192.0.2.1', AuthenticationMethod: 'PresharedKey' } };
    const text = formatList([view]);
    assert.match(text, /^LocalFirstId : @\{Identity=192\.0\.2\.1; AuthenticationMethod=PresharedKey\}$/m);
    assert.doesNotMatch(text, /\[object Object\]/);
  });
});

describe('PowerShell language: control flow, functions, errors', () => {
  const dir = freshStateDir();

  it("output reaches the host as PowerShell's Out-Default writes it: a function's output and its Write-Host lines in the order they were written; one table for a loop's rows; a table waits for its rows", async () => {
    const r = await ps(
      [
        'function Report { "checking"; Write-Host "host line"; "done" }',
        'Report',
        'foreach ($i in 1..3) { [pscustomobject]@{ Rule = "r$i" } }',
        'function Make { [pscustomobject]@{ A = 1; B = 2; C = 3; D = 4; E = 5 }; Write-Host "made"; [pscustomobject]@{ Row = 1 }; Write-Host "after rows"; [pscustomobject]@{ Row = 2 } }',
        'Make',
        '$kept = Report',
        '"kept $($kept -join \',\')"',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(
      r.out,
      [
        'checking',
        'host line',
        'done',
        '',
        'Rule',
        '----',
        'r1',
        'r2',
        'r3',
        '',
        '',
        '',
        '',
        'A : 1',
        'B : 2',
        'C : 3',
        'D : 4',
        'E : 5',
        '',
        'made',
        '',
        'after rows',
        '',
        'Row',
        '---',
        '  1',
        '  2',
        '',
        '',
        'host line',
        'kept checking,done',
        '',
      ].join('\n'),
    );
    // A script's `return`: its value is the script's last output, also a table held until the end.
    const returned = await ps('param($n = 2)\nWrite-Host "start"\nreturn [pscustomobject]@{ N = $n }', dir, 'r.ps1');
    assert.equal(returned.out, 'start\n\nN\n-\n2\n\n\n');
    const early = await ps('"a"\nreturn "b"\n"c"', dir);
    assert.equal(early.out, 'a\nb\n');
  });

  it('if/elseif/else, foreach, for, while, do-until, break and continue', async () => {
    const r = await ps(
      [
        '$list = @("a", "b", "c", "d")',
        'foreach ($x in $list) { if ($x -eq "b") { continue } elseif ($x -eq "d") { break } else { "item $x" } }',
        'for ($i = 0; $i -lt 3; $i = $i + 1) { "i=$i" }',
        '$n = 0',
        'while ($true) { $n = $n + 1; if ($n -ge 4) { break } }',
        'do { $n = $n - 1 } until ($n -le 1)',
        '"n=$n"',
        'if ($false) { "no" }',
        'if ($null) { "no" } else { "else" }',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(r.out, 'item a\nitem c\ni=0\ni=1\ni=2\nn=1\nelse\n');
  });

  it('functions: param blocks with types, defaults, Mandatory, switches; named, prefixed and positional arguments; return; scopes', async () => {
    const r = await ps(
      [
        'function Add-Server {',
        '  [CmdletBinding()]',
        '  param(',
        '    [Parameter(Mandatory = $true, Position = 0)] [string] $Address,',
        '    [string] $Name = "srv",',
        '    [int] $Weight = 2,',
        '    [switch] $Require',
        '  )',
        '  $local = "inside"',
        '  if ($Require) { return "$Name $Address Require $($Weight * 2) $($PSBoundParameters.Count)" }',
        '  "$Name $Address none $Weight $outer"',
        '}',
        '$outer = "seen from the caller"',
        'Add-Server 198.51.100.1 -Req -Weight 5',
        'Add-Server -Name web -Address 203.0.113.5',
        '"local after the call: [$local]"',
        'function Get-Args { "args: $($args -join ",")" }',
        'Get-Args x y z',
        '$r = Add-Server 192.0.2.7',
        '"captured: $r"',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(
      r.out,
      [
        'srv 198.51.100.1 Require 10 3',
        'web 203.0.113.5 none 2 seen from the caller',
        'local after the call: []',
        'args: x,y,z',
        'captured: srv 192.0.2.7 none 2 seen from the caller',
        '',
      ].join('\n'),
    );
    const missing = await ps('function F { param([Parameter(Mandatory)] $X) $X }\nF\n"after"', dir);
    assert.equal(missing.out, 'after\n');
    assert.match(missing.err, /^F : Cannot process command because of one or more missing mandatory parameters: X\./m);
    assert.match(missing.err, /FullyQualifiedErrorId : MissingMandatoryParameter,F/);
  });

  it('try/catch/finally: typed catch, $_ as the error record, -ErrorAction Stop, $ErrorActionPreference, throw; an uncaught throw ends the script', async () => {
    const r = await ps(
      [
        'try {',
        '  New-NetIPsecRule -DisplayName x -RemoteAddress 192.0.2.999 -ErrorAction Stop',
        '  "not reached"',
        '} catch [Microsoft.Management.Infrastructure.CimException] {',
        '  "cim: $($_.Exception.Message)"',
        '} catch { "other" } finally { "finally ran" }',
        'try { throw "boom" } catch [System.Management.Automation.RuntimeException] { "caught: $_" }',
        'try { Get-NoSuchThing } catch [System.Management.Automation.CommandNotFoundException] { "not found: $($_.FullyQualifiedErrorId)" }',
        'function Fails { throw "from a function" }',
        'try { Fails; "not reached" } catch { "caller caught: $_" }',
        // A non-terminating cmdlet error is not caught: written, and the block goes on.
        'try { New-NetIPsecRule -DisplayName y -RemoteAddress 192.0.2.998; "went on" } catch { "not caught" }',
        'New-NetIPsecRule -DisplayName z -RemoteAddress 192.0.2.997 -ErrorAction SilentlyContinue',
        // $? is False after the failed command; $Error holds every error so far, caught ones too, newest first.
        '"silently: $? $($Error.Count) $($Error[0].Exception.Message -match "192.0.2.997")"',
        '$ErrorActionPreference = "Stop"',
        'try { New-NetIPsecRule -DisplayName w -RemoteAddress 192.0.2.996 } catch { "preference stop caught" }',
        'throw "the end"',
        '"never"',
      ].join('\n'),
      dir,
    );
    assert.equal(
      r.out,
      [
        'cim: The address "192.0.2.999" given to RemoteAddress is not valid: use an IP address, a subnet (address/prefix or address/mask), a range (address-address) or a keyword.',
        'finally ran',
        'caught: boom',
        'not found: CommandNotFoundException',
        'caller caught: from a function',
        'went on',
        'silently: False 6 True',
        'preference stop caught',
        '',
      ].join('\n'),
    );
    // Two errors written: the uncaught non-terminating one, and the final throw (as PowerShell shows it).
    assert.equal(r.errors, 2, r.err);
    assert.match(r.err, /192\.0\.2\.998/);
    assert.match(r.err, /^the end\nAt line:16 char:1\n\+ throw "the end"/m);
    assert.match(r.err, /CategoryInfo {10}: OperationStopped: \(the end:String\) \[\], RuntimeException/);
    assert.deepEqual(new PolicyStores(dir).read().rules, [], 'no failing New- left a rule');
  });

  it('trap: handles terminating errors anywhere in its scope; continue goes on silently, break stops, neither writes the error and goes on; typed traps', async () => {
    const goOn = await ps(
      [
        'Write-Output one',
        'throw "boom"',
        'Write-Output two',
        'trap { Write-Output "trapped: $($_.Exception.Message)"; continue }',
      ].join('\n'),
      dir,
    );
    assert.equal(goOn.out, 'one\ntrapped: boom\ntwo\n');
    assert.equal(goOn.errors, 0, goOn.err);
    const written = await ps(['trap { "trapped" }', 'throw "written"', '"after"'].join('\n'), dir);
    assert.equal(written.out, 'trapped\nafter\n');
    assert.equal(written.errors, 1);
    assert.match(written.err, /^written\n/m);
    const stop = await ps(['trap { "trapped"; break }', 'throw "fatal"', '"never"'].join('\n'), dir);
    assert.equal(stop.out, 'trapped\n');
    assert.equal(stop.errors, 1);
    assert.match(stop.err, /^fatal\n/m);
    const typed = await ps(
      [
        'function Set-Policy {',
        '  trap [Microsoft.Management.Infrastructure.CimException] { "cim trap: $($_.FullyQualifiedErrorId -replace \',.*\')"; continue }',
        '  New-NetIPsecRule -DisplayName t -RemoteAddress 192.0.2.999 -ErrorAction Stop',
        '  "function went on"',
        '}',
        'Set-Policy',
        'trap [System.Management.Automation.CommandNotFoundException] { "unrelated"; continue }',
        'throw "not for that trap"',
        '"never"',
      ].join('\n'),
      dir,
    );
    assert.match(typed.out, /^cim trap: .+\nfunction went on\n$/);
    assert.equal(typed.errors, 1);
    assert.match(typed.err, /^not for that trap\n/m);
  });

  it('statements as values: $x = if/switch/foreach/try …, chained assignment, array defaults in parentheses', async () => {
    const r = await ps(
      [
        "$Direction = 'Both'",
        "$Directions = if ($Direction -eq 'Both') { @('Inbound', 'Outbound') } else { @($Direction) }",
        '"$($Directions.Count): $Directions"',
        '$none = if ($false) { 1 }',
        '"none: $($null -eq $none)"',
        "$picked = switch -Wildcard ('SHA256') { 'SHA*' { 'hash' } default { 'other' } }",
        '"switch: $picked"',
        '$squares = foreach ($i in 1..3) { $i * $i }',
        '"foreach: $($squares -join \',\')"',
        "$caught = try { throw 'no' } catch { 'caught' }",
        '"try: $caught"',
        '$RuleName = $Protocol = $null',
        '$a = $b = 7',
        '"chained: $($null -eq $RuleName) $($null -eq $Protocol) $a $b"',
        "$rule = @{ DisplayName = 'x'; InboundSecurity = if ($true) { 'Require' } else { 'Request' } }",
        '"hashtable: $($rule.InboundSecurity)"',
        'function Ports { param([int[]]$Ports = (5800, 5900), $Name = "vnc") "$Name $($Ports -join \'+\')" }',
        'Ports',
        'Ports -Ports 1, 2 -Name x',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(
      r.out,
      [
        '2: Inbound Outbound',
        'none: True',
        'switch: hash',
        'foreach: 1,4,9',
        'try: caught',
        'chained: True True 7 7',
        'hashtable: Require',
        'vnc 5800+5900',
        'x 1+2',
        '',
      ].join('\n'),
    );
  });

  it('idioms of published admin scripts: typed variables, $obj.$name, PSObject.Properties, bitwise operators, $first, $rest = …, Clear-Host', async () => {
    const r = await ps(
      [
        "[int]$count = '5'",
        "[IPAddress] $ip = '192.0.2.1'",
        '"typed: $($count + 1) $ip"',
        "$property = 'DisplayName'",
        "$item = [pscustomobject]@{ DisplayName = 'rule 1'; Enabled = $true }",
        '"dynamic: $($item.$property)"',
        "\"has: $([bool]$item.PSObject.Properties[$property]) $([bool]$item.PSObject.Properties['Nope']) $($item.PSObject.Properties.Name -join ',')\"",
        '"bits: $((255 -shl 1) -band [byte]::MaxValue) $(12 -bor 3) $(12 -bxor 4) $(256 -shr 4)"',
        '$first, $rest = @(1, 2, 3)',
        "$a, $b, $c = 'x', 'y'",
        '"split: $first [$($rest -join \'+\')] $a $b $($null -eq $c)"',
        'Clear-Host',
        "$h = @{}; $k = 'Port'; $h.$k = 445",
        '"member set: $($h.Port)"',
        'function Set-Width { param($Width) New-NetIPsecRule -DisplayName "w$Width" | Out-Null; $WhatIfPreference }',
        'Set-Width -Wi 5',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(
      r.out,
      [
        'typed: 6 192.0.2.1',
        'dynamic: rule 1',
        'has: True False DisplayName,Enabled',
        'bits: 254 15 8 16',
        'split: 1 [2+3] x y True',
        'member set: 445',
        'False',
        '',
      ].join('\n'),
    );
    const badCast = await ps("[int]$n = 'many'", dir);
    assert.match(badCast.err, /Cannot convert value "many" to type "System.Int32"/);
  });

  it('parameter sets (ParameterSetName, DefaultParameterSetName), $PSCmdlet.ShouldProcess under -WhatIf, common parameters with values, methods with several arguments', async () => {
    const d = freshStateDir();
    const r = await ps(
      [
        'function Set-Policy {',
        "  [CmdletBinding(SupportsShouldProcess, DefaultParameterSetName = 'Show')]",
        '  param(',
        "    [Parameter(Mandatory, ParameterSetName = 'Create')][string]$Name,",
        "    [Parameter(ParameterSetName = 'Show')][switch]$Show,",
        "    [Parameter(Mandatory = $true, ParameterSetName = 'Delete')][switch]$Delete",
        '  )',
        '  if ($PSCmdlet.ShouldProcess("rule $Name", \'Create IPsec rule\')) { New-NetIPsecRule -DisplayName "r-$Name" | Out-Null }',
        '  "set=$($PSCmdlet.ParameterSetName)"',
        '}',
        'Set-Policy',
        'Set-Policy -Name a -ErrorAction Stop',
        'Set-Policy -Name b -WhatIf',
        'Set-Policy -Delete',
        "'abc'.Replace('a', 'x')",
        "(Get-NetIPsecRule).DisplayName -join ','",
        'Set-Policy -Name c -Delete',
      ].join('\n'),
      d,
    );
    assert.equal(
      r.out,
      [
        'set=Show',
        'set=Create',
        'What if: Performing the operation "Create IPsec rule" on target "rule b".',
        'set=Create',
        'set=Delete',
        'xbc',
        'r-,r-a,r-',
        '',
      ].join('\n'),
    );
    assert.equal(r.errors, 1);
    assert.match(r.err, /^Set-Policy : Parameter set cannot be resolved using the specified named parameters\./);
  });

  it('Get-Content (lines, -Raw, Windows separators, a missing file) and ConvertFrom-Json, as scripts read their configuration', async () => {
    const folder = mkdtempSync(join(tmpdir(), 'consec-content-'));
    try {
      writeFileSync(join(folder, 'rules.json'), '\uFEFF{"Rules":[{"Name":"a","Ports":[445,139]},{"Name":"b"}]}\r\n');
      writeFileSync(join(folder, 'hosts.txt'), '192.0.2.1\r\n192.0.2.2\n');
      const r = await ps(
        [
          `$cfg = Get-Content -Path "${folder}\\rules.json" | ConvertFrom-Json`,
          'foreach ($rule in $cfg.Rules) { "$($rule.Name): $($rule.Ports -join \',\')" }',
          `$hosts = Get-Content "${folder}/hosts.txt"`,
          '"$($hosts.Count) hosts, last $($hosts[-1])"',
          `(Get-Content "${folder}/hosts.txt" -Raw).Length`,
          `Get-Content "${folder}/missing.json"`,
          "'{ not json' | ConvertFrom-Json",
          "'went on'",
        ].join('\n'),
        dir,
      );
      assert.equal(r.out, 'a: 445,139\nb: \n2 hosts, last 192.0.2.2\n21\nwent on\n');
      assert.equal(r.errors, 2);
      assert.match(r.err, /^Get-Content : Cannot find path '.*missing\.json' because it does not exist\./m);
      assert.match(r.err, /^ConvertFrom-Json : Conversion from JSON failed with error: /m);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it("a script's own param block ([CmdletBinding()], defaults, switches) binds -File arguments; script blocks with param bind & arguments", async () => {
    const script = [
      '#Requires -Version 5.1',
      '<# .SYNOPSIS An admin script #>',
      '[CmdletBinding(SupportsShouldProcess)]',
      'param (',
      '    [Parameter(Mandatory = $false)]',
      "    [string]$RemoteSubnet = '192.0.2.0/24',",
      '    [switch]$Force',
      ')',
      'Write-Host "configuring"',
      '"subnet=$RemoteSubnet force=$Force bound=$($PSBoundParameters.Count)"',
      '$sb = { param($a, $b = 2) "a=$a b=$b" }',
      '& $sb 1',
      '& $sb -b 5 -a 4',
    ].join('\n');
    const plain = await ps(script, dir, 'admin.ps1');
    assert.equal(plain.err, '');
    assert.equal(plain.out, 'configuring\nsubnet=192.0.2.0/24 force=False bound=0\na=1 b=2\na=4 b=5\n');
    const given = await ps(script, dir, 'admin.ps1', ['-RemoteSubnet', '198.51.100.0/24', '-Force']);
    assert.equal(given.out, 'configuring\nsubnet=198.51.100.0/24 force=True bound=2\na=1 b=2\na=4 b=5\n');
    const folder = mkdtempSync(join(tmpdir(), 'consec-sets-'));
    try {
      writeFileSync(
        join(folder, 'sets.ps1'),
        "[CmdletBinding(DefaultParameterSetName = 'A')]\nparam([Parameter(ParameterSetName = 'A')][switch]$One, [Parameter(ParameterSetName = 'B')][switch]$Two, [switch]$Force)\n$PSCmdlet.ParameterSetName",
      );
      const viaCall = await ps(`& "${folder}/sets.ps1" -Force\n& "${folder}/sets.ps1" -Two`, dir);
      assert.equal(viaCall.out, 'A\nB\n', viaCall.err);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
    const unknown = await ps(script, dir, 'admin.ps1', ['-Nope', 'x']);
    assert.match(unknown.err, /A parameter cannot be found that matches parameter name 'Nope'/);
    assert.equal(unknown.out, '', 'a script whose arguments do not bind does not run');
  });

  it('dot-sourcing a helper file from $PSScriptRoot (its functions and variables stay), & for script blocks, files and command names', async () => {
    const folder = mkdtempSync(join(tmpdir(), 'consec-dot-'));
    try {
      writeFileSync(
        join(folder, 'common.ps1'),
        ['$Shared = "from common"', 'function New-Pair([string]$Name) { "pair $Name" }'].join('\n'),
      );
      writeFileSync(join(folder, 'child.ps1'), ['$Inner = "inner"', '"child ran"'].join('\n'));
      const main = join(folder, 'main.ps1');
      const r = await ps(
        [
          '. "$PSScriptRoot\\common.ps1"',
          'New-Pair -Name a',
          '"shared: $Shared"',
          '& "$PSScriptRoot\\child.ps1"',
          '"inner after &: [$Inner]"',
          '& { $Block = 1; "in block" }',
          '"block after &: [$Block]"',
          '. { $Dotted = 2 }',
          '"dotted: $Dotted"',
          "& 'Write-Output' 'by name'",
          '. ./does-not-exist.ps1',
          '"went on"',
        ].join('\n'),
        dir,
        main,
      );
      assert.equal(
        r.out,
        [
          'pair a',
          'shared: from common',
          'child ran',
          'inner after &: []',
          'in block',
          'block after &: []',
          'dotted: 2',
          'by name',
          'went on',
          '',
        ].join('\n'),
      );
      assert.equal(r.errors, 1);
      assert.match(r.err, /The term '\.\/does-not-exist\.ps1' is not recognized/);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it('advanced functions with begin/process/end: process runs per pipeline item ($_ and the ValueFromPipeline parameter), once without pipeline input', async () => {
    const r = await ps(
      [
        'function Show-Item {',
        '  [CmdletBinding()]',
        '  param([Parameter(ValueFromPipeline = $true)] [string]$Item, [string]$Prefix = "item")',
        '  begin { $n = 0; "begin" }',
        '  process { $n = $n + 1; "$Prefix $n = $Item ($_)" }',
        '  end { "end after $n" }',
        '}',
        "'a', 'b' | Show-Item -Prefix got",
        'Show-Item -Item solo',
        'function Only-End { end { "only end: $($input.Count)" } }',
        '1, 2, 3 | Only-End',
      ].join('\n'),
      dir,
    );
    assert.equal(r.err, '');
    assert.equal(
      r.out,
      [
        'begin',
        'got 1 = a (a)',
        'got 2 = b (b)',
        'end after 2',
        'begin',
        'item 1 = solo ()',
        'end after 1',
        'only end: 3',
        '',
      ].join('\n'),
    );
  });

  it("-ErrorVariable collects a command's errors (also silenced ones), +name appends, a clean run empties it", async () => {
    const r = await ps(
      [
        'Get-NetIPsecRule -Name nope -ErrorAction SilentlyContinue -ErrorVariable e',
        '"count $($e.Count): $($e[0].FullyQualifiedErrorId)"',
        'Get-NetIPsecRule -Name nope2 -ErrorAction SilentlyContinue -ErrorVariable +e',
        '"count $($e.Count): $($e[1].Exception.Message)"',
        'Get-NetIPsecRule -ErrorVariable e | Out-Null',
        'if (-not $e) { "empty after a clean run" }',
        'try { Get-NetIPsecRule -Name nope3 -ErrorAction Stop -ErrorVariable stopped } catch { "caught, and kept: $($stopped.Count)" }',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(
      r.out,
      [
        'count 1: CmdletizationQuery_NotFound_Name,Get-NetIPsecRule',
        "count 2: No MSFT_NetConSecRule objects found with property 'Name' equal to 'nope2'.  Verify the value of the property and retry.",
        'empty after a clean run',
        'caught, and kept: 1',
        '',
      ].join('\n'),
    );
  });

  it('switch (exact, -Wildcard, -Regex, script block conditions, default, break), -f formatting, here-strings', async () => {
    const r = await ps(
      [
        'switch ("198.51.100.7", "web01", "x") { "web*" { "nope" } "X" { "exact $_" } default { "default $_" } }',
        'switch -Wildcard ("web01") { "web*" { "web server $_" } }',
        'switch -Regex ("198.51.100.7") { "^198\\." { "net2"; break } "\\d" { "not reached" } }',
        'switch (5) { { $_ -gt 3 } { "big" } 5 { "five" } }',
        '"{0}|{1,5}|{2,-3}|{3:D3}|{4:X}|{{}}|{5:N1}" -f "a", 2, "b", 7, 255, 1234.56',
        '$name = "srv"',
        '$h = @"',
        'name: $name "quoted" $(1 + 1)',
        '"@',
        '$h',
        "$l = @'",
        'literal $name',
        "'@",
        '$l',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(
      r.out,
      [
        'default 198.51.100.7',
        'default web01',
        'exact x',
        'web server web01',
        'net2',
        'big',
        'five',
        'a|    2|b  |007|FF|{}|1,234.6',
        'name: srv "quoted" 2',
        'literal $name',
        '',
      ].join('\n'),
    );
  });

  it('type literals: casts, -is/-as, [guid]::NewGuid(), [ipaddress], [string]::IsNullOrEmpty; unknown types and bad casts fail as PowerShell does', async () => {
    const r = await ps(
      [
        '[int]"42" + 1',
        '[string]5 + 5',
        '[int]2.5',
        '[int]3.5',
        '([guid]::NewGuid()).Guid -match "^[0-9a-f]{8}-[0-9a-f]{4}-"',
        '([ipaddress]"2001:db8::1").AddressFamily',
        '"5" -is [string]',
        '5 -isnot [string]',
        '$null -eq ("x" -as [int])',
        '[string]::IsNullOrEmpty("")',
        '($a = [string[]](1, 2))[1] -is [string]',
        '[int]"abc"',
        '[Foo.Bar]1',
        '"after"',
      ].join('\n'),
      dir,
    );
    assert.equal(
      r.out,
      ['43', '55', '2', '4', 'True', 'InterNetworkV6', 'True', 'True', 'True', 'True', 'True', 'after', ''].join('\n'),
    );
    assert.equal(r.errors, 2);
    assert.match(
      r.err,
      /Cannot convert value "abc" to type "System\.Int32"\. Error: "Input string was not in a correct format\."/,
    );
    assert.match(r.err, /Unable to find type \[Foo\.Bar\]\./);
  });

  it('Import-Module NetSecurity, #Requires, Write-Verbose/-Verbose, Write-Error (non-terminating), Read-Host refused when non-interactive', async () => {
    const r = await ps(
      [
        '#Requires -Modules NetSecurity',
        'Import-Module NetSecurity',
        'Write-Verbose "quiet"',
        'Write-Verbose "loud" -Verbose',
        'Write-Error "bad thing"',
        '"after"',
        'Import-Module ActiveDirectory',
        '$x = Read-Host "Name"',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, 'after\n');
    assert.equal(r.errors, 3);
    assert.match(r.err, /^VERBOSE: loud$/m);
    assert.doesNotMatch(r.err, /quiet/);
    assert.match(r.err, /^Write-Error : bad thing$/m);
    assert.match(r.err, /The specified module 'ActiveDirectory' was not loaded because no valid module file was found/);
    assert.match(r.err, /PowerShell is in NonInteractive mode\. Read and Prompt functionality is not available\./);
  });
});
