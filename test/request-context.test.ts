/** The request id in every log line of a request, and nothing else carried from one line to the next. */
import { pino } from 'pino';
import { requestLogFields, runInRequest } from '../src/request-context.js';

test("a line's own fields do not leak into the later lines of the same request (pino merges into the mixin's object)", () => {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug', mixin: requestLogFields }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  runInRequest('request-0001', () => {
    log.warn({ err: 'GitHub answered 502', job: 'feedback' }, 'will retry');
    log.info('request');
  });
  log.info('outside');
  expect(lines[0]).toMatchObject({ requestId: 'request-0001', err: 'GitHub answered 502', job: 'feedback' });
  expect(lines[1]).toMatchObject({ requestId: 'request-0001', msg: 'request' });
  expect(lines[1]).not.toHaveProperty('err');
  expect(lines[1]).not.toHaveProperty('job');
  expect(lines[2]).not.toHaveProperty('requestId');
});
