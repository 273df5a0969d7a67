-- The reason a failed deployment gives outside the admin API (issue 9): a short stable
-- category ("image not allowed", "deploy failed on 1 of 2 hosts") for the CI callers of the
-- webhook shim and for notification receivers, who must not read the detail in
-- `error_message` (rows, agents, allowlist patterns). NULL for deployments that did not fail
-- and for rows from before this column (they read as "deployment failed").
-- Never edit this file after it lands.
ALTER TABLE deployment_logs ADD COLUMN public_reason TEXT;
