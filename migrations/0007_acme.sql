-- ACME certificates for domains (issue 8, R-5.9): the control plane is the ACME client and
-- the source of truth for its account keys and the certificates it obtains.
--
-- acme_accounts (addition): one ACME account per directory URL, created on the first order.
--   * credentials — the account's JSON credentials (id, PKCS#8 key, directory), encrypted,
--                   AAD = (acme_accounts, credentials, directory_url).
--
-- domains gains (additions), used only when tls_mode = 'acme' (a mode 0006 left room for:
-- tls_mode has no CHECK). The certificate and its key go to the existing certificate_pem,
-- private_key (encrypted, AAD = (domains, private_key, domain)) and not_after columns, in one
-- UPDATE, so a crash never leaves a key without its certificate or the other way round.
--   * acme_status          — 'pending' (no certificate yet), 'issued', 'failed' (the last
--                            order failed; a certificate already issued keeps serving);
--   * acme_error           — why the last order failed (no key material, ever);
--   * acme_attempts        — orders failed in a row since the last success;
--   * acme_next_attempt_at — when the next order starts ('YYYY-MM-DD HH:MM:SS' UTC): a retry
--                            after a failure, or the renewal after an issuance; NULL when
--                            the retries gave up.
-- Never edit this file after it lands.

CREATE TABLE acme_accounts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  directory_url TEXT NOT NULL UNIQUE,
  email TEXT,
  credentials TEXT NOT NULL,                -- encrypted, AAD = (acme_accounts, credentials, directory_url)
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);

ALTER TABLE domains ADD COLUMN acme_status TEXT;
ALTER TABLE domains ADD COLUMN acme_error TEXT;
ALTER TABLE domains ADD COLUMN acme_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE domains ADD COLUMN acme_next_attempt_at TEXT;
CREATE INDEX idx_domains_acme_next_attempt_at ON domains(acme_next_attempt_at)
  WHERE acme_next_attempt_at IS NOT NULL;
