//! `Debug` for the messages that carry a plaintext secret, a token or a credential.
//!
//! The build script tells prost not to derive `Debug` for exactly the messages listed in
//! [`REDACTED_MESSAGES`]; each gets an implementation here that prints its other fields and
//! `"<redacted>"` (or, for the deploy environment, the variable names) in place of the
//! secret. A message missing from either side fails to compile (no `Debug`) or is caught by
//! the test below, so the invariant is kept by types, not by discipline.

use std::fmt;

use crate::v1::*;

/// Fully qualified names of the messages whose `Debug` is written here (build.rs reads this).
pub const REDACTED_MESSAGES: &[&str] = &include!("redacted_messages.in");

const REDACTED: &str = "<redacted>";

/// Prints `"<redacted>"` when the field is set, and `None`/empty as they are (whether a
/// secret was given is not itself a secret).
struct Hidden<'a>(Option<&'a str>);

impl fmt::Debug for Hidden<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("None"),
            Some("") => f.write_str("\"\""),
            Some(_) => f.write_str(REDACTED),
        }
    }
}

fn hidden(s: &str) -> Hidden<'_> {
    Hidden(Some(s))
}

fn hidden_opt(s: &Option<String>) -> Hidden<'_> {
    Hidden(s.as_deref())
}

/// Writes `Debug` for a message: `show` fields as they are, `hide` fields redacted.
macro_rules! redacted_debug {
    ($ty:ident { show: [$($show:ident),*], hide: [$($hide:ident),*], hide_opt: [$($hide_opt:ident),*] }) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($show), &self.$show))*
                    $(.field(stringify!($hide), &hidden(&self.$hide)))*
                    $(.field(stringify!($hide_opt), &hidden_opt(&self.$hide_opt)))*
                    .finish()
            }
        }
    };
}

redacted_debug!(EnrollRequest {
    show: [csr_pem, agent_version],
    hide: [token],
    hide_opt: []
});
redacted_debug!(ProxyDomain {
    show: [host, container_port, tls_cert_pem],
    hide: [tls_key_pem],
    hide_opt: []
});
redacted_debug!(AddDomainRequest {
    show: [app, host, container_port, tls_cert_pem, acme],
    hide: [tls_key_pem],
    hide_opt: []
});
redacted_debug!(RegistryCredentials {
    show: [server, username],
    hide: [password],
    hide_opt: []
});
redacted_debug!(SetSecretRequest {
    show: [group, name, description],
    hide: [value],
    hide_opt: []
});
redacted_debug!(RevealSecretResponse {
    show: [secret],
    hide: [value],
    hide_opt: []
});
redacted_debug!(ImportSecretsRequest {
    show: [group, format, overwrite],
    hide: [document],
    hide_opt: []
});
redacted_debug!(EnvPair {
    show: [key],
    hide: [value],
    hide_opt: []
});
redacted_debug!(CreateApplicationResponse {
    show: [application],
    hide: [webhook_token],
    hide_opt: []
});
redacted_debug!(RotateWebhookTokenResponse {
    show: [application],
    hide: [webhook_token],
    hide_opt: []
});
redacted_debug!(AddRepositoryRequest {
    show: [name, url, username],
    hide: [],
    hide_opt: [password]
});
redacted_debug!(CreateApiKeyResponse {
    show: [api_key],
    hide: [key],
    hide_opt: []
});
redacted_debug!(CreateEnrollmentTokenResponse {
    show: [expires_at, ca_fingerprint],
    hide: [token],
    hide_opt: []
});
// Notification URLs often carry a credential of the receiver (chat webhooks).
redacted_debug!(AddWebhookRequest {
    show: [events],
    hide: [url],
    hide_opt: [secret]
});
redacted_debug!(AddWebhookResponse {
    show: [webhook],
    hide: [secret],
    hide_opt: []
});
redacted_debug!(WebhookDeployRequest {
    show: [
        application_id,
        application_name,
        version,
        client_ip,
        wait,
        wait_timeout_ms
    ],
    hide: [token],
    hide_opt: []
});
redacted_debug!(AddProviderRequest {
    show: [name, r#type, settings, sync_interval_seconds],
    hide: [credential],
    hide_opt: []
});
redacted_debug!(UpdateProviderRequest {
    show: [name, settings, sync_interval_seconds],
    hide: [],
    hide_opt: [credential]
});
redacted_debug!(WebhookStatusRequest {
    show: [deployment_id, client_ip],
    hide: [token],
    hide_opt: []
});
redacted_debug!(AcmeChallengeCommand {
    show: [token, ttl_seconds],
    hide: [key_authorization],
    hide_opt: []
});
redacted_debug!(SetChallengeRequest {
    show: [token, ttl_seconds],
    hide: [key_authorization],
    hide_opt: []
});
redacted_debug!(RegistryPushRequest {
    show: [events, client_ip],
    hide: [secret],
    hide_opt: []
});

// `berth import-v1`: V1 values, passwords and provider configs (plaintext credentials inside)
// travel in the request, the created applications' webhook tokens in the response.
redacted_debug!(V1Secret {
    show: [v1_id, name, description, created_at, updated_at],
    hide: [value],
    hide_opt: []
});
redacted_debug!(V1Repository {
    show: [v1_id, name, url, username],
    hide: [],
    hide_opt: [password]
});
// A plain V1 value may well be a credential (V1 had no secret references in env_vars).
redacted_debug!(V1Variable {
    show: [source, application, key, secret],
    hide: [value],
    hide_opt: []
});
redacted_debug!(V1Provider {
    show: [v1_id, name, r#type],
    hide: [config],
    hide_opt: []
});
redacted_debug!(ImportedToken {
    show: [application],
    hide: [webhook_token],
    hide_opt: []
});

/// The resolved environment travels here: names are shown, values never.
impl fmt::Debug for DeployCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.env.keys().collect();
        names.sort();
        f.debug_struct("DeployCommand")
            .field("deployment_id", &self.deployment_id)
            .field("app", &self.app)
            .field("image", &self.image)
            .field("version", &self.version)
            .field("env_names", &names)
            .field("ports", &self.ports)
            .field("registry", &self.registry)
            .field("health_check", &self.health_check)
            .field("restart_policy", &self.restart_policy)
            .field("command", &self.command)
            .field("sent_at_unix_nanos", &self.sent_at_unix_nanos)
            .field("domains", &self.domains)
            .field("stop", &self.stop)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-VALUE-that-must-not-print";

    fn assert_hidden(what: &str, debug: String) {
        assert!(!debug.contains(SECRET), "{what} printed a secret: {debug}");
        assert!(
            debug.contains(REDACTED),
            "{what} does not say it redacted: {debug}"
        );
    }

    #[test]
    fn no_message_prints_its_secret() {
        let s = || SECRET.to_string();
        let command = DeployCommand {
            deployment_id: "d1".into(),
            app: "web".into(),
            env: [("DATABASE_URL".to_string(), s())].into(),
            registry: Some(RegistryCredentials {
                server: "r:5000".into(),
                username: "ci".into(),
                password: s(),
            }),
            ..Default::default()
        };
        let debug = format!("{command:?}");
        assert_hidden("DeployCommand", debug.clone());
        assert!(debug.contains("DATABASE_URL"), "{debug}");
        // Through the enclosing stream message too.
        let control = ControlMessage {
            msg: Some(control_message::Msg::Deploy(command)),
        };
        assert_hidden("ControlMessage", format!("{control:?}"));

        let domain = ProxyDomain {
            host: "shop.example.com".into(),
            tls_key_pem: s(),
            ..Default::default()
        };
        assert_hidden("ProxyDomain", format!("{domain:?}"));
        let routes = ControlMessage {
            msg: Some(control_message::Msg::Routes(RoutesCommand {
                app: "web".into(),
                domains: vec![domain.clone()],
            })),
        };
        assert_hidden("RoutesCommand", format!("{routes:?}"));
        assert_hidden(
            "SetRouteRequest",
            format!(
                "{:?}",
                SetRouteRequest {
                    route: Some(ProxyRoute {
                        domains: vec![domain],
                        ..Default::default()
                    }),
                }
            ),
        );

        assert_hidden(
            "AddDomainRequest",
            format!(
                "{:?}",
                AddDomainRequest {
                    host: "shop.example.com".into(),
                    tls_key_pem: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "EnrollRequest",
            format!(
                "{:?}",
                EnrollRequest {
                    token: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "SetSecretRequest",
            format!(
                "{:?}",
                SetSecretRequest {
                    value: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "RevealSecretResponse",
            format!(
                "{:?}",
                RevealSecretResponse {
                    value: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "ImportSecretsRequest",
            format!(
                "{:?}",
                ImportSecretsRequest {
                    document: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "ExportEnvResponse",
            format!(
                "{:?}",
                ExportEnvResponse {
                    vars: vec![EnvPair {
                        key: "K".into(),
                        value: s()
                    }]
                }
            ),
        );
        assert_hidden(
            "CreateApplicationResponse",
            format!(
                "{:?}",
                CreateApplicationResponse {
                    webhook_token: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "RotateWebhookTokenResponse",
            format!(
                "{:?}",
                RotateWebhookTokenResponse {
                    webhook_token: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "AddRepositoryRequest",
            format!(
                "{:?}",
                AddRepositoryRequest {
                    password: Some(s()),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "CreateApiKeyResponse",
            format!(
                "{:?}",
                CreateApiKeyResponse {
                    key: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "CreateEnrollmentTokenResponse",
            format!(
                "{:?}",
                CreateEnrollmentTokenResponse {
                    token: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "AddWebhookRequest",
            format!(
                "{:?}",
                AddWebhookRequest {
                    url: s(),
                    secret: Some(s()),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "AddWebhookResponse",
            format!(
                "{:?}",
                AddWebhookResponse {
                    secret: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "WebhookDeployRequest",
            format!(
                "{:?}",
                WebhookDeployRequest {
                    token: s(),
                    ..Default::default()
                }
            ),
        );
        let plan = ImportV1Request {
            secrets: vec![V1Secret {
                value: s(),
                ..Default::default()
            }],
            repositories: vec![V1Repository {
                password: Some(s()),
                ..Default::default()
            }],
            variables: vec![V1Variable {
                value: s(),
                ..Default::default()
            }],
            providers: vec![V1Provider {
                config: s(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let debug = format!("{plan:?}");
        assert_hidden("ImportV1Request", debug.clone());
        assert_eq!(debug.matches(REDACTED).count(), 4, "{debug}");
        assert_hidden(
            "ImportV1Response",
            format!(
                "{:?}",
                ImportV1Response {
                    tokens: vec![ImportedToken {
                        application: "web".into(),
                        webhook_token: s(),
                    }],
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "AddProviderRequest",
            format!(
                "{:?}",
                AddProviderRequest {
                    credential: s(),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "UpdateProviderRequest",
            format!(
                "{:?}",
                UpdateProviderRequest {
                    credential: Some(s()),
                    ..Default::default()
                }
            ),
        );
        assert_hidden(
            "WebhookStatusRequest",
            format!(
                "{:?}",
                WebhookStatusRequest {
                    token: s(),
                    ..Default::default()
                }
            ),
        );
        let challenge = ControlMessage {
            msg: Some(control_message::Msg::AcmeChallenge(AcmeChallengeCommand {
                token: "tok".into(),
                key_authorization: s(),
                ttl_seconds: 60,
            })),
        };
        assert_hidden("AcmeChallengeCommand", format!("{challenge:?}"));
        assert_hidden(
            "SetChallengeRequest",
            format!(
                "{:?}",
                SetChallengeRequest {
                    token: "tok".into(),
                    key_authorization: s(),
                    ttl_seconds: 60,
                }
            ),
        );
        assert_hidden(
            "RegistryPushRequest",
            format!(
                "{:?}",
                RegistryPushRequest {
                    secret: s(),
                    ..Default::default()
                }
            ),
        );
    }

    #[test]
    fn every_redacted_message_is_tested() {
        // A message added to the list without a line in the test above is caught here.
        assert_eq!(REDACTED_MESSAGES.len(), 28);
    }
}
