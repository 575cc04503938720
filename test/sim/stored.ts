/**
 * What the replicas stored, read the way each storage keeps it: on the filesystem, folders under DATA_DIR/builds
 * (`<pr>` public, `hidden--<pr>` hidden, one `<sha7>` folder per build); with STORAGE=s3, rows in PostgreSQL
 * (pull_requests.visibility, builds, build_files, objects) and objects in the bucket. The simulation's invariants
 * ask the same questions of both.
 */
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { S3Objects, type StoredObject } from '../../src/storage/s3-objects.js';
import type { S3Settings } from '../../src/config.js';

export type StoredVisibility = 'public' | 'hidden' | 'gone' | 'both';

export interface Stored {
  /** Where the PR's builds are: public, hidden, neither (gone) or both. */
  visibility(pr: number): Promise<StoredVisibility>;
  /** How many builds of this commit are stored for the PR (public and hidden together). */
  buildCount(pr: number, sha: string): Promise<number>;
  /** The stored index.html of the PR's build of this commit ('' when there is none). */
  indexHtml(pr: number, sha: string): Promise<string>;
  close(): Promise<void>;
}

/** The filesystem layout: `<builds>/<site>/<pr>/<sha7>` public, `<builds>/<site>/hidden--<pr>/<sha7>` hidden. */
export class StoredFolders implements Stored {
  constructor(private readonly siteDir: string) {}

  async visibility(pr: number): Promise<StoredVisibility> {
    const pub = fs.existsSync(path.join(this.siteDir, String(pr)));
    const hidden = fs.existsSync(path.join(this.siteDir, `hidden--${pr}`));
    return pub && hidden ? 'both' : pub ? 'public' : hidden ? 'hidden' : 'gone';
  }

  private folders(pr: number, sha: string): string[] {
    return [String(pr), `hidden--${pr}`].map((f) => path.join(this.siteDir, f, sha.slice(0, 7))).filter((d) => fs.existsSync(d));
  }

  async buildCount(pr: number, sha: string): Promise<number> {
    return this.folders(pr, sha).length;
  }

  async indexHtml(pr: number, sha: string): Promise<string> {
    const [dir] = this.folders(pr, sha);
    const file = dir && path.join(dir, 'index.html');
    return file && fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  }

  async close(): Promise<void> {}
}

/** A build_files row's object: what must be in the bucket, with its size. */
export interface ReferencedObject {
  repositoryId: number;
  sha256: string;
  size: number;
  /** One build and path referencing it (for the violation's text). */
  example: string;
}

/** STORAGE=s3: the rows in PostgreSQL and the objects in the bucket. */
export class StoredRows implements Stored {
  readonly bucket: S3Objects;
  private readonly db: pg.Pool;

  constructor(
    databaseUrl: string,
    s3: S3Settings,
    private readonly repository: string,
  ) {
    this.db = new pg.Pool({ connectionString: databaseUrl, max: 2 });
    this.bucket = S3Objects.fromSettings(s3);
  }

  private async rows<T>(text: string, values: unknown[] = []): Promise<T[]> {
    return (await this.db.query(text, values)).rows as T[];
  }

  /** The ready builds of one commit of the PR (an upload's pending claim is no build yet). */
  private readyBuilds(pr: number, sha: string): Promise<{ id: number }[]> {
    return this.rows(
      `SELECT b.id FROM builds b JOIN pull_requests p ON p.id = b.pull_request_id JOIN repositories r ON r.id = p.repository_id
       WHERE lower(r.full_name) = lower($1) AND p.number = $2 AND b.sha = $3 AND b.status = 'ready'`,
      [this.repository, pr, sha],
    );
  }

  async visibility(pr: number): Promise<StoredVisibility> {
    const [row] = await this.rows<{ visibility: 'public' | 'hidden'; ready: string }>(
      `SELECT p.visibility, (SELECT count(*) FROM builds b WHERE b.pull_request_id = p.id AND b.status = 'ready') AS ready
       FROM pull_requests p JOIN repositories r ON r.id = p.repository_id WHERE lower(r.full_name) = lower($1) AND p.number = $2`,
      [this.repository, pr],
    );
    return !row || Number(row.ready) === 0 ? 'gone' : row.visibility;
  }

  async buildCount(pr: number, sha: string): Promise<number> {
    return (await this.readyBuilds(pr, sha)).length;
  }

  async indexHtml(pr: number, sha: string): Promise<string> {
    const [build] = await this.readyBuilds(pr, sha);
    if (!build) return '';
    const [file] = await this.rows<{ repository_id: number; sha256: string }>(`SELECT repository_id, sha256 FROM build_files WHERE build_id = $1 AND path = 'index.html'`, [build.id]);
    if (!file) return '';
    const body = await this.bucket.get(Number(file.repository_id), file.sha256);
    if (!body) return '';
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  }

  /** The replica holding the pending claim of the PR's upload of this commit, once one does. */
  async claimOwner(pr: number, sha: string): Promise<string | undefined> {
    const [row] = await this.rows<{ claim_owner: string | null }>(
      `SELECT b.claim_owner FROM builds b JOIN pull_requests p ON p.id = b.pull_request_id JOIN repositories r ON r.id = p.repository_id
       WHERE lower(r.full_name) = lower($1) AND p.number = $2 AND b.sha = $3 AND b.status = 'pending'`,
      [this.repository, pr, sha],
    );
    return row?.claim_owner ?? undefined;
  }

  async repositoryId(): Promise<number> {
    const [row] = await this.rows<{ id: number }>(`SELECT id FROM repositories WHERE lower(full_name) = lower($1)`, [this.repository]);
    if (!row) throw new Error(`no repositories row for ${this.repository}`);
    return Number(row.id);
  }

  /** Every object of every build_files row (each distinct object once). */
  async referencedObjects(): Promise<ReferencedObject[]> {
    const rows = await this.rows<{ repository_id: number; sha256: string; size: string; build_id: number; path: string }>(
      `SELECT DISTINCT ON (repository_id, sha256) repository_id, sha256, size, build_id, path FROM build_files ORDER BY repository_id, sha256, build_id`,
    );
    return rows.map((r) => ({ repositoryId: Number(r.repository_id), sha256: r.sha256, size: Number(r.size), example: `build ${r.build_id} ${r.path}` }));
  }

  /** Every `objects` row. */
  async objectRows(): Promise<StoredObject[]> {
    const rows = await this.rows<{ repository_id: number; sha256: string; size: string }>(`SELECT repository_id, sha256, size FROM objects`);
    return rows.map((r) => ({ repositoryId: Number(r.repository_id), sha256: r.sha256, size: Number(r.size) }));
  }

  /** Every object in the bucket, by key `<repository id>/<sha256>`. */
  async bucketObjects(): Promise<Map<string, StoredObject>> {
    const found = new Map<string, StoredObject>();
    for await (const o of this.bucket.list()) found.set(objectId(o), o);
    return found;
  }

  async close(): Promise<void> {
    this.bucket.close();
    await this.db.end();
  }
}

export const objectId = (o: { repositoryId: number; sha256: string }) => `${o.repositoryId}/${o.sha256}`;

/** Regular files under a folder (recursively); none when it does not exist. */
export function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}
