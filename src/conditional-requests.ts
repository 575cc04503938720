/**
 * Conditional GET requests for every Octokit of the app: the ETag of each answer is kept, sent back as
 * `If-None-Match`, and a `304 Not Modified` (which GitHub does not count against the rate limit) is answered
 * from the kept copy. This is what lets the sweep re-read every open PR for free when nothing changed.
 */
type Headers = Record<string, string | number | undefined>;
interface CachedResponse {
  etag: string;
  response: { status: number; url: string; headers: Headers; data: unknown };
}
type RequestOptions = { method: string; url: string; headers: Headers; request?: { parseSuccessResponseBody?: boolean } } & Record<string, unknown>;
type RequestFn = (options: RequestOptions) => Promise<CachedResponse['response']>;
interface HookableOctokit {
  hook: { wrap(name: 'request', fn: (request: RequestFn, options: RequestOptions) => Promise<unknown>): void };
  request: { endpoint: { parse(options: RequestOptions): { url: string; headers: Headers } } };
}

/** An LRU of ETags and answers, shared by all Octokits of one process. */
export class EtagCache {
  private readonly entries = new Map<string, CachedResponse>();

  constructor(private readonly maxEntries = 5000) {}

  get(key: string): CachedResponse | undefined {
    const entry = this.entries.get(key);
    if (entry) {
      this.entries.delete(key);
      this.entries.set(key, entry);
    }
    return entry;
  }

  set(key: string, entry: CachedResponse): void {
    this.entries.delete(key);
    this.entries.set(key, entry);
    if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
  }
}

/** An Octokit plugin (`Octokit.plugin(conditionalRequests(cache))`). */
export function conditionalRequests(cache: EtagCache) {
  return (octokit: HookableOctokit) => {
    octokit.hook.wrap('request', async (request, options) => {
      // Streamed downloads (artifacts) are not cached; neither is anything but GET.
      if (options.method !== 'GET' || options.request?.parseSuccessResponseBody === false) return request(options);
      const { url, headers } = octokit.request.endpoint.parse(options);
      const key = `${headers.accept ?? ''} ${url}`;
      const cached = cache.get(key);
      if (cached) options.headers = { ...options.headers, 'if-none-match': cached.etag };
      try {
        const response = await request(options);
        const etag = response.headers.etag;
        if (typeof etag === 'string') cache.set(key, { etag, response });
        return response;
      } catch (err) {
        if (cached && (err as { status?: number }).status === 304) return cached.response;
        throw err;
      }
    });
  };
}
