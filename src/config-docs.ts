/** docs/operations.md's configuration table, generated from the config schema (`npm run docs:config`). */
import fs from 'node:fs';
import { configSchema } from './config.js';

export const TABLE_START = '<!-- config-table:start -->';
export const TABLE_END = '<!-- config-table:end -->';

const cell = (text: string) => text.replace(/\|/g, '\\|').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** One row per variable: name, default (as the schema applies it), description. */
export function renderConfigTable(): string {
  const rows = Object.entries(configSchema.shape).map(([name, field]) => {
    const parsed = field.safeParse(undefined);
    const fallback = parsed.success && parsed.data !== undefined ? `\`${String(parsed.data)}\`` : '(unset)';
    return `| \`${name}\` | ${fallback} | ${cell(field.description ?? '')} |`;
  });
  return ['| Variable | Default | What it does |', '| --- | --- | --- |', ...rows].join('\n');
}

/** Rewrites the table between the markers of `file`; returns whether anything changed. */
export function writeConfigTable(file: string): boolean {
  const text = fs.readFileSync(file, 'utf8');
  const start = text.indexOf(TABLE_START);
  const end = text.indexOf(TABLE_END);
  if (start < 0 || end < start) throw new Error(`${file} has no ${TABLE_START} … ${TABLE_END} markers`);
  const next = `${text.slice(0, start)}${TABLE_START}\n${renderConfigTable()}\n${text.slice(end)}`;
  if (next === text) return false;
  fs.writeFileSync(file, next);
  return true;
}
