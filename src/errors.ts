import type { ErrorRequestHandler } from 'express';
import type { Logger } from 'pino';

/** An error whose status and one-sentence message may be shown to the client as they are. */
export class HttpError extends Error {
  /** Headers sent with the answer (Retry-After on a 409 for an upload still being stored). */
  readonly headers?: Record<string, string>;
  constructor(
    readonly status: number,
    message: string,
    options?: { cause?: unknown; headers?: Record<string, string> },
  ) {
    super(message, options);
    this.headers = options?.headers;
    this.name = 'HttpError';
  }
}

export const badRequest = (msg: string) => new HttpError(400, msg);
export const unauthorized = (msg: string) => new HttpError(401, msg);
export const forbidden = (msg: string) => new HttpError(403, msg);
export const notFound = (msg: string) => new HttpError(404, msg);
export const conflict = (msg: string) => new HttpError(409, msg);
export const tooLarge = (msg: string) => new HttpError(413, msg);
export const unavailable = (msg: string) => new HttpError(503, msg);

/**
 * The one error → HTTP mapping. Known errors answer their status and sentence; anything else is a 500
 * with a generic sentence (the stack goes to the log, never to the client).
 */
export function errorHandler(log: Logger): ErrorRequestHandler {
  return (err, req, res, _next) => {
    const known = err instanceof HttpError ? err : fromLibraryError(err);
    if (res.headersSent) {
      // Already answered (an idle upload cut with 408): the failure that followed is the same story.
      if (!known) log.error({ err, method: req.method, path: req.path }, 'unexpected error after the answer');
      return;
    }
    if (known) {
      log.info({ status: known.status, method: req.method, path: req.path }, known.message);
      if (known.headers) res.set(known.headers);
      res.status(known.status).json({ error: known.message });
      return;
    }
    log.error({ err, method: req.method, path: req.path }, 'unexpected error');
    if (!res.headersSent) res.status(500).json({ error: 'The server failed unexpectedly; please retry later.' });
  };
}

/** Errors raised by Express / multer / body readers that have a meaning for the client. */
function fromLibraryError(err: unknown): HttpError | undefined {
  const e = err as { code?: string; type?: string; field?: string; message?: string };
  switch (e?.code) {
    case 'LIMIT_FILE_SIZE':
      return tooLarge('The upload is larger than the compressed size limit.');
    case 'LIMIT_UNEXPECTED_FILE':
      return badRequest(`Unexpected multipart field "${e.field}"; send the archive in the field "artifact".`);
    case 'LIMIT_FILE_COUNT':
    case 'LIMIT_PART_COUNT':
    case 'LIMIT_FIELD_COUNT':
      return badRequest('The multipart body has too many parts; send one file field "artifact".');
  }
  if (e?.type === 'entity.parse.failed') return badRequest('The request body is not valid.');
  if (e?.message === 'Unexpected end of form' || e?.message === 'Multipart: Boundary not found') {
    return badRequest('The multipart body is malformed.');
  }
  return undefined;
}
