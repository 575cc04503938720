/**
 * GitHub's checks of an app manifest posted to /settings/apps/new, as documented (docs.github.com: "Registering a
 * GitHub App from a manifest", "Webhook events and payloads" — each event's "Availability" and the permission an app
 * needs to subscribe to it) and as GitHub words its refusals:
 *   "Default events unsupported: installation_repositories"
 *   "Default events are not supported by permissions: membership"
 * installation, installation_repositories and installation_target reach every app without a subscription, so
 * GitHub refuses them in default_events; every other event needs at least read access to the permission below.
 */

/** Events delivered to every GitHub App; they cannot be listed in default_events. */
export const UNSUBSCRIBABLE_EVENTS = ['installation', 'installation_repositories', 'installation_target', 'github_app_authorization'];

/** Webhook event → the manifest permission(s), any one of which lets an app subscribe to it. */
export const EVENT_PERMISSIONS: Record<string, string[]> = {
  branch_protection_rule: ['administration'],
  check_run: ['checks'],
  check_suite: ['checks'],
  code_scanning_alert: ['security_events'],
  commit_comment: ['contents'],
  create: ['contents'],
  delete: ['contents'],
  deployment: ['deployments'],
  deployment_status: ['deployments'],
  discussion: ['discussions'],
  discussion_comment: ['discussions'],
  fork: ['contents'],
  gollum: ['contents'],
  issue_comment: ['issues', 'pull_requests'],
  issues: ['issues'],
  label: ['metadata'],
  member: ['members'],
  membership: ['members'],
  merge_group: ['merge_queues'],
  meta: ['metadata'],
  milestone: ['issues', 'pull_requests'],
  org_block: ['organization_user_blocking'],
  organization: ['members'],
  package: ['packages'],
  page_build: ['pages'],
  project: ['organization_projects', 'repository_projects'],
  public: ['metadata'],
  pull_request: ['pull_requests'],
  pull_request_review: ['pull_requests'],
  pull_request_review_comment: ['pull_requests'],
  pull_request_review_thread: ['pull_requests'],
  push: ['contents'],
  registry_package: ['packages'],
  release: ['contents'],
  repository: ['metadata'],
  repository_dispatch: ['contents'],
  secret_scanning_alert: ['secret_scanning_alerts'],
  star: ['metadata'],
  status: ['statuses'],
  team: ['members'],
  team_add: ['members'],
  watch: ['metadata'],
  workflow_dispatch: ['contents'],
  workflow_job: ['actions'],
  workflow_run: ['actions'],
};

const ACCESS = ['read', 'write', 'admin'];

/** GitHub's refusal of `manifest`, word for word, or undefined when GitHub would register it. */
export function manifestError(manifest: Record<string, unknown>): string | undefined {
  const events = (manifest.default_events ?? []) as string[];
  const permissions = (manifest.default_permissions ?? {}) as Record<string, string>;
  if (!Array.isArray(events) || events.some((e) => typeof e !== 'string')) return 'Default events must be a list of event names';
  for (const [name, access] of Object.entries(permissions)) {
    if (!ACCESS.includes(access)) return `Default permissions ${name} must be one of read, write, admin`;
  }
  const unsupported = events.filter((e) => UNSUBSCRIBABLE_EVENTS.includes(e) || !(e in EVENT_PERMISSIONS));
  if (unsupported.length) return `Default events unsupported: ${unsupported.join(', ')}`;
  const uncovered = events.filter((e) => !EVENT_PERMISSIONS[e]!.some((p) => p in permissions));
  if (uncovered.length) return `Default events are not supported by permissions: ${uncovered.join(', ')}`;
  return undefined;
}
