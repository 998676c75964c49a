/**
 * The deadlines of many IKE SAs on one timer: a binary min-heap of (time, owner), with one Node
 * timer armed for the earliest. An SA holds no timer of its own — at 10k SAs, four timers each
 * (IKE rekey and expiry, child rekey and expiry) were 1.3 KB per SA of Timeout objects, timer lists
 * and closures.
 *
 * An owner keeps its own deadlines and answers, when called, with the next one; the heap holds
 * only when to call it. A rescheduled owner leaves its older entry in the heap, recognised as stale
 * (its time no longer the owner's `deadlineAt`) and dropped when it comes up; the heap is rebuilt
 * when stale entries outnumber live ones.
 */

export interface DeadlineOwner {
  /** When the owner is next due (set by `Deadlines`; Infinity when not scheduled). */
  deadlineAt: number;
  /** Runs what is due at `now`; returns the next deadline (Infinity for none). */
  onDeadline(now: number): number;
}

/** The longest a Node timer may be set for (2^31 − 1 ms); later deadlines re-arm on the way. */
const MAX_DELAY = 2 ** 31 - 1;

export class Deadlines {
  private readonly at: number[] = [];
  private readonly owners: DeadlineOwner[] = [];
  private live = 0;
  private timer?: NodeJS.Timeout;
  private armedFor = Infinity;
  private firing = false;

  constructor(private readonly now: () => number = Date.now) {}

  /** Entries in the heap (live and stale), for tests. */
  get size(): number {
    return this.at.length;
  }

  /** `owner` is next due at `time` (Infinity: not at all); replaces what it had. */
  schedule(owner: DeadlineOwner, time: number): void {
    const had = owner.deadlineAt !== Infinity;
    if (had && owner.deadlineAt === time) return;
    owner.deadlineAt = time;
    if (time === Infinity) {
      if (had) this.live--;
      return;
    }
    if (!had) this.live++;
    this.push(time, owner);
    if (this.at.length > 64 && this.at.length > 2 * this.live) this.compact();
    this.arm();
  }

  /** `owner` is no longer due (its entry goes stale). */
  cancel(owner: DeadlineOwner): void {
    this.schedule(owner, Infinity);
  }

  /** Stops the timer; owners stay as they are (a closed manager's SAs are terminated anyway). */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Infinity;
  }

  private arm(): void {
    const first = this.at[0];
    if (this.firing || first === undefined || first >= this.armedFor) return;
    clearTimeout(this.timer);
    this.armedFor = first;
    const delay = Math.min(MAX_DELAY, Math.max(0, first - this.now()));
    this.timer = setTimeout(() => this.fire(), delay);
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    this.armedFor = Infinity;
    this.firing = true;
    const now = this.now();
    let failed = false;
    let failure: unknown;
    try {
      while (this.at.length > 0 && (this.at[0] as number) <= now) {
        const time = this.at[0] as number;
        const owner = this.owners[0] as DeadlineOwner;
        this.pop();
        if (owner.deadlineAt !== time) continue; // stale: rescheduled or cancelled since
        owner.deadlineAt = Infinity;
        this.live--;
        let next = Infinity;
        try {
          next = owner.onDeadline(now);
        } catch (e) {
          // The other owners still run and the timer is re-armed; the first failure surfaces after.
          if (!failed) failure = e;
          failed = true;
        }
        // An owner that rescheduled itself from inside keeps that; otherwise what it answered.
        if (owner.deadlineAt === Infinity) this.schedule(owner, next);
      }
    } finally {
      this.firing = false;
      this.arm();
    }
    if (failed) throw failure;
  }

  private push(time: number, owner: DeadlineOwner): void {
    const at = this.at;
    const owners = this.owners;
    let i = at.length;
    at.push(time);
    owners.push(owner);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((at[parent] as number) <= time) break;
      at[i] = at[parent] as number;
      owners[i] = owners[parent] as DeadlineOwner;
      i = parent;
    }
    at[i] = time;
    owners[i] = owner;
  }

  private pop(): void {
    const at = this.at;
    const owners = this.owners;
    const lastTime = at.pop() as number;
    const lastOwner = owners.pop() as DeadlineOwner;
    const n = at.length;
    if (n === 0) return;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && (at[r] as number) < (at[l] as number) ? r : l;
      if ((at[c] as number) >= lastTime) break;
      at[i] = at[c] as number;
      owners[i] = owners[c] as DeadlineOwner;
      i = c;
    }
    at[i] = lastTime;
    owners[i] = lastOwner;
  }

  /** Rebuilds the heap from its live entries. */
  private compact(): void {
    const entries: [number, DeadlineOwner][] = [];
    const seen = new Set<DeadlineOwner>();
    for (let i = 0; i < this.at.length; i++) {
      const owner = this.owners[i] as DeadlineOwner;
      if (owner.deadlineAt !== this.at[i] || seen.has(owner)) continue;
      seen.add(owner);
      entries.push([owner.deadlineAt, owner]);
    }
    this.at.length = 0;
    this.owners.length = 0;
    for (const [t, o] of entries) this.push(t, o);
    this.live = entries.length;
    this.armedFor = Infinity; // re-armed by the caller for the (possibly new) first entry
  }
}
