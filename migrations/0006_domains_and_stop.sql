-- Domains behind the host proxy and how an application's previous container is let go
-- (issue 8, R-5.9), and the per-application cancel-in-progress default (issue 14).
--
-- The seed's `domains` table keeps its name and columns (id, application_id, domain,
-- created_at); it was never written before this migration. It is rebuilt (the documented
-- procedure: SQLite cannot change a column's constraints in place) so that
--   * container_port becomes NOT NULL DEFAULT 0 — changed: 0 means the app's first container
--     port (was nullable);
-- and gains (additions)
--   * tls_mode        — 'none' or 'files' (ACME comes later): no CHECK, so a new mode needs no
--                       table rebuild; the service accepts only the modes it knows;
--   * certificate_pem — the PEM chain, leaf first (public);
--   * private_key     — the PEM private key, encrypted, AAD = (domains, private_key, domain);
--   * not_after       — expiry of the leaf certificate, 'YYYY-MM-DD HH:MM:SS' UTC;
--   * updated_at.
-- Store::migrate runs migrations with foreign keys off (and checks them after), so dropping
-- the old table cascades nowhere.
--
-- applications gains (additions)
--   * drain_timeout_s    — after the route switch, connections to the previous container get
--                          this long to end (0..=3600, default 30);
--   * stop_timeout_s     — then it is sent its stop signal and killed after this long
--                          (0..=3600, default 10);
--   * stop_signal        — e.g. 'SIGTERM'; '' = the image's STOPSIGNAL;
--   * cancel_in_progress — 1: every deploy of the app cancels its running deployment, as if
--                          it asked with --cancel-in-progress.
-- Never edit this file after it lands.

CREATE TABLE domains_new (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  application_id INTEGER NOT NULL,
  domain TEXT NOT NULL UNIQUE,
  container_port INTEGER NOT NULL DEFAULT 0 CHECK(container_port BETWEEN 0 AND 65535),
  created_at TEXT NOT NULL DEFAULT (datetime('now')),
  tls_mode TEXT NOT NULL DEFAULT 'none',
  certificate_pem TEXT,
  private_key TEXT,                              -- encrypted, AAD = (domains, private_key, domain)
  not_after TEXT,
  updated_at TEXT NOT NULL DEFAULT (datetime('now')),
  FOREIGN KEY (application_id) REFERENCES applications(id) ON DELETE CASCADE
);
INSERT INTO domains_new (id, application_id, domain, container_port, created_at)
  SELECT id, application_id, domain, COALESCE(container_port, 0), created_at FROM domains;
DROP TABLE domains;
ALTER TABLE domains_new RENAME TO domains;
CREATE INDEX idx_domains_application_id ON domains(application_id);

ALTER TABLE applications ADD COLUMN drain_timeout_s INTEGER NOT NULL DEFAULT 30
  CHECK(drain_timeout_s BETWEEN 0 AND 3600);
ALTER TABLE applications ADD COLUMN stop_timeout_s INTEGER NOT NULL DEFAULT 10
  CHECK(stop_timeout_s BETWEEN 0 AND 3600);
ALTER TABLE applications ADD COLUMN stop_signal TEXT NOT NULL DEFAULT '';
ALTER TABLE applications ADD COLUMN cancel_in_progress INTEGER NOT NULL DEFAULT 0;
