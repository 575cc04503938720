#!/usr/bin/env node
// `npm run docs:config`: rewrites docs/operations.md's configuration table from the config schema.
import { writeConfigTable } from '../dist/src/config-docs.js';

const file = new URL('../docs/operations.md', import.meta.url).pathname;
console.log(writeConfigTable(file) ? `updated the configuration table of ${file}` : `${file} is up to date`);
