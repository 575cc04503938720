/** Polls until `check` holds (work done after an answer, retries after backoff); fails after `ms`. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('not reached in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}
