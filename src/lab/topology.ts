/**
 * Lab topologies: which hosts exist, how veth links join them, their TEST-NET addresses, routes and
 * NAT. Descriptions are plain data, validated before anything is created.
 */
import { LabTopologyError } from '../errors.ts';
import { type AddressError, parsePrefix } from '../io/addr.ts';

export interface InterfaceSpec {
  host: string;
  /** Interface name inside the host's namespace (≤ 15 bytes). */
  name: string;
  /** Addresses in CIDR form, IPv4 or IPv6. */
  addresses: string[];
}

export interface LinkSpec {
  a: InterfaceSpec;
  b: InterfaceSpec;
  mtu?: number;
}

export interface RouteSpec {
  host: string;
  /** Destination prefix ("198.51.100.0/24") or "default" / "default6". */
  to: string;
  via: string;
}

export interface HostSpec {
  name: string;
  /** Enables IPv4 and IPv6 forwarding (routers and gateways). */
  forwarding?: boolean;
  /** Source NAT (masquerade) for traffic leaving through this interface, with nftables. */
  masqueradeOut?: string;
  /** A switch: every interface of this host joins one bridge (br0); its interfaces carry no address. */
  bridge?: boolean;
}

export interface TopologySpec {
  /** Short name used in namespace names: letters, digits and '-', ≤ 12 characters. */
  name: string;
  hosts: HostSpec[];
  links: LinkSpec[];
  routes?: RouteSpec[];
}

const HOST_NAME = /^[a-z][a-z0-9-]{0,11}$/;
const IF_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,14}$/;

/** Throws LabTopologyError for the first problem found. */
export function validateTopology(spec: TopologySpec): void {
  if (!HOST_NAME.test(spec.name)) throw new LabTopologyError(`bad topology name ${JSON.stringify(spec.name)}`);
  const hosts = new Map<string, HostSpec>();
  for (const h of spec.hosts) {
    if (!HOST_NAME.test(h.name)) {
      throw new LabTopologyError(`bad host name ${JSON.stringify(h.name)} (lowercase letters, digits, '-', ≤ 12)`);
    }
    if (hosts.has(h.name)) throw new LabTopologyError(`duplicate host ${h.name}`);
    hosts.set(h.name, h);
  }
  const ifaces = new Set<string>();
  const checkIface = (i: InterfaceSpec): void => {
    if (!hosts.has(i.host)) throw new LabTopologyError(`link names unknown host ${JSON.stringify(i.host)}`);
    if (!IF_NAME.test(i.name)) throw new LabTopologyError(`bad interface name ${JSON.stringify(i.name)}`);
    const key = `${i.host}/${i.name}`;
    if (ifaces.has(key)) throw new LabTopologyError(`duplicate interface ${key}`);
    ifaces.add(key);
    for (const a of i.addresses) {
      try {
        parsePrefix(a);
      } catch (e) {
        throw new LabTopologyError(`${key}: ${(e as AddressError).message}`);
      }
    }
  };
  for (const l of spec.links) {
    checkIface(l.a);
    checkIface(l.b);
    if (l.mtu !== undefined && (!Number.isInteger(l.mtu) || l.mtu < 1280 || l.mtu > 65535)) {
      throw new LabTopologyError(`bad MTU ${l.mtu} (1280..65535)`);
    }
  }
  for (const r of spec.routes ?? []) {
    if (!hosts.has(r.host)) throw new LabTopologyError(`route names unknown host ${JSON.stringify(r.host)}`);
    if (r.to !== 'default' && r.to !== 'default6') {
      try {
        parsePrefix(r.to);
      } catch (e) {
        throw new LabTopologyError(`route on ${r.host}: ${(e as AddressError).message}`);
      }
    }
  }
  for (const l of spec.links)
    for (const i of [l.a, l.b])
      if (hosts.get(i.host)?.bridge && i.addresses.length > 0)
        throw new LabTopologyError(`${i.host}/${i.name}: a switch's ports carry no address`);
  for (const h of spec.hosts) {
    if (h.masqueradeOut !== undefined && !ifaces.has(`${h.name}/${h.masqueradeOut}`)) {
      throw new LabTopologyError(`${h.name}: masquerade interface ${h.masqueradeOut} is not one of its links`);
    }
  }
}

/** The address (without prefix) of `host`'s interface `ifName`, family 4 or 6. */
export function hostAddress(spec: TopologySpec, host: string, family: 4 | 6 = 4, ifName?: string): string {
  for (const l of spec.links) {
    for (const i of [l.a, l.b]) {
      if (i.host !== host || (ifName !== undefined && i.name !== ifName)) continue;
      for (const cidr of i.addresses) {
        const p = parsePrefix(cidr);
        if (p.family === family) return p.address;
      }
    }
  }
  throw new LabTopologyError(`${host} has no IPv${family} address${ifName ? ` on ${ifName}` : ''}`);
}

/** Two hosts on one segment: alice 192.0.2.1 / 2001:db8:1::1, bob 192.0.2.2 / 2001:db8:1::2. */
export function hostToHost(): TopologySpec {
  return {
    name: 'h2h',
    hosts: [{ name: 'alice' }, { name: 'bob' }],
    links: [
      {
        a: { host: 'alice', name: 'eth0', addresses: ['192.0.2.1/24', '2001:db8:1::1/64'] },
        b: { host: 'bob', name: 'eth0', addresses: ['192.0.2.2/24', '2001:db8:1::2/64'] },
      },
    ],
  };
}

/**
 * alice (198.51.100.10) behind a masquerading router to bob (203.0.113.2). bob has no route back to
 * 198.51.100.0/24, so anything alice reaches bob with has been translated.
 */
export function behindNat(): TopologySpec {
  return {
    name: 'nat',
    hosts: [{ name: 'alice' }, { name: 'router', forwarding: true, masqueradeOut: 'eth1' }, { name: 'bob' }],
    links: [
      {
        a: { host: 'alice', name: 'eth0', addresses: ['198.51.100.10/24'] },
        b: { host: 'router', name: 'eth0', addresses: ['198.51.100.1/24'] },
      },
      {
        a: { host: 'router', name: 'eth1', addresses: ['203.0.113.1/24'] },
        b: { host: 'bob', name: 'eth0', addresses: ['203.0.113.2/24'] },
      },
    ],
    routes: [{ host: 'alice', to: 'default', via: '198.51.100.1' }],
  };
}

/**
 * Tunnel mode: inside hosts hosta (198.51.100.10, 2001:db8:a::10) and hostb (203.0.113.10,
 * 2001:db8:b::10) behind gateways gwa (192.0.2.1) and gwb (192.0.2.2). The gateways have no routes to
 * each other's inside subnet: only a tunnel joins the two sites.
 */
export function siteToSite(): TopologySpec {
  return {
    name: 's2s',
    hosts: [{ name: 'hosta' }, { name: 'gwa', forwarding: true }, { name: 'gwb', forwarding: true }, { name: 'hostb' }],
    links: [
      {
        a: { host: 'hosta', name: 'eth0', addresses: ['198.51.100.10/24', '2001:db8:a::10/64'] },
        b: { host: 'gwa', name: 'inside', addresses: ['198.51.100.1/24', '2001:db8:a::1/64'] },
      },
      {
        a: { host: 'gwa', name: 'outside', addresses: ['192.0.2.1/24', '2001:db8:1::1/64'] },
        b: { host: 'gwb', name: 'outside', addresses: ['192.0.2.2/24', '2001:db8:1::2/64'] },
      },
      {
        a: { host: 'gwb', name: 'inside', addresses: ['203.0.113.1/24', '2001:db8:b::1/64'] },
        b: { host: 'hostb', name: 'eth0', addresses: ['203.0.113.10/24', '2001:db8:b::10/64'] },
      },
    ],
    routes: [
      { host: 'hosta', to: 'default', via: '198.51.100.1' },
      { host: 'hosta', to: 'default6', via: '2001:db8:a::1' },
      { host: 'hostb', to: 'default', via: '203.0.113.1' },
      { host: 'hostb', to: 'default6', via: '2001:db8:b::1' },
    ],
  };
}

/**
 * A small Windows-style domain on one switched segment (192.0.2.0/24, 2001:db8:1::/64): the domain
 * controller dc (.10, the realm's KDC and DNS), members alice (.1) and bob (.2), and carol (.3), a host
 * that is not a domain member.
 */
export function domain(): TopologySpec {
  const members: [string, number][] = [
    ['dc', 10],
    ['alice', 1],
    ['bob', 2],
    ['carol', 3],
  ];
  return {
    name: 'dom',
    hosts: [{ name: 'lan', bridge: true }, ...members.map(([name]) => ({ name }))],
    links: members.map(([name, n]) => ({
      a: { host: name, name: 'eth0', addresses: [`192.0.2.${n}/24`, `2001:db8:1::${n.toString(16)}/64`] },
      b: { host: 'lan', name: `p-${name}`, addresses: [] },
    })),
  };
}

/**
 * A fleet on one switched segment (192.0.2.0/24): three etcd members (etcd1–3, .21–.23) holding the
 * fleet's Group Policy, an admin workstation (.9), the domain controller (.10, Kerberos), and member
 * hosts alice (.1), bob (.2), carol (.3).
 */
export function fleet(): TopologySpec {
  const members: [string, number][] = [
    ['etcd1', 21],
    ['etcd2', 22],
    ['etcd3', 23],
    ['admin', 9],
    ['dc', 10],
    ['alice', 1],
    ['bob', 2],
    ['carol', 3],
  ];
  return {
    name: 'fleet',
    hosts: [{ name: 'lan', bridge: true }, ...members.map(([name]) => ({ name }))],
    links: members.map(([name, n]) => ({
      a: { host: name, name: 'eth0', addresses: [`192.0.2.${n}/24`] },
      b: { host: 'lan', name: `p-${name}`, addresses: [] },
    })),
  };
}

export const TOPOLOGIES: Record<string, () => TopologySpec> = {
  'host-to-host': hostToHost,
  nat: behindNat,
  'site-to-site': siteToSite,
  domain,
  fleet,
};
