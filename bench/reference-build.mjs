// A seeded reference build: 3,000 files, ~75 MB raw, ~40 MB gzipped, text and incompressible binary.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';

/** Deterministic bytes: AES-256-CTR keystream of a seed (incompressible, same every run). */
function seededBytes(seed, length) {
  const key = crypto.createHash('sha256').update(`preview-gate-bench:${seed}`).digest();
  const cipher = crypto.createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return cipher.update(Buffer.alloc(length));
}

export function makeReferenceBuild(dir, { files = 3000, binaryShare = 1 / 3, seed = '' } = {}) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const words = seededBytes(`${seed}words`, 4096).toString('base64').match(/.{1,7}/g);
  let raw = 0;
  for (let i = 0; i < files; i++) {
    const folder = path.join(dir, `section-${i % 40}`, `part-${i % 7}`);
    fs.mkdirSync(folder, { recursive: true });
    let body;
    if (i < files * binaryShare) {
      body = seededBytes(`${seed}bin-${i}`, 37_000);
      fs.writeFileSync(path.join(folder, `asset-${i}.bin`), body);
    } else {
      const n = 2600;
      const text = Array.from({ length: n }, (_, k) => words[(i * 31 + k * 17) % words.length]).join(' ');
      body = Buffer.from(`<!doctype html><title>page ${i}</title><p>${text}</p>\n`);
      fs.writeFileSync(path.join(folder, `page-${i}.html`), body);
    }
    raw += body.length;
  }
  fs.writeFileSync(path.join(dir, 'index.html'), '<h1>reference build</h1>');
  return raw;
}

/** GNU tar + gzip of a folder, as CI makes it. */
export function packReferenceBuild(dir, archive) {
  execFileSync('tar', ['-czf', archive, '-C', dir, '.']);
  return fs.statSync(archive).size;
}
