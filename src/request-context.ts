import { AsyncLocalStorage } from 'node:async_hooks';

/** The request a piece of work was caused by: its id follows the work through awaits, timers and queued jobs started from it. */
const context = new AsyncLocalStorage<{ requestId: string }>();

export const runInRequest = <T>(requestId: string, work: () => T): T => context.run({ requestId }, work);

/**
 * pino's `mixin`: every log line written while handling a request (or work it started) carries its requestId.
 * A new object each time: pino merges the line's own fields into what the mixin returns, and the store itself
 * would then carry them into every later line of the request.
 */
export const requestLogFields = (): { requestId?: string } => {
  const store = context.getStore();
  return store ? { requestId: store.requestId } : {};
};

/** An incoming X-Request-Id is kept when it is a plain token (it ends up in logs: nothing else is trusted). */
export const WELL_FORMED_REQUEST_ID = /^[A-Za-z0-9._:-]{8,128}$/;
