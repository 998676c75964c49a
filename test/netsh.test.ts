import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadDebugLogSettings } from '../src/audit/debuglog.ts';
import { describe, it } from 'node:test';
import { PolicyStores } from '../src/policy/store.ts';
import { Netsh } from '../src/shell/netsh/netsh.ts';
import { splitLine } from '../src/shell/netsh/syntax.ts';
import { freshStateDir, ps, SCRIPTS, storeBytes } from './pwsh-helpers.ts';

async function netsh(dir: string, line: string, hints = true): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const n = new Netsh(new PolicyStores(dir), { stdout: (t) => (out += t), stderr: (t) => (err += t) }, { hints });
  const code = await n.run(splitLine(line));
  return { code, out, err };
}

describe('netsh advfirewall', () => {
  it('runs the seed lines (06-netsh.txt): add, show, set global, monitor, delete', async () => {
    const dir = freshStateDir();
    const lines = readFileSync(join(SCRIPTS, '06-netsh.txt'), 'utf8')
      .split('\n')
      .filter((l) => l.trim() && !l.startsWith('#'));
    const results: { line: string; code: number; out: string; err: string }[] = [];
    for (const line of lines) results.push({ line, ...(await netsh(dir, line)) });
    const byCmd = (s: string) => results.find((r) => r.line.includes(s)) as (typeof results)[number];
    // Everything that is policy works; the SA views need a running daemon and say so; the debug log
    // (not a Windows keyword: the seed's) is consec's IKE trace, with a warning saying so.
    for (const r of results) {
      const live = /show mmsa|show qmsa/.test(r.line);
      assert.equal(r.code, live ? 1 : 0, `${r.line}\n${r.out}${r.err}`);
      if (live) assert.match(r.out + r.err, /consec daemon is not running \(no control socket at /);
      else assert.match(r.out, /Ok\.\n\n$/);
    }
    assert.match(byCmd('debuglog enable').err, /"debuglog" is not a Windows netsh keyword .* IKE debug log is on: /);
    assert.match(byCmd('debuglog size').err, /, 20480 KB\.$/m);
    assert.deepEqual(loadDebugLogSettings(dir), { enabled: true, file: null, sizeKb: 20480 });
    const show = byCmd('consec show rule').out;
    assert.match(show, /^Rule Name: {28}Server-to-Server IPsec$/m);
    assert.match(show, /^Endpoint1: {28}10\.0\.1\.20\/32$/m);
    assert.match(show, /^Action: {31}RequireInRequireOut$/m);
    assert.match(show, /^Auth1: {32}ComputerPSK$/m);
    assert.match(show, /^QuickModeSecMethods: +ESP:SHA256-AES256\+60min\+100000kb$/m);
    assert.doesNotMatch(results.map((r) => r.out + r.err).join(''), /MyTestKey123!/, 'the key is never printed');
    assert.match(byCmd('show global').out, /^DefaultExemptions {21}NeighborDiscovery,ICMP,DHCP$/m);
    assert.match(byCmd('exemptions').err, /"exemptions" is not a netsh keyword/);
    assert.match(byCmd('remote=').out, /Rule Name: +Server-to-Server IPsec/);
    // The delete removed the rule and the sets netsh made for it (the store never held the built-in defaults).
    const doc = new PolicyStores(dir).read();
    assert.deepEqual(doc.rules, []);
    assert.deepEqual(doc.phase1AuthSets, []);
    assert.deepEqual(doc.quickModeCryptoSets, []);
    assert.deepEqual(doc.settings.Exemptions, ['NeighborDiscovery', 'Icmp', 'Dhcp']);
  });

  it("set global ipsec defaultkeymodules (consec's own keyword): stored, shown, a bad value changes nothing", async () => {
    const dir = freshStateDir();
    const show = async () => (await netsh(dir, 'advfirewall show global')).out;
    assert.match(await show(), /^DefaultKeyModules \(consec\) +IKEv2,IKEv1$/m, "Windows 11 24H2's order by default");
    const set = await netsh(dir, 'advfirewall set global ipsec defaultkeymodules ikev1first');
    assert.equal(set.code, 0, set.err);
    assert.match(
      set.err,
      /consec's own keyword, not Windows netsh: rules with KeyModule Default now try IKEv1, then IKEv2/,
    );
    assert.equal(new PolicyStores(dir).read('PersistentStore').settings.DefaultKeyModuleOrder, 'IKEv1First');
    assert.match(await show(), /^DefaultKeyModules \(consec\) +IKEv1,IKEv2$/m);
    const bad = await netsh(dir, 'advfirewall set global ipsec defaultkeymodules ikev3first');
    assert.equal(bad.code, 1);
    assert.match(bad.out + bad.err, /ikev2first|ikev1first/);
    assert.equal(new PolicyStores(dir).read('PersistentStore').settings.DefaultKeyModuleOrder, 'IKEv1First');
  });

  it('netsh and PowerShell see the same policy', async () => {
    const dir = freshStateDir();
    const add = await netsh(
      dir,
      'advfirewall consec add rule name="tun" endpoint1=198.51.100.0/24 endpoint2=203.0.113.0/24 action=requireinclearout mode=tunnel localtunnelendpoint=192.0.2.1 remotetunnelendpoint=192.0.2.2 auth1=computercert auth1ca="CN=Lab Root, O=Lab catype:root certmapping:yes" qmsecmethods=ESP:AESGCM256-AESGCM256+30min,ESP:SHA256-AES128 qmpfs=ecdhp256 profile=domain,private',
    );
    assert.equal(add.code, 0, add.out);
    const r = await ps(
      [
        '$r = Get-NetIPsecRule -DisplayName tun',
        '"$($r.Mode) $($r.InboundSecurity)/$($r.OutboundSecurity) $($r.Profile) $($r.RemoteTunnelEndpoint)"',
        '($r | Get-NetIPsecQuickModeCryptoSet -Name $r.QuickModeCryptoSet).PerfectForwardSecrecyGroup',
        '(Get-NetIPsecQuickModeCryptoSet -Name $r.QuickModeCryptoSet).Proposal | ForEach-Object { "$_" }',
        '(Get-NetIPsecPhase1AuthSet -Name $r.Phase1AuthSet).Proposal | ForEach-Object { "$($_.Authority)|$($_.AuthorityType)|$($_.AccountMapping)" }',
      ].join('\n'),
      dir,
    );
    assert.equal(
      r.out,
      [
        'Tunnel Require/None Domain, Private 192.0.2.2',
        'DH19',
        'ESP:AESGMAC256-AESGCM256+30min+100000kb',
        'ESP:SHA256-AES128+60min+100000kb',
        'CN=Lab Root, O=Lab|Root|True',
        '',
      ].join('\n'),
      r.err,
    );
    await ps(
      'New-NetIPsecRule -DisplayName "from pwsh" -RemoteAddress 192.0.2.77 -InboundSecurity Request -OutboundSecurity Request | Out-Null',
      dir,
    );
    const show = await netsh(dir, 'advfirewall consec show rule name="from pwsh"');
    assert.match(show.out, /Action: +RequestInRequestOut\n/);
    assert.match(show.out, /Auth1: +ComputerKerb\n/);
  });

  it("prints just Ok. as Windows does (hints only when asked); \\' is a double quote inside a value", async () => {
    const dir = freshStateDir();
    const add = await netsh(
      dir,
      String.raw`advfirewall consec add rule name="q" endpoint1=any endpoint2=192.0.2.9 action=requireinrequireout auth1=computercert auth1ca="CN=\'Corp\' Root, O=Lab catype:root"`,
      false,
    );
    assert.equal(add.code, 0, add.out);
    assert.equal(add.out, '\nOk.\n\n');
    assert.equal(add.err, '');
    const r = await ps(
      '(Get-NetIPsecPhase1AuthSet -Name (Get-NetIPsecRule -DisplayName q).Phase1AuthSet).Proposal.Authority',
      dir,
    );
    assert.equal(r.out, 'CN="Corp" Root, O=Lab\n', r.err);
    const show = await netsh(dir, 'advfirewall consec show rule name=q verbose', false);
    assert.match(show.out, /CN="Corp" Root, O=Lab/);
    // With hints, the same kind of line says what consec assumed.
    const hinted = await netsh(
      dir,
      'advfirewall consec add rule name=k endpoint1=any endpoint2=192.0.2.8 action=requireinrequireout',
    );
    assert.match(hinted.err, /^WARNING: no auth1 given/m);
  });

  it('netsh -f: set store gpo="domain\\GPO" then set store local, the pattern of Microsoft\'s command-line guide', async () => {
    const dir = freshStateDir();
    let out = '';
    const n = new Netsh(new PolicyStores(dir), { stdout: (t) => (out += t), stderr: () => {} });
    const code = await n.runScript(
      [
        '# a GPO is edited, then the local store',
        'advfirewall set store gpo="corp.example\\Domain Isolation"',
        'advfirewall consec add rule name="in gpo" endpoint1=any endpoint2=192.0.2.0/24 action=requestinrequestout',
        'advfirewall set store local',
        'advfirewall consec add rule name="local" endpoint1=any endpoint2=198.51.100.0/24 action=requestinrequestout',
      ].join('\r\n'),
    );
    assert.equal(code, 0, out);
    const r = await ps(
      [
        '(Get-NetIPsecRule -PolicyStore "corp.example\\Domain Isolation").DisplayName',
        '(Get-NetIPsecRule).DisplayName',
        '(Get-NetIPsecRule -PolicyStore ActiveStore | Sort-Object DisplayName).DisplayName -join ","',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, 'in gpo\nlocal\nin gpo,local\n', r.err);
    const bad = await netsh(dir, 'advfirewall set store remote');
    assert.equal(bad.code, 1);
    assert.match(bad.out, /set store local \| gpo=/);
  });

  it('set rule … new, main mode rules and the global main mode settings', async () => {
    const dir = freshStateDir();
    await netsh(
      dir,
      'advfirewall consec add rule name=r endpoint1=any endpoint2=192.0.2.9 action=requireinrequireout auth1=computerpsk auth1psk=k',
    );
    const set = await netsh(
      dir,
      'adv con set rule name=r new action=requestinrequestout qmsecmethods=AH:SHA256+ESP:SHA256-AES256+10min+20480kb enable=no',
    );
    assert.equal(set.code, 0, set.out);
    assert.match(set.out, /Updated 1 rule\(s\)\./);
    const mm = await netsh(
      dir,
      'advfirewall mainmode add rule name=peer mmsecmethods=ecdhp384:aes256-sha384 mmkeylifetime=60min,10sess auth1=computerpsk auth1psk=k endpoint2=192.0.2.9',
    );
    assert.equal(mm.code, 0, mm.out);
    await netsh(dir, 'advfirewall set global mainmode mmsecmethods dhgroup14:aes256-sha256,ecdhp256:aes128-sha256');
    await netsh(dir, 'advfirewall set global mainmode mmkeylifetime 240min,0sess');
    await netsh(dir, 'advfirewall set global mainmode mmforcedh yes');
    await netsh(dir, 'advfirewall set global ipsec saidletimemin 10');
    await netsh(dir, 'advfirewall set global ipsec ipsecthroughnat serverbehindnat');
    const doc = new PolicyStores(dir).read();
    const rule = doc.rules[0];
    assert.deepEqual([rule?.InboundSecurity, rule?.OutboundSecurity, rule?.Enabled], ['Request', 'Request', 'False']);
    assert.deepEqual(doc.quickModeCryptoSets.find((s) => s.Name === rule?.QuickModeCryptoSet)?.Proposal, [
      {
        Encapsulation: ['AH', 'ESP'],
        Encryption: 'AES256',
        AHHash: 'SHA256',
        ESPHash: 'SHA256',
        MaxMinutes: 10,
        MaxKiloBytes: 20480,
      },
    ]);
    const mmRule = doc.mainModeRules[0];
    const mmSet = doc.mainModeCryptoSets.find((s) => s.Name === mmRule?.MainModeCryptoSet);
    assert.deepEqual(
      [mmSet?.Proposal, mmSet?.MaxMinutes, mmSet?.MaxSessions],
      [[{ Encryption: 'AES256', Hash: 'SHA384', KeyExchange: 'DH20' }], 60, 10],
    );
    const def = doc.mainModeCryptoSets.find((s) => s.DisplayName === 'Default');
    assert.deepEqual(
      [
        def?.Proposal.map((p) => `${p.KeyExchange}-${p.Encryption}-${p.Hash}`),
        def?.MaxMinutes,
        def?.ForceDiffieHellman,
      ],
      [['DH14-AES256-SHA256', 'DH19-AES128-SHA256'], 240, true],
    );
    assert.deepEqual([doc.settings.MaxSAIdleTimeSeconds, doc.settings.AllowIPsecThroughNAT], [600, 'Server']);
    const showMm = await netsh(dir, 'advfirewall mainmode show rule name=all');
    assert.match(showMm.out, /MainModeSecMethods: +ECDHP384-AES256-SHA384\n/);
    assert.match(showMm.out, /KeyLifetime: +60min,10sess\n/);
  });

  it('bad commands get a clear message and change nothing', async () => {
    const dir = freshStateDir();
    await netsh(dir, 'advfirewall consec add rule name=existing endpoint1=any endpoint2=any action=noauthentication');
    const before = storeBytes(dir);
    const cases: [string, RegExp][] = [
      [
        'advfirewall consec add rule name=x endpoint1=any action=requireinrequireout',
        /A required parameter is missing: endpoint2=/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=maybe',
        /A specified value is not valid: action=maybe/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=requireinclearout auth1=computerkerb',
        /requireinclearout is valid only with mode=tunnel/,
      ],
      [
        'advfirewall consec add rule name=all endpoint1=any endpoint2=any action=noauthentication',
        /"all" cannot be used as a rule name/,
      ],
      [
        'advfirewall consec add rule name=existing endpoint1=any endpoint2=any action=noauthentication',
        /already exists/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=10.0.0.300 endpoint2=any action=noauthentication',
        /given to endpoint1 is not valid/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=requireinrequireout auth1=computerpsk,computerntlm auth1psk=k',
        /computerpsk and computerntlm cannot both be used/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=requireinrequireout auth1=computerpsk',
        /needs auth1psk=/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=requireinrequireout auth1=computercert',
        /needs auth1ca=/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=requireinrequireout qmsecmethods=ESP:SHA256-AESGCM128 auth1=computerkerb',
        /requires ESPHash AESGMAC128/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=requireinrequireout mode=tunnel auth1=computerkerb',
        /needs both LocalTunnelEndpoint and RemoteTunnelEndpoint/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=noauthentication colour=blue',
        /"colour" is not a parameter of this command/,
      ],
      [
        'advfirewall consec add rule name=x endpoint1=any endpoint2=any action=noauthentication type=dynamic',
        /type=dynamic rules .* are not supported/,
      ],
      ['advfirewall consec delete rule name=nosuch', /No rules match the specified criteria\./],
      ['advfirewall consec set rule name=existing action=requireinrequireout', /needs the keyword "new"/],
      ['advfirewall consec frobnicate rule', /The following command was not found: frobnicate/],
      [
        'advfirewall s global ipsec saidletimemin 5',
        /The following command was not found: s\. Expected one of \(ambiguous\): set, show/,
      ],
      ['advfirewall set global ipsec saidletimemin 99', /saidletimemin must be 5-60/],
      ['advfirewall set global mainmode mmsecmethods dhgroup14:aesgcm128-sha256', /valid only in quick mode proposals/],
    ];
    for (const [line, message] of cases) {
      const r = await netsh(dir, line);
      assert.equal(r.code, 1, line);
      assert.match(r.out, message, line);
      assert.equal(storeBytes(dir), before, `${line}: store unchanged`);
    }
  });
});
