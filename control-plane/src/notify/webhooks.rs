//! Managing notification webhooks: add (with a signing secret shown once), list, remove, and
//! the delivery history. Writes need [`Permission::Write`], reads [`Permission::Read`].
//!
//! A receiver's URL often carries its own credential (a chat webhook's path, a `?token=`), so
//! only callers who may see secret values ([`Permission::Reveal`], admins) read it whole;
//! everyone else reads its origin, `scheme://host[:port]` ([`visible_url`]).

use secrecy::{ExposeSecret as _, SecretString};

use super::{EVENTS, EVENT_FINISHED};
use crate::crypto::{generate_token, Aad};
use crate::error::{Error, Result};
use crate::service::{Actor, Permission, Service};
use crate::store::{DeliveryRow, WebhookRow};

/// Generated signing secrets: `whs_` + base64url of 24 random bytes.
pub const WEBHOOK_SECRET_PREFIX: &str = "whs_";
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;
const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 1024;
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;
pub const MAX_DELIVERY_LIMIT: u32 = 500;

/// `Debug` is safe: `SecretString` prints as redacted.
#[derive(Debug)]
pub struct CreatedWebhook {
    pub webhook: WebhookRow,
    /// Shown once; stored encrypted.
    pub secret: SecretString,
}

impl Service {
    /// Registers a receiver. With no `secret`, one is generated; either way it is returned
    /// once and stored encrypted.
    pub async fn add_webhook(
        &self,
        actor: &Actor,
        url: &str,
        events: &[String],
        secret: Option<SecretString>,
    ) -> Result<CreatedWebhook> {
        actor.require(Permission::Write)?;
        let url = url.trim();
        validate_url(url)?;
        let events = validate_events(events)?;
        let secret = match secret {
            Some(s) => {
                validate_secret(s.expose_secret())?;
                s
            }
            None => generate_token(WEBHOOK_SECRET_PREFIX),
        };
        if let Some(id) = self.store().webhook_id_by_url(url).await? {
            return Err(Error::AlreadyExists(format!(
                "a webhook for this url already exists (id {id})"
            )));
        }
        let events_json = serde_json::to_string(&events).expect("strings serialize");
        let key = self.key();
        let webhook = self
            .store()
            .insert_webhook(url, &events_json, |id| {
                key.encrypt(secret.expose_secret().as_bytes(), &Aad::webhook_secret(id))
            })
            .await?;
        let details = format!("{} {}", origin(url), events.join(","));
        self.store()
            .audit(
                &actor.name,
                "webhook.add",
                &format!("webhook:{}", webhook.id),
                Some(&details),
            )
            .await?;
        Ok(CreatedWebhook { webhook, secret })
    }

    /// Every webhook; URLs whole for admins, as origins for everyone else.
    pub async fn list_webhooks(&self, actor: &Actor) -> Result<Vec<WebhookRow>> {
        actor.require(Permission::Read)?;
        let mut rows = self.store().list_webhooks().await?;
        for row in &mut rows {
            row.url = visible_url(actor, &row.url);
        }
        Ok(rows)
    }

    /// Removes a webhook with its delivery history; its pending deliveries are never sent.
    pub async fn remove_webhook(&self, actor: &Actor, id: i64) -> Result<()> {
        actor.require(Permission::Write)?;
        let webhook = self.store().webhook(id).await?;
        self.store().delete_webhook(id).await?;
        self.store()
            .audit(
                &actor.name,
                "webhook.remove",
                &format!("webhook:{id}"),
                Some(&origin(&webhook.url)),
            )
            .await
    }

    /// Delivery history, newest first; `limit` 0 means the default.
    pub async fn list_webhook_deliveries(
        &self,
        actor: &Actor,
        webhook_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>> {
        actor.require(Permission::Read)?;
        if let Some(id) = webhook_id {
            self.store().webhook(id).await?;
        }
        let limit = match limit {
            0 => DEFAULT_DELIVERY_LIMIT,
            n => n.min(MAX_DELIVERY_LIMIT),
        };
        let mut rows = self
            .store()
            .list_deliveries(webhook_id, i64::from(limit))
            .await?;
        for row in &mut rows {
            row.url = visible_url(actor, &row.url);
        }
        Ok(rows)
    }
}

/// A receiver's URL as `actor` may read it: whole with [`Permission::Reveal`], else its
/// origin.
fn visible_url(actor: &Actor, url: &str) -> String {
    if actor.require(Permission::Reveal).is_ok() {
        url.to_string()
    } else {
        origin(url)
    }
}

/// `http`/`https` only, a host, no credentials, no fragment, no spaces, bounded length.
fn validate_url(url: &str) -> Result<()> {
    if url.is_empty() {
        return Err(Error::invalid("webhook url is empty"));
    }
    if url.len() > MAX_WEBHOOK_URL_LEN {
        return Err(Error::invalid(format!(
            "webhook url is longer than {MAX_WEBHOOK_URL_LEN} characters"
        )));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "webhook url must not contain spaces or control characters",
        ));
    }
    if url.contains('#') {
        return Err(Error::invalid(
            "webhook url must not contain a fragment (#…)",
        ));
    }
    let uri: http::Uri = url.parse().map_err(|_| {
        Error::invalid(
            "webhook url is not a valid absolute url (e.g. https://example.com/hooks/berth)",
        )
    })?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(s) => {
            return Err(Error::invalid(format!(
                "webhook url scheme {:?} is not supported: use http or https",
                s.chars().take(16).collect::<String>()
            )))
        }
        None => {
            return Err(Error::invalid(
                "webhook url must start with http:// or https://",
            ))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| Error::invalid("webhook url has no host"))?;
    if authority.as_str().contains('@') {
        return Err(Error::invalid(
            "webhook url must not contain credentials (user:password@); requests are signed with the webhook secret",
        ));
    }
    if authority.host().is_empty() {
        return Err(Error::invalid("webhook url has no host"));
    }
    if authority.port_u16() == Some(0) {
        return Err(Error::invalid(
            "webhook url port must be between 1 and 65535",
        ));
    }
    Ok(())
}

/// At least one known event; duplicates dropped, order kept.
fn validate_events(events: &[String]) -> Result<Vec<String>> {
    if events.is_empty() {
        return Err(Error::invalid(format!(
            "give at least one event: {}",
            EVENTS.join(", ")
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for event in events {
        let event = event.trim();
        if !EVENTS.contains(&event) {
            return Err(Error::invalid(format!(
                "unknown event {:?}: expected {}",
                event.chars().take(64).collect::<String>(),
                EVENTS.join(", ")
            )));
        }
        if !out.iter().any(|e| e == event) {
            out.push(event.to_string());
        }
    }
    // `deployment.finished` already covers the other two.
    if out.iter().any(|e| e == EVENT_FINISHED) {
        out = vec![EVENT_FINISHED.to_string()];
    }
    Ok(out)
}

fn validate_secret(secret: &str) -> Result<()> {
    let len = secret.chars().count();
    if len < MIN_SECRET_LEN {
        return Err(Error::invalid(format!(
            "webhook secret is too short: use at least {MIN_SECRET_LEN} characters (or omit it to generate one)"
        )));
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(Error::invalid(format!(
            "webhook secret is longer than {MAX_SECRET_LEN} bytes"
        )));
    }
    if secret.chars().any(char::is_control) {
        return Err(Error::invalid(
            "webhook secret must not contain control characters",
        ));
    }
    Ok(())
}

/// `scheme://host[:port]` of a url, without user info, path or query: what audit rows, logs
/// and non-admin readers may see (a path or query can hold the receiver's own token).
pub(crate) fn origin(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "?".to_string();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return "?".to_string();
    };
    match authority.port() {
        Some(port) => format!("{scheme}://{}:{port}", authority.host()),
        None => format!("{scheme}://{}", authority.host()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::service::testing::{admin, service, viewer};

    fn events(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn secrets_are_generated_shown_once_and_stored_encrypted_for_their_row() {
        let svc = service().await;
        let created = svc
            .add_webhook(
                &admin(),
                "https://ci.example.com/hooks?token=abc",
                &events(&["deployment.failed"]),
                None,
            )
            .await
            .unwrap();
        let secret = created.secret.expose_secret().to_string();
        assert!(
            secret.starts_with(WEBHOOK_SECRET_PREFIX) && secret.len() == 4 + 32,
            "{secret}"
        );
        assert_eq!(created.webhook.events(), events(&["deployment.failed"]));

        let stored = svc
            .store()
            .webhook_secret(created.webhook.id)
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.contains(&secret[4..]));
        let plain = svc
            .key()
            .decrypt_string(&stored, &Aad::webhook_secret(created.webhook.id))
            .unwrap();
        assert_eq!(plain.expose_secret(), secret);
        assert!(svc
            .key()
            .decrypt_string(&stored, &Aad::webhook_secret(created.webhook.id + 1))
            .is_err());

        let audit = svc.store().list_audit(1).await.unwrap();
        assert_eq!(audit[0].action, "webhook.add");
        let details = audit[0].details.clone().unwrap_or_default();
        assert!(
            details.contains("https://ci.example.com") && !details.contains("token=abc"),
            "{details}"
        );

        let given = SecretString::from("a-shared-secret-of-the-receiver".to_string());
        let second = svc
            .add_webhook(
                &admin(),
                "http://127.0.0.1:9/x",
                &events(&["deployment.finished", "deployment.failed"]),
                Some(given),
            )
            .await
            .unwrap();
        assert_eq!(
            second.secret.expose_secret(),
            "a-shared-secret-of-the-receiver"
        );
        assert_eq!(second.webhook.events(), events(&["deployment.finished"]));
    }

    #[tokio::test]
    async fn bad_input_is_refused_with_clear_errors() {
        let svc = service().await;
        let finished = events(&["deployment.finished"]);
        let long = format!("https://example.com/{}", "a".repeat(MAX_WEBHOOK_URL_LEN));
        for (url, needle) in [
            ("", "empty"),
            ("ftp://example.com/x", "scheme"),
            ("file:///etc/passwd", "not a valid"),
            ("example.com/hook", "http"),
            ("https://user:pass@example.com/", "credentials"),
            ("https://example.com/a b", "spaces"),
            ("https://example.com/#frag", "fragment"),
            ("http://example.com:0/", "port"),
            (long.as_str(), "longer"),
        ] {
            let err = svc
                .add_webhook(&admin(), url, &finished, None)
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{url}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = svc
            .add_webhook(&admin(), "https://example.com/", &[], None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("at least one event"), "{err}");
        let err = svc
            .add_webhook(
                &admin(),
                "https://example.com/",
                &events(&["deploy.done"]),
                None,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown event"), "{err}");
        let short = SecretString::from("short".to_string());
        let err = svc
            .add_webhook(&admin(), "https://example.com/", &finished, Some(short))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("too short") && !err.to_string().contains("short\""),
            "{err}"
        );
        assert!(
            svc.list_webhooks(&admin()).await.unwrap().is_empty(),
            "a refused webhook was stored"
        );

        svc.add_webhook(&admin(), "https://example.com/", &finished, None)
            .await
            .unwrap();
        let err = svc
            .add_webhook(&admin(), "https://example.com/", &finished, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
    }

    #[tokio::test]
    async fn below_admin_a_url_reads_as_its_origin_in_lists_and_deliveries() {
        let svc = service().await;
        let url = "https://hooks.example.com:8443/services/T0001/B0002/sEcReTpAtH?token=abc";
        let created = svc
            .add_webhook(&admin(), url, &events(&["deployment.failed"]), None)
            .await
            .unwrap();
        assert_eq!(
            created.webhook.url, url,
            "the admin who added it sees it whole"
        );
        svc.store()
            .insert_deliveries(&[crate::store::NewDelivery {
                id: "d-1".into(),
                webhook_id: created.webhook.id,
                event: crate::notify::EVENT_FAILED,
                deployment_id: "dep-1".into(),
                payload: "{}".into(),
            }])
            .await
            .unwrap();
        let deployer = Actor {
            name: "apikey:d".into(),
            role: crate::service::Role::Deployer,
        };
        for reader in [viewer(), deployer] {
            let listed = svc.list_webhooks(&reader).await.unwrap();
            assert_eq!(
                listed[0].url, "https://hooks.example.com:8443",
                "{reader:?}"
            );
            let deliveries = svc.list_webhook_deliveries(&reader, None, 0).await.unwrap();
            assert_eq!(deliveries[0].url, "https://hooks.example.com:8443");
            let shown = format!("{listed:?}{deliveries:?}");
            assert!(
                !shown.contains("sEcReTpAtH") && !shown.contains("token=abc"),
                "{shown}"
            );
        }
        assert_eq!(svc.list_webhooks(&admin()).await.unwrap()[0].url, url);
        assert_eq!(
            svc.list_webhook_deliveries(&admin(), None, 0)
                .await
                .unwrap()[0]
                .url,
            url
        );
    }

    #[test]
    fn an_origin_is_scheme_host_and_port_only() {
        for (url, expected) in [
            ("https://example.com/a/b?c=d", "https://example.com"),
            ("http://example.com:8080/x", "http://example.com:8080"),
            ("https://user:pass@example.com/x", "https://example.com"),
            ("http://[::1]:9000/hook?k=v", "http://[::1]:9000"),
            ("not a url", "?"),
            ("/relative/only", "?"),
        ] {
            assert_eq!(origin(url), expected, "{url}");
        }
    }

    #[tokio::test]
    async fn viewers_read_but_only_writers_add_and_remove() {
        let svc = service().await;
        let finished = events(&["deployment.finished"]);
        let err = svc
            .add_webhook(&viewer(), "https://example.com/", &finished, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        let created = svc
            .add_webhook(&admin(), "https://example.com/", &finished, None)
            .await
            .unwrap();
        assert_eq!(svc.list_webhooks(&viewer()).await.unwrap().len(), 1);
        assert!(svc
            .list_webhook_deliveries(&viewer(), Some(created.webhook.id), 0)
            .await
            .unwrap()
            .is_empty());
        let err = svc
            .remove_webhook(&viewer(), created.webhook.id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PermissionDenied);
        svc.remove_webhook(&admin(), created.webhook.id)
            .await
            .unwrap();
        assert_eq!(
            svc.store().list_audit(1).await.unwrap()[0].action,
            "webhook.remove"
        );
        let err = svc
            .remove_webhook(&admin(), created.webhook.id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
        let err = svc
            .list_webhook_deliveries(&admin(), Some(created.webhook.id), 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotFound);
    }
}
