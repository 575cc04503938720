/**
 * Runs tasks one after another per key (e.g. one pull request), so an upload and a webhook for the same PR
 * can never interleave their renames. In-process: preview-gate is one Node process per data directory.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    const result = previous.then(task, task);
    const tail = result.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return result;
  }
}

/**
 * Shared/exclusive holds per key (e.g. one repository): any number of shared holders at once (its PRs'
 * uploads and decisions), or one exclusive holder (moving the repository's site folder). A waiting exclusive
 * holder goes before shared holders that come after it, so a busy repository cannot starve it.
 */
export class SharedLock {
  private readonly state = new Map<string, { shared: number; exclusive: boolean; waiting: { exclusive: boolean; go: () => void }[] }>();

  shared<T>(key: string, task: () => Promise<T>): Promise<T> {
    return this.hold(key, false, task);
  }

  exclusive<T>(key: string, task: () => Promise<T>): Promise<T> {
    return this.hold(key, true, task);
  }

  private async hold<T>(key: string, exclusive: boolean, task: () => Promise<T>): Promise<T> {
    let s = this.state.get(key);
    if (!s) this.state.set(key, (s = { shared: 0, exclusive: false, waiting: [] }));
    const state = s;
    const free = exclusive ? !state.exclusive && state.shared === 0 && !state.waiting.length : !state.exclusive && !state.waiting.some((w) => w.exclusive);
    if (free) this.take(state, exclusive);
    else await new Promise<void>((go) => state.waiting.push({ exclusive, go: () => (this.take(state, exclusive), go()) }));
    try {
      return await task();
    } finally {
      if (exclusive) state.exclusive = false;
      else state.shared--;
      this.admit(key, state);
    }
  }

  private take(state: { shared: number; exclusive: boolean }, exclusive: boolean): void {
    if (exclusive) state.exclusive = true;
    else state.shared++;
  }

  /** Lets in the next exclusive holder, or every shared holder up to the next exclusive one. */
  private admit(key: string, state: { shared: number; exclusive: boolean; waiting: { exclusive: boolean; go: () => void }[] }): void {
    while (state.waiting.length && !state.exclusive) {
      const next = state.waiting[0]!;
      if (next.exclusive && state.shared > 0) break;
      state.waiting.shift();
      next.go();
      if (next.exclusive) break;
    }
    if (!state.shared && !state.exclusive && !state.waiting.length) this.state.delete(key);
  }
}
