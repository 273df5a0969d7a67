-- An agent is found by the certificate it presents (issue 11).
--
-- Every mTLS call of an agent looks it up by `cert_fingerprint = ? OR prev_cert_fingerprint = ?`.
-- Only the second column had an index, so each lookup scanned the whole table: at 10,000
-- agents a reconnect storm was 10,000 scans of 10,000 rows, the largest cost of the control
-- plane after the TLS handshakes. With both indexed, SQLite answers the OR from the two
-- indexes. Not UNIQUE: a database written before this migration is not required to have
-- distinct values.
-- Never edit this file after it lands.
CREATE INDEX idx_agents_cert_fingerprint ON agents(cert_fingerprint);
