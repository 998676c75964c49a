import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EMPTY_CONTEXT } from '../src/filter/compile.ts';
import { planNegotiation } from '../src/ike/config.ts';
import { acceptChosen, espProposals, ikeProposals, selectProposal } from '../src/ike/proposals.ts';
import { EncrId, EsnId, IntegId, KeId, PrfId, ProtocolId, TransformType } from '../src/ike/wire/constants.ts';
import { PolicyStores } from '../src/policy/store.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

describe('Windows proposals → IKEv2 transforms', () => {
  it('maps MM proposals as the issue table says, and explains what it cannot offer', () => {
    const r = ikeProposals([
      mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH14' }),
      mmProposal({ Encryption: 'DES3', Hash: 'SHA1', KeyExchange: 'DH2' }),
      mmProposal({ Encryption: 'AES128', Hash: 'SHA384', KeyExchange: 'DH20' }),
    ]);
    assert.deepEqual(
      r.proposals.map((p) => p.transforms.map((t) => [t.type, t.id, t.keyLength])),
      [
        [
          [TransformType.ENCR, EncrId.AES_CBC, 256],
          [TransformType.PRF, PrfId.HMAC_SHA2_256, undefined],
          [TransformType.INTEG, IntegId.HMAC_SHA2_256_128, undefined],
          [TransformType.KE, KeId.MODP_2048, undefined],
        ],
        [
          [TransformType.ENCR, EncrId.AES_CBC, 128],
          [TransformType.PRF, PrfId.HMAC_SHA2_384, undefined],
          [TransformType.INTEG, IntegId.HMAC_SHA2_384_192, undefined],
          [TransformType.KE, KeId.ECP_384, undefined],
        ],
      ],
    );
    assert.match(r.skipped.join('\n'), /DES3-SHA1-DH2: encryption DES3 is not offered by consec/);
    const esp = espProposals(
      [
        qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' }),
        qmProposal({ Encapsulation: ['AH'], AHHash: 'SHA256' }),
        qmProposal({ Encapsulation: ['AH', 'ESP'], AHHash: 'SHA256', Encryption: 'AES256', ESPHash: 'SHA256' }),
      ],
      Buffer.from([1, 2, 3, 4]),
      KeId.ECP_256,
    );
    assert.deepEqual(esp.proposals[0]?.transforms, [
      { type: TransformType.ENCR, id: EncrId.AES_GCM_16, keyLength: 256 },
      { type: TransformType.KE, id: KeId.ECP_256 },
      { type: TransformType.ESN, id: EsnId.NO },
    ]);
    // AH alone is an AH proposal (integrity, PFS group, ESN); AH+ESP bundles cannot be negotiated in IKEv2.
    assert.equal(esp.proposals[1]?.protocol, ProtocolId.AH);
    assert.deepEqual(esp.proposals[1]?.transforms, [
      { type: TransformType.INTEG, id: IntegId.HMAC_SHA2_256_128 },
      { type: TransformType.KE, id: KeId.ECP_256 },
      { type: TransformType.ESN, id: EsnId.NO },
    ]);
    assert.match(esp.skipped.join(''), /AH together with ESP is a bundle IKEv2 cannot negotiate/);
  });

  it('guaranteed encryption: an integrity-only offer is refused unless our quick mode set allows it', () => {
    const spi = Buffer.from([0, 0, 0, 9]);
    const integrityOnly = espProposals(
      [qmProposal({ Encapsulation: ['ESP'], Encryption: 'None', ESPHash: 'SHA256' })],
      spi,
    ).proposals;
    const encrypted = espProposals(
      [qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })],
      spi,
    ).proposals;
    assert.equal(
      selectProposal(integrityOnly, encrypted),
      undefined,
      'a set that requires encryption never yields a NULL SA',
    );
    assert.ok(
      selectProposal(integrityOnly, [...encrypted, ...integrityOnly]),
      'a set that offers integrity only accepts it',
    );
  });

  it('selection picks the first acceptable offer; the initiator accepts only what it offered', () => {
    const ours = ikeProposals([mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH19' })]).proposals;
    const theirs = [
      ...ikeProposals([mmProposal({ Encryption: 'AES128', Hash: 'SHA1', KeyExchange: 'DH14' })]).proposals,
      ...ikeProposals([mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH19' })]).proposals.map(
        (p) => ({ ...p, number: 2 }),
      ),
    ];
    const chosen = selectProposal(theirs, ours);
    assert.equal(chosen?.number, 2);
    assert.ok(chosen && acceptChosen(theirs, chosen));
    const first = ours[0];
    assert.ok(first);
    assert.equal(
      acceptChosen(ours, { ...first, transforms: first.transforms.slice(1) }),
      undefined,
      'a missing transform type is refused',
    );
  });
});

describe('policy → negotiation plan', () => {
  it('a firewall rule that requires encryption with a peer: only encrypting quick mode proposals are offered and accepted; a set without one is an error', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        '$psk = New-NetIPsecPhase1AuthSet -DisplayName psk -Name psk -Proposal (New-NetIPsecAuthProposal -Machine -PreSharedKey "k")',
        '$null_ = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption None -ESPHash SHA256',
        '$aes = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AES128 -ESPHash SHA256',
        'New-NetIPsecQuickModeCryptoSet -DisplayName both -Name both -Proposal $null_,$aes | Out-Null',
        'New-NetIPsecQuickModeCryptoSet -DisplayName integrity -Name integrity -Proposal $null_ | Out-Null',
        'New-NetIPsecRule -DisplayName a -RemoteAddress 192.0.2.0/25 -InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet psk -QuickModeCryptoSet both | Out-Null',
        'New-NetIPsecRule -DisplayName b -RemoteAddress 192.0.2.128/25 -InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet psk -QuickModeCryptoSet integrity | Out-Null',
        'New-NetFirewallRule -DisplayName "encrypted telnet" -Protocol TCP -LocalPort 23 -RemoteAddress 192.0.2.0/24 -Authentication Required -Encryption Required | Out-Null',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    const doc = new PolicyStores(dir).read('ActiveStore');
    const flow = (remote: string) => ({ direction: 'Outbound' as const, local: '192.0.2.1', remote, protocol: 6 });
    const encrs = planNegotiation(doc, flow('192.0.2.9'))
      .espProposals(Buffer.alloc(4))
      .map((p) => p.transforms.find((t) => t.type === TransformType.ENCR)?.id);
    assert.deepEqual(encrs, [EncrId.AES_CBC], 'ESP with NULL encryption is left out');
    assert.throws(
      () => planNegotiation(doc, flow('192.0.2.200')),
      /firewall rule "encrypted telnet" requires encryption for traffic with 192\.0\.2\.200, and quick mode crypto set "integrity" has no proposal that encrypts/,
    );
    // Without the firewall rule the integrity-only proposal is offered.
    const without = { ...doc, firewallRules: [] };
    assert.equal(planNegotiation(without, flow('192.0.2.9')).espProposals(Buffer.alloc(4)).length, 2);
    // A keyword is resolved with the host's facts: LocalSubnet covering the peer requires encryption too.
    const keyword = {
      ...doc,
      firewallRules: doc.firewallRules.map((f) => ({ ...f, RemoteAddress: ['LocalSubnet'] })),
    };
    const ctx = { ...EMPTY_CONTEXT, localSubnets: ['192.0.2.0/24'] };
    assert.equal(planNegotiation(keyword, flow('192.0.2.9'), { ctx }).espProposals(Buffer.alloc(4)).length, 1);
    assert.equal(
      planNegotiation(keyword, flow('192.0.2.9')).espProposals(Buffer.alloc(4)).length,
      2,
      'no subnet known',
    );
  });

  it('plans a PSK negotiation from the policy, and explains every case it cannot negotiate', async () => {
    const dir = freshStateDir();
    const r = await ps(
      [
        '$psk = New-NetIPsecPhase1AuthSet -DisplayName psk -Name psk -Proposal (New-NetIPsecAuthProposal -Machine -PreSharedKey "k")',
        'New-NetIPsecRule -DisplayName "psk rule" -RemoteAddress 192.0.2.0/24 -InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet psk | Out-Null',
        'New-NetIPsecRule -DisplayName "kerberos rule" -RemoteAddress 198.51.100.0/24 -InboundSecurity Require -OutboundSecurity Require | Out-Null',
        'New-NetIPsecRule -DisplayName "ikev1 rule" -RemoteAddress 203.0.113.5 -InboundSecurity Request -OutboundSecurity Request -KeyModule IKEv1 -Phase1AuthSet psk | Out-Null',
        'New-NetIPsecRule -DisplayName "exempt" -RemoteAddress 192.0.2.53 | Out-Null',
        'New-NetIPsecRule -DisplayName "authip psk" -RemoteAddress 203.0.113.7 -InboundSecurity Request -OutboundSecurity Request -KeyModule AuthIP -Phase1AuthSet psk | Out-Null',
      ].join('\n'),
      dir,
    );
    assert.equal(r.errors, 0, r.err);
    const doc = new PolicyStores(dir).read('ActiveStore');
    const flow = (remote: string) => ({ direction: 'Outbound' as const, local: '192.0.2.1', remote, protocol: 1 });
    const plan = planNegotiation(doc, flow('192.0.2.9'));
    assert.equal(plan.rule.DisplayName, 'psk rule');
    assert.equal(plan.mode, 'transport');
    assert.deepEqual(plan.credentials, { method: 'psk', psk: Buffer.from('k') });
    // Windows default lifetimes (480 / 60 minutes), rekeyed at 90 %.
    assert.equal(plan.lifetimes?.ikeExpireMs, 480 * 60_000);
    assert.equal(plan.lifetimes?.childRekeyMs, 54 * 60_000);
    // Transport mode narrows the rule's subnet to the flow's two hosts.
    assert.deepEqual([...(plan.tsr[0]?.start ?? [])], [192, 0, 2, 9]);
    assert.deepEqual([...(plan.tsr[0]?.end ?? [])], [192, 0, 2, 9]);
    // The default MM set's first proposal (AES128-SHA256-DH19) is offered; the legacy ones are explained.
    assert.equal(plan.ikeProposals.length, 1);
    assert.match(plan.skipped.join('\n'), /DES3-SHA1-DH2/);
    // The default Phase 1 auth set is computer Kerberos: AuthIP carries it.
    const krb = planNegotiation(doc, flow('198.51.100.7'));
    assert.deepEqual([krb.keyModule, krb.credentials], ['AuthIP', { method: 'kerberos' }]);
    assert.throws(() => planNegotiation(doc, flow('203.0.113.7')), /AuthIP has no pre-shared key method/);
    // The rule's KeyModule picks the keying module; a rule without one (Default) starts with IKEv2.
    assert.equal(planNegotiation(doc, flow('203.0.113.5')).keyModule, 'IKEv1');
    assert.equal(plan.keyModule, 'Default');
    assert.throws(() => planNegotiation(doc, flow('192.0.2.53')), /"exempt" exempts it/);
    assert.throws(() => planNegotiation(doc, flow('10.0.0.1')), /no connection security rule matches/);
  });
});
