ALTER TABLE `builds` ADD `deployment_id` integer;--> statement-breakpoint
ALTER TABLE `pull_requests` ADD `comment_id` integer;--> statement-breakpoint
ALTER TABLE `repositories` ADD `uninstalled_at` integer;