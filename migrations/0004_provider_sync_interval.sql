-- How often an auto-sync group's provider is synced (R-8.3), in seconds: default 5 minutes,
-- at least 30 (checked by the service). Never edit this file after it lands.

ALTER TABLE secret_providers ADD COLUMN sync_interval_s INTEGER NOT NULL DEFAULT 300;
