// `cookie` 0.7 (express's own cookie parser) ships no types and @types/cookie is not installed: the one function used.
declare module 'cookie' {
  /** Name → value; a value whose %-escapes do not decode is returned as sent (never thrown). */
  export function parse(header: string, options?: { decode?: (value: string) => string }): Record<string, string | undefined>;
}
