//! ACME HTTP-01 challenges on the agents (domains with `--acme`): the control plane, as the
//! ACME client (`crate::acme`), has the host proxy of each connected target of an app answer
//! a token, and waits until every one of those agents confirmed it, before the CA is told to
//! validate. After the order, the token is withdrawn (a ttl of 0).
//!
//! Architecture invariant: [`Fleet::publish_challenge`] succeeds only when every connected
//! target of the app confirmed that its proxy answers the token (so the CA's validation,
//! whichever host it reaches, finds it); the key authorization is never logged.

use std::time::Duration;

use berth_proto::v1 as pb;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::oneshot;

use super::Fleet;
use crate::error::{Error, Result};

/// How long agents get to confirm that their proxy answers a challenge.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

impl Fleet {
    /// Has the host proxies of the app's connected targets answer `token` with
    /// `key_authorization` for `ttl`, and waits until each agent confirmed it. Returns how
    /// many agents did; an error names the agents that could not, and what to do.
    pub async fn publish_challenge(
        &self,
        application_id: i64,
        token: &str,
        key_authorization: &SecretString,
        ttl: Duration,
    ) -> Result<usize> {
        let app = self
            .service()
            .store()
            .application_by_id(application_id)
            .await?;
        let targets = self.connected_targets(&app).await?;
        if targets.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "no agent of app {} is connected to answer the ACME challenge: start the agent of a host that runs {} (with its host proxy) and the order is retried",
                app.name, app.name
            )));
        }
        let command = challenge_command(
            token,
            key_authorization.expose_secret(),
            u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1),
        );
        let mut waiting = Vec::with_capacity(targets.len());
        for agent in &targets {
            let (tx, rx) = oneshot::channel();
            self.inner
                .challenge_replies
                .lock()
                .expect("challenge replies lock")
                .insert((agent.clone(), token.to_string()), tx);
            if self.send(agent, command.clone()) {
                waiting.push((agent.clone(), rx));
            } else {
                self.forget_reply(agent, token);
                waiting.push((agent.clone(), closed_reply("its stream is gone or full")));
            }
        }
        let mut refused = Vec::new();
        for (agent, rx) in waiting {
            let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, rx).await;
            self.forget_reply(&agent, token);
            match outcome {
                Ok(Ok(error)) if error.is_empty() => {}
                Ok(Ok(error)) => refused.push(format!("agent {agent}: {error}")),
                Ok(Err(_)) => refused.push(format!("agent {agent}: disconnected")),
                Err(_) => refused.push(format!(
                    "agent {agent}: no confirmation within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                )),
            }
        }
        if !refused.is_empty() {
            return Err(Error::Unavailable(format!(
                "the host proxy cannot answer the ACME challenge for app {} ({}): run the app's agents with the host proxy (berth-agent --proxy-socket)",
                app.name,
                refused.join("; ")
            )));
        }
        tracing::info!(app = %app.name, agents = targets.len(), "acme challenge published");
        Ok(targets.len())
    }

    /// Has the app's connected targets stop answering `token` (best effort: an expired token
    /// is not answered anyway).
    pub async fn withdraw_challenge(&self, application_id: i64, token: &str) -> Result<()> {
        let app = self
            .service()
            .store()
            .application_by_id(application_id)
            .await?;
        for agent in self.connected_targets(&app).await? {
            let _ = self.send(&agent, challenge_command(token, "", 0));
        }
        Ok(())
    }

    /// An agent confirmed (or refused) a challenge.
    pub(super) fn challenge_replied(&self, agent: &str, reply: pb::ChallengeReply) {
        let waiter = self
            .inner
            .challenge_replies
            .lock()
            .expect("challenge replies lock")
            .remove(&(agent.to_string(), reply.token));
        if let Some(waiter) = waiter {
            let _ = waiter.send(reply.error);
        }
    }

    fn forget_reply(&self, agent: &str, token: &str) {
        self.inner
            .challenge_replies
            .lock()
            .expect("challenge replies lock")
            .remove(&(agent.to_string(), token.to_string()));
    }

    /// Starts the ACME orders that are due now (a domain with ACME was added).
    pub fn wake_acme(&self) {
        self.inner.acme_wake.notify_one();
    }

    /// Resolves when [`Fleet::wake_acme`] was called (since the last time it resolved).
    pub async fn acme_woken(&self) {
        self.inner.acme_wake.notified().await;
    }
}

fn challenge_command(token: &str, key_authorization: &str, ttl_seconds: u32) -> pb::ControlMessage {
    pb::ControlMessage {
        msg: Some(pb::control_message::Msg::AcmeChallenge(
            pb::AcmeChallengeCommand {
                token: token.to_string(),
                key_authorization: key_authorization.to_string(),
                ttl_seconds,
            },
        )),
    }
}

/// A reply that is already there: `error`.
fn closed_reply(error: &str) -> oneshot::Receiver<String> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(error.to_string());
    rx
}
