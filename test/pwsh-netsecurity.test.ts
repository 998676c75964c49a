import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PolicyStores } from '../src/policy/store.ts';
import { freshStateDir, ps, readScript, storeBytes } from './pwsh-helpers.ts';

const read = (dir: string) => new PolicyStores(dir).read('PersistentStore');

describe('reference scripts run verbatim', () => {
  it('01-auth-sets: certificate and pre-shared-key phase 1 sets', async () => {
    const dir = freshStateDir();
    const r = await ps(readScript('01-auth-sets.ps1'), dir, '01-auth-sets.ps1');
    assert.equal(r.errors, 0, r.err);
    assert.match(r.err, /^WARNING: "CA" is not a CertificateAuthorityType/);
    const doc = read(dir);
    const cert = doc.phase1AuthSets.find((s) => s.DisplayName === 'CertAuth-Set');
    assert.deepEqual(cert?.Proposal, [
      {
        AuthenticationMethod: 'Certificate',
        Principal: 'Machine',
        Authority: 'CN=CorpCA, DC=corp, DC=local',
        AuthorityType: 'Root',
        Signing: 'RSA',
      },
    ]);
    const psk = doc.phase1AuthSets.find((s) => s.DisplayName === 'PSK-AuthSet');
    assert.deepEqual(psk?.Proposal, [
      { AuthenticationMethod: 'PreSharedKey', Principal: 'Machine', PreSharedKey: 'MyTestKey123!' },
    ]);
    // The final Get | Format-List shows the certificate set, and the key appears nowhere in the output.
    assert.match(r.out, /^DisplayName {11}: CertAuth-Set$/m);
    assert.match(r.out, /^Proposal {14}: \{MachineCert: CN=CorpCA, DC=corp, DC=local\}$/m);
    assert.doesNotMatch(r.out + r.err, /MyTestKey123!/);
  });

  it('02-server-to-server: the rule, its sets, and Format-List as Windows shows it', async () => {
    const dir = freshStateDir();
    const r = await ps(readScript('02-server-to-server.ps1'), dir);
    assert.equal(r.errors, 0, r.err);
    const doc = read(dir);
    const rule = doc.rules.find((x) => x.DisplayName === 'Server-to-Server IPsec');
    assert.ok(rule);
    assert.deepEqual([rule.LocalAddress, rule.RemoteAddress], [['10.0.1.20'], ['10.0.1.30']]);
    assert.deepEqual([rule.InboundSecurity, rule.OutboundSecurity, rule.Mode], ['Require', 'Require', 'Transport']);
    assert.equal(rule.Phase1AuthSet, 'ComputerKerberosSet');
    const qm = doc.quickModeCryptoSets.find((s) => s.Name === rule.QuickModeCryptoSet);
    assert.equal(qm?.DisplayName, 'PAW-QM-ESP-AES256-SHA256');
    assert.deepEqual(qm?.Proposal, [
      {
        Encapsulation: ['ESP'],
        Encryption: 'AES256',
        AHHash: 'None',
        ESPHash: 'SHA256',
        MaxMinutes: 60,
        MaxKiloBytes: 100000,
      },
    ]);
    // -MainModeCryptoSet became a main mode rule for the same endpoints.
    const mmRule = doc.mainModeRules.find((m) => m.Name === `${rule.Name}-MainMode`);
    const mm = doc.mainModeCryptoSets.find((s) => s.Name === mmRule?.MainModeCryptoSet);
    assert.deepEqual(mm?.Proposal, [{ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH14' }]);
    assert.deepEqual(
      [mmRule?.LocalAddress, mmRule?.RemoteAddress, mmRule?.Phase1AuthSet],
      [['10.0.1.20'], ['10.0.1.30'], 'ComputerKerberosSet'],
    );

    const fl = await ps('Get-NetIPsecRule -DisplayName "Server-to-Server IPsec" | Format-List', dir);
    const lines = fl.out.split('\n').filter(Boolean);
    assert.deepEqual(
      lines.map((l) => l.split(':')[0]?.trim()),
      [
        'Name',
        'DisplayName',
        'Description',
        'DisplayGroup',
        'Group',
        'Enabled',
        'Profile',
        'Platform',
        'Mode',
        'InboundSecurity',
        'OutboundSecurity',
        'QuickModeCryptoSet',
        'Phase1AuthSet',
        'Phase2AuthSet',
        'KeyModule',
        'AllowWatchKey',
        'AllowSetKey',
        'LocalTunnelEndpoint',
        'RemoteTunnelEndpoint',
        'RemoteTunnelHostname',
        'ForwardPathLifetime',
        'EncryptedTunnelBypass',
        'RequireAuthorization',
        'User',
        'Machine',
        'PrimaryStatus',
        'Status',
        'EnforcementStatus',
        'PolicyStoreSource',
        'PolicyStoreSourceType',
      ],
    );
    assert.ok(
      lines.every((l) => l.indexOf(' : ') === 21),
      'values aligned after the longest name',
    );
    assert.ok(fl.out.startsWith('\n\n') && fl.out.endsWith('\n\n\n'), 'blank lines around the list as in Windows');
    assert.match(fl.out, /^InboundSecurity {7}: Require$/m);
    assert.match(fl.out, /^Status {16}: The rule was parsed successfully from the store\. \(65536\)$/m);
  });

  it('03-cluster-exemption: an authentication exemption for a subnet', async () => {
    const dir = freshStateDir();
    const r = await ps(readScript('03-cluster-exemption.ps1'), dir);
    assert.equal(r.errors, 0, r.err);
    const [rule] = read(dir).rules;
    assert.deepEqual(
      [rule?.DisplayName, rule?.InboundSecurity, rule?.OutboundSecurity, rule?.LocalAddress, rule?.RemoteAddress],
      ['IPsec Exemption - Cluster Heartbeat', 'None', 'None', ['10.10.0.0/24'], ['10.10.0.0/24']],
    );
  });

  it('04-inspect: a new store holds no sets (the defaults are SystemDefaults), as on Windows', async () => {
    const dir = freshStateDir();
    const r = await ps(readScript('04-inspect.ps1'), dir);
    // The PersistentStore of a new host has no "Default" set: the first line is Windows' not-found
    // error, the other lines print nothing.
    assert.equal(r.errors, 1, r.err);
    assert.match(r.err, /No MSFT_NetIKEP1AuthSet objects found with property 'DisplayName' equal to 'Default'/);
    assert.equal(r.out.trim(), '');
    const defaults = await ps(
      [
        'Get-NetIPsecPhase1AuthSet -PolicyStore SystemDefaults -DisplayName "Default" | ForEach-Object { $_.Name }',
        'Get-NetIPsecQuickModeCryptoSet -PolicyStore SystemDefaults | Format-List',
        'Get-NetIPsecMainModeCryptoSet -PolicyStore SystemDefaults | Format-List',
      ].join('\n'),
      dir,
    );
    assert.equal(defaults.errors, 0, defaults.err);
    assert.match(defaults.out, /^\{E5A5D32A-4BCE-4e4d-B07F-4AB1BA7E5FE3\}$/m);
    assert.match(
      defaults.out,
      /^Proposal +: \{ESP:SHA1-AES128\+60min\+100000kb, ESP:SHA1-DES3\+60min\+100000kb, AH:SHA1\+60min\+100000kb\}$/m,
    );
    assert.match(defaults.out, /^MaxMinutes +: 480$/m);
    // The well-known names are free until an admin customises a default; a rule naming no set uses
    // the built-in one.
    const custom = await ps(
      [
        '$mm = New-NetIPsecMainModeCryptoProposal -Encryption AES256 -Hash SHA384 -KeyExchange DH20',
        'New-NetIPsecMainModeCryptoSet -DisplayName "Default" -Default -Proposal $mm | ForEach-Object { $_.Name }',
        '(Get-NetIPsecMainModeCryptoSet).Count',
        'New-NetIPsecRule -DisplayName "uses defaults" -RemoteAddress 192.0.2.7 | Out-Null',
      ].join('\n'),
      dir,
    );
    assert.equal(custom.errors, 0, custom.err);
    assert.equal(custom.out, '{E5A5D32A-4BCE-4e4d-B07F-4AB1BA7E5FE1}\n1\n');
  });

  it('05-esae-paw: certificate policy, global setting and the DNS exemption', async () => {
    const dir = freshStateDir();
    const r = await ps(readScript('05-esae-paw.ps1'), dir);
    assert.equal(r.errors, 0, r.err);
    const doc = read(dir);
    assert.equal(doc.settings.RequireFullAuthSupport, 'True');
    const req = doc.rules.find((x) => x.DisplayName === 'All Server/PAW Require IPsec');
    assert.deepEqual(req?.LocalAddress, ['10.20.0.0/24', '10.30.0.0/24']);
    const qm = doc.quickModeCryptoSets.find((s) => s.Name === req?.QuickModeCryptoSet);
    assert.deepEqual([qm?.Proposal[0]?.Encryption, qm?.Proposal[0]?.ESPHash], ['AESGCM256', 'AESGMAC256']);
    const p1 = doc.phase1AuthSets.find((s) => s.Name === req?.Phase1AuthSet);
    assert.deepEqual(p1?.Proposal[0], {
      AuthenticationMethod: 'Certificate',
      Principal: 'Machine',
      Authority: 'CN=ESAE Issuing CA',
      AuthorityType: 'Intermediate',
      Signing: 'RSA',
    });
    const dns = doc.rules.find((x) => x.DisplayName === 'Server/PAW to DC DNS exception');
    assert.deepEqual(
      [dns?.Protocol, dns?.RemotePort, dns?.RemoteAddress],
      ['UDP', ['53'], ['10.30.0.10', '10.30.0.11']],
    );
    // The last line selects three columns: a table, as Windows prints objects of up to four properties.
    assert.match(
      r.out,
      /DisplayName {20}InboundSecurity OutboundSecurity\n-{11} {20}-{15} -{16}\nAll Server\/PAW Require IPsec {3}Require {9}Require\n/,
    );
  });
});

describe('NetSecurity cmdlets', () => {
  it('Get-* | ConvertTo-Json round-trips what was set', async () => {
    const dir = freshStateDir();
    const set = await ps(
      [
        '$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AESGCM128 -ESPHash AESGMAC128 -MaxMinutes 30 -MaxKiloBytes 50000',
        '$s = New-NetIPsecQuickModeCryptoSet -DisplayName "QM" -Proposal $qm -PerfectForwardSecrecyGroup DH19 -Name qm1',
        '$cert = New-NetIPsecPhase1AuthSet -DisplayName Cert -Name cert -Proposal (New-NetIPsecAuthProposal -Machine -Cert -Authority "CN=Lab CA")',
        'New-NetIPsecRule -DisplayName "R1" -Name r1 -InboundSecurity Request -OutboundSecurity Request -QuickModeCryptoSet $s.Name `',
        '  -Mode Tunnel -LocalTunnelEndpoint 192.0.2.1 -RemoteTunnelEndpoint 192.0.2.2 -LocalAddress 198.51.100.0/24 -RemoteAddress 203.0.113.0/255.255.255.0 `',
        '  -Profile Domain,Private -KeyModule IKEv2 -Phase1AuthSet cert -Description "round trip" | Out-Null',
      ].join('\n'),
      dir,
    );
    assert.equal(set.errors, 0, set.err);
    const r = await ps('Get-NetIPsecRule -Name r1 | ConvertTo-Json', dir);
    const json = JSON.parse(r.out) as Record<string, unknown>;
    assert.deepEqual(
      {
        Name: json.Name,
        DisplayName: json.DisplayName,
        Description: json.Description,
        Mode: json.Mode,
        InboundSecurity: json.InboundSecurity,
        OutboundSecurity: json.OutboundSecurity,
        QuickModeCryptoSet: json.QuickModeCryptoSet,
        Profile: json.Profile,
        KeyModule: json.KeyModule,
        LocalTunnelEndpoint: json.LocalTunnelEndpoint,
        RemoteTunnelEndpoint: json.RemoteTunnelEndpoint,
      },
      {
        Name: 'r1',
        DisplayName: 'R1',
        Description: 'round trip',
        Mode: 'Tunnel',
        InboundSecurity: 'Request',
        OutboundSecurity: 'Request',
        QuickModeCryptoSet: 'qm1',
        Profile: 'Domain, Private',
        KeyModule: 'IKEv2',
        LocalTunnelEndpoint: ['192.0.2.1'],
        RemoteTunnelEndpoint: ['192.0.2.2'],
      },
    );
    assert.match(r.out, /^\{\n {4}"Name": {2}"r1",\n/, 'Windows PowerShell 5.1 JSON layout');
    const addr = JSON.parse(
      (await ps('Get-NetIPsecRule -Name r1 | Get-NetFirewallAddressFilter | ConvertTo-Json', dir)).out,
    );
    assert.deepEqual(addr, { LocalAddress: ['198.51.100.0/24'], RemoteAddress: ['203.0.113.0/24'] });
    const set2 = JSON.parse(
      (
        await ps(
          'Get-NetIPsecQuickModeCryptoSet -Name qm1 | Select-Object -ExpandProperty Proposal | ConvertTo-Json',
          dir,
        )
      ).out,
    );
    assert.deepEqual(set2, {
      Encapsulation: 'ESP',
      Encryption: 'AESGCM128',
      AHHash: 'None',
      ESPHash: 'AESGMAC128',
      MaxMinutes: 30,
      MaxKiloBytes: 50000,
    });
  });

  it('pipelines into Set-, Disable-, Rename-, Copy- and Remove- cmdlets', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        '$p = New-NetIPsecAuthProposal -Machine -PreSharedKey "k1"',
        '$a = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $p -Name psk',
        'New-NetIPsecRule -DisplayName "A" -Name a -Phase1AuthSet psk -RemoteAddress 192.0.2.10 | Out-Null',
        'New-NetIPsecRule -DisplayName "B" -Name b -Group lab | Out-Null',
        'Get-NetIPsecRule -DisplayName A | Set-NetIPsecRule -InboundSecurity Request -OutboundSecurity Request -NewDisplayName "A2"',
        'Disable-NetIPsecRule -Group lab',
        'Rename-NetIPsecPhase1AuthSet -Name psk -NewName psk2',
        'Copy-NetIPsecRule -Name b -NewName b-copy',
        'Get-NetIPsecRule | Sort-Object Name | ForEach-Object { "$($_.Name) $($_.DisplayName) $($_.Enabled) $($_.InboundSecurity) $($_.Phase1AuthSet)" }',
        'Remove-NetIPsecRule -Name b-copy -PassThru | ForEach-Object { "removed $($_.Name)" }',
        'Remove-NetIPsecRule -Name b -WhatIf',
        '(Get-NetIPsecRule).Count',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(
      r.out,
      [
        'a A2 True Request psk2',
        'b B False None ',
        'b-copy B False None ',
        'removed b-copy',
        'What if: Performing operation "Delete" on Target "b (B)".',
        '2',
        '',
      ].join('\n'),
    );
  });

  it('an edited object passed back with -InputObject is saved, as Set-CimInstance does on Windows', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        '$qp = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -ESPHash SHA256 -Encryption AES256',
        'New-NetIPsecQuickModeCryptoSet -DisplayName "strong" -Name strong -Proposal $qp | Out-Null',
        'New-NetIPsecRule -DisplayName "R" -Name r -RemoteAddress 192.0.2.10 | Out-Null',
        '$rule = Get-NetIPsecRule -Name r',
        '$rule.QuickModeCryptoSet = "strong"',
        '$rule.Description = "edited in a variable"',
        'Set-NetIPsecRule -InputObject $rule',
        '$rule = Get-NetIPsecRule -Name r',
        '$rule.InboundSecurity = "Require"',
        '$rule | Set-NetIPsecRule -OutboundSecurity Request',
        'Get-NetIPsecRule -Name r | ForEach-Object { "$($_.QuickModeCryptoSet)|$($_.Description)|$($_.InboundSecurity)|$($_.OutboundSecurity)" }',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(r.out, 'strong|edited in a variable|Require|Request\n');
    const rule = read(dir).rules[0];
    assert.equal(rule?.QuickModeCryptoSet, 'strong');
    // An edit that is not valid is refused like the parameter would be, and nothing is saved.
    const before = storeBytes(dir);
    const bad = await ps(
      '$r = Get-NetIPsecRule -Name r; $r.InboundSecurity = "Sometimes"; Set-NetIPsecRule -InputObject $r',
      dir,
    );
    assert.equal(bad.errors, 1);
    assert.match(bad.err, /InboundSecurity/);
    assert.equal(storeBytes(dir), before);
  });

  it('sets and rules select each other through the pipeline, both ways', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        '$p = New-NetIPsecAuthProposal -Machine -PreSharedKey "k1"',
        'New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Name psk -Proposal $p | Out-Null',
        '$qp = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -ESPHash SHA256 -Encryption AES256',
        'New-NetIPsecQuickModeCryptoSet -DisplayName "strong" -Name strong -Proposal $qp | Out-Null',
        'New-NetIPsecRule -DisplayName "A" -Name a -Phase1AuthSet psk -QuickModeCryptoSet strong | Out-Null',
        'New-NetIPsecRule -DisplayName "B" -Name b -Phase1AuthSet psk | Out-Null',
        'New-NetIPsecRule -DisplayName "C" -Name c | Out-Null',
        'New-NetIPsecMainModeRule -DisplayName "M" -Name m -Phase1AuthSet psk | Out-Null',
        '"p1 -> rules: " + ((Get-NetIPsecPhase1AuthSet -Name psk | Get-NetIPsecRule | Sort-Object Name).Name -join ",")',
        '"p1 -> mm rules: " + ((Get-NetIPsecPhase1AuthSet -Name psk | Get-NetIPsecMainModeRule).Name -join ",")',
        '"qm -> rules: " + ((Get-NetIPsecQuickModeCryptoSet -Name strong | Get-NetIPsecRule).Name -join ",")',
        '"rule -> p1: " + ((Get-NetIPsecRule -Name a | Get-NetIPsecPhase1AuthSet).Name -join ",")',
        '"rule -> qm: " + ((Get-NetIPsecRule -Name a | Get-NetIPsecQuickModeCryptoSet).Name -join ",")',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(
      r.out,
      ['p1 -> rules: a,b', 'p1 -> mm rules: m', 'qm -> rules: a', 'rule -> p1: psk', 'rule -> qm: strong', ''].join(
        '\n',
      ),
    );
  });

  it('an object of the wrong kind is refused with binding errors, and nothing changes', async () => {
    const dir = freshStateDir();
    await ps(
      'New-NetIPsecRule -DisplayName "keep" -Name keep | Out-Null; New-NetFirewallRule -DisplayName fw -Name fw | Out-Null',
      dir,
    );
    const before = storeBytes(dir);
    const piped = await ps('Get-NetFirewallRule -Name fw | Remove-NetIPsecRule', dir);
    assert.equal(piped.errors, 1, piped.err);
    assert.match(piped.err, /The input object cannot be bound to any parameters for the command/);
    assert.match(piped.err, /InputObjectNotBound,Remove-NetIPsecRule/);
    const explicit = await ps('Remove-NetIPsecRule -InputObject (Get-NetFirewallProfile -Name Domain)', dir);
    assert.equal(explicit.errors, 1);
    assert.match(
      explicit.err,
      /Cannot bind argument to parameter 'InputObject', because PSTypeNames of the argument do not match the PSTypeName required by the parameter: Microsoft\.Management\.Infrastructure\.CimInstance#root\/standardcimv2\/MSFT_NetConSecRule\./,
    );
    assert.match(explicit.err, /MismatchedPSTypeName,Remove-NetIPsecRule/);
    assert.equal(storeBytes(dir), before);
  });

  it('Update-NetIPsecRule adds and deletes Endpoint2 addresses (IPv4 and IPv6), -WhatIf changes nothing, and deleting the last address is refused', async () => {
    const dir = freshStateDir();
    await ps('New-NetIPsecRule -DisplayName "DA" -Name da -RemoteAddress 192.0.2.1 | Out-Null', dir);
    const list = async () =>
      (await ps('(Get-NetIPsecRule -Name da | Get-NetFirewallAddressFilter).RemoteAddress -join ","', dir)).out.trim();
    const add = await ps(
      'Update-NetIPsecRule -IPsecRuleName da -Action Add -IPv4Addresses 192.0.2.2 -IPv6Addresses 2001:db8::1 -EndpointType Endpoint2',
      dir,
    );
    assert.equal(add.errors, 0, add.err);
    assert.equal(await list(), '192.0.2.1,192.0.2.2,2001:db8::1');
    const before = storeBytes(dir);
    const dry = await ps(
      'Get-NetIPsecRule -Name da | Update-NetIPsecRule -Action Delete -IPv4Addresses 192.0.2.1 -EndpointType Endpoint2 -WhatIf',
      dir,
    );
    assert.match(dry.out, /What if: Performing operation "Update" on Target "da \(DA\)"/);
    assert.equal(storeBytes(dir), before);
    const del = await ps(
      'Get-NetIPsecRule -Name da | Update-NetIPsecRule -Action Delete -IPv4Addresses 192.0.2.1 -EndpointType Endpoint2',
      dir,
    );
    assert.equal(del.errors, 0, del.err);
    assert.equal(await list(), '192.0.2.2,2001:db8::1');
    const all = await ps(
      'Update-NetIPsecRule -IPsecRuleName da -Action Delete -IPv4Addresses 192.0.2.2 -IPv6Addresses 2001:db8::1 -EndpointType Endpoint2',
      dir,
    );
    assert.match(all.err, /would leave rule "DA" with no Endpoint2 address/);
    assert.equal(await list(), '192.0.2.2,2001:db8::1');
  });

  it('a firewall profile piped into Remove-NetIPsecRule binds -AssociatedNetFirewallProfile: the rules that apply in it go, the others stay', async () => {
    const dir = freshStateDir();
    await ps(
      [
        'New-NetIPsecRule -DisplayName "any" -Name any | Out-Null',
        'New-NetIPsecRule -DisplayName "public" -Name public -Profile Public | Out-Null',
        'New-NetIPsecRule -DisplayName "domain" -Name domain -Profile Domain,Private | Out-Null',
      ].join('\n'),
      dir,
    );
    const r = await ps(
      'Get-NetFirewallProfile -Name Domain | Remove-NetIPsecRule; (Get-NetIPsecRule).Name -join ","',
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(r.out.trim(), 'public');
  });

  it('objects carry InstanceID and the CIM properties; an explicit $null set is an error, never the default', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        '$p = New-NetIPsecAuthProposal -Machine -PreSharedKey "k1"',
        '$set = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Name psk -Proposal $p',
        '"$($set.InstanceID)|$($set.ElementName)|$($set.PolicyStoreSource)"',
        'New-NetIPsecRule -DisplayName "R" -Name r -Phase1AuthSet $set.InstanceID | Out-Null',
        '(Get-NetIPsecRule -Name r).Phase1AuthSet',
        '$rule = Get-NetIPsecRule -Name r',
        '"$($rule.InstanceID)|$($rule.ElementName)|$($rule.CreationClassName)"',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(r.out, ['psk|PSK|PersistentStore', 'psk', 'r|R|MSFT|FW|ConSecRule|r', ''].join('\n'));
    const before = storeBytes(dir);
    const nul = await ps('New-NetIPsecRule -DisplayName "N" -Phase1AuthSet $null', dir);
    assert.equal(nul.errors, 1);
    assert.match(
      nul.err,
      /Cannot validate argument on parameter 'Phase1AuthSet'\. The argument is null or empty\. Provide an argument that is not null or empty, and then try the command again\./,
    );
    const undefinedProperty = await ps(
      'New-NetIPsecRule -DisplayName "N" -QuickModeCryptoSet $nothing.InstanceID',
      dir,
    );
    assert.equal(undefinedProperty.errors, 1);
    assert.equal(storeBytes(dir), before);
  });

  it('Set- selects by -Group/-DisplayGroup; Enable-, Disable- and Remove- by any query property', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        'New-NetIPsecRule -DisplayName "t1" -Name t1 -Mode Tunnel -LocalTunnelEndpoint 192.0.2.1 -RemoteTunnelEndpoint 192.0.2.2 -RemoteAddress 203.0.113.0/24 -Group lab | Out-Null',
        'New-NetIPsecRule -DisplayName "h1" -Name h1 -RemoteAddress 192.0.2.20 -InboundSecurity Require -OutboundSecurity Require -Group lab | Out-Null',
        'New-NetIPsecRule -DisplayName "h2" -Name h2 -RemoteAddress 192.0.2.21 -InboundSecurity Require -OutboundSecurity Request | Out-Null',
        'Set-NetIPsecRule -Group lab -Description "in the lab"',
        'Set-NetIPsecRule -DisplayGroup lab -InboundSecurity Require -OutboundSecurity Require',
        'Disable-NetIPsecRule -Mode Tunnel',
        'Remove-NetIPsecRule -OutboundSecurity Request',
        'Get-NetIPsecRule | Sort-Object Name | ForEach-Object { "$($_.Name) $($_.Enabled) $($_.OutboundSecurity) $($_.Description)" }',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    assert.equal(r.out, ['h1 True Require in the lab', 't1 False Require in the lab', ''].join('\n'));
  });

  it('an in-use set cannot be removed; the store stays as it was', async () => {
    const dir = freshStateDir();
    await ps(
      '$p = New-NetIPsecAuthProposal -Machine -PreSharedKey k\n$s = New-NetIPsecPhase1AuthSet -DisplayName S -Proposal $p -Name s\nNew-NetIPsecRule -DisplayName R -Phase1AuthSet s | Out-Null',
      dir,
    );
    const before = storeBytes(dir);
    const r = await ps('Remove-NetIPsecPhase1AuthSet -Name s', dir);
    assert.equal(r.errors, 1);
    assert.match(r.err, /is used by IPsec rule ".*" \(Phase1AuthSet\) and cannot be removed/);
    assert.equal(storeBytes(dir), before);
  });

  it('the GPO store overrides the local one in ActiveStore and names its source', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        'New-NetIPsecRule -DisplayName "local" -Name same | Out-Null',
        '$gpo = Open-NetGPO -PolicyStore "corp.example\\IPsec"',
        'New-NetIPsecRule -DisplayName "from GPO" -Name same -GPOSession $gpo | Out-Null',
        'Save-NetGPO -GPOSession $gpo',
        'Get-NetIPsecRule -PolicyStore ActiveStore | ForEach-Object { "$($_.DisplayName) $($_.PolicyStoreSourceType)" }',
        'Get-NetIPsecRule | ForEach-Object { "$($_.DisplayName) $($_.PolicyStoreSource)" }',
        'New-NetIPsecRule -DisplayName x -PolicyStore ActiveStore',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, 'from GPO GroupPolicy\nlocal PersistentStore\n');
    assert.match(r.err, /The policy store "ActiveStore" is read-only/);
  });
});

describe('firewall profiles', () => {
  it('a GPO with AllowLocalIPsecRules False removes local rules from the ActiveStore', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        'New-NetIPsecRule -DisplayName local -Name l | Out-Null',
        '$g = Open-NetGPO -PolicyStore "corp.example\\IPsec"',
        'New-NetIPsecRule -DisplayName gpo -Name g -GPOSession $g | Out-Null',
        '(Get-NetIPsecRule -PolicyStore ActiveStore).Name -join ","',
        'Set-NetFirewallProfile -Profile Domain -AllowLocalIPsecRules False -GPOSession $g',
        '(Get-NetIPsecRule -PolicyStore ActiveStore).Name -join ","',
        'Get-NetFirewallProfile -PolicyStore ActiveStore -Name Dom* | ForEach-Object { "$($_.Name) $($_.AllowLocalIPsecRules)" }',
        'Get-NetFirewallProfile -Name Public | ForEach-Object { "$($_.Name) $($_.AllowLocalIPsecRules)" }',
        'Get-NetFirewallProfile -Name Office',
      ].join('\n'),
      dir,
    );
    assert.equal(r.out, 'l,g\ng\nDomain False\nPublic NotConfigured\n');
    assert.match(r.err, /No MSFT_NetFirewallProfile objects found with property 'Name' equal to 'Office'/);
  });
});

describe('services (seed 000: Get-Service IKEEXT | Select-Object Status, StartType)', () => {
  it('IKEEXT and PolicyAgent are consec daemon: Stopped without one; default table view; unknown names are errors', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        'Get-Service IKEEXT',
        'Get-Service IKEEXT | Select-Object Status, StartType',
        '(Get-Service -Name Policy*).DisplayName',
        'Get-Service W32Time',
      ].join('\n'),
      dir,
    );
    assert.equal(
      r.out,
      '\nStatus  Name   DisplayName\n------  ----   -----------\nStopped IKEEXT IKE and AuthIP IPsec Keying Modules\n\n\n' +
        '\nStatus  StartType\n------  ---------\nStopped Manual\n\n\n' +
        'IPsec Policy Agent\n',
    );
    assert.equal(r.errors, 1);
    assert.match(r.err, /^Get-Service : Cannot find any service with service name 'W32Time'\./);
    // Restart-Service IKEEXT (admin scripts run it after a policy change) cannot start a stopped daemon.
    const restart = await ps('Restart-Service -Name IKEEXT -Force\nRestart-Service W32Time', dir);
    assert.equal(restart.errors, 2);
    assert.match(
      restart.err,
      /^Restart-Service : Service 'IKE and AuthIP IPsec Keying Modules \(IKEEXT\)' cannot be started due to the following error: Cannot start service IKEEXT on computer '\.'\. The consec daemon is not running/,
    );
    assert.match(restart.err, /Restart-Service : Cannot find any service with service name 'W32Time'\./);
  });
});

describe('invalid input changes nothing', () => {
  const setup = [
    '$p = New-NetIPsecAuthProposal -Machine -PreSharedKey k',
    '$s = New-NetIPsecPhase1AuthSet -DisplayName PSK -Proposal $p -Name psk',
    '$c = New-NetIPsecAuthProposal -Machine -Cert -Authority "CN=Lab CA"',
    '$cs = New-NetIPsecPhase1AuthSet -DisplayName Cert -Proposal $c -Name cert',
    '$ah = New-NetIPsecQuickModeCryptoProposal -Encapsulation AH -AHHash SHA256',
    '$ahs = New-NetIPsecQuickModeCryptoSet -DisplayName AH -Proposal $ah -Name ah',
    'New-NetIPsecRule -DisplayName existing -Name existing | Out-Null',
  ].join('\n');

  const cases: [string, RegExp][] = [
    [
      'New-NetIPsecRule -DisplayName t -Mode Tunnel -InboundSecurity Require -OutboundSecurity Require',
      /needs both LocalTunnelEndpoint and RemoteTunnelEndpoint/,
    ],
    [
      'New-NetIPsecRule -DisplayName t -LocalTunnelEndpoint 192.0.2.1',
      /Tunnel endpoints can be given only for a rule with -Mode Tunnel/,
    ],
    [
      'New-NetIPsecRule -DisplayName t -Mode Tunnel -LocalTunnelEndpoint 192.0.2.1 -RemoteTunnelEndpoint 2001:db8::1 -InboundSecurity Require -OutboundSecurity Require',
      /same IP version/,
    ],
    ['New-NetIPsecRule -DisplayName t -Phase1AuthSet nosuchset', /The Phase1AuthSet "nosuchset" does not exist/],
    ['New-NetIPsecRule -DisplayName t -InboundSecurity Require -OutboundSecurity None', /not a valid combination/],
    ['New-NetIPsecRule -DisplayName t -InboundSecurity None -OutboundSecurity Require', /not a valid combination/],
    [
      'New-NetIPsecRule -DisplayName t -RemoteAddress 192.0.2.300',
      /The address "192\.0\.2\.300" given to RemoteAddress is not valid/,
    ],
    ['New-NetIPsecRule -DisplayName t -RemoteAddress 192.0.2.9-192.0.2.1', /given to RemoteAddress is not valid/],
    ['New-NetIPsecRule -DisplayName t -LocalAddress 10.0.0.0/33', /given to LocalAddress is not valid/],
    [
      'New-NetIPsecRule -DisplayName t -Protocol TCP -RemotePort 70000',
      /The port "70000" given to RemotePort is not valid/,
    ],
    ['New-NetIPsecRule -DisplayName t -RemotePort 445', /Ports can be given only when Protocol is TCP or UDP/],
    ['New-NetIPsecRule -DisplayName t -Protocol 300', /not a valid protocol/],
    [
      'New-NetIPsecRule -DisplayName t -KeyModule IKEv2 -Phase1AuthSet psk',
      /IKEv2 connection security rules support certificate authentication only/,
    ],
    [
      'New-NetIPsecRule -DisplayName t -KeyModule IKEv2 -Phase1AuthSet cert -QuickModeCryptoSet ah',
      /AH is not supported with IKEv2 transport mode/,
    ],
    ['New-NetIPsecRule -DisplayName t -Mode Sideways', /Cannot convert value "Sideways" to type "IPsecMode"/],
    ['New-NetIPsecRule -DisplayName All', /"All" is reserved/],
    ['New-NetIPsecRule -DisplayName t -Name existing', /already exists/],
    ['New-NetIPsecRule -DisplayName t -ForwardPathLifetime 200000', /greater than the maximum allowed range of 172799/],
    ['New-NetIPsecRule -Bogus 1', /A parameter cannot be found that matches parameter name 'Bogus'\./],
    [
      'New-NetIPsecRule -DisplayName t -Phase2AuthSet psk -KeyModule IKEv1',
      /The Phase2AuthSet "psk" does not exist|needs AuthIP/,
    ],
    [
      '$q = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AESGCM256 -ESPHash SHA256',
      /requires ESPHash AESGMAC256/,
    ],
    [
      '$q = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -MaxMinutes 3',
      /less than the minimum allowed range of 5/,
    ],
    ['$m = New-NetIPsecMainModeCryptoProposal -Encryption AESGCM128', /valid only in quick mode proposals/],
    [
      '$u = New-NetIPsecAuthProposal -User -Kerberos\nNew-NetIPsecPhase1AuthSet -DisplayName u -Proposal $u',
      /valid only in a phase 2 authentication set/,
    ],
    [
      'New-NetIPsecMainModeCryptoSet -DisplayName m -Proposal "not a proposal"',
      /each proposal must be an object made by New-NetIPsecMainModeCryptoProposal/,
    ],
    ['New-NetIPsecMainModeCryptoSet -DisplayName m', /missing mandatory parameters: Proposal/],
    ['Set-NetFirewallSetting -MaxSAIdleTimeSeconds 10', /less than the minimum allowed range of 300/],
    [
      'Set-NetIPsecRule -Name existing -Mode Tunnel -InboundSecurity Require -OutboundSecurity Require',
      /needs both LocalTunnelEndpoint/,
    ],
    [
      'Remove-NetIPsecRule -Name nosuchrule',
      /No MSFT_NetConSecRule objects found with property 'Name' equal to 'nosuchrule'/,
    ],
  ];

  it('each invalid command gets a clear error naming the problem, and the store is byte-for-byte unchanged', async () => {
    const dir = freshStateDir();
    const s = await ps(setup, dir);
    assert.equal(s.errors, 0, s.err);
    const before = storeBytes(dir);
    for (const [cmd, message] of cases) {
      const res = await ps(`$p = New-NetIPsecAuthProposal -Machine -PreSharedKey k\n${cmd}`, dir);
      assert.ok(res.errors >= 1, `${cmd}: expected an error`);
      assert.match(res.err, message, cmd);
      assert.doesNotMatch(res.err, /\n\s+at \S+ \(/, `${cmd}: no stack trace`);
      assert.equal(storeBytes(dir), before, `${cmd}: store unchanged`);
    }
  });

  it('random invalid enumeration values, ports and addresses never change the store (property)', async () => {
    const dir = freshStateDir();
    await ps(setup, dir);
    const before = storeBytes(dir);
    const junk = fc.string({ minLength: 1, maxLength: 12 }).filter((s) => /^[A-Za-z0-9.:/-]+$/.test(s));
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          junk
            .filter((s) => !['none', 'tunnel', 'transport'].includes(s.toLowerCase()))
            .map((v) => `New-NetIPsecRule -DisplayName t -Mode '${v}'`),
          fc
            .integer({ min: 65536, max: 10_000_000 })
            .map((p) => `New-NetIPsecRule -DisplayName t -Protocol TCP -LocalPort ${p}`),
          fc
            .tuple(fc.integer({ min: 256, max: 999 }), fc.integer({ min: 0, max: 255 }))
            .map(([a, b]) => `New-NetIPsecRule -DisplayName t -RemoteAddress ${a}.${b}.0.1`),
          junk
            .filter((s) => !/^(none|request|require)$/i.test(s))
            .map((v) => `New-NetIPsecRule -DisplayName t -InboundSecurity '${v}'`),
          fc
            .integer({ min: 2880, max: 100000 })
            .map(
              (m) =>
                `New-NetIPsecMainModeCryptoSet -DisplayName m -Proposal (New-NetIPsecMainModeCryptoProposal) -MaxMinutes ${m}`,
            ),
        ),
        async (cmd) => {
          const r = await ps(cmd, dir);
          assert.ok(r.errors >= 1, cmd);
          assert.equal(storeBytes(dir), before, cmd);
        },
      ),
      { numRuns: 150 },
    );
  });
});
