/**
 * The NetSecurity enumerations with their Windows type names and spellings
 * (shared/reference/windows-ipsec-surface.md §3). Values are matched case-insensitively and stored
 * in Windows' canonical spelling; flags enumerations are stored as lists in declaration order.
 */
import { ConsecError } from '../errors.ts';

export interface EnumDef<T extends string = string> {
  /** The Windows type name, used in binding errors. */
  readonly typeName: string;
  readonly values: readonly T[];
  readonly flags: boolean;
}

function def<const T extends string>(typeName: string, values: readonly T[], flags = false): EnumDef<T> {
  return { typeName, values, flags };
}

export const EncryptionAlgorithm = def('EncryptionAlgorithm', [
  'None',
  'DES',
  'DES3',
  'AES128',
  'AES192',
  'AES256',
  'AESGCM128',
  'AESGCM192',
  'AESGCM256',
]);
export const HashAlgorithm = def('HashAlgorithm', [
  'None',
  'MD5',
  'SHA1',
  'SHA256',
  'SHA384',
  'AESGMAC128',
  'AESGMAC192',
  'AESGMAC256',
]);
export const DiffieHellmanGroup = def('DiffieHellmanGroup', [
  'None',
  'DH1',
  'DH2',
  'DH14',
  'DH19',
  'DH20',
  'DH24',
  'SameAsMainMode',
]);
export const IPsecEncapsulation = def('IPsecEncapsulation', ['None', 'AH', 'ESP'], true);
export const IPsecMode = def('IPsecMode', ['None', 'Tunnel', 'Transport']);
export const SecurityPolicy = def('SecurityPolicy', ['None', 'Request', 'Require']);
export const KeyModule = def('KeyModule', ['Default', 'IKEv1', 'AuthIP', 'IKEv2']);
export const Profile = def('Profile', ['Any', 'Domain', 'Private', 'Public', 'NotApplicable'], true);
export const Enabled = def('Enabled', ['True', 'False']);
export const InterfaceType = def('InterfaceType', ['Any', 'Wired', 'Wireless', 'RemoteAccess'], true);
export const TunnelType = def('TunnelType', ['PointToSite']);
export const CertificateAuthorityType = def('CertificateAuthorityType', ['Invalid', 'Root', 'Intermediate']);
export const CertificateSigningAlgorithm = def('CertificateSigningAlgorithm', [
  'Invalid',
  'RSA',
  'ECDSA256',
  'ECDSA384',
]);
export const CertificateSubjectType = def('CertificateSubjectType', [
  'None',
  'DomainName',
  'UserPrincipalName',
  'EmailAddress',
  'CN',
  'OU',
  'O',
  'DC',
]);
export const TrafficExemption = def(
  'TrafficExemption',
  ['None', 'NeighborDiscovery', 'Icmp', 'RouterDiscovery', 'Dhcp', 'NotConfigured'],
  true,
);
export const CRLCheck = def('CRLCheck', ['None', 'AttemptCrlCheck', 'RequireCrlCheck', 'NotConfigured']);
export const IPsecThroughNAT = def('IPsecThroughNAT', ['None', 'Server', 'Both', 'NotConfigured']);
export const KeyEncoding = def('KeyEncoding', ['UTF16', 'UTF8', 'NotConfigured']);
export const PacketQueuing = def('PacketQueuing', ['None', 'Inbound', 'Forward', 'NotConfigured'], true);
export const GpoBoolean = def('GpoBoolean', ['False', 'True', 'NotConfigured']);
export const Action = def('Action', ['NotConfigured', 'Allow', 'Block']);
export const Direction = def('Direction', ['Inbound', 'Outbound']);
export const EdgeTraversal = def('EdgeTraversal', ['Block', 'Allow', 'DeferToUser', 'DeferToApp']);
/** A firewall rule's IPsec condition (the MMC's "allow the connection if it is secure"). */
export const Authentication = def('Authentication', ['NotRequired', 'Required', 'NoEncap']);
export const Encryption = def('Encryption', ['NotRequired', 'Required', 'Dynamic']);
export const DynamicTransport = def('DynamicTransport', [
  'Any',
  'ProximityApps',
  'ProximitySharing',
  'WifiDirectPrinting',
  'WifiDirectDisplay',
  'WifiDirectDevices',
]);
export const PrimaryStatus = def('PrimaryStatus', ['Unknown', 'OK', 'Inactive', 'Error']);
export const PolicyStoreType = def('PolicyStoreType', [
  'None',
  'Local',
  'GroupPolicy',
  'Dynamic',
  'Generated',
  'Hardcoded',
]);

export type EnumValue<E> = E extends EnumDef<infer T> ? T : never;

/** Raised when a value is not one of an enumeration's names. The message is PowerShell's. */
export class EnumConversionError extends ConsecError {
  constructor(
    readonly enumDef: EnumDef,
    readonly value: string,
  ) {
    super(
      'ERR_ENUM',
      `Cannot convert value "${value}" to type "${enumDef.typeName}". Error: "Unable to match the identifier name ${value} to a valid enumerator name. Specify one of the following enumerator names and try again:\n${enumDef.values.join(', ')}"`,
    );
  }
}

/** Canonical spelling of one enumeration value (case-insensitive match). */
export function parseEnum<T extends string>(e: EnumDef<T>, value: string): T {
  const v = value.trim();
  const found = e.values.find((x) => x.toLowerCase() === v.toLowerCase());
  if (found === undefined) throw new EnumConversionError(e, value);
  return found;
}

/**
 * A flags value from "A,B", ["A","B"] or "A, B": canonical names in declaration order, without
 * duplicates. "None" combined with anything else is just the others.
 */
export function parseFlags<T extends string>(e: EnumDef<T>, value: string | readonly string[]): T[] {
  const parts = (typeof value === 'string' ? [value] : value)
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter(Boolean);
  if (parts.length === 0) throw new EnumConversionError(e, String(value));
  const set = new Set(parts.map((p) => parseEnum(e, p)));
  if (set.size > 1) set.delete('None' as T);
  return e.values.filter((v) => set.has(v));
}
