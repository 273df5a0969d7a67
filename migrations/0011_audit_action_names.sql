-- One naming scheme for audit actions (issue 13 item 1): `<noun>.<verb>`, two lowercase
-- words, the noun being the CLI's (`berth app …` → `app.create`), words of the verb joined
-- by `_` (`agent.token_create`). Rows written before the scheme are renamed here, so that
-- `berth audit list --action app.create` finds old and new rows alike; the rows are otherwise
-- untouched. Never edit this file after it lands.
UPDATE audit_log SET action = CASE action
    WHEN 'application.create' THEN 'app.create'
    WHEN 'application.update' THEN 'app.update'
    WHEN 'application.delete' THEN 'app.delete'
    WHEN 'application.rotate_token' THEN 'app.rotate_token'
    WHEN 'deployment.start' THEN 'deploy.start'
    WHEN 'deployment.refused' THEN 'deploy.refused'
    WHEN 'deployment.queue' THEN 'deploy.queue'
    WHEN 'agent.token.create' THEN 'agent.token_create'
    WHEN 'acme.account.create' THEN 'acme.account_create'
    WHEN 'domain.acme.issue' THEN 'domain.acme_issue'
    WHEN 'domain.acme.fail' THEN 'domain.acme_fail'
    WHEN 'key.rotate.resume' THEN 'key.rotate_resume'
    ELSE action
END
WHERE action IN (
    'application.create', 'application.update', 'application.delete',
    'application.rotate_token', 'deployment.start', 'deployment.refused', 'deployment.queue',
    'agent.token.create', 'acme.account.create', 'domain.acme.issue', 'domain.acme.fail',
    'key.rotate.resume'
);
-- `berth audit list` filters by actor and reads newest first.
CREATE INDEX idx_audit_log_actor ON audit_log(actor, id);
