-- Issue 11: which deployment of an application holds its slot, and which ones are queued, is
-- asked on every deploy (the admission), every hand-over and every supersede. With one
-- index per column SQLite chose the application's, and read every deployment the
-- application ever had: the cost of a deploy grew with the application's history (a burst of
-- 3,000 webhook deploys of one application ran at a third of the rate of 200). The pair
-- finds the few pending, running or queued rows directly.
CREATE INDEX idx_deployment_logs_application_status ON deployment_logs(application_id, status);
