//! The ACME state of domains with tls mode acme: the account of each ACME directory (its
//! credentials encrypted), which domains' orders are due, and how an order ends. An issued
//! certificate is checked like one given from files, its key encrypted, and its renewal
//! planned ([`renew_at`]); a failure is recorded with the next retry ([`retry_at`]: bounded
//! backoff), and never touches a certificate issued before.
//!
//! Architecture invariant: an account's credentials and a domain's key are plaintext only
//! inside `SecretString`, on their way to or from the ACME client; a certificate, its key and
//! its expiry are written together, in one update, and only by a successful order.

use secrecy::{ExposeSecret as _, SecretString};
use time::{Duration, OffsetDateTime};

use super::certificate::{self, timestamp};
use crate::crypto::Aad;
use crate::error::{Error, Result};
use crate::model::{AcmeState, AcmeStatus, Domain};
use crate::service::Service;
use crate::store::AcmeIssued;

/// A certificate is renewed when it has less than this left (or a third of its lifetime, for
/// short-lived certificates).
pub const RENEW_BEFORE: Duration = Duration::days(30);
/// The first retry after a failed order waits this long; each next one twice as long.
pub const FIRST_RETRY: Duration = Duration::minutes(1);
/// Without a certificate, retries stop after this many failed orders in a row (about two
/// hours of backoff): the domain then shows `failed` until it is added again.
pub const MAX_ATTEMPTS: u32 = 8;
/// With a certificate still serving, a failed renewal is retried at least once a day until
/// it succeeds.
pub const MAX_RENEWAL_RETRY: Duration = Duration::days(1);
/// The audit and the error column keep at most this much of a reason.
const MAX_ERROR_CHARS: usize = 1024;
/// Who the audit rows of orders name.
const ACME_ACTOR: &str = "acme";

/// When a certificate valid from `valid_from` to `valid_until` is renewed: [`RENEW_BEFORE`]
/// ahead of its expiry, or with a third of its lifetime left when that is sooner.
pub fn renew_at(valid_from: OffsetDateTime, valid_until: OffsetDateTime) -> OffsetDateTime {
    let lifetime = valid_until - valid_from;
    valid_until - RENEW_BEFORE.min(lifetime / 3)
}

/// After the `attempts`-th failed order in a row, when the next one starts: backoff from
/// [`FIRST_RETRY`], doubling; without a certificate, `None` (give up) after [`MAX_ATTEMPTS`];
/// with one, never given up, at most [`MAX_RENEWAL_RETRY`] apart.
pub fn retry_at(
    attempts: u32,
    has_certificate: bool,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    let doubling = FIRST_RETRY * 2i32.saturating_pow(attempts.saturating_sub(1).min(20));
    if has_certificate {
        Some(now + doubling.min(MAX_RENEWAL_RETRY))
    } else if attempts >= MAX_ATTEMPTS {
        None
    } else {
        Some(now + doubling)
    }
}

/// A store timestamp (`YYYY-MM-DD HH:MM:SS`, UTC).
fn parse_timestamp(text: &str) -> Result<OffsetDateTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(text, format)
        .map(|t| t.assume_utc())
        .map_err(|e| Error::Internal(format!("invalid timestamp {text:?} in domains: {e}")))
}

impl Service {
    /// The stored credentials (JSON) of the account on `directory_url`, decrypted.
    pub async fn acme_account_credentials(
        &self,
        directory_url: &str,
    ) -> Result<Option<SecretString>> {
        match self.store.acme_account(directory_url).await? {
            Some(row) => Ok(Some(self.key.decrypt_string(
                &row.credentials,
                &Aad::acme_account_credentials(directory_url),
            )?)),
            None => Ok(None),
        }
    }

    /// Stores a new account's credentials (JSON), encrypted.
    pub async fn save_acme_account(
        &self,
        directory_url: &str,
        email: Option<&str>,
        credentials: &SecretString,
    ) -> Result<()> {
        let ciphertext = self
            .key
            .encrypt(
                credentials.expose_secret().as_bytes(),
                &Aad::acme_account_credentials(directory_url),
            )
            .await?;
        self.store
            .insert_acme_account(directory_url, email, &ciphertext)
            .await?;
        self.store
            .audit(ACME_ACTOR, "acme.account_create", directory_url, email)
            .await
    }

    /// ACME domains whose order is due at `now`.
    pub async fn acme_due_domains(&self, now: OffsetDateTime) -> Result<Vec<Domain>> {
        self.store.acme_due_domains(&timestamp(now)).await
    }

    /// When the next order is due, if any is planned.
    pub async fn acme_next_due(&self) -> Result<Option<OffsetDateTime>> {
        match self.store.acme_next_due().await? {
            Some(text) => Ok(Some(parse_timestamp(&text)?)),
            None => Ok(None),
        }
    }

    /// Stores the certificate an order obtained for `domain`, after checking it like one from
    /// files (parses, matches the key, covers the host, valid now), with its key encrypted and
    /// its renewal planned. Returns false when the domain was removed meanwhile.
    pub async fn record_acme_certificate(
        &self,
        domain: &Domain,
        chain_pem: &str,
        key_pem: &SecretString,
        now: OffsetDateTime,
    ) -> Result<bool> {
        let checked = certificate::check(&domain.host, chain_pem, key_pem, now).map_err(|e| {
            Error::Unavailable(format!(
                "the ACME server issued an unusable certificate: {e}"
            ))
        })?;
        let private_key = self
            .key
            .encrypt(
                key_pem.expose_secret().as_bytes(),
                &Aad::domain_private_key(&domain.host),
            )
            .await?;
        let renew = timestamp(renew_at(checked.valid_from, checked.valid_until));
        let stored = self
            .store
            .acme_issued(&AcmeIssued {
                host: &domain.host,
                certificate_pem: chain_pem,
                private_key: &private_key,
                not_after: &checked.not_after,
                renew_at: &renew,
            })
            .await?;
        if stored {
            let details = format!(
                "app={} not_after={} renew_at={renew}",
                domain.app_name, checked.not_after
            );
            self.store
                .audit(
                    ACME_ACTOR,
                    "domain.acme_issue",
                    &domain.host,
                    Some(&details),
                )
                .await?;
        }
        Ok(stored)
    }

    /// Records that an order for `domain` failed with `error`, and when the next one starts.
    /// The certificate columns are left as they are.
    pub async fn record_acme_failure(
        &self,
        domain: &Domain,
        error: &str,
        now: OffsetDateTime,
    ) -> Result<AcmeState> {
        let attempts = domain
            .acme
            .as_ref()
            .map_or(0, |a| a.attempts)
            .saturating_add(1);
        let has_certificate = domain.certificate_pem.is_some();
        let next = retry_at(attempts, has_certificate, now).map(timestamp);
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        self.store
            .acme_failed(
                &domain.host,
                AcmeStatus::Failed,
                &error,
                attempts,
                next.as_deref(),
            )
            .await?;
        let details = format!(
            "app={} attempt={attempts} next={} error={error}",
            domain.app_name,
            next.as_deref().unwrap_or("none (gave up)")
        );
        self.store
            .audit(ACME_ACTOR, "domain.acme_fail", &domain.host, Some(&details))
            .await?;
        Ok(AcmeState {
            status: AcmeStatus::Failed,
            error: Some(error),
            attempts,
            next_attempt_at: next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::certificate::tests::certificate;
    use super::super::tests::with_apps;
    use super::super::{DomainSpec, DomainTls};
    use super::*;
    use crate::model::TlsMode;
    use crate::service::testing::admin;

    fn at(text: &str) -> OffsetDateTime {
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        time::PrimitiveDateTime::parse(text, format)
            .unwrap()
            .assume_utc()
    }

    #[test]
    fn renewal_starts_thirty_days_ahead_or_at_a_third_of_a_short_lifetime() {
        let from = at("2030-01-01 00:00:00");
        // Let's Encrypt's 90 days: 30 days before the end.
        assert_eq!(
            renew_at(from, from + Duration::days(90)),
            from + Duration::days(60)
        );
        // A year: still 30 days before.
        assert_eq!(
            renew_at(from, from + Duration::days(365)),
            from + Duration::days(335)
        );
        // Six days (a short-lived certificate): with two days left.
        assert_eq!(
            renew_at(from, from + Duration::days(6)),
            from + Duration::days(4)
        );
    }

    #[test]
    fn retries_back_off_and_give_up_only_without_a_certificate() {
        let now = at("2030-01-01 00:00:00");
        assert_eq!(retry_at(1, false, now), Some(now + FIRST_RETRY));
        assert_eq!(retry_at(2, false, now), Some(now + FIRST_RETRY * 2));
        assert_eq!(retry_at(4, false, now), Some(now + FIRST_RETRY * 8));
        assert_eq!(
            retry_at(MAX_ATTEMPTS - 1, false, now),
            Some(now + FIRST_RETRY * 64)
        );
        assert_eq!(retry_at(MAX_ATTEMPTS, false, now), None);
        // A certificate still serves: retried, at most a day apart, forever.
        assert_eq!(retry_at(1, true, now), Some(now + FIRST_RETRY));
        assert_eq!(
            retry_at(MAX_ATTEMPTS, true, now),
            Some(now + FIRST_RETRY * 128)
        );
        assert_eq!(retry_at(40, true, now), Some(now + MAX_RENEWAL_RETRY));
    }

    async fn acme_domain(svc: &Service, host: &str) -> Domain {
        svc.add_domain(
            &admin(),
            DomainSpec {
                app: "web".into(),
                host: host.into(),
                container_port: 0,
                tls: DomainTls::Acme,
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn an_acme_domain_is_pending_and_due_at_once() {
        let svc = with_apps().await;
        let domain = acme_domain(&svc, "shop.example.com").await;
        assert_eq!(domain.tls_mode, TlsMode::Acme);
        let acme = domain.acme.clone().unwrap();
        assert_eq!(acme.status, AcmeStatus::Pending);
        assert!(domain.certificate_pem.is_none());
        let soon = OffsetDateTime::now_utc() + Duration::seconds(2);
        let due = svc.acme_due_domains(soon).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].host, "shop.example.com");
        // A plain domain is never due.
        svc.add_domain(
            &admin(),
            DomainSpec {
                app: "web".into(),
                host: "plain.example.com".into(),
                container_port: 0,
                tls: DomainTls::None,
            },
        )
        .await
        .unwrap();
        assert_eq!(svc.acme_due_domains(soon).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_issued_certificate_is_stored_encrypted_and_renewed_later() {
        let svc = with_apps().await;
        let domain = acme_domain(&svc, "shop.example.com").await;
        let now = OffsetDateTime::now_utc();
        let (chain, key) = certificate(
            &["shop.example.com"],
            Duration::days(-1),
            Duration::days(89),
        );
        assert!(svc
            .record_acme_certificate(&domain, &chain, &key, now)
            .await
            .unwrap());
        let stored = svc
            .store()
            .domain("shop.example.com")
            .await
            .unwrap()
            .unwrap();
        let acme = stored.acme.clone().unwrap();
        assert_eq!(acme.status, AcmeStatus::Issued);
        assert_eq!(acme.attempts, 0);
        assert_eq!(stored.certificate_pem.as_deref(), Some(chain.as_str()));
        let ciphertext = stored.private_key.clone().unwrap();
        assert!(ciphertext.starts_with("v1:") && !ciphertext.contains("PRIVATE KEY"));
        // Renewed 30 days before the end: not due now, due in 60 days.
        assert!(svc.acme_due_domains(now).await.unwrap().is_empty());
        let renewal = at(acme.next_attempt_at.as_deref().unwrap());
        assert_eq!(svc.acme_next_due().await.unwrap(), Some(renewal));
        assert!((renewal - (now + Duration::days(59))).abs() < Duration::minutes(1));
        let routed = svc
            .routed_domains(&svc.store().application("web").await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            routed[0].private_key_pem.as_ref().unwrap().expose_secret(),
            key.expose_secret()
        );
        let audit = svc.store().list_audit(10).await.unwrap();
        let issued = audit
            .iter()
            .find(|a| a.action == "domain.acme_issue")
            .unwrap();
        assert!(!issued.details.as_deref().unwrap().contains("PRIVATE"));
    }

    #[tokio::test]
    async fn a_failed_order_keeps_the_certificate_and_schedules_a_retry() {
        let svc = with_apps().await;
        let domain = acme_domain(&svc, "shop.example.com").await;
        let now = OffsetDateTime::now_utc();
        let (chain, key) = certificate(
            &["shop.example.com"],
            Duration::days(-80),
            Duration::days(10),
        );
        svc.record_acme_certificate(&domain, &chain, &key, now)
            .await
            .unwrap();
        let before = svc
            .store()
            .domain("shop.example.com")
            .await
            .unwrap()
            .unwrap();
        // Ten days left: the renewal is due now.
        assert_eq!(svc.acme_due_domains(now).await.unwrap().len(), 1);

        let state = svc
            .record_acme_failure(
                &before,
                "the ACME server refused the order: rate limited",
                now,
            )
            .await
            .unwrap();
        assert_eq!(state.attempts, 1);
        let after = svc
            .store()
            .domain("shop.example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.certificate_pem, before.certificate_pem);
        assert_eq!(after.private_key, before.private_key);
        assert_eq!(after.not_after, before.not_after);
        let acme = after.acme.unwrap();
        assert_eq!(acme.status, AcmeStatus::Failed);
        assert!(acme.error.unwrap().contains("rate limited"));
        assert_eq!(acme.next_attempt_at, state.next_attempt_at);
        assert!(svc.acme_due_domains(now).await.unwrap().is_empty());
        assert_eq!(
            svc.acme_due_domains(now + FIRST_RETRY).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn without_a_certificate_retries_give_up() {
        let svc = with_apps().await;
        let mut domain = acme_domain(&svc, "shop.example.com").await;
        let now = OffsetDateTime::now_utc();
        for _ in 0..MAX_ATTEMPTS {
            svc.record_acme_failure(&domain, "connection refused", now)
                .await
                .unwrap();
            domain = svc
                .store()
                .domain("shop.example.com")
                .await
                .unwrap()
                .unwrap();
        }
        let acme = domain.acme.unwrap();
        assert_eq!(acme.attempts, MAX_ATTEMPTS);
        assert_eq!(acme.next_attempt_at, None);
        assert!(svc
            .acme_due_domains(now + Duration::days(365))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_certificate_for_another_host_is_refused_and_nothing_changes() {
        let svc = with_apps().await;
        let domain = acme_domain(&svc, "shop.example.com").await;
        let (chain, key) = certificate(
            &["other.example.com"],
            Duration::days(-1),
            Duration::days(89),
        );
        let e = svc
            .record_acme_certificate(&domain, &chain, &key, OffsetDateTime::now_utc())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("does not cover shop.example.com"),
            "{e}"
        );
        let stored = svc
            .store()
            .domain("shop.example.com")
            .await
            .unwrap()
            .unwrap();
        assert!(stored.certificate_pem.is_none() && stored.private_key.is_none());
        assert_eq!(stored.acme.unwrap().status, AcmeStatus::Pending);
    }

    #[tokio::test]
    async fn account_credentials_are_encrypted_per_directory() {
        let svc = with_apps().await;
        let dir = "https://acme.example/directory";
        assert!(svc.acme_account_credentials(dir).await.unwrap().is_none());
        let creds = SecretString::from(r#"{"id":"x","key_pkcs8":"SECRETKEY"}"#.to_string());
        svc.save_acme_account(dir, Some("ops@example.com"), &creds)
            .await
            .unwrap();
        let row = svc.store().acme_account(dir).await.unwrap().unwrap();
        assert!(!row.credentials.contains("SECRETKEY"));
        assert!(!format!("{row:?}").contains(&row.credentials));
        assert_eq!(
            svc.acme_account_credentials(dir)
                .await
                .unwrap()
                .unwrap()
                .expose_secret(),
            creds.expose_secret()
        );
        // Bound to its directory: the ciphertext does not open as another's.
        let aad = Aad::acme_account_credentials("https://other.example/directory");
        assert!(svc.key.decrypt_string(&row.credentials, &aad).is_err());
        let e = svc.save_acme_account(dir, None, &creds).await.unwrap_err();
        assert_eq!(e.code(), crate::error::ErrorCode::AlreadyExists);
    }
}
