import { z } from 'zod';

/** `.github/preview-gate.yml` on the default branch, with the SPEC defaults. */
export const settingsSchema = z.object({
  // Host labels are at most 63 characters and `pr<N>-<sha7>--` takes up to 22 of them.
  site: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/, 'site must be a lower-case DNS label of at most 40 characters')
    .optional(),
  trustedLabel: z.string().min(1).default('safe for preview'),
  trustedTeams: z.array(z.string().min(1)).default([]),
  comment: z.boolean().default(true),
  labelTrustsNewCommits: z.boolean().default(true),
  // Pull mode (fork PRs): the workflow file whose successful pull_request runs hold the preview artifact.
  workflow: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+\.ya?ml$/, 'workflow must be the file name of a workflow in .github/workflows, like preview.yml')
    .optional(),
  artifact: z.string().min(1).default('preview'),
});
export type RepoSettings = z.infer<typeof settingsSchema>;

export interface TrustFacts {
  /** A closed PR is never public, whatever vouched for it. */
  state?: 'open' | 'closed';
  labels: string[];
  /** The first trusted team (slug) in which the author is an active member, if any was found. */
  authorTrustedTeam?: string;
}

export interface TrustDecision {
  trusted: boolean;
  reason: string;
}

/** The one trust rule: an open PR with the trusted label, or whose author is an active member of a trusted team. */
export function decideTrust(facts: TrustFacts, settings: RepoSettings): TrustDecision {
  if (facts.state === 'closed') return { trusted: false, reason: 'the pull request is closed' };
  if (facts.labels.includes(settings.trustedLabel)) {
    return { trusted: true, reason: `the pull request is labelled '${settings.trustedLabel}'` };
  }
  if (facts.authorTrustedTeam) {
    return { trusted: true, reason: `the author is a member of the trusted team '${facts.authorTrustedTeam}'` };
  }
  return { trusted: false, reason: `waiting for the '${settings.trustedLabel}' label` };
}

/** A DNS label from a repository name: the default site. */
export function defaultSite(repoName: string): string {
  const label = repoName
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+/, '')
    .slice(0, 40)
    .replace(/-+$/, '');
  return label || 'site';
}

/**
 * `owner/name` in GitHub's alphabets: owners are letters, digits and single inner hyphens (≤ 39 characters);
 * repository names add `.` and `_` (≤ 100, not `.` or `..`).
 */
export function isGitHubRepositoryName(fullName: string): boolean {
  return /^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}\/(?!\.\.?$)[A-Za-z0-9._-]{1,100}$/.test(fullName);
}
