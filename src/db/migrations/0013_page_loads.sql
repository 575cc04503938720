ALTER TABLE `build_contents` ADD `loads` blob;--> statement-breakpoint
ALTER TABLE `objects` ADD `page_refs` blob;