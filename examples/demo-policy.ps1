# The policy `consec lab demo` applies on both lab hosts: host-to-host transport-mode protection
# with a pre-shared key and AES-GCM-256 ESP, written exactly as a Windows admin would.
# (KeyModule stays Default: Windows accepts pre-shared keys with IKEv1/AuthIP only, not with IKEv2.)
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
    -Mode Transport `
    -InboundSecurity Require -OutboundSecurity Require `
    -LocalAddress $env:LAB_LOCAL -RemoteAddress $env:LAB_REMOTE `
    -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null

Get-NetIPsecRule -DisplayName "Lab host-to-host" |
    Format-List DisplayName, Mode, InboundSecurity, OutboundSecurity, QuickModeCryptoSet, Phase1AuthSet
Get-NetIPsecRule -DisplayName "Lab host-to-host" | Get-NetFirewallAddressFilter | Format-Table
Get-NetIPsecQuickModeCryptoSet -DisplayName "Lab QM*" | Select-Object DisplayName, Proposal, PerfectForwardSecrecyGroup
