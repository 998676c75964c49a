/**
 * The IKE SAs' shared deadline timer (src/ike/deadlines.ts): owners are called in time order, once
 * per deadline, with what they rescheduled (earlier, later, from inside, cancelled) respected, and
 * the heap stays bounded when owners reschedule over and over. Node's timers are mocked, so time
 * only moves when the test says so.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import fc from 'fast-check';
import { type DeadlineOwner, Deadlines } from '../src/ike/deadlines.ts';

let clock = 0;
const tick = (ms: number): void => {
  clock += ms;
  mock.timers.tick(ms);
};

class Owner implements DeadlineOwner {
  deadlineAt = Infinity;
  calls: number[] = [];
  constructor(
    readonly name: string,
    readonly log: string[],
    public then: (now: number) => number = () => Infinity,
  ) {}
  onDeadline(now: number): number {
    this.calls.push(now);
    this.log.push(this.name);
    return this.then(now);
  }
}

describe('IKE deadlines: one timer for every SA', () => {
  beforeEach(() => {
    clock = 0;
    mock.timers.enable({ apis: ['setTimeout'] });
  });
  afterEach(() => mock.timers.reset());

  it('calls owners in time order, each once, when their time comes', () => {
    const d = new Deadlines(() => clock);
    const log: string[] = [];
    const a = new Owner('a', log);
    const b = new Owner('b', log);
    const c = new Owner('c', log);
    d.schedule(b, 200);
    d.schedule(a, 100);
    d.schedule(c, 300);
    tick(99);
    assert.deepEqual(log, []);
    tick(1);
    assert.deepEqual(log, ['a']);
    tick(250);
    assert.deepEqual(log, ['a', 'b', 'c']);
    tick(10_000);
    assert.deepEqual(log, ['a', 'b', 'c'], 'nothing is called twice');
    assert.equal(a.deadlineAt, Infinity);
  });

  it('an owner rescheduled earlier or later is called at its new time only; a cancelled one never', () => {
    const d = new Deadlines(() => clock);
    const log: string[] = [];
    const later = new Owner('later', log);
    const earlier = new Owner('earlier', log);
    const gone = new Owner('gone', log);
    d.schedule(later, 100);
    d.schedule(earlier, 500);
    d.schedule(gone, 150);
    d.schedule(later, 400);
    d.schedule(earlier, 50);
    d.cancel(gone);
    tick(60);
    assert.deepEqual(log, ['earlier']);
    tick(200);
    assert.deepEqual(log, ['earlier'], 'the stale entries at 100 and 150 call no one');
    tick(139);
    assert.deepEqual(log, ['earlier']);
    tick(1);
    assert.deepEqual(log, ['earlier', 'later']);
    assert.deepEqual(later.calls, [400]);
  });

  it('the next deadline an owner answers is kept, unless it rescheduled itself from inside', () => {
    const d = new Deadlines(() => clock);
    const log: string[] = [];
    let n = 0;
    const periodic = new Owner('p', log, (now) => (++n < 3 ? now + 100 : Infinity));
    const self = new Owner('s', log);
    self.then = (now) => {
      d.schedule(self, now + 1000);
      return now + 10; // ignored: it already rescheduled itself
    };
    d.schedule(periodic, 100);
    d.schedule(self, 100);
    tick(100);
    tick(100);
    tick(100);
    tick(100);
    assert.deepEqual(periodic.calls, [100, 200, 300]);
    assert.deepEqual(self.calls, [100]);
    tick(700);
    assert.deepEqual(self.calls, [100, 1100]);
  });

  it('an owner whose handler throws is not lost: the error surfaces, later owners still run', () => {
    const d = new Deadlines(() => clock);
    const log: string[] = [];
    const bad = new Owner('bad', log, () => {
      throw new Error('handler failed');
    });
    const good = new Owner('good', log);
    d.schedule(bad, 10);
    d.schedule(good, 20);
    assert.throws(() => tick(10), /handler failed/);
    tick(10);
    assert.deepEqual(log, ['bad', 'good']);
  });

  it('stays bounded and in order under any sequence of reschedules (property)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(19), fc.oneof(fc.integer({ min: 1, max: 5000 }), fc.constant(-1))), {
          maxLength: 400,
        }),
        (ops) => {
          clock = 0;
          mock.timers.reset();
          mock.timers.enable({ apis: ['setTimeout'] });
          const d = new Deadlines(() => clock);
          const log: string[] = [];
          const owners = Array.from({ length: 20 }, (_, i) => new Owner(String(i), log));
          const want = new Map<Owner, number>();
          for (const [i, t] of ops) {
            const o = owners[i] as Owner;
            if (t < 0) {
              d.cancel(o);
              want.delete(o);
            } else {
              d.schedule(o, t);
              want.set(o, t);
            }
            assert.ok(d.size <= Math.max(64, 2 * want.size) + 1, `heap of ${d.size} for ${want.size} owners`);
          }
          tick(5000);
          const expected = [...want].sort((x, y) => x[1] - y[1]).map(([o, t]) => [o.name, t]);
          const got = owners.flatMap((o) => o.calls.map((t) => [o.name, t] as [string, number]));
          assert.deepEqual(new Set(got.map(([n]) => n)).size, got.length, 'each owner once');
          assert.deepEqual(got.map(([n]) => n).sort(), expected.map(([n]) => n as string).sort());
          // Called no earlier than its time, and in time order.
          const order = log.map((n) => want.get(owners[Number(n)] as Owner) as number);
          assert.deepEqual(
            order,
            [...order].sort((x, y) => x - y),
          );
        },
      ),
      { numRuns: 200 },
    );
  });
});
