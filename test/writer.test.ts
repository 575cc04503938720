/**
 * The writer thread that hashes and writes the small files of uploads (issue 15, figure 1): what it makes on
 * disk is what the main thread made before — read-only new files, links to stored objects and to same-content
 * files of one build, the filesystem's errors with their codes — and a stopped thread is replaced.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileWriter, LINKED, NOT_LINKED } from '../src/builds/writer.js';

const hashOf = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');

let dir: string;
let objectsDir: string;
let writer: FileWriter;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'preview-gate-writer-'));
  objectsDir = path.join(dir, 'objects');
  fs.mkdirSync(path.join(dir, 'build'));
  writer = new FileWriter();
});
afterEach(async () => {
  await writer.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a new content becomes a read-only file with its sha256; a slice of a larger buffer is written alone', async () => {
  const chunk = Buffer.from('xxxx<h1>hello</h1>yyyy');
  const page = chunk.subarray(4, 18);
  const build = writer.newBuild();
  const written = await writer.write(build, path.join(dir, 'build', 'index.html'), page, objectsDir);
  expect(written).toEqual({ hash: hashOf(page), linked: false });
  const file = path.join(dir, 'build', 'index.html');
  expect(fs.readFileSync(file, 'utf8')).toBe('<h1>hello</h1>');
  expect(fs.statSync(file).mode & 0o777).toBe(0o444);
});

test('a content the repository stores is linked to its object; two files of one build with one content are one inode', async () => {
  const css = Buffer.from('body { color: teal }');
  const object = path.join(objectsDir, hashOf(css).slice(0, 2), hashOf(css));
  fs.mkdirSync(path.dirname(object), { recursive: true });
  fs.writeFileSync(object, css, { mode: 0o444 });
  const page = Buffer.from('<p>same page twice</p>');
  const build = writer.newBuild();
  const target = (name: string) => path.join(dir, 'build', name);
  const [stored, first, second] = await Promise.all([
    writer.write(build, target('site.css'), css, objectsDir),
    writer.write(build, target('a.html'), page, objectsDir),
    writer.write(build, target('b.html'), page, objectsDir),
  ]);
  expect(stored.linked).toBe(true);
  expect(fs.statSync(target('site.css')).ino).toBe(fs.statSync(object).ino);
  expect([first.linked, second.linked]).toEqual([false, true]);
  expect(fs.statSync(target('b.html')).ino).toBe(fs.statSync(target('a.html')).ino);

  // Another build does not link to the first one's staging files: it writes its own.
  fs.mkdirSync(path.join(dir, 'build2'));
  const other = await writer.write(writer.newBuild(), path.join(dir, 'build2', 'a.html'), page, objectsDir);
  expect(other.linked).toBe(false);
});

test('a link job links stored contents into new folders, from the first file while the caller takes the last; a later write replaces a link', async () => {
  const contents = Array.from({ length: 40 }, (_, i) => Buffer.from(`<p>page ${i}</p>`));
  for (const content of contents.slice(0, 39)) {
    const object = path.join(objectsDir, hashOf(content).slice(0, 2), hashOf(content));
    fs.mkdirSync(path.dirname(object), { recursive: true });
    fs.writeFileSync(object, content, { mode: 0o444 });
  }
  // The last content is not stored: not linked.
  const files = contents.map((c, i): [string, string] => [hashOf(c), path.join(dir, 'build', `part-${i % 4}`, `page-${i}.html`)]);
  const tickets = new Int32Array(new SharedArrayBuffer(4));
  const outcome = new Uint8Array(new SharedArrayBuffer(files.length));
  Atomics.store(tickets, 0, 5); // the caller took the last five already (and did nothing with them here)
  await writer.link({ files, objectsDir, tickets, outcome });
  expect([...outcome.subarray(0, 35)].every((o) => o === LINKED)).toBe(true);
  expect([...outcome.subarray(35)]).toEqual([0, 0, 0, 0, 0]);
  expect(fs.readFileSync(files[7]![1], 'utf8')).toBe('<p>page 7</p>');
  expect(fs.existsSync(files[36]![1])).toBe(false);

  const all = new Int32Array(new SharedArrayBuffer(4));
  fs.rmSync(path.join(dir, 'build'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'build'));
  outcome.fill(0);
  await writer.link({ files, objectsDir, tickets: all, outcome });
  expect(outcome[39]).toBe(NOT_LINKED);
  expect(outcome.filter((o) => o === LINKED)).toHaveLength(39);

  // A write sent after the link job, told to replace, puts the sent file where the link was.
  const sent = Buffer.from('<p>sent anyway</p>');
  const written = await writer.write(writer.newBuild(), files[3]![1], sent, objectsDir, true);
  expect(written.linked).toBe(false);
  expect(fs.readFileSync(files[3]![1], 'utf8')).toBe('<p>sent anyway</p>');
});

test('the filesystem refusing a file rejects with its code, and nothing is written through an existing name', async () => {
  const build = writer.newBuild();
  const target = path.join(dir, 'build', 'index.html');
  await writer.write(build, target, Buffer.from('first'), objectsDir);
  await expect(writer.write(build, target, Buffer.from('second'), objectsDir)).rejects.toMatchObject({ code: 'EEXIST' });
  expect(fs.readFileSync(target, 'utf8')).toBe('first');
  await expect(writer.write(build, path.join(dir, 'no-such-folder', 'x.html'), Buffer.from('x'), objectsDir)).rejects.toMatchObject({ code: 'ENOENT' });
});

test('a stopped writer thread is replaced at the next write', async () => {
  const build = writer.newBuild();
  await writer.write(build, path.join(dir, 'build', 'one.html'), Buffer.from('one'), objectsDir);
  await writer.stop();
  const again = await writer.write(build, path.join(dir, 'build', 'two.html'), Buffer.from('two'), objectsDir);
  expect(again.linked).toBe(false);
  expect(fs.readFileSync(path.join(dir, 'build', 'two.html'), 'utf8')).toBe('two');
});

test('the thread keeps a process alive while a write is in flight, and not once it is done', async () => {
  // The compiled module, in a process of its own that has nothing else to wait for: a thread that never let go
  // would make it hang here; one that did not hold it during the write would end it early (exit code 13).
  const writerModule = path.resolve('dist/src/builds/writer.js');
  const script = `
    const { FileWriter } = await import(${JSON.stringify(writerModule)});
    const writer = new FileWriter();
    const written = await writer.write(writer.newBuild(), ${JSON.stringify(path.join(dir, 'build', 'alone.html'))}, Buffer.from('alone'), ${JSON.stringify(objectsDir)});
    console.log(written.hash);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk));
  let timer: NodeJS.Timeout | undefined;
  const exited = await Promise.race([
    new Promise<number | null>((resolve) => child.once('exit', resolve)),
    new Promise<'still running'>((resolve) => (timer = setTimeout(() => resolve('still running'), 10_000))),
  ]);
  clearTimeout(timer);
  child.kill();
  expect(exited).toBe(0);
  expect(out.trim()).toBe(hashOf(Buffer.from('alone')));
});

test('an idle thread is ended (its memory given back) and the next write starts another', async () => {
  const quick = new FileWriter(100);
  try {
    const build = quick.newBuild();
    await quick.write(build, path.join(dir, 'build', 'first.html'), Buffer.from('first'), objectsDir);
    expect(quick.running).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(quick.running).toBe(false);
    await quick.write(build, path.join(dir, 'build', 'second.html'), Buffer.from('second'), objectsDir);
    expect(fs.readFileSync(path.join(dir, 'build', 'second.html'), 'utf8')).toBe('second');
  } finally {
    await quick.stop();
  }
});
