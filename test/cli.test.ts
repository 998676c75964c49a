import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LabPrerequisiteError } from '../src/errors.ts';
import { requireLabPrerequisites } from '../src/lab/exec.ts';
import { ROOT } from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

function consec(args: string[], asUser?: string): { code: number | null; stdout: string; stderr: string } {
  const argv = [process.execPath, '--import', 'tsx', join(ROOT, 'src/cli/main.ts'), ...args];
  const r = asUser
    ? spawnSync('setpriv', ['--reuid', asUser, '--regid', asUser, '--clear-groups', ...argv], {
        encoding: 'utf8',
        cwd: ROOT,
      })
    : spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8', cwd: ROOT });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('consec CLI', () => {
  it('--help lists the command groups; --version says the package version', () => {
    const r = consec(['--help']);
    assert.equal(r.code, 0);
    for (const group of ['pwsh', 'netsh', 'daemon', 'service', 'lab'])
      assert.match(r.stdout, new RegExp(`^  ${group}\\b`, 'm'));
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(consec(['--version']).stdout, `${pkg.version}\n`);
  });

  it('npm pack makes a tarball that installs like a Node tool (npm install -g): the addon builds, consec runs, its unit names the installed files', () => {
    const dir = mkdtempSync('/tmp/consec-pack-');
    try {
      const pack = spawnSync('npm', ['pack', '--pack-destination', dir], { encoding: 'utf8', cwd: ROOT });
      assert.equal(pack.status, 0, pack.stderr);
      const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
      const tgz = join(dir, `consec-${pkg.version}.tgz`);
      const prefix = join(dir, 'prefix');
      // From npm's cache (filled by npm ci), as an admin's machine would fetch them from the registry.
      const install = spawnSync(
        'npm',
        [
          'install',
          '-g',
          '--prefix',
          prefix,
          '--prefer-offline',
          '--no-audit',
          '--no-fund',
          '--allow-scripts=consec',
          tgz,
        ],
        { encoding: 'utf8', cwd: dir },
      );
      assert.equal(install.status, 0, install.stderr);
      const home = join(prefix, 'lib', 'node_modules', 'consec');
      for (const addon of ['consec_io.node', 'consec_gss.node'])
        assert.ok(existsSync(join(home, 'build', 'Release', addon)), `${addon} built at install`);
      const bin = join(prefix, 'bin', 'consec');
      const run = (...args: string[]) => spawnSync(bin, args, { encoding: 'utf8', cwd: '/' });
      assert.equal(run('--version').stdout, `${pkg.version}\n`);
      assert.match(run('--help').stdout, /^ {2}service\b/m);
      const state = freshStateDir('consec-pack-state-');
      const rule = run(
        '--state-dir',
        state,
        'pwsh',
        '-Command',
        'New-NetIPsecRule -DisplayName packed | Out-Null; (Get-NetIPsecRule).DisplayName',
      );
      assert.equal(rule.stdout.trim(), 'packed', rule.stderr);
      assert.match(
        run('service', 'unit').stdout,
        new RegExp(`^ExecStart=${process.execPath} ${join(home, 'dist', 'cli', 'main.js')} `, 'm'),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the daemon refuses a state directory others may write to, one of another user, or a link, before it touches anything', () => {
    const base = mkdtempSync('/tmp/consec-statedir-');
    try {
      const open = join(base, 'open');
      mkdirSync(open, { mode: 0o700 });
      chmodSync(open, 0o777);
      const foreign = join(base, 'foreign');
      mkdirSync(foreign, { mode: 0o700 });
      chownSync(foreign, 1001, 1001);
      const link = join(base, 'link');
      symlinkSync(foreign, link);
      for (const [dir, why] of [
        [open, /is writable by group or others \(mode 777\): chmod go-w/],
        [foreign, /belongs to user 1001: consec writes only into directories of its own user/],
        [link, /is a symbolic link: give the real directory/],
      ] as const) {
        const r = consec(['--state-dir', dir, 'daemon', '--dataplane', 'none', '--listen', '127.0.0.1']);
        assert.equal(r.code, 1, r.stdout);
        assert.match(r.stderr, why);
        assert.ok(!existsSync(join(dir, 'daemon.lock')) && !existsSync(join(dir, 'control.sock')));
      }
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  it('service install writes a unit systemd accepts (Type=notify, before the network, hardened) whose command runs from /; uninstall removes only its own', () => {
    const unitDir = mkdtempSync('/tmp/consec-unit-');
    try {
      // A state directory that does not exist yet: install makes it (ReadWritePaths= needs it).
      const state = join(unitDir, 'state');
      const r = consec(['--state-dir', state, 'service', 'install', '--unit-dir', unitDir]);
      assert.equal(statSync(state).mode & 0o777, 0o700);
      assert.equal(r.code, 0, r.stderr);
      const path = join(unitDir, 'consec.service');
      assert.equal(statSync(path).mode & 0o777, 0o644);
      const unit = readFileSync(path, 'utf8');
      for (const line of [
        'Type=notify',
        'DefaultDependencies=no',
        'Before=network-pre.target shutdown.target',
        'Wants=network-pre.target',
        'Restart=on-failure',
        'ProtectSystem=strict',
        `ReadWritePaths=${state}`,
        'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_DAC_READ_SEARCH',
        'NoNewPrivileges=yes',
        'DeviceAllow=/dev/net/tun rw',
      ])
        assert.ok(unit.split('\n').includes(line), `${line}\n${unit}`);
      // systemd's own check: no unknown keys, no bad values.
      const verify = spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8' });
      assert.equal(verify.status, 0, verify.stderr);
      // About our unit, nothing (other units of the host may draw remarks of their own).
      assert.deepEqual(
        verify.stderr.split('\n').filter((l) => l.includes('consec.service')),
        [],
        'systemd-analyze has nothing to say about the unit',
      );
      // The ExecStart command works from systemd's working directory, /.
      const exec = /^ExecStart=(.*) daemon$/m.exec(unit)?.[1]?.split(' ') as string[];
      const v = spawnSync(exec[0] as string, [...exec.slice(1), '--version'], { encoding: 'utf8', cwd: '/' });
      assert.equal(v.status, 0, v.stderr);
      // Someone else's unit of that name is never removed; ours is.
      writeFileSync(join(unitDir, 'other.service'), '[Service]\nExecStart=/bin/true\n');
      const ours = consec(['service', 'uninstall', '--unit-dir', unitDir]);
      assert.equal(ours.code, 0, ours.stderr);
      assert.ok(!existsSync(path));
      writeFileSync(path, '[Service]\nExecStart=/bin/true\n');
      const foreign = consec(['service', 'uninstall', '--unit-dir', unitDir]);
      assert.equal(foreign.code, 1);
      assert.match(foreign.stderr, /was not written by consec: not removed/);
      assert.ok(existsSync(path));
    } finally {
      rmSync(unitDir, { recursive: true, force: true });
    }
  });

  it('bad daemon options and missing daemons get one clear line, no traceback', () => {
    const r = consec(['daemon', '--listen', '127.0.0.1', '--metrics', 'localhost']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'consec: --metrics localhost: give ADDRESS:PORT, e.g. 127.0.0.1:9464 or [::1]:9464\n');
    const bad = consec(['daemon', '--listen', 'nowhere']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^consec: --listen "nowhere" is not an IP address\n$/);
    const level = consec(['daemon', '--listen', '127.0.0.1', '--log-level', 'debug']);
    assert.equal(level.code, 1);
    assert.equal(level.stderr, 'consec: --log-level debug: use info, warn or error\n');
    const profile = consec(['netsh', 'advfirewall', 'monitor', 'show', 'currentprofile']);
    assert.equal(profile.code, 0, profile.stderr);
    assert.match(profile.stdout, /^\n(Domain|Private|Public) Profile:\n-{70}\n/);
    assert.match(profile.stdout, /\nOk\.\n\n$/);
    // Live views need the daemon, and say so when it is not running.
    const dir = freshStateDir('consec-cli-live-');
    const mmsa = consec(['--state-dir', dir, 'netsh', 'advfirewall', 'monitor', 'show', 'mmsa']);
    assert.equal(mmsa.code, 1);
    assert.match(mmsa.stdout + mmsa.stderr, /consec daemon is not running \(no control socket at .*control\.sock\)/);
    const qm = consec(['--state-dir', dir, 'pwsh', '-Command', 'Get-NetIPsecQuickModeSA']);
    assert.notEqual(qm.code, 0);
    assert.match(qm.stdout + qm.stderr, /consec daemon is not running/);
  });

  it('netsh takes the words after "netsh" or one quoted command line', () => {
    const dir = freshStateDir('consec-cli-');
    const add = consec([
      '--state-dir',
      dir,
      'netsh',
      'advfirewall',
      'consec',
      'add',
      'rule',
      'name=cli rule',
      'endpoint1=any',
      'endpoint2=192.0.2.5',
      'action=noauthentication',
    ]);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    assert.equal(add.stdout, '\nOk.\n\n');
    const show = consec(['--state-dir', dir, 'netsh', 'advfirewall consec show rule name="cli rule"']);
    assert.equal(show.code, 0);
    assert.match(show.stdout, /Endpoint2: +192\.0\.2\.5\/32\n/);
  });

  it('pwsh takes -Command, -File and standard input, and exits 1 after an error', () => {
    const dir = freshStateDir('consec-cli-');
    const ok = consec([
      '--state-dir',
      dir,
      'pwsh',
      '-NoProfile',
      '-Command',
      'New-NetIPsecRule -DisplayName "CLI" -Name cli | Out-Null; (Get-NetIPsecRule -Name cli).DisplayName',
    ]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, 'CLI\n');
    const file = join(dir, 'x.ps1');
    writeFileSync(
      file,
      '\uFEFFGet-NetIPsecRule -Name cli |\n  ForEach-Object { $_.Mode }\nGet-NetIPsecRule -Name missing\n',
    );
    const f = consec(['--state-dir', dir, 'pwsh', '-File', file]);
    assert.equal(f.code, 1);
    assert.equal(f.stdout, 'Transport\n');
    assert.ok(f.stderr.includes(`At ${file}:3 char:1`), f.stderr);
    const stdin = spawnSync(
      process.execPath,
      ['--import', 'tsx', join(ROOT, 'src/cli/main.ts'), '--state-dir', dir, 'pwsh', '-'],
      {
        encoding: 'utf8',
        cwd: ROOT,
        input: 'Write-Output "from stdin"',
      },
    );
    assert.equal(stdin.stdout, 'from stdin\n');
  });

  it('bad lab input is a one-line error', () => {
    const r = consec(['lab', 'up', 'no-such-topology']);
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /^consec: unknown topology "no-such-topology"; choose one of: host-to-host, nat, site-to-site, domain, fleet\n$/,
    );
  });

  it('lab commands without root say what is missing and change nothing', () => {
    const r = consec(['lab', 'up'], '65534');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^consec: the lab cannot run here; missing: root privileges/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  });

  it('a user without root is told "permission denied" and why — not "locked" or "no events"', () => {
    const dir = freshStateDir('consec-eacces-');
    chmodSync(dir, 0o755);
    mkdirSync(join(dir, 'audit'), { mode: 0o700 });
    writeFileSync(join(dir, 'audit', 'security.jsonl'), '{"Id":4650}\n', { mode: 0o600 });
    const events = consec(
      ['--state-dir', dir, 'pwsh', '-Command', "Get-WinEvent -FilterHashtable @{LogName='Security'}"],
      '65534',
    );
    assert.equal(events.code, 1);
    assert.match(events.stderr, /permission denied: .*security\.jsonl \(consec needs root to read the Security log\)/);
    assert.doesNotMatch(events.stderr, /No events were found/);
    const rule = consec(
      ['--state-dir', dir, 'pwsh', '-Command', 'New-NetIPsecRule -DisplayName x -RemoteAddress 192.0.2.9'],
      '65534',
    );
    assert.equal(rule.code, 1);
    assert.match(rule.stderr, /permission denied: .* \(consec needs root to change the policy stores\)/);
    assert.doesNotMatch(rule.stderr, /locked/);
  });

  it('bounded input: an endless or oversized script or store is refused before it is read whole; deep nesting is a parse error naming the line', () => {
    const dir = freshStateDir('consec-bounded-');
    // /dev/zero never ends; a 17 MiB script is over the limit.
    const zero = consec(['--state-dir', dir, 'pwsh', '-File', '/dev/zero']);
    assert.equal(zero.code, 1);
    assert.match(zero.stderr, /The script \/dev\/zero is larger than 16 MiB/);
    const big = join(dir, 'big.ps1');
    writeFileSync(big, `# ${'x'.repeat(17 * 1024 * 1024)}\n`);
    assert.match(consec(['--state-dir', dir, 'pwsh', '-File', big]).stderr, /big\.ps1 is larger than 16 MiB/);
    // A policy store grown past the limit is refused, and left as it is.
    const store = join(dir, 'policy', 'PersistentStore.json');
    mkdirSync(join(dir, 'policy'), { recursive: true, mode: 0o700 });
    writeFileSync(store, `${' '.repeat(17 * 1024 * 1024)}{}`, { mode: 0o600 });
    const before = statSync(store);
    const add = consec([
      '--state-dir',
      dir,
      'pwsh',
      '-Command',
      'New-NetIPsecRule -DisplayName x -RemoteAddress 192.0.2.9',
    ]);
    assert.equal(add.code, 1);
    assert.match(add.stderr, /PersistentStore\.json is larger than 16 MiB/);
    assert.equal(statSync(store).mtimeMs, before.mtimeMs, 'the store is untouched');
    // 20,000 nested parentheses, and a string nesting $( "…" ) deeply: PowerShell parse errors, no JavaScript stack error.
    const deep = join(dir, 'deep.ps1');
    writeFileSync(deep, `$a = 1\n$b = ${'('.repeat(20_000)}1${')'.repeat(20_000)}\n`);
    const nested = consec(['--state-dir', dir, 'pwsh', '-File', deep]);
    assert.equal(nested.code, 1);
    assert.match(nested.stderr, /At .*deep\.ps1:2 char:\d+/);
    assert.match(nested.stderr, /The script is nested too deeply/);
    assert.match(nested.stderr, /FullyQualifiedErrorId : ScriptNestedTooDeeply/);
    assert.doesNotMatch(nested.stderr, /call stack|RangeError/);
    const strings = consec(['--state-dir', dir, 'pwsh', '-Command', `${'"$('.repeat(3000)}1${')"'.repeat(3000)}`]);
    assert.match(strings.stderr, /ScriptNestedTooDeeply/);
    assert.doesNotMatch(strings.stderr, /call stack|RangeError/);
  });

  it('names a missing tool and the package that provides it', () => {
    assert.throws(
      () => requireLabPrerequisites(['ip', 'consec-no-such-tool']),
      (e: unknown) => {
        return e instanceof LabPrerequisiteError && /"consec-no-such-tool"/.test(e.message) && !/"ip"/.test(e.message);
      },
    );
  });

  it('lab demo: Windows policy applied, consec daemon negotiates IKEv2 with strongSwan, the pings cross as ESP only', () => {
    const r = consec(['lab', 'demo']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /cleartext reachability: ok/);
    assert.match(r.stdout, /\| New-NetIPsecRule -DisplayName "Lab host-to-host"/);
    assert.match(r.stdout, /policy applied: ok/);
    assert.match(r.stdout, /Decision +: Require/);
    assert.match(r.stdout, /4650 main mode SA established: AES-256, ECDH P-256/);
    const spis = r.stdout.match(
      /5451 quick mode SA established: ESP AES-GCM 256, SPIs in ([0-9a-f]{8}) out ([0-9a-f]{8})/,
    );
    assert.ok(spis, r.stdout);
    assert.match(r.stdout, /3 packets transmitted, 3 received, 0% packet loss/);
    // strongSwan lists the same SA, the other way round, with our three pings counted.
    assert.match(r.stdout, /lab: #1, ESTABLISHED, IKEv2/);
    assert.match(r.stdout, new RegExp(`in +${spis[2]}, +\\d+ bytes, +3 packets`));
    assert.match(r.stdout, new RegExp(`out +${spis[1]}, +\\d+ bytes, +3 packets`));
    assert.match(r.stdout, /only IKE and ESP crossed the wire \(6 ESP packets\): no cleartext\./);
    assert.match(r.stdout, /Lab torn down\.$/m);
    const ns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    const id = r.stdout.match(/\(csl-([0-9a-f]{6})-alice/)?.[1];
    assert.ok(id);
    assert.doesNotMatch(ns, new RegExp(id));
  });

  it('lab demo --domain: two members of a real KDC isolate themselves with AuthIP and Kerberos, pings as ESP only', () => {
    const before = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    const r = consec(['lab', 'demo', '--domain']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /alice 192\.0\.2\.1 joined: computer account host\/alice\.corp\.example@CORP\.EXAMPLE/);
    assert.match(r.stdout, /\| New-NetIPsecRule -DisplayName "Domain isolation"/);
    assert.match(r.stdout, /3 packets transmitted, 3 received, 0% packet loss/);
    assert.match(r.stdout, /KeyModule +: AuthIp/);
    assert.match(r.stdout, /LocalFirstId +: @\{Identity=CORP\\ALICE\$; AuthenticationMethod=MachineKerberos\}/);
    assert.match(r.stdout, /RemoteFirstId +: @\{Identity=CORP\\BOB\$; AuthenticationMethod=MachineKerberos\}/);
    assert.match(r.stdout, /x eth:ethertype:ip:udp:isakmp \(exchange 243: AuthIP\)/);
    assert.match(r.stdout, /only AuthIP and ESP crossed between the members \(\d+ ESP packets\): no cleartext\./);
    assert.match(r.stdout, /Lab torn down\.$/m);
    assert.equal(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout, before, 'no namespace left');
  });
});
