-- Certificate renewal that never locks an agent out (issue 9, failure path 1).
--
-- agents gains (addition):
--   * prev_cert_fingerprint — the certificate the agent presented when it asked for its
--                             current one. It stays valid until the agent first presents the
--                             new certificate (then it is cleared), so a renewal whose answer
--                             was lost, or an agent that crashed before saving it, can still
--                             connect with the old one and renew again. Enrollment and
--                             revocation clear it.
-- Never edit this file after it lands.
ALTER TABLE agents ADD COLUMN prev_cert_fingerprint TEXT;
CREATE INDEX idx_agents_prev_cert_fingerprint ON agents(prev_cert_fingerprint);
