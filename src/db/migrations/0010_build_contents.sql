CREATE TABLE `build_contents` (
	`build_id` integer PRIMARY KEY NOT NULL,
	`paths` blob NOT NULL,
	`hashes` blob NOT NULL,
	FOREIGN KEY (`build_id`) REFERENCES `builds`(`id`) ON UPDATE no action ON DELETE cascade
);
