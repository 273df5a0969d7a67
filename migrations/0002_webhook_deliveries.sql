-- Outgoing notification deliveries (R-7.7): one row per (event, webhook), written before the
-- first attempt so that a restart continues every pending delivery.
--
--   * id is the delivery's UUID: the event's "id" and the X-Berth-Delivery header, so a
--     receiver can drop the duplicate an at-least-once retry may cause;
--   * payload is the event's "deployment" object as JSON, frozen when the deployment finished
--     (copied from deployment_logs, which holds no secret value); each attempt wraps it with
--     id, event and a fresh sentAt, and signs the bytes it sends;
--   * attempt counts attempts made; response_code and error describe the latest one;
--   * timestamps are UTC, "YYYY-MM-DDTHH:MM:SS.SSSZ", so they compare as text.
-- Never edit this file after it lands: add 0003_*.sql instead.

CREATE TABLE webhook_deliveries (
  id TEXT PRIMARY KEY,
  webhook_id INTEGER NOT NULL,
  event TEXT NOT NULL CHECK(event IN ('deployment.succeeded', 'deployment.failed')),
  deployment_id TEXT NOT NULL,
  payload TEXT NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0 CHECK(attempt >= 0),
  status TEXT NOT NULL DEFAULT 'pending' CHECK(status IN ('pending', 'delivered', 'failed')),
  response_code INTEGER,
  error TEXT,
  next_attempt_at TEXT,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  delivered_at TEXT,
  CHECK((status = 'pending') = (next_attempt_at IS NOT NULL)),
  FOREIGN KEY (webhook_id) REFERENCES webhooks(id) ON DELETE CASCADE
);
CREATE INDEX idx_webhook_deliveries_webhook_id ON webhook_deliveries(webhook_id);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX idx_webhook_deliveries_deployment_id ON webhook_deliveries(deployment_id);
