-- A change counter for environment resolution (issue 11).
--
-- change_counters (new): one row per counted subject. 'environment' is bumped, in the same
-- transaction, by every change to a row that environment resolution reads: variables,
-- secrets (values, names, groups), groups, and the name of an application. The control plane
-- caches each application's resolution *structure* (which rows, which ciphertexts — never a
-- plaintext secret) with the counter value it was read at, and reuses it while one read of
-- the counter returns the same value. Triggers, not application code, keep the counter, so
-- no write path (API, import, provider sync, key rewrap, restore) can forget it.
-- Never edit this file after it lands.
CREATE TABLE change_counters (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO change_counters (name, value) VALUES ('environment', 0);

CREATE TRIGGER environment_variables_counted_insert AFTER INSERT ON environment_variables
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER environment_variables_counted_update AFTER UPDATE ON environment_variables
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER environment_variables_counted_delete AFTER DELETE ON environment_variables
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;

CREATE TRIGGER secrets_counted_insert AFTER INSERT ON secrets
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER secrets_counted_update AFTER UPDATE ON secrets
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER secrets_counted_delete AFTER DELETE ON secrets
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;

CREATE TRIGGER secret_groups_counted_insert AFTER INSERT ON secret_groups
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER secret_groups_counted_update AFTER UPDATE ON secret_groups
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER secret_groups_counted_delete AFTER DELETE ON secret_groups
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;

CREATE TRIGGER applications_counted_rename AFTER UPDATE OF name ON applications
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
CREATE TRIGGER applications_counted_delete AFTER DELETE ON applications
BEGIN UPDATE change_counters SET value = value + 1 WHERE name = 'environment'; END;
