import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { SCRIPTS, SHARED_SCRIPTS } from './pwsh-helpers.ts';

it('the vendored reference scripts equal shared/reference/scripts', (t) => {
  if (!existsSync(SHARED_SCRIPTS)) {
    // CI always lays shared/ beside the clone: there, a missing copy is a failure, not a skip.
    assert.ok(!process.env.CI, `${SHARED_SCRIPTS} is missing: CI lays shared/ beside the checkout`);
    t.skip(`${SHARED_SCRIPTS} is not beside this checkout`);
    return;
  }
  const shared = readdirSync(SHARED_SCRIPTS).sort();
  assert.deepEqual(readdirSync(SCRIPTS).sort(), shared);
  for (const f of shared) {
    assert.equal(
      readFileSync(join(SCRIPTS, f), 'utf8'),
      readFileSync(join(SHARED_SCRIPTS, f), 'utf8'),
      `${f} differs: copy the new version into test/fixtures/reference-scripts`,
    );
  }
});
