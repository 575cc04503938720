CREATE TABLE `build_files` (
	`build_id` integer NOT NULL,
	`path` text NOT NULL,
	`repository_id` integer NOT NULL,
	`sha256` text NOT NULL,
	`size` integer NOT NULL,
	`content_type` text NOT NULL,
	PRIMARY KEY(`build_id`, `path`),
	FOREIGN KEY (`build_id`) REFERENCES `builds`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `build_files_object` ON `build_files` (`repository_id`,`sha256`);