/** `npm run test:replicas`: the multi-replica simulation, on its own (not part of `npm test`). */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import base from '../../jest.config.js';

export default {
  ...base,
  rootDir: path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..'),
  roots: ['<rootDir>/test/sim'],
  testMatch: ['**/*.sim.ts'],
  testTimeout: 20 * 60_000,
};
