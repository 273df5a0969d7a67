//! `berth env export` writes .env lines that the control plane's .env import
//! ([`berth_control_plane::service::parse_dotenv`]) reads back as the same values, whatever
//! they hold (proptest; `PROPTEST_CASES` sets the number of cases).

use berth_control_plane::service::parse_dotenv;
use proptest::prelude::*;
use secrecy::ExposeSecret as _;

use super::dotenv_value;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\t\n\r]{0,40}",
        "[A-Za-z0-9_./:@+-]{0,30}( #.{0,8})?",
    ]
}

proptest! {
    #[test]
    fn an_exported_environment_imports_as_it_was(
        vars in proptest::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,16}", value()), 0..8),
    ) {
        let document: String = vars
            .iter()
            .map(|(key, value)| format!("{key}={}\n", dotenv_value(value)))
            .collect();
        let read: Vec<(String, String)> = parse_dotenv(&document)
            .unwrap_or_else(|e| panic!("{document:?}: {e}"))
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_owned()))
            .collect();
        prop_assert_eq!(read, vars, "{:?}", document);
    }
}
