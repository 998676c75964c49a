/**
 * The fleet's Group Policy as this host applied it: `policy/fleet-gpos.json` (0600, replaced
 * atomically), written by the host's fleet agent with every GPO that targets the host, in
 * processing order, as the fleet's cluster held them at one revision. One file, so a revision is
 * applied whole or not at all, and it is the host's last good fleet policy across restarts and
 * while the cluster cannot be reached. The ActiveStore reads it as the domain GPOs of RSOP.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../io/atomic.ts';
import { readJsonFile } from '../io/json-file.ts';
import { PolicyStoreError } from './errors.ts';

export const GROUP_POLICY_FILE = 'fleet-gpos.json';

const linkInfo = {
  /** "corp.example\Isolation". */
  name: z.string().min(1),
  /** etcd's mod_revision of the GPO's key. */
  revision: z.string().regex(/^\d+$/),
  container: z.string().min(1),
  linkOrder: z.number().int().min(1),
  enforced: z.boolean(),
};

const appliedSchema = z.strictObject({
  format: z.literal('consec-group-policy'),
  version: z.literal(1),
  domain: z.string().min(1),
  host: z.string().min(1),
  container: z.string().min(1),
  groups: z.array(z.string()),
  /** The cluster's revision the GPOs and the directory were read at. */
  revision: z.string().regex(/^\d+$/),
  appliedAt: z.string(),
  gpos: z.array(z.strictObject({ ...linkInfo, text: z.string() })),
  denied: z.array(z.strictObject({ ...linkInfo, revision: z.string().optional(), reason: z.string() })),
});

export type AppliedGroupPolicy = z.infer<typeof appliedSchema>;

export const groupPolicyFile = (policyDir: string): string => join(policyDir, GROUP_POLICY_FILE);

/** The fleet policy this host applied, or undefined when it has none. A broken file is an error. */
export function readGroupPolicy(policyDir: string): AppliedGroupPolicy | undefined {
  return readJsonFile(
    groupPolicyFile(policyDir),
    appliedSchema,
    (m) => new PolicyStoreError(`The fleet's Group Policy file ${m}`),
  );
}

/** Replaces the applied fleet policy in one atomic write. */
export function writeGroupPolicy(policyDir: string, applied: AppliedGroupPolicy): void {
  const r = appliedSchema.safeParse(applied);
  if (!r.success) throw new PolicyStoreError(`not a fleet Group Policy: ${r.error.message}`);
  mkdirSync(policyDir, { recursive: true, mode: 0o700 });
  writeFileAtomic(groupPolicyFile(policyDir), `${JSON.stringify(r.data, null, 1)}\n`, 0o600);
}

/** Removes the applied fleet policy (a host that leaves its fleet; a first revision not enforced). */
export function removeGroupPolicy(policyDir: string): void {
  rmSync(groupPolicyFile(policyDir), { force: true });
}
