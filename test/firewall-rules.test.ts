/**
 * Firewall rules as IPsec scripts use them: New/Get/Set/Remove-NetFirewallRule, their filter
 * objects both ways, netsh advfirewall firewall, Windows' conditions on the security filter, and
 * the kernel rules they become (the fail-closed table's firewall lines).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { guardSets, renderGuard } from '../src/dataplane/guard.ts';
import { emptyDocument, firewallRule } from '../src/policy/model.ts';
import { PolicyStores } from '../src/policy/store.ts';
import { Netsh } from '../src/shell/netsh/netsh.ts';
import { splitLine } from '../src/shell/netsh/syntax.ts';
import { freshStateDir, ps, storeBytes } from './pwsh-helpers.ts';

async function netsh(dir: string, line: string): Promise<{ code: number; out: string }> {
  let out = '';
  const n = new Netsh(new PolicyStores(dir), { stdout: (t) => (out += t), stderr: (t) => (out += t) });
  return { code: await n.run(splitLine(line)), out };
}

describe('NetFirewallRule cmdlets', () => {
  it('New, Get by query property, the filters of a rule and the rules of a filter, Set through a filter, Remove', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        'New-NetFirewallRule -DisplayName "Allow Authenticated Telnet" -Name telnet -Direction Inbound -Program "%SystemRoot%\\System32\\tlntsvr.exe" -Protocol TCP -LocalPort 23 -Authentication Required -Action Allow | Out-Null',
        'New-NetFirewallRule -DisplayName "Block Outbound Telnet" -Name block -Direction Outbound -Protocol TCP -RemotePort 23 -Action Block | Out-Null',
        '"direction: " + ((Get-NetFirewallRule -Direction Outbound).Name -join ",")',
        '$sec = Get-NetFirewallRule -Name telnet | Get-NetFirewallSecurityFilter',
        '"security: $($sec.Authentication)/$($sec.Encryption)/$($sec.OverrideBlockRules)/$($sec.RemoteMachine)"',
        '"port: " + ((Get-NetFirewallRule -Name telnet | Get-NetFirewallPortFilter).LocalPort -join ",")',
        '"program: " + (Get-NetFirewallRule -Name telnet | Get-NetFirewallApplicationFilter).Program',
        '"secure rules: " + ((Get-NetFirewallSecurityFilter -Authentication Required | Get-NetFirewallRule).Name -join ",")',
        'Get-NetFirewallRule -Name telnet | Get-NetFirewallSecurityFilter | Set-NetFirewallSecurityFilter -Encryption Required',
        '"encryption: " + (Get-NetFirewallRule -Name telnet | Get-NetFirewallSecurityFilter).Encryption',
        'Get-NetFirewallRule -Name telnet | Get-NetFirewallPortFilter | Set-NetFirewallPortFilter -LocalPort 2323',
        '"moved: " + ((Get-NetFirewallRule -Name telnet | Get-NetFirewallPortFilter).LocalPort -join ",")',
        'Remove-NetFirewallRule -DisplayName "Block*"',
        '"left: " + ((Get-NetFirewallRule).Name -join ",")',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.deepEqual(r.out.trim().split('\n'), [
      'direction: block',
      'security: Required/NotRequired/False/Any',
      'port: 23',
      'program: %SystemRoot%\\System32\\tlntsvr.exe',
      'secure rules: telnet',
      'encryption: Required',
      'moved: 2323',
      'left: telnet',
    ]);
  });

  it("Windows' conditions on the security filter are errors that change nothing; account lists need Active Directory", async () => {
    const dir = freshStateDir();
    await ps('New-NetFirewallRule -DisplayName keep -Name keep | Out-Null', dir);
    const before = storeBytes(dir);
    for (const [cmd, message] of [
      ['New-NetFirewallRule -DisplayName t -Encryption Required', /Encryption Required needs Authentication Required/],
      [
        'New-NetFirewallRule -DisplayName t -OverrideBlockRules $true',
        /OverrideBlockRules needs Authentication Required/,
      ],
      [
        'New-NetFirewallRule -DisplayName t -Direction Inbound -Authentication Required -OverrideBlockRules $true',
        /must list the authorized computers or users/,
      ],
      ['New-NetFirewallRule -DisplayName t -Action Block -Authentication Required', /valid only on Allow rules/],
      ['New-NetFirewallRule -DisplayName t -LocalPort 80', /Ports can be given only when Protocol is TCP or UDP/],
      ['New-NetFirewallRule -DisplayName t -Protocol TCP -IcmpType 8', /ICMP types can be given only/],
      ['New-NetFirewallRule -DisplayName t -Protocol ICMPv4 -IcmpType 300', /The ICMP type "300" is not valid/],
      [
        'New-NetFirewallRule -DisplayName t -Action Block -Protocol TCP -LocalPort RPC',
        /The port keyword RPC cannot be enforced by consec on a Block or secure-only rule/,
      ],
      [
        'New-NetFirewallRule -DisplayName t -Authentication Required -RemoteMachine "D:(A;;CC;;;S-1-5-21-1-2-3-1104)"',
        /-RemoteMachine requires Active Directory/,
      ],
      ['New-NetFirewallRule -DisplayName t -Direction Sideways', /Cannot convert value "Sideways" to type "Direction"/],
      ['Set-NetFirewallRule -Name keep -Authentication Request', /to type "Authentication"/],
    ] as const) {
      const r = await ps(cmd, dir);
      assert.equal(r.errors, 1, `${cmd}\n${r.err}`);
      assert.match(r.err, message, cmd);
    }
    assert.equal(storeBytes(dir), before);
  });

  it('netsh advfirewall firewall: add with security= and action=bypass, show as netsh prints it, set … new, delete; the same rules as the cmdlets see', async () => {
    const dir = freshStateDir();
    assert.equal(
      (
        await netsh(
          dir,
          'advfirewall firewall add rule name="Allow Telnet" dir=in action=allow protocol=tcp localport=23 security=authenc profile=domain',
        )
      ).code,
      0,
    );
    const missing = await netsh(dir, 'advfirewall firewall add rule name=x action=allow');
    assert.equal(missing.code, 1);
    assert.match(missing.out, /A required parameter is missing: dir=/);
    const ad = await netsh(
      dir,
      'advfirewall firewall add rule name=y dir=in action=allow rmtcomputergrp=D:(A;;CC;;;S-1-5-21-1)',
    );
    assert.match(ad.out, /rmtcomputergrp= requires Active Directory/);
    const show = await netsh(dir, 'advfirewall firewall show rule name="Allow Telnet" verbose');
    assert.equal(show.code, 0);
    const line = (label: string, value: string) => `\n${`${label}:`.padEnd(38)}${value}\n`;
    for (const [label, value] of [
      ['Rule Name', 'Allow Telnet'],
      ['Direction', 'In'],
      ['Profiles', 'Domain'],
      ['LocalPort', '23'],
      ['Security', 'AuthEnc'],
      ['Action', 'Allow'],
    ] as const)
      assert.ok(show.out.includes(line(label, value)), `${label}: ${value}\n${show.out}`);
    assert.equal(
      (
        await netsh(
          dir,
          'advfirewall firewall add rule name="Bypass out" dir=out action=bypass security=authenticate remoteip=192.0.2.9',
        )
      ).code,
      0,
    );
    const bypass = await ps(
      '(Get-NetFirewallRule -DisplayName "Bypass out" | Get-NetFirewallSecurityFilter).OverrideBlockRules',
      dir,
    );
    assert.equal(bypass.out.trim(), 'True');
    assert.equal((await netsh(dir, 'advfirewall firewall delete rule name="Bypass out"')).code, 0);
    assert.match(show.out, /Ok\.\n\n$/);
    assert.equal((await netsh(dir, 'advfirewall firewall set rule name="Allow Telnet" new localport=2323')).code, 0);
    const r = await ps(
      '$r = Get-NetFirewallRule -DisplayName "Allow Telnet"; "$(($r | Get-NetFirewallPortFilter).LocalPort) $(($r | Get-NetFirewallSecurityFilter).Encryption) $($r.Profile)"',
      dir,
    );
    assert.equal(r.out.trim(), '2323 Required Domain');
    const del = await netsh(dir, 'advfirewall firewall delete rule name="Allow Telnet"');
    assert.match(del.out, /Deleted 1 rule\(s\)\./);
    assert.deepEqual(new PolicyStores(dir).read().firewallRules, []);
  });
});

describe('firewall rules in the fail-closed table', () => {
  it('Block rules drop (before the TUN accept: protected traffic too), secure-only rules drop cleartext after the exemptions; disabled rules and keyword ports are not enforced', () => {
    const doc = {
      ...emptyDocument(),
      firewallRules: [
        firewallRule({ DisplayName: 'block in', Action: 'Block', Protocol: 'TCP', LocalPort: ['5005'] }),
        firewallRule({
          DisplayName: 'secure in',
          Protocol: 'TCP',
          LocalPort: ['23'],
          RemoteAddress: ['192.0.2.0/24'],
          Authentication: 'Required',
        }),
        firewallRule({
          DisplayName: 'no echo',
          Direction: 'Outbound',
          Action: 'Block',
          Protocol: 'ICMPv4',
          IcmpType: ['8'],
          RemoteAddress: ['198.51.100.7'],
        }),
        firewallRule({ DisplayName: 'off', Action: 'Block', Enabled: 'False', Protocol: 'TCP', LocalPort: ['1'] }),
        firewallRule({ DisplayName: 'rpc', Action: 'Block', Protocol: 'TCP', LocalPort: ['RPC'] }),
      ],
    };
    const text = renderGuard(guardSets(doc), 'consec0', 0xc5ec);
    const input = text.slice(text.indexOf('chain input'));
    const output = text.slice(text.indexOf('chain output'), text.indexOf('chain forward'));
    const at = (chain: string, s: string) => {
      const i = chain.indexOf(s);
      assert.ok(i >= 0, `${s} in\n${chain}`);
      return i;
    };
    const block = at(input, 'meta l4proto 6 th dport { 5005 } counter drop comment "firewall block: block in"');
    assert.ok(block < at(input, 'iifname "consec0" ct mark set'), 'blocks decrypted traffic too');
    assert.ok(at(input, 'udp dport { 500, 4500 } accept') < block, 'IKE is never blocked');
    const secure = at(
      input,
      'ip saddr 192.0.2.0/24 meta l4proto 6 th dport { 23 } counter drop comment "firewall: only secure connections: secure in"',
    );
    assert.ok(secure > at(input, 'iifname "consec0" ct mark set'), 'decrypted traffic was accepted before');
    assert.ok(
      at(output, 'ip daddr 198.51.100.7 meta l4proto 1 icmp type { 8 } counter drop') <
        at(output, 'oifname "consec0" accept'),
    );
    assert.ok(at(output, 'meta mark 50668 udp dport { 500, 4500 } accept') < at(output, 'icmp type { 8 }'));
    assert.doesNotMatch(text, /"firewall block: (off|rpc)"/);
  });
});
