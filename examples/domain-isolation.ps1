# The policy `consec lab demo --domain` applies on both domain members: domain isolation as the
# seeds describe it. Computer Kerberos authenticates the members (consec negotiates it with
# AuthIP, as Windows does), IPsec is required in and out on the whole segment, and the domain
# controller (its KDC and the DNS that finds it) is exempt: Kerberos must reach both before any SA
# can exist (seed 001's lockout).
$krb = New-NetIPsecAuthProposal -Machine -Kerberos
$p1 = New-NetIPsecPhase1AuthSet -DisplayName "Computer Kerberos" -Proposal $krb
$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AES256 -ESPHash SHA256
$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "Domain QM ESP AES256-SHA256" -Proposal $qm

New-NetIPsecRule -DisplayName "Domain isolation" `
    -RemoteAddress $env:LAB_SEGMENT -InboundSecurity Require -OutboundSecurity Require `
    -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null
New-NetIPsecRule -DisplayName "Domain controller exempt" -RemoteAddress $env:LAB_DC | Out-Null

Get-NetIPsecRule | Format-Table DisplayName, InboundSecurity, OutboundSecurity, Phase1AuthSet
