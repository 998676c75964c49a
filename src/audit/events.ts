/**
 * Windows IPsec audit events (Security log IDs 4650–4655, 5451–5453 …) as typed records. Keying
 * modules and the data plane raise them through one `AuditSink`; the monitoring layer
 * decides where they go (JSON lines, journal, `Get-WinEvent`) and which subcategories are enabled.
 * Field names follow the event's sections in the Windows event text; values never carry keys.
 */

export type AuditSubcategory =
  | 'IPsec Main Mode'
  | 'IPsec Quick Mode'
  | 'IPsec Extended Mode'
  | 'IPsec Driver'
  | 'Filtering Platform Packet Drop'
  | 'Filtering Platform Policy Change';

export interface EndpointInfo {
  /** Network address. */
  address: string;
  /** Keying module port (500, or 4500 after NAT traversal). */
  port: number;
  /** Principal name: the IKE identity as text. */
  principal?: string;
}

export interface MainModeInfo {
  local: EndpointInfo;
  remote: EndpointInfo;
  keyingModule: 'IKEv2' | 'IKEv1' | 'AuthIP';
  /** 'Initiator' | 'Responder' as Windows prints it. */
  role: 'Initiator' | 'Responder';
  /** Windows names: Preshared key, Certificate, Kerberos … */
  authenticationMethod: string;
  /** MM SA ID: our IKE SPI as a 64-bit decimal, like Windows' MM SA IDs. */
  mmSaId: string;
  cipher?: string;
  integrity?: string;
  dhGroup?: string;
  lifetimeMinutes?: number;
  certificate?: { local?: CertificateInfo; remote?: CertificateInfo };
}

/** The second authentication (Extended Mode) as 4979 shows it. */
export interface ExtendedModeInfo {
  /** Principals as Windows names the accounts (DOMAIN\\user, DOMAIN\\HOST$). */
  localPrincipal: string;
  remotePrincipal: string;
  authenticationMethod: string;
  role: 'Initiator' | 'Responder';
  impersonationState: 'Enabled' | 'Not enabled';
}

export interface CertificateInfo {
  sha1Thumbprint: string;
  issuer: string;
  subject: string;
}

export interface QuickModeInfo {
  local: EndpointInfo;
  remote: EndpointInfo;
  keyingModule: 'IKEv2' | 'IKEv1' | 'AuthIP';
  mode: 'Transport' | 'Tunnel';
  protocol: 'ESP' | 'AH';
  encryption: string;
  integrity: string;
  /** SPIs as Windows prints them (decimal). */
  inboundSpi: number;
  outboundSpi: number;
  mmSaId: string;
  /** Traffic selectors, as text. */
  localSelectors: string;
  remoteSelectors: string;
}

export interface FailureInfo {
  /** Local or Remote: which side found the failure. */
  failurePoint: 'Local computer' | 'Remote computer';
  failureReason: string;
  /** The IKE state the negotiation was in (Windows: "State"). */
  state: string;
  /** RFC 7296 notify behind the failure, when there is one. */
  notify?: string;
  initiatorCookie: string;
  responderCookie: string;
}

export type AuditEvent =
  /** 4646: IKE DoS-prevention mode started (MS-IKEE §3.9: Main Mode answered with stateless cookies). */
  | { id: 4646; subcategory: 'IPsec Main Mode'; success: true; keyingModule: 'IKEv1'; halfOpen: number }
  | { id: 4650; subcategory: 'IPsec Main Mode'; success: true; mainMode: MainModeInfo }
  | { id: 4651; subcategory: 'IPsec Main Mode'; success: true; mainMode: MainModeInfo }
  /** 4979: Main Mode and Extended Mode (a user authenticated) established. */
  | {
      id: 4979;
      subcategory: 'IPsec Extended Mode';
      success: true;
      mainMode: MainModeInfo;
      extendedMode: ExtendedModeInfo;
    }
  | {
      /** 4652/4653: Main Mode failed (certificate / other); 4984: Extended Mode failed, Main Mode deleted. */
      id: 4652 | 4653 | 4984;
      subcategory: 'IPsec Main Mode' | 'IPsec Extended Mode';
      success: false;
      local: EndpointInfo;
      remote: EndpointInfo;
      keyingModule: 'IKEv2' | 'IKEv1' | 'AuthIP';
      role: 'Initiator' | 'Responder';
      authenticationMethod?: string;
      failure: FailureInfo;
    }
  | {
      id: 4654;
      subcategory: 'IPsec Quick Mode';
      success: false;
      local: EndpointInfo;
      remote: EndpointInfo;
      keyingModule: 'IKEv2' | 'IKEv1' | 'AuthIP';
      role: 'Initiator' | 'Responder';
      mmSaId: string;
      failure: Omit<FailureInfo, 'initiatorCookie' | 'responderCookie'> & { messageId: number };
    }
  | {
      id: 4655;
      subcategory: 'IPsec Main Mode';
      success: true;
      local: EndpointInfo;
      remote: EndpointInfo;
      keyingModule: 'IKEv2' | 'IKEv1' | 'AuthIP';
      mmSaId: string;
      /** Why it ended: deleted by the peer, locally, rekeyed, expired, dead peer. */
      reason: string;
    }
  | { id: 5451; subcategory: 'IPsec Quick Mode'; success: true; quickMode: QuickModeInfo }
  | {
      id: 5452;
      subcategory: 'IPsec Quick Mode';
      success: true;
      quickMode: Pick<
        QuickModeInfo,
        'local' | 'remote' | 'mode' | 'protocol' | 'inboundSpi' | 'outboundSpi' | 'mmSaId'
      >;
      reason: string;
    }
  | { id: 5453; subcategory: 'IPsec Main Mode'; success: false; remote: EndpointInfo; reason: string }
  /**
   * An invalid IKE message (undecodable, or failing its integrity check) during Main Mode (4976:
   * IKE_SA_INIT, IKE_AUTH, INFORMATIONAL) or Quick Mode (4977: CREATE_CHILD_SA). Rate-limited per peer.
   */
  | {
      id: 4976 | 4977;
      subcategory: 'IPsec Main Mode' | 'IPsec Quick Mode';
      success: false;
      localAddress: string;
      remoteAddress: string;
      keyingModule: 'IKEv2' | 'IKEv1' | 'AuthIP';
      reason: string;
    }
  /**
   * 5152: the filtering engine blocked a packet — traffic a Require rule held back while IKE
   * negotiated, dropped when the negotiation failed (one event per failed destination).
   */
  | {
      id: 5152;
      subcategory: 'Filtering Platform Packet Drop';
      success: false;
      direction: 'Inbound' | 'Outbound';
      sourceAddress: string;
      sourcePort: number;
      destinationAddress: string;
      destinationPort: number;
      protocol: number;
      layerName: string;
      packets: number;
    }
  /**
   * 5447: a run-time filter was added or removed — here the fail-closed nftables table: changed or
   * removed by another process (Delete, with what it did), and put back by consec (Add).
   */
  | {
      id: 5447;
      subcategory: 'Filtering Platform Policy Change';
      success: true;
      processId: number;
      processName: string;
      changeType: 'Add' | 'Delete';
      filterName: string;
      layerName: string;
      changes: string[];
    }
  /**
   * The policy read again on request (SIGHUP, `systemctl reload`): 5465 "PAStore Engine received a
   * control for forced reloading of IPsec policy and processed the control successfully"; 5461 when
   * the store could not be applied (the policy in force stays).
   */
  | { id: 5465; subcategory: 'Filtering Platform Policy Change'; success: true }
  | { id: 5461; subcategory: 'Filtering Platform Policy Change'; success: false; policy: string; errorCode: string }
  /** IPsec Services (the daemon) started (5478) or shut down (5479). */
  | { id: 5478 | 5479; subcategory: 'IPsec Driver'; success: true }
  | DriverDropEvent;

/**
 * The IPsec driver (the data plane) dropped inbound packets: 4960 integrity check failed, 4961
 * replay check failed, 4962 sequence number too low (older than the window), 4963 cleartext that
 * should have been secured (a Require rule; SPI 0), 4965 unknown SPI. Rate-limited per event, SA
 * and peer; `packets` counts the drops the event stands for.
 */
export interface DriverDropEvent {
  id: 4960 | 4961 | 4962 | 4963 | 4965;
  subcategory: 'IPsec Driver';
  success: false;
  remoteAddress: string;
  spi: number;
  packets: number;
}

/** Where audit events go. The keying service and the data plane hold one; tests collect them. */
export interface AuditSink {
  emit(event: AuditEvent): void;
}

export const NO_AUDIT: AuditSink = { emit() {} };

/** Collects events in memory (tests, `consec ike initiate --verbose`). */
export class AuditCollector implements AuditSink {
  readonly events: AuditEvent[] = [];
  emit(event: AuditEvent): void {
    this.events.push(event);
  }
  ids(): number[] {
    return this.events.map((e) => e.id);
  }
}

/** Windows shows MM SA IDs as 64-bit decimals; our IKE SPI is that identifier. */
export const mmSaId = (spi: Buffer): string => spi.readBigUInt64BE(0).toString();
