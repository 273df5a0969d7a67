//! The one registry of columns that hold ciphertext, and how each row's AAD is built.
//!
//! Architecture invariant: a ciphertext column exists in the schema only if it is listed in
//! [`ENCRYPTED_COLUMNS`], and its AAD is only ever built through its [`EncryptedColumn`]
//! (the typed constructors on [`Aad`] go through these constants). The start-up key check,
//! the "is a master key required" count, and any future rewrap or backup verifier iterate
//! this list, so a new encrypted column cannot be forgotten by one of them.

use super::Aad;

/// A column that holds `v1:` ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptedColumn {
    pub table: &'static str,
    pub column: &'static str,
    /// The row's columns whose values, in this order, are the AAD's row parts.
    pub aad_columns: &'static [&'static str],
    /// An SQL condition selecting the encrypted rows when only some rows of the column are
    /// (a settings table); `None` when every non-NULL value is ciphertext.
    pub only_where: Option<&'static str>,
    /// Encrypted directly under the root key, never under a ring key: the ring itself and the
    /// key check. `berth key rotate` leaves them; a root-key rotation rewraps them.
    pub under_root: bool,
}

impl EncryptedColumn {
    /// The AAD of one row, from the values of [`Self::aad_columns`].
    pub fn aad(&self, row: &[&str]) -> Aad {
        debug_assert_eq!(
            row.len(),
            self.aad_columns.len(),
            "{}.{}",
            self.table,
            self.column
        );
        Aad::new(self.table, self.column, row)
    }
}

/// `secrets.value`, bound to the group and the secret's name.
pub const SECRET_VALUE: EncryptedColumn = EncryptedColumn {
    table: "secrets",
    column: "value",
    aad_columns: &["group_id", "name"],
    only_where: None,
    under_root: false,
};

/// `repositories.password`, bound to the repository's name.
pub const REPOSITORY_PASSWORD: EncryptedColumn = EncryptedColumn {
    table: "repositories",
    column: "password",
    aad_columns: &["name"],
    only_where: None,
    under_root: false,
};

/// `webhooks.secret` (outgoing notification signing secret), bound to the webhook's id.
pub const WEBHOOK_SECRET: EncryptedColumn = EncryptedColumn {
    table: "webhooks",
    column: "secret",
    aad_columns: &["id"],
    only_where: None,
    under_root: false,
};

/// `secret_providers.credentials`, bound to the provider's id.
pub const PROVIDER_CREDENTIALS: EncryptedColumn = EncryptedColumn {
    table: "secret_providers",
    column: "credentials",
    aad_columns: &["id"],
    only_where: None,
    under_root: false,
};

/// `domains.private_key` (a TLS key from files, or one made for an ACME order), bound to the
/// host name.
pub const DOMAIN_PRIVATE_KEY: EncryptedColumn = EncryptedColumn {
    table: "domains",
    column: "private_key",
    aad_columns: &["domain"],
    only_where: None,
    under_root: false,
};

/// `acme_accounts.credentials` (an ACME account's JSON credentials with its private key),
/// bound to the directory URL.
pub const ACME_ACCOUNT_CREDENTIALS: EncryptedColumn = EncryptedColumn {
    table: "acme_accounts",
    column: "credentials",
    aad_columns: &["directory_url"],
    only_where: None,
    under_root: false,
};

/// The settings key whose encrypted value proves which master key a database belongs to.
pub const KEY_CHECK_SETTING: &str = "master_key_check";

/// `system_settings.value` of the master-key check row.
pub const KEY_CHECK_VALUE: EncryptedColumn = EncryptedColumn {
    table: "system_settings",
    column: "value",
    aad_columns: &["key"],
    only_where: Some("key = 'master_key_check'"),
    under_root: true,
};

/// `key_ring.wrapped`: a data key wrapped under the root key, bound to its key id.
pub const KEY_RING_WRAPPED: EncryptedColumn = EncryptedColumn {
    table: "key_ring",
    column: "wrapped",
    aad_columns: &["id"],
    only_where: None,
    under_root: true,
};

/// Every ciphertext column of the schema.
pub const ENCRYPTED_COLUMNS: &[EncryptedColumn] = &[
    SECRET_VALUE,
    REPOSITORY_PASSWORD,
    WEBHOOK_SECRET,
    PROVIDER_CREDENTIALS,
    DOMAIN_PRIVATE_KEY,
    ACME_ACCOUNT_CREDENTIALS,
    KEY_CHECK_VALUE,
    KEY_RING_WRAPPED,
];

impl Aad {
    /// The AAD of `secrets.value`.
    pub fn secret(group_id: i64, name: &str) -> Self {
        SECRET_VALUE.aad(&[&group_id.to_string(), name])
    }

    /// The AAD of `repositories.password`.
    pub fn repository_password(repository: &str) -> Self {
        REPOSITORY_PASSWORD.aad(&[repository])
    }

    /// The AAD of `webhooks.secret`.
    pub fn webhook_secret(webhook_id: i64) -> Self {
        WEBHOOK_SECRET.aad(&[&webhook_id.to_string()])
    }

    /// The AAD of `secret_providers.credentials`.
    pub fn provider_credentials(provider_id: i64) -> Self {
        PROVIDER_CREDENTIALS.aad(&[&provider_id.to_string()])
    }

    /// The AAD of `domains.private_key`.
    pub fn domain_private_key(host: &str) -> Self {
        DOMAIN_PRIVATE_KEY.aad(&[host])
    }

    /// The AAD of `acme_accounts.credentials`.
    pub fn acme_account_credentials(directory_url: &str) -> Self {
        ACME_ACCOUNT_CREDENTIALS.aad(&[directory_url])
    }

    /// The AAD of a wrapped key ring entry.
    pub fn key_ring(key_id: &str) -> Self {
        KEY_RING_WRAPPED.aad(&[key_id])
    }

    /// The AAD of the master-key check value.
    pub fn key_check() -> Self {
        KEY_CHECK_VALUE.aad(&[KEY_CHECK_SETTING])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_check_filter_names_the_key_check_setting() {
        assert_eq!(
            KEY_CHECK_VALUE.only_where,
            Some(format!("key = '{KEY_CHECK_SETTING}'").as_str())
        );
    }

    #[test]
    fn every_column_is_listed_once() {
        for (i, a) in ENCRYPTED_COLUMNS.iter().enumerate() {
            for b in &ENCRYPTED_COLUMNS[i + 1..] {
                assert!((a.table, a.column) != (b.table, b.column), "{a:?} twice");
            }
        }
    }
}
