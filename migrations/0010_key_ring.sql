-- The key ring (issue 10 part 2, SPEC R-3.5).
--
-- key_ring (new): data keys, each a random 32-byte AES-256-GCM key stored wrapped under the
-- operator's root key (`v1:<root-key-id>:<nonce>:<ct>`, AAD = key_ring.wrapped [id]).
--   * id          — the key id every ciphertext made with it carries (8 hex characters)
--   * state       — 'active' (new encryptions use it; exactly one) or 'old' (still decrypts
--                   rows that use it, until `berth key retire`)
--   * encryptions — encryptions counted under the key, reserved in blocks before use, so an
--                   upper bound (a crash only over-counts)
-- The rewrap still to do after `berth key rotate` is the system_settings row
-- 'key_rotation_target' (the key id rows are rewrapped to); it is deleted when done.
-- Never edit this file after it lands.
CREATE TABLE key_ring (
  id TEXT PRIMARY KEY,
  wrapped TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('active', 'old')),
  encryptions INTEGER NOT NULL DEFAULT 0 CHECK (encryptions >= 0),
  created_at TEXT NOT NULL DEFAULT (datetime('now'))
);
CREATE UNIQUE INDEX idx_key_ring_one_active ON key_ring(state) WHERE state = 'active';
