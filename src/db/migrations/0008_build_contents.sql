CREATE TABLE `build_contents` (
	`build_id` integer PRIMARY KEY NOT NULL,
	`files` blob NOT NULL,
	FOREIGN KEY (`build_id`) REFERENCES `builds`(`id`) ON UPDATE no action ON DELETE cascade
);
