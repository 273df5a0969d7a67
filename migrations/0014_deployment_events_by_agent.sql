-- The step log by deployment and agent (issue 11).
--
-- An agent's event is stored only while that agent has sent fewer than the cap for the
-- deployment (issue 9): a count by (deployment_id, agent_name). With the deployment_id index
-- alone that count reads every event of the deployment, so a deployment to N agents cost
-- O(N^2) rows read (64 s to record the results of a 5,000-agent deployment). This index makes
-- it a range count. The deployment_id index stays: it orders a deployment's events by id for
-- the watch streams.
-- Never edit this file after it lands.
CREATE INDEX idx_deployment_events_deployment_agent ON deployment_events(deployment_id, agent_name);
