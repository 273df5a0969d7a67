-- berth schema v1.
--
-- The seed's tables keep the seed's table and column names so databases of the seed system can
-- be imported. Where we differ from the seed it is said on the line:
--   * every stored token column holds a SHA-256 digest ("sha256:<hex>"), never the token;
--   * every encrypted column holds "v1:<key-id>:<nonce>:<ciphertext>" (see crypto.rs);
--   * environment_variables gets a partial unique index for global rows (NULL project_id rows
--     are all distinct under UNIQUE(scope, project_id, key) in SQLite);
--   * environment_variables.secret_id is ON DELETE RESTRICT, not SET NULL: deleting a referenced
--     secret must be an explicit, forced act (R-3.9), never a silent break of the next deploy.
-- Never edit this file after it lands: add 0002_*.sql instead.

CREATE TABLE secret_providers (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  type TEXT NOT NULL CHECK(type IN ('infisical', 'aws-secrets-manager', 'hashicorp-vault', 'azure-keyvault', 'gcp-secret-manager')),
  config TEXT NOT NULL DEFAULT '{}',             -- credentials inside are encrypted
  enabled INTEGER NOT NULL DEFAULT 1,
  auto_sync INTEGER NOT NULL DEFAULT 0,
  last_sync_at TEXT,
  last_sync_status TEXT,
  last_sync_error TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE secret_groups (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  description TEXT,
  provider_id INTEGER,
  auto_sync INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now')),
  FOREIGN KEY (provider_id) REFERENCES secret_providers(id) ON DELETE SET NULL
);
CREATE INDEX idx_secret_groups_provider_id ON secret_groups(provider_id);

CREATE TABLE secrets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL,
  group_id INTEGER NOT NULL,
  value TEXT NOT NULL,                           -- encrypted, AAD = (secrets, value, group_id, name)
  value_preview TEXT NOT NULL DEFAULT '****',    -- addition: masked preview, computed at write time
  description TEXT,
  source TEXT NOT NULL DEFAULT 'manual' CHECK(source IN ('manual', 'synced')),
  provider_id INTEGER,
  provider_reference TEXT,
  last_synced_at TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now')),
  UNIQUE(group_id, name),
  FOREIGN KEY (group_id) REFERENCES secret_groups(id) ON DELETE CASCADE,
  FOREIGN KEY (provider_id) REFERENCES secret_providers(id) ON DELETE SET NULL
);
CREATE INDEX idx_secrets_group_id ON secrets(group_id);
CREATE INDEX idx_secrets_provider_id ON secrets(provider_id);
CREATE INDEX idx_secrets_source ON secrets(source);

CREATE TABLE repositories (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  url TEXT NOT NULL,
  username TEXT,
  password TEXT,                                 -- encrypted, AAD = (repositories, password, name)
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE applications (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  image TEXT NOT NULL,
  version TEXT,
  repository_id INTEGER,
  ports TEXT NOT NULL DEFAULT '[]',
  env_vars TEXT NOT NULL DEFAULT '{}',           -- seed V1 leftover; berth uses environment_variables
  status TEXT NOT NULL DEFAULT 'stopped' CHECK(status IN ('running', 'stopped', 'error', 'deploying')),
  webhook_enabled INTEGER NOT NULL DEFAULT 1,
  webhook_token TEXT UNIQUE,                     -- digest of the token, never the token
  auto_deploy INTEGER NOT NULL DEFAULT 0,
  last_deployed_at TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now')),
  -- additions
  webhook_token_prefix TEXT,                     -- first characters, for the masked display
  health_check TEXT,                             -- JSON: {"type":"http","path":"/","port":80,"timeout_s":30}
  restart_policy TEXT NOT NULL DEFAULT 'unless-stopped',
  deploy_batch_size INTEGER NOT NULL DEFAULT 1 CHECK(deploy_batch_size >= 1),
  command TEXT,                                  -- JSON array overriding the image's CMD
  FOREIGN KEY (repository_id) REFERENCES repositories(id) ON DELETE SET NULL
);
CREATE INDEX idx_applications_webhook_token ON applications(webhook_token);
CREATE INDEX idx_applications_webhook_enabled ON applications(webhook_enabled);

CREATE TABLE environment_variables (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  scope TEXT NOT NULL CHECK(scope IN ('global', 'project')),
  project_id INTEGER,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  value_type TEXT NOT NULL DEFAULT 'plain' CHECK(value_type IN ('plain', 'secret_ref', 'group_ref')),
  secret_id INTEGER,
  description TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  updated_at TEXT NOT NULL DEFAULT (datetime('now')),
  UNIQUE(scope, project_id, key),
  CHECK((scope = 'global') = (project_id IS NULL)),
  CHECK((value_type = 'secret_ref') = (secret_id IS NOT NULL)),
  FOREIGN KEY (project_id) REFERENCES applications(id) ON DELETE CASCADE,
  FOREIGN KEY (secret_id) REFERENCES secrets(id) ON DELETE RESTRICT
);
CREATE UNIQUE INDEX idx_environment_variables_global_key ON environment_variables(key) WHERE scope = 'global';
CREATE INDEX idx_environment_variables_project_id ON environment_variables(project_id);
CREATE INDEX idx_environment_variables_scope ON environment_variables(scope);
CREATE INDEX idx_environment_variables_secret_id ON environment_variables(secret_id);
CREATE INDEX idx_environment_variables_value_type ON environment_variables(value_type);

CREATE TABLE deployment_logs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  application_id INTEGER NOT NULL,
  version TEXT NOT NULL,
  deployment_id TEXT NOT NULL UNIQUE,
  trigger_type TEXT NOT NULL CHECK(trigger_type IN ('manual', 'webhook', 'api', 'scheduled', 'registry')),
  trigger_source TEXT,
  status TEXT NOT NULL CHECK(status IN ('pending', 'running', 'success', 'failed', 'rolled_back')),
  error_message TEXT,
  started_at TEXT NOT NULL DEFAULT (datetime('now')),
  completed_at TEXT,
  duration_ms INTEGER,
  FOREIGN KEY (application_id) REFERENCES applications(id) ON DELETE CASCADE
);
CREATE INDEX idx_deployment_logs_application_id ON deployment_logs(application_id);
CREATE INDEX idx_deployment_logs_status ON deployment_logs(status);
CREATE INDEX idx_deployment_logs_trigger_type ON deployment_logs(trigger_type);
CREATE INDEX idx_deployment_logs_started_at ON deployment_logs(started_at);

CREATE TABLE domains (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  application_id INTEGER NOT NULL,
  domain TEXT NOT NULL UNIQUE,
  container_port INTEGER,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  FOREIGN KEY (application_id) REFERENCES applications(id) ON DELETE CASCADE
);

CREATE TABLE users (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  username TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL DEFAULT 'viewer',
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE api_keys (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  key_hash TEXT NOT NULL UNIQUE,                 -- digest of the key, never the key
  prefix TEXT NOT NULL,                          -- "bk_" + first characters, to find candidates
  role TEXT NOT NULL CHECK(role IN ('admin', 'deployer', 'viewer', 'webhook')),
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  last_used_at TEXT,
  revoked_at TEXT
);
CREATE INDEX idx_api_keys_prefix ON api_keys(prefix);

CREATE TABLE system_settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  updated_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE webhooks (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  url TEXT NOT NULL,
  events TEXT NOT NULL DEFAULT '["deployment.finished"]',
  secret TEXT,                                   -- encrypted HMAC signing secret
  enabled INTEGER NOT NULL DEFAULT 1,
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE image_whitelists (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  pattern TEXT NOT NULL UNIQUE,
  description TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE secret_syncs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  provider_id INTEGER NOT NULL,
  group_id INTEGER,
  status TEXT NOT NULL,
  created_count INTEGER NOT NULL DEFAULT 0,
  updated_count INTEGER NOT NULL DEFAULT 0,
  removed_count INTEGER NOT NULL DEFAULT 0,
  unchanged_count INTEGER NOT NULL DEFAULT 0,
  duration_ms INTEGER,
  error_message TEXT,
  started_at TEXT NOT NULL DEFAULT (datetime('now')),
  completed_at TEXT,
  FOREIGN KEY (provider_id) REFERENCES secret_providers(id) ON DELETE CASCADE,
  FOREIGN KEY (group_id) REFERENCES secret_groups(id) ON DELETE SET NULL
);

-- Hosts (the seed has none).

CREATE TABLE agents (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL UNIQUE,
  labels TEXT NOT NULL DEFAULT '{}',
  cert_fingerprint TEXT,
  cert_serial TEXT,
  cert_not_after TEXT,
  status TEXT NOT NULL DEFAULT 'enrolled',
  version TEXT,
  docker_version TEXT,
  last_seen_at TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  revoked_at TEXT
);

CREATE TABLE enrollment_tokens (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  token_hash TEXT NOT NULL UNIQUE,
  agent_name TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  expires_at TEXT NOT NULL,
  used_at TEXT,
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE application_targets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  application_id INTEGER NOT NULL,
  kind TEXT NOT NULL CHECK(kind IN ('agent', 'label')),
  value TEXT NOT NULL,
  UNIQUE(application_id, kind, value),
  FOREIGN KEY (application_id) REFERENCES applications(id) ON DELETE CASCADE
);

CREATE TABLE deployment_targets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  deployment_id TEXT NOT NULL,
  agent_name TEXT NOT NULL,
  status TEXT NOT NULL,
  container_id TEXT,
  error_message TEXT,
  started_at TEXT,
  completed_at TEXT,
  duration_ms INTEGER,
  UNIQUE(deployment_id, agent_name),
  FOREIGN KEY (deployment_id) REFERENCES deployment_logs(deployment_id) ON DELETE CASCADE
);

CREATE TABLE deployment_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  deployment_id TEXT NOT NULL,
  agent_name TEXT,
  phase TEXT NOT NULL,
  message TEXT NOT NULL,
  at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  FOREIGN KEY (deployment_id) REFERENCES deployment_logs(deployment_id) ON DELETE CASCADE
);
CREATE INDEX idx_deployment_events_deployment_id ON deployment_events(deployment_id);

CREATE TABLE audit_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  actor TEXT NOT NULL,                           -- "apikey:<name>", "agent:<name>", "webhook:<ip>"
  action TEXT NOT NULL,
  target TEXT,
  details TEXT,                                  -- never a secret value
  at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_audit_log_at ON audit_log(at);
