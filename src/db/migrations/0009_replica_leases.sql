CREATE TABLE `replicas` (
	`id` text PRIMARY KEY NOT NULL,
	`host` text NOT NULL,
	`pid` integer NOT NULL,
	`heartbeat_at` integer NOT NULL,
	`stopped_at` integer,
	`created_at` integer DEFAULT (unixepoch('subsec') * 1000) NOT NULL
);
--> statement-breakpoint
CREATE TABLE `schedules` (
	`name` text PRIMARY KEY NOT NULL,
	`next_run_at` integer NOT NULL,
	`lease_owner` text,
	`lease_until` integer,
	`last_run_at` integer
);
--> statement-breakpoint
ALTER TABLE `builds` ADD `claim_owner` text;--> statement-breakpoint
ALTER TABLE `builds` ADD `claim_expires_at` integer;--> statement-breakpoint
ALTER TABLE `jobs` ADD `lease_owner` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `lease_until` integer;