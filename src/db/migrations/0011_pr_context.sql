ALTER TABLE `pull_requests` ADD `title` text;--> statement-breakpoint
ALTER TABLE `pull_requests` ADD `head_ref` text;--> statement-breakpoint
ALTER TABLE `pull_requests` ADD `fork` integer;--> statement-breakpoint
ALTER TABLE `pull_requests` ADD `author_avatar_url` text;