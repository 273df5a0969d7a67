-- One deployment per application at a time (issue 14): two new states of deployment_logs,
--   * queued     — waiting for the application's running deployment; not finished;
--   * superseded — a newer deployment of the application replaced it before it ran (or
--                  cancelled it); finished, with `superseded_by` the newer deployment's id.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt (the documented
-- procedure). Store::open runs migrations with foreign keys off (and checks them after), so
-- dropping the old table does not cascade to deployment_targets and deployment_events.
-- Never edit this file after it lands.
CREATE TABLE deployment_logs_new (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  application_id INTEGER NOT NULL,
  version TEXT NOT NULL,
  deployment_id TEXT NOT NULL UNIQUE,
  trigger_type TEXT NOT NULL CHECK(trigger_type IN ('manual', 'webhook', 'api', 'scheduled', 'registry')),
  trigger_source TEXT,
  status TEXT NOT NULL CHECK(status IN ('pending', 'running', 'success', 'failed', 'rolled_back', 'queued', 'superseded')),
  error_message TEXT,
  started_at TEXT NOT NULL DEFAULT (datetime('now')),
  completed_at TEXT,
  duration_ms INTEGER,
  superseded_by TEXT,                            -- addition: the deployment that replaced it
  FOREIGN KEY (application_id) REFERENCES applications(id) ON DELETE CASCADE
);
INSERT INTO deployment_logs_new (id, application_id, version, deployment_id, trigger_type, trigger_source,
    status, error_message, started_at, completed_at, duration_ms)
  SELECT id, application_id, version, deployment_id, trigger_type, trigger_source,
    status, error_message, started_at, completed_at, duration_ms FROM deployment_logs;
DROP TABLE deployment_logs;
ALTER TABLE deployment_logs_new RENAME TO deployment_logs;
CREATE INDEX idx_deployment_logs_application_id ON deployment_logs(application_id);
CREATE INDEX idx_deployment_logs_status ON deployment_logs(status);
CREATE INDEX idx_deployment_logs_trigger_type ON deployment_logs(trigger_type);
CREATE INDEX idx_deployment_logs_started_at ON deployment_logs(started_at);
