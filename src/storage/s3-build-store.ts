import path from 'node:path';
import { BuildStore, type Visibility } from '../builds/store.js';
import type { S3Builds } from './s3-builds.js';

/**
 * The builds folder when builds are kept in a bucket (`STORAGE=s3`): only its staging is used (local scratch,
 * where an upload is extracted before its new files are put); nothing is published, renamed or linked on disk.
 * A build is its `build_files` rows, a PR's visibility is its row, a site is the repository's row.
 */
export class S3BuildStore extends BuildStore {
  constructor(
    buildsDir: string,
    private readonly s3: S3Builds,
    owner?: string,
  ) {
    // An objects folder that stays empty: every file an upload holds is extracted as its own (new) file.
    super(buildsDir, path.join(buildsDir, '.no-objects'), owner);
  }

  override get bucket(): S3Builds {
    return this.s3;
  }

  override init(): string | undefined {
    super.init();
    return undefined;
  }

  override async publish(): Promise<string> {
    throw new Error('STORAGE=s3: a build is published by its rows, not by a folder');
  }

  override async setVisibility(_site: string, _pr: number, _from: Visibility, _to: Visibility): Promise<boolean> {
    return false; // the PR's row is the truth
  }

  override async repairBothFolders(): Promise<void> {}

  override async moveSite(): Promise<void> {} // the repository's row names the site

  override buildDirs(): string[] {
    return [];
  }

  override hasSiteFolder(): boolean {
    return false;
  }

  override hasPrFolder(): boolean {
    return false;
  }

  override async removePr(): Promise<void> {} // the build rows go, and their build_files rows with them

  /** Staging is writable and the bucket answers (HeadBucket). */
  override async check(): Promise<void> {
    await super.check();
    await this.s3.check();
  }
}
