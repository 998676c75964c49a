/**
 * consec's Security event log: audit events the audit policy enables, as JSON lines in
 * `<state dir>/audit/security.jsonl` (owner-only), rotated by size into `security.1.jsonl` …
 * Records carry the Windows event shape `Get-WinEvent` shows (RecordId, TimeCreated, Id, provider,
 * task category, keywords, message) plus the event's fields. Reading never needs the daemon.
 */
import { closeSync, existsSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { AuditEvent, EndpointInfo } from './events.ts';
import type { AuditSink } from './events.ts';
import type { LiveAuditPolicy } from './policy.ts';
import { permissionDenied } from '../errors.ts';
import { adoptOwn, moveOwn, OwnFiles, openOwnAppend, rotateOwn, safeDirectory } from '../io/safe-file.ts';

export const SECURITY_PROVIDER = 'Microsoft-Windows-Security-Auditing';

export interface SecurityRecord {
  RecordId: number;
  TimeCreated: string;
  Id: number;
  LogName: 'Security';
  ProviderName: string;
  TaskDisplayName: string;
  KeywordsDisplayNames: ['Audit Success'] | ['Audit Failure'];
  LevelDisplayName: 'Information';
  Message: string;
  Event: AuditEvent;
}

export function securityLogDir(stateDir: string): string {
  return join(stateDir, 'audit');
}

const TITLES: Record<number, string> = {
  4646: 'IKE DoS-prevention mode started.',
  4650: 'An IPsec Main Mode security association was established. Extended Mode was not enabled. Certificate authentication was not used.',
  4651: 'An IPsec Main Mode security association was established. Extended Mode was not enabled. A certificate was used for authentication.',
  4652: 'An IPsec Main Mode negotiation failed.',
  4653: 'An IPsec Main Mode negotiation failed.',
  4654: 'An IPsec Quick Mode negotiation failed.',
  4979: 'IPsec Main Mode and Extended Mode security associations were established.',
  4984: 'An IPsec Extended Mode negotiation failed. The corresponding Main Mode security association has been deleted.',
  4655: 'An IPsec Main Mode security association ended.',
  5451: 'An IPsec Quick Mode security association was established.',
  5452: 'An IPsec Quick Mode security association ended.',
  5453: 'An IPsec negotiation with a remote computer failed because the IKE and AuthIP IPsec Keying Modules (IKEEXT) service is not started.',
  4960: 'IPsec dropped an inbound packet that failed an integrity check. If this problem persists, it could indicate a network issue or that packets are being modified in transit to this computer. Verify that the packets sent from the remote computer are the same as those received by this computer. This error might also indicate interoperability problems with other IPsec implementations.',
  4961: 'IPsec dropped an inbound packet that failed a replay check. If this problem persists, it could indicate a replay attack against this computer.',
  4962: 'IPsec dropped an inbound packet that failed a replay check. The inbound packet had too low a sequence number to ensure it was not a replay.',
  4976: 'During Main Mode negotiation, IPsec received an invalid negotiation packet. If this problem persists, it could indicate a network issue or an attempt to modify or replay this negotiation.',
  4977: 'During Quick Mode negotiation, IPsec received an invalid negotiation packet. If this problem persists, it could indicate a network issue or an attempt to modify or replay this negotiation.',
  5152: 'The Windows Filtering Platform has blocked a packet.',
  5447: 'A Windows Filtering Platform filter has been changed.',
  5461: 'PAStore Engine failed to apply local registry storage IPsec policy on the computer.',
  5465: 'PAStore Engine received a control for forced reloading of IPsec policy and processed the control successfully.',
  5478: 'IPsec Services has started successfully.',
  5479: 'IPsec Services has been shut down successfully. The shut down of IPsec Services can put the computer at greater risk of network attack or expose the computer to potential security risks.',
  4963: 'IPsec dropped an inbound clear text packet that should have been secured. This is usually due to the remote computer changing its IPsec policy without informing this computer. This could also be a spoofing attack attempt.',
  4965: 'IPsec received a packet from a remote computer with an incorrect Security Parameter Index (SPI). This is usually caused by malfunctioning hardware that is corrupting packets. If these errors persist, verify that the packets sent from the remote computer are the same as those received by this computer. This error may also indicate interoperability problems with other IPsec implementations. In that case, if connectivity is not impeded, then these events can be ignored.',
};

const endpoint = (title: string, e: EndpointInfo | undefined): string[] =>
  e
    ? [
        `${title}:`,
        `\tPrincipal Name:\t\t${e.principal ?? '-'}`,
        `\tNetwork Address:\t${e.address}`,
        `\tKeying Module Port:\t${e.port}`,
        '',
      ]
    : [];

const KERBEROS_REASONS: [RegExp, string][] = [
  [/Clock skew too great|Ticket not yet valid/, 'The clocks on the client and server machines are skewed.'],
  [/Cannot contact any KDC/, 'No authority could be contacted for authentication.'],
  [/not found in Kerberos database|Server not found/, 'The specified target is unknown or unreachable.'],
  [/Decrypt integrity check failed|Password incorrect|Preauthentication failed/, 'The logon attempt failed'],
  [
    /no Kerberos credentials|no host keytab|Key table (?:file )?.*not found/,
    'No credentials are available in the security package',
  ],
];

/**
 * Windows writes the system message of the IKE error code as a failure's reason (winerror.h:
 * ERROR_IPSEC_IKE_AUTH_FAIL 13801, ERROR_IPSEC_IKE_NO_POLICY 13825, ERROR_IPSEC_IKE_POLICY_MATCH
 * 13868, ERROR_IPSEC_IKE_TIMED_OUT 13805); consec shows that text, and its own finding as Detail.
 */
export function windowsFailureReason(f: { failureReason: string; notify?: string }): string | undefined {
  // Kerberos (AuthIP): the security package's message (SSPI's SEC_E_* texts) for what krb5 reported.
  const kerberos = KERBEROS_REASONS.find(([re]) => re.test(f.failureReason));
  if (kerberos) return kerberos[1];
  if (f.notify === 'AUTHENTICATION_FAILED' || /pre-shared keys differ|certificate|signature/i.test(f.failureReason))
    return 'IKE authentication credentials are unacceptable.';
  if (/no policy|negotiates with IKEv2 only/i.test(f.failureReason)) return 'No policy configured.';
  if (f.notify === 'NO_PROPOSAL_CHOSEN' || /no proposal chosen|NO_PROPOSAL_CHOSEN/i.test(f.failureReason))
    return 'Policy match error.';
  if (/did not answer|retransmi|timed out/i.test(f.failureReason)) return 'Negotiation timed out.';
  return undefined;
}

/** The event's text as Windows lays it out: title, then sections of tab-indented fields. */
export function eventMessage(e: AuditEvent): string {
  if (e.id === 5478 || e.id === 5479 || e.id === 5465) return TITLES[e.id] as string;
  if (e.id === 5461) return [TITLES[e.id], '', `Policy:\t\t${e.policy}`, `Error Code:\t\t${e.errorCode}`].join('\n');
  const lines = [TITLES[e.id] ?? `Event ${e.id}`, ''];
  if (e.id === 5152) {
    lines.push(
      'Application Information:',
      '\tProcess ID:\t\t0',
      '\tApplication Name:\t-',
      '',
      'Network Information:',
      `\tDirection:\t\t${e.direction}`,
      `\tSource Address:\t\t${e.sourceAddress}`,
      `\tSource Port:\t\t${e.sourcePort}`,
      `\tDestination Address:\t${e.destinationAddress}`,
      `\tDestination Port:\t${e.destinationPort}`,
      `\tProtocol:\t\t${e.protocol}`,
      '',
      'Filter Information:',
      '\tFilter Run-Time ID:\t0',
      `\tLayer Name:\t\t${e.layerName}`,
      `\tDropped Packets:\t${e.packets}`,
    );
    return lines.join('\n');
  }
  if (e.id === 5447) {
    lines.push(
      'Process Information:',
      `\tProcess ID:\t\t${e.processId}`,
      `\tProcess Name:\t\t${e.processName}`,
      '',
      'Change Information:',
      `\tChange Type:\t\t${e.changeType}`,
      '',
      'Filter Information:',
      `\tName:\t\t\t${e.filterName}`,
      '\tType:\t\t\tPersistent',
      '',
      'Layer Information:',
      `\tName:\t\t\t${e.layerName}`,
      '',
      'Additional Information:',
      '\tFilter Action:\t\tBlock',
      ...e.changes.map((c, i) => `\t${i === 0 ? 'Changes:\t\t' : '\t\t\t'}${c}`),
    );
    return lines.join('\n').trimEnd();
  }
  if (e.id === 4976 || e.id === 4977) {
    lines.push(
      `Local Address:\t${e.localAddress}`,
      `Remote Address:\t${e.remoteAddress}`,
      `Keying Module Name:\t${e.keyingModule}`,
      `Reason:\t${e.reason}`,
    );
    return lines.join('\n');
  }
  if ('spi' in e) {
    lines.push(
      `Remote Network Address:\t${e.remoteAddress}`,
      `${e.id === 4965 ? 'SPI' : 'Inbound SA SPI'}:\t${e.spi}`,
      `Dropped Packets:\t${e.packets}`,
    );
    return lines.join('\n');
  }
  const info: [string, string | number | undefined][] = [];
  if ('mainMode' in e) {
    lines.push(...endpoint('Local Endpoint', e.mainMode.local), ...endpoint('Remote Endpoint', e.mainMode.remote));
    info.push(
      ['Keying Module Name', e.mainMode.keyingModule],
      ['Authentication Method', e.mainMode.authenticationMethod],
      ['Role', e.mainMode.role],
      ['Cipher Algorithm', e.mainMode.cipher],
      ['Integrity Algorithm', e.mainMode.integrity],
      ['Diffie-Hellman Group', e.mainMode.dhGroup],
      ['Lifetime (minutes)', e.mainMode.lifetimeMinutes],
      ['Main Mode SA ID', e.mainMode.mmSaId],
    );
  } else if ('quickMode' in e) {
    const q = e.quickMode;
    lines.push(...endpoint('Local Endpoint', q.local), ...endpoint('Remote Endpoint', q.remote));
    info.push(['Mode', q.mode], ['Protocol', q.protocol]);
    if ('encryption' in q) info.push(['Encryption Algorithm', q.encryption], ['Integrity Algorithm', q.integrity]);
    info.push(['Inbound SPI', q.inboundSpi], ['Outbound SPI', q.outboundSpi], ['Main Mode SA ID', q.mmSaId]);
    if ('reason' in e) info.push(['Reason', e.reason]);
  } else {
    lines.push(
      ...endpoint('Local Endpoint', 'local' in e ? e.local : undefined),
      ...endpoint('Remote Endpoint', 'remote' in e ? e.remote : undefined),
    );
    if ('keyingModule' in e) info.push(['Keying Module Name', e.keyingModule]);
    if ('authenticationMethod' in e) info.push(['Authentication Method', e.authenticationMethod]);
    if ('role' in e) info.push(['Role', e.role]);
    if ('mmSaId' in e) info.push(['Main Mode SA ID', e.mmSaId]);
    if ('reason' in e) info.push(['Reason', e.reason]);
  }
  lines.push(
    'Additional Information:',
    ...info.filter(([, v]) => v !== undefined).map(([k, v]) => `\t${k}:\t${v}`),
    '',
  );
  if ('extendedMode' in e) {
    const x = e.extendedMode;
    lines.push(
      'Extended Mode Information:',
      `\tLocal Principal Name:\t${x.localPrincipal}`,
      `\tRemote Principal Name:\t${x.remotePrincipal}`,
      `\tAuthentication Method:\t${x.authenticationMethod}`,
      `\tRole:\t\t\t${x.role}`,
      `\tImpersonation State:\t${x.impersonationState}`,
      '',
    );
  }
  if ('failure' in e) {
    const f = e.failure;
    const windows = windowsFailureReason(f);
    lines.push(
      'Failure Information:',
      `\tFailure Point:\t\t${f.failurePoint}`,
      `\tFailure Reason:\t\t${windows ?? f.failureReason}`,
    );
    if (windows) lines.push(`\tDetail:\t\t\t${f.failureReason}`);
    lines.push(`\tState:\t\t\t${f.state}`);
    if ('initiatorCookie' in f)
      lines.push(`\tInitiator Cookie:\t${f.initiatorCookie}`, `\tResponder Cookie:\t${f.responderCookie}`);
    if ('messageId' in f) lines.push(`\tMessage ID:\t\t${f.messageId}`);
  }
  return lines.join('\n').trimEnd();
}

export interface SecurityLogOptions {
  /** Rotate when the current file exceeds this many octets. Default 16 MiB. */
  maxBytes?: number;
  /** Also send each written event to the systemd journal (when the host has one). */
  journal?: { send(fields: Record<string, string | number>): void };
  /** Rotated files kept. Default 4. */
  keep?: number;
}

/**
 * Writes enabled audit events to the Security log; a write failure is reported, never thrown at the
 * caller. The files are consec's own (io/safe-file.ts): created 0600 without following links,
 * appended to only while they are the files consec created, rotated only onto its own names.
 */
export class SecurityLog implements AuditSink {
  private recordId: number;
  private readonly dir: string;
  private readonly maxBytes: number;
  private readonly keep: number;
  private readonly journal?: SecurityLogOptions['journal'];
  private readonly own: OwnFiles;
  private fd?: number;
  /** The current file's size, counted as we append (no stat per event). */
  private bytes = 0;

  constructor(
    stateDir: string,
    private readonly policy: LiveAuditPolicy,
    private readonly onError: (err: Error) => void = () => {},
    o: SecurityLogOptions = {},
  ) {
    this.dir = securityLogDir(stateDir);
    this.maxBytes = o.maxBytes ?? 16 * 1024 * 1024;
    this.keep = o.keep ?? 4;
    this.journal = o.journal;
    this.own = new OwnFiles(stateDir);
    safeDirectory(this.dir);
    for (let i = 0; i <= this.keep; i++) adoptOwn(this.file(i), this.own);
    this.recordId = lastRecordId(this.dir);
  }

  /** security.jsonl (generation 0) or security.N.jsonl. */
  private file(generation: number): string {
    return join(this.dir, generation === 0 ? 'security.jsonl' : `security.${generation}.jsonl`);
  }

  emit(event: AuditEvent): void {
    if (!this.policy.current.enabled(event.subcategory, event.success)) return;
    const record: SecurityRecord = {
      RecordId: ++this.recordId,
      TimeCreated: new Date().toISOString(),
      Id: event.id,
      LogName: 'Security',
      ProviderName: SECURITY_PROVIDER,
      TaskDisplayName: event.subcategory,
      KeywordsDisplayNames: event.success ? ['Audit Success'] : ['Audit Failure'],
      LevelDisplayName: 'Information',
      Message: eventMessage(event),
      Event: event,
    };
    try {
      if (this.fd === undefined) ({ fd: this.fd, size: this.bytes } = openOwnAppend(this.file(0), this.own));
      if (this.bytes > this.maxBytes) {
        this.rotate(this.fd);
        ({ fd: this.fd, size: this.bytes } = openOwnAppend(this.file(0), this.own));
      }
      const line = Buffer.from(`${JSON.stringify(record)}\n`);
      writeSync(this.fd, line);
      this.bytes += line.length;
    } catch (err) {
      this.close(); // opened again (and checked again) next time
      this.onError(err as Error);
    }
    try {
      this.journal?.send(journalFields(record));
    } catch (err) {
      this.onError(err as Error);
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** Generations shift up (the oldest is replaced), the current file becomes security.1.jsonl. */
  private rotate(fd: number): void {
    for (let i = this.keep - 1; i >= 1; i--) moveOwn(this.file(i), this.file(i + 1), this.own);
    rotateOwn(this.file(0), fd, this.own, this.file(1));
    this.close();
  }
}

/**
 * A Security log record as journal fields: the Windows message as MESSAGE, warning priority for
 * failures, and the event's ID, subcategory, record ID and JSON for `journalctl CONSEC_EVENT_ID=4653`.
 */
export function journalFields(r: SecurityRecord): Record<string, string | number> {
  return {
    MESSAGE: r.Message,
    PRIORITY: r.KeywordsDisplayNames[0] === 'Audit Failure' ? 4 : 6,
    SYSLOG_IDENTIFIER: 'consec',
    CONSEC_LOG: 'Security',
    CONSEC_EVENT_ID: r.Id,
    CONSEC_RECORD_ID: r.RecordId,
    CONSEC_TASK: r.TaskDisplayName,
    CONSEC_KEYWORDS: r.KeywordsDisplayNames[0],
    CONSEC_PROVIDER: r.ProviderName,
    CONSEC_EVENT_JSON: JSON.stringify(r.Event),
  };
}

function lastRecordId(dir: string): number {
  const records = readFile(join(dir, 'security.jsonl'));
  return records.at(-1)?.RecordId ?? readFile(join(dir, 'security.1.jsonl')).at(-1)?.RecordId ?? 0;
}

function readFile(file: string): SecurityRecord[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    // No log yet is no events; a log we may not read is said as such (not "no events").
    if ((err as { code?: string }).code === 'ENOENT') return [];
    throw permissionDenied(err, file, 'to read the Security log');
  }
  const out: SecurityRecord[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line) as SecurityRecord);
    } catch {
      /* a torn last line after a crash: skipped */
    }
  }
  return out;
}

export interface EventQuery {
  ids?: number[];
  startTime?: Date;
  endTime?: Date;
  maxEvents?: number;
}

/** Security log records matching `q`, newest first (as Get-WinEvent returns them). */
export function readSecurityLog(stateDir: string, q: EventQuery = {}): SecurityRecord[] {
  const dir = securityLogDir(stateDir);
  const files: string[] = [];
  for (let i = 16; i >= 1; i--)
    if (existsSync(join(dir, `security.${i}.jsonl`))) files.push(join(dir, `security.${i}.jsonl`));
  files.push(join(dir, 'security.jsonl'));
  const out: SecurityRecord[] = [];
  for (const f of files) {
    for (const r of readFile(f)) {
      if (q.ids && !q.ids.includes(r.Id)) continue;
      const t = Date.parse(r.TimeCreated);
      if (q.startTime && t < q.startTime.getTime()) continue;
      if (q.endTime && t > q.endTime.getTime()) continue;
      out.push(r);
    }
  }
  out.reverse();
  return q.maxEvents === undefined ? out : out.slice(0, q.maxEvents);
}
