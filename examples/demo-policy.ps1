# The policy `consec lab demo` applies on alice: protect all traffic with bob, pre-shared key,
# AES-GCM-256 ESP, written exactly as a Windows admin would. The rule is a tunnel between the two
# hosts' own addresses because the lab's strongSwan peer runs its userspace data plane, which does
# tunnel mode only. (KeyModule stays Default: with a pre-shared key consec starts with IKEv2, which
# strongSwan answers.)
$mm = New-NetIPsecMainModeCryptoProposal -Encryption AES256 -Hash SHA256 -KeyExchange DH19
$mmSet = New-NetIPsecMainModeCryptoSet -DisplayName "Lab MM AES256-SHA256-DH19" -Proposal $mm
$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256
$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "Lab QM ESP AES-GCM-256" -Proposal $qm
$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "lab-only-psk-0123456789abcdef"
$p1 = New-NetIPsecPhase1AuthSet -DisplayName "Lab PSK" -Proposal $psk

New-NetIPsecMainModeRule -DisplayName "Lab main mode" `
    -LocalAddress $env:LAB_LOCAL -RemoteAddress $env:LAB_REMOTE `
    -MainModeCryptoSet $mmSet.Name -Phase1AuthSet $p1.Name | Out-Null

New-NetIPsecRule -DisplayName "Lab host-to-host" `
    -Mode Tunnel -LocalTunnelEndpoint $env:LAB_LOCAL -RemoteTunnelEndpoint $env:LAB_REMOTE `
    -InboundSecurity Require -OutboundSecurity Require `
    -LocalAddress $env:LAB_LOCAL -RemoteAddress $env:LAB_REMOTE `
    -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null

Get-NetIPsecRule -DisplayName "Lab host-to-host" |
    Format-List DisplayName, Mode, InboundSecurity, OutboundSecurity, QuickModeCryptoSet, Phase1AuthSet
Get-NetIPsecRule -DisplayName "Lab host-to-host" | Get-NetFirewallAddressFilter | Format-Table
Test-NetIPsecFlow -LocalAddress $env:LAB_LOCAL -RemoteAddress $env:LAB_REMOTE -Protocol ICMPv4 |
    Format-List Decision, Rule, MainModeProposals, QuickModeProposals, FirstPacket
