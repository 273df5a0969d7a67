//! Reading the audit trail (`berth audit list`, issue 13 item 1): admins only, newest first
//! by pages, or followed as rows are committed.
//!
//! Architecture invariant: audit rows never hold a secret value (their writers make sure of
//! it), so they are returned as stored; only `Permission::ReadAudit` (admins) reads them. A
//! follow task never outlives its client, the node's stop, nor [`FOLLOW_LIFETIME`].

use std::future::Future;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{Actor, Permission, Service};
use crate::error::{Error, Result};
use crate::store::{AuditCursor, AuditEntry, AuditFilter};

/// Rows a page holds when the caller names no limit, and at most.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1000;
/// How often a follower looks for new rows.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// How long one follow stream may stay open (as a deployment watch): a forgotten client
/// whose connection stays up does not hold its task forever.
pub const FOLLOW_LIFETIME: Duration = Duration::from_secs(3600);
/// Rows a follower reads per poll.
const FOLLOW_BATCH: i64 = 500;

/// What a caller asks of the trail, as typed (`--since` still text).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// RFC 3339 (`2026-11-30T09:00:00Z`), or a duration back from now (`90s`, `10m`, `2h`,
    /// `7d`).
    pub since: Option<String>,
    pub app: Option<String>,
}

/// One page of the trail, newest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// The cursor of the next (older) page, when there may be one.
    pub next_before_id: Option<i64>,
    /// The newest row of the whole trail, read before the page: where a follower starts.
    pub newest_id: i64,
}

/// A set, non-blank field.
fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl AuditQuery {
    fn filter(&self, now: OffsetDateTime) -> Result<AuditFilter> {
        let action = text(&self.action).map(str::to_string);
        if let Some(action) = &action {
            let noun_only =
                !action.contains('.') && crate::store::is_action_name(&format!("{action}.x"));
            if !noun_only && !crate::store::is_action_name(action) {
                return Err(Error::invalid(format!(
                    "action {action:?} is not an audit action: expected NOUN.VERB \
                     (app.create, secret.reveal) or a noun alone (secret)"
                )));
            }
        }
        Ok(AuditFilter {
            actor: text(&self.actor).map(str::to_string),
            action,
            since: text(&self.since).map(|s| since(s, now)).transpose()?,
            app: text(&self.app).map(str::to_string),
        })
    }
}

/// `--since`: RFC 3339 or a duration back from `now`, as the `audit_log.at` column writes
/// instants (UTC, milliseconds, `Z`), so that the two compare as text.
pub fn since(text: &str, now: OffsetDateTime) -> Result<String> {
    let instant = match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let invalid = || {
                Error::invalid(format!(
                    "since {text:?} is neither an RFC 3339 time (2026-11-30T09:00:00Z) nor a \
                     duration (90s, 10m, 2h, 7d)"
                ))
            };
            let unit = text.chars().last().ok_or_else(invalid)?;
            let count: i64 = text[..text.len() - unit.len_utf8()]
                .parse()
                .map_err(|_| invalid())?;
            let seconds = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(invalid()),
            };
            let back = count
                .checked_mul(seconds)
                .filter(|s| *s >= 0)
                .ok_or_else(invalid)?;
            now.checked_sub(time::Duration::seconds(back))
                .ok_or_else(invalid)?
        }
    };
    let utc = instant.to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.millisecond()
    ))
}

impl Service {
    /// A page of the trail, newest first: at most `limit` rows (100 when 0, 1,000 at most),
    /// older than row `before_id` when given.
    pub async fn list_audit(
        &self,
        actor: &Actor,
        query: &AuditQuery,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<AuditPage> {
        actor.require(Permission::ReadAudit)?;
        let filter = query.filter(OffsetDateTime::now_utc())?;
        let limit = if limit == 0 {
            PAGE_DEFAULT
        } else {
            limit.min(PAGE_MAX)
        };
        let newest_id = self.store.last_audit_id().await?;
        let entries = self
            .store
            .find_audit(&filter, AuditCursor::Before(before_id), limit.into())
            .await?;
        let next_before_id = (entries.len() == limit as usize)
            .then(|| entries.last().map(|e| e.id))
            .flatten();
        Ok(AuditPage {
            entries,
            next_before_id,
            newest_id,
        })
    }

    /// `berth audit list --follow`: the rows matching `query` committed after row
    /// `after_id` (after the newest row now, when `None`), oldest first, as they are
    /// committed. Row ids grow in commit order (SQLite has one writer), so a poll never
    /// skips a row. The stream ends when the receiver is dropped, at [`FOLLOW_LIFETIME`], or
    /// when the store fails (the error is the last item).
    pub async fn follow_audit(
        &self,
        actor: &Actor,
        query: &AuditQuery,
        after_id: Option<i64>,
        stopping: impl Future<Output = ()> + Send + 'static,
    ) -> Result<mpsc::Receiver<Result<AuditEntry>>> {
        actor.require(Permission::ReadAudit)?;
        let filter = query.filter(OffsetDateTime::now_utc())?;
        let mut after = match after_id {
            Some(id) => id,
            None => self.store.last_audit_id().await?,
        };
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + FOLLOW_LIFETIME;
            tokio::pin!(stopping);
            loop {
                let rows = match store
                    .find_audit(&filter, AuditCursor::After(after), FOLLOW_BATCH)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let full = rows.len() as i64 == FOLLOW_BATCH;
                for row in rows {
                    after = row.id;
                    if tx.send(Ok(row)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    // The client is gone: end now, not at the next row.
                    () = tx.closed() => return,
                    // The node stops: its admin server waits for open streams to end.
                    () = &mut stopping => {
                        let _ = tx.send(Err(Error::Unavailable(
                            "the control plane is stopping: follow again once it is back".into(),
                        ))).await;
                        return;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        let _ = tx.send(Err(Error::Unavailable(format!(
                            "the audit follow stream reached its maximum lifetime of {} s: \
                             follow again",
                            FOLLOW_LIFETIME.as_secs()
                        )))).await;
                        return;
                    }
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::{admin, service, viewer};
    use crate::service::Role;

    fn reveals_of(actor: &str) -> AuditQuery {
        AuditQuery {
            actor: Some(actor.into()),
            action: Some("secret.reveal".into()),
            ..Default::default()
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn since_takes_rfc3339_or_a_duration_and_writes_the_column_format() {
        let now = at("2026-11-30T10:00:00Z");
        assert_eq!(since("10m", now).unwrap(), "2026-11-30T09:50:00.000Z");
        assert_eq!(since("2h", now).unwrap(), "2026-11-30T08:00:00.000Z");
        assert_eq!(since("1d", now).unwrap(), "2026-11-29T10:00:00.000Z");
        assert_eq!(
            since("2026-11-30T11:30:00.25+02:00", now).unwrap(),
            "2026-11-30T09:30:00.250Z"
        );
        for bad in [
            "",
            "10",
            "m",
            "10w",
            "-5m",
            "yesterday",
            "99999999999999999d",
        ] {
            let err = since(bad, now).unwrap_err().to_string();
            assert!(err.contains("neither an RFC 3339"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn only_admins_read_the_trail() {
        let svc = service().await;
        let query = AuditQuery::default();
        for role in [Role::Viewer, Role::Deployer] {
            let actor = Actor {
                name: "apikey:x".into(),
                role,
            };
            let err = svc.list_audit(&actor, &query, None, 0).await.unwrap_err();
            assert!(
                err.to_string().contains("cannot read the audit trail"),
                "{err}"
            );
            assert!(svc
                .follow_audit(&actor, &query, None, std::future::pending())
                .await
                .is_err());
        }
        assert!(svc.list_audit(&viewer(), &query, None, 0).await.is_err());
        svc.list_audit(&admin(), &query, None, 0).await.unwrap();
    }

    #[tokio::test]
    async fn filters_pages_and_follows() {
        let svc = service().await;
        let store = svc.store();
        store
            .audit("apikey:a", "app.create", "web", None)
            .await
            .unwrap();
        store
            .audit("apikey:a", "env.set", "web:PORT", Some("plain"))
            .await
            .unwrap();
        store
            .audit("apikey:b", "env.set", "web_x:PORT", Some("plain"))
            .await
            .unwrap();
        store
            .audit("apikey:b", "env.import_group", "web <- db", None)
            .await
            .unwrap();
        store
            .audit(
                "apikey:b",
                "domain.add",
                "a.example",
                Some("app=web tls=off"),
            )
            .await
            .unwrap();
        store
            .audit(
                "apikey:b",
                "domain.add",
                "b.example",
                Some("app=web2 tls=off"),
            )
            .await
            .unwrap();
        store
            .audit("apikey:b", "secret.reveal", "db/password", None)
            .await
            .unwrap();
        let list = |query: AuditQuery, before: Option<i64>, limit: u32| {
            let svc = svc.clone();
            async move {
                let page = svc
                    .list_audit(&admin(), &query, before, limit)
                    .await
                    .unwrap();
                (
                    page.entries
                        .into_iter()
                        .map(|e| e.target.unwrap_or_default())
                        .collect::<Vec<_>>(),
                    page.next_before_id,
                )
            }
        };
        let app = AuditQuery {
            app: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(
            list(app, None, 0).await.0,
            ["a.example", "web <- db", "web:PORT", "web"]
        );
        let noun = AuditQuery {
            action: Some("env".into()),
            actor: Some("apikey:b".into()),
            ..Default::default()
        };
        assert_eq!(list(noun, None, 0).await.0, ["web <- db", "web_x:PORT"]);
        let (first, next) = list(AuditQuery::default(), None, 2).await;
        assert_eq!(first, ["db/password", "b.example"]);
        let (second, _) = list(AuditQuery::default(), next, 2).await;
        assert_eq!(second, ["a.example", "web <- db"]);
        let future = AuditQuery {
            since: Some("2999-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(list(future, None, 0).await.0.is_empty());
        // A follower starts after the newest row of the whole trail, whatever the filter.
        let newest = svc
            .list_audit(&admin(), &reveals_of("nobody"), None, 0)
            .await
            .unwrap();
        assert!(newest.entries.is_empty());
        assert_eq!(newest.newest_id, svc.store().last_audit_id().await.unwrap());
        assert!(newest.newest_id > 0);
        let bad = AuditQuery {
            action: Some("Secret Reveal".into()),
            ..Default::default()
        };
        assert!(svc.list_audit(&admin(), &bad, None, 0).await.is_err());

        let reveals = AuditQuery {
            action: Some("secret.reveal".into()),
            ..Default::default()
        };
        let mut follow = svc
            .follow_audit(&admin(), &reveals, None, std::future::pending())
            .await
            .unwrap();
        store
            .audit("apikey:a", "app.delete", "web", None)
            .await
            .unwrap();
        store
            .audit("apikey:a", "secret.reveal", "db/user", None)
            .await
            .unwrap();
        let next = follow.recv().await.unwrap().unwrap();
        assert_eq!(
            (next.action.as_str(), next.target.as_deref()),
            ("secret.reveal", Some("db/user"))
        );
    }

    #[test]
    fn action_names_follow_one_scheme() {
        use crate::store::is_action_name;
        for good in [
            "app.create",
            "secret.reveal",
            "agent.token_create",
            "import.v1",
        ] {
            assert!(is_action_name(good), "{good}");
        }
        for bad in [
            "application",
            "domain.acme.issue",
            "App.create",
            "app.",
            ".create",
            "app.Create",
            "app.create-x",
        ] {
            assert!(!is_action_name(bad), "{bad}");
        }
    }
}
