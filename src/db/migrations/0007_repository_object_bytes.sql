ALTER TABLE `repositories` ADD `object_bytes` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
-- What the objects already stored add up to, per repository (the counter is kept from here on).
UPDATE `repositories` SET `object_bytes` = (SELECT coalesce(sum(`size`), 0) FROM `objects` WHERE `objects`.`repository_id` = `repositories`.`id`);
