//! External secret providers through the CLI, as the README's provider section shows them:
//! `berth provider add` with the credential piped in, a group linked with `--provider`,
//! `berth provider sync`, the synced secrets in `secret list`, `history`, and the guarantees
//! a user relies on (credential never shown, synced secrets not editable by hand, nothing
//! plaintext on disk).

use serde_json::json;

use crate::fixture::data_dir::files_containing;
use crate::fixture::node::{dirs, ok, stderr, DevNode};
use crate::fixture::openbao::{OpenBao, ROOT_TOKEN};

#[tokio::test]
async fn a_vault_provider_feeds_a_group_through_the_cli() {
    let d = dirs();
    let Some(bao) = OpenBao::start(d.logs.path()) else {
        return;
    };
    bao.put(
        "shop/prod",
        json!({"DATABASE_URL": "postgres://shop:pw-4711@db/shop", "STRIPE_KEY": "sk_live_e2e_secret"}),
    );
    let mut node = DevNode::start_without_agent(&d);
    let address = bao.address();

    // The token is piped in, never an argument.
    let out = ok(node.cli(
        &[
            "provider",
            "add",
            "vault",
            "--type",
            "hashicorp-vault",
            "--address",
            &address,
            "--path",
            "shop/prod",
        ],
        Some(ROOT_TOKEN),
    ));
    assert!(out.contains("added provider vault"), "{out}");
    let out = ok(node.cli(&["provider", "test", "vault"], None));
    assert!(out.contains("2 value(s)"), "{out}");
    let out = ok(node.cli(
        &["group", "create", "shop-prod", "--provider", "vault"],
        None,
    ));
    assert!(out.contains("fed by provider vault"), "{out}");

    let out = ok(node.cli(&["provider", "sync", "vault", "--dry-run"], None));
    assert!(
        out.starts_with("would sync vault into shop-prod (success): 2 created"),
        "{out}"
    );
    let out = ok(node.cli(&["provider", "sync", "vault"], None));
    assert!(
        out.starts_with("synced vault into shop-prod (success): 2 created"),
        "{out}"
    );
    assert!(out.contains("DATABASE_URL, STRIPE_KEY"), "{out}");
    assert!(
        !out.contains("pw-4711") && !out.contains("sk_live_e2e_secret"),
        "{out}"
    );

    let out = ok(node.cli(&["secret", "list"], None));
    assert!(
        out.contains("STRIPE_KEY") && out.contains("synced from vault"),
        "{out}"
    );
    let out = ok(node.cli(&["provider", "show", "vault"], None));
    assert!(
        out.contains("(set, never shown)") && !out.contains(ROOT_TOKEN),
        "{out}"
    );
    let out = ok(node.cli(&["provider", "history", "vault"], None));
    assert!(out.contains("success"), "{out}");
    let out = ok(node.cli(&["-o", "json", "provider", "list"], None));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["group"], "shop-prod");
    assert_eq!(list[0]["last_sync_status"], "success");

    // A synced secret is the provider's.
    let refused = node.cli(
        &["secret", "set", "shop-prod", "STRIPE_KEY"],
        Some("hand-edit"),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("synced from provider \"vault\""),
        "{}",
        stderr(&refused)
    );

    // An unchanged second sync writes nothing new; a removed upstream value goes.
    let out = ok(node.cli(&["provider", "sync", "vault"], None));
    assert!(
        out.contains("0 created, 0 updated, 0 removed, 2 unchanged"),
        "{out}"
    );
    bao.put(
        "shop/prod",
        json!({"DATABASE_URL": "postgres://shop:pw-4711@db/shop"}),
    );
    let out = ok(node.cli(&["provider", "sync", "vault"], None));
    assert!(
        out.contains("1 removed") && out.contains("removed: STRIPE_KEY"),
        "{out}"
    );

    // A wrong token: a clear refusal, recorded, nothing changed.
    ok(node.cli(
        &["provider", "update", "vault", "--credential"],
        Some("not-the-token"),
    ));
    let failed = node.cli(&["provider", "sync", "vault"], None);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("permission denied"),
        "{}",
        stderr(&failed)
    );
    assert!(!stderr(&failed).contains("not-the-token"));
    let out = ok(node.cli(&["secret", "list"], None));
    assert!(out.contains("DATABASE_URL"), "{out}");

    // Nothing plaintext on disk: the token, the wrong token, the values.
    node.stop();
    for needle in [ROOT_TOKEN, "not-the-token", "pw-4711", "sk_live_e2e_secret"] {
        assert_eq!(
            files_containing(&node.data_dir, needle),
            Vec::<std::path::PathBuf>::new(),
            "{needle}"
        );
        assert!(!node.log().contains(needle), "{needle} in the node log");
    }
}
