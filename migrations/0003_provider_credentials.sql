-- External secret providers (SPEC §8).
--
--   * secret_providers.credentials holds the provider's credentials (a Vault token or AppRole
--     secret id, AWS keys, a client secret, a service-account key) as ciphertext,
--     AAD = (secret_providers, credentials, id); `config` keeps only non-secret settings, so
--     it can be shown as it is.
--   * secrets.stale_since marks a synced secret that disappeared upstream but is still
--     referenced by an environment variable: kept (a sync never breaks a deploy silently),
--     reported by every sync until the reference goes or the secret comes back.
-- Never edit this file after it lands: add 0004_*.sql instead.

ALTER TABLE secret_providers ADD COLUMN credentials TEXT;
ALTER TABLE secrets ADD COLUMN stale_since TEXT;
