//! Properties of the seed's reference syntax in a plain value (`@secret:<id>`,
//! `@group:<name>`, R-4.1) over generated values (proptest; `PROPTEST_CASES` sets the number
//! of cases): no value makes it panic, a reference written the way the `value` column shows it
//! reads back as that reference, and any other text stays a plain value, unchanged.

use proptest::prelude::*;

use super::SetEnvValue;

fn read(text: &str) -> crate::error::Result<SetEnvValue> {
    SetEnvValue::from_seed_syntax(SetEnvValue::Plain(text.to_owned()))
}

proptest! {
    #[test]
    fn no_value_makes_it_panic(text in prop_oneof![
        any::<String>(),
        "@(secret|group):.{0,24}",
        "@secret:[+-]?[0-9]{0,24}",
    ]) {
        let _ = read(&text);
    }

    /// `@secret:<id>`, as the `value` column shows a secret reference.
    #[test]
    fn a_secret_reference_reads_back(id in any::<i64>()) {
        match read(&format!("@secret:{id}")) {
            Ok(SetEnvValue::SecretId(read)) => prop_assert_eq!(read, id),
            other => prop_assert!(false, "@secret:{} read as {:?}", id, other),
        }
    }

    /// `@group:<name>`, as the `value` column shows a group reference (whether the group
    /// exists is decided when the variable is stored).
    #[test]
    fn a_group_reference_reads_back(name in prop_oneof![any::<String>(), "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"]) {
        match read(&format!("@group:{name}")) {
            Ok(SetEnvValue::Group(read)) => prop_assert_eq!(read, name),
            other => prop_assert!(false, "@group:{:?} read as {:?}", name, other),
        }
    }

    /// Anything else is the plain value it was, and `@secret:` followed by anything but an
    /// integer is refused rather than stored as text that looks like a reference.
    #[test]
    fn other_text_stays_plain(text in prop_oneof![any::<String>(), "@?[a-z]{0,8}:?.{0,16}"]) {
        let result = read(&text);
        if let Some(id) = text.strip_prefix("@secret:") {
            prop_assert_eq!(result.is_ok(), id.parse::<i64>().is_ok());
        } else if !text.starts_with("@group:") {
            match result {
                Ok(SetEnvValue::Plain(read)) => prop_assert_eq!(read, text),
                other => prop_assert!(false, "{:?} read as {:?}", text, other),
            }
        }
    }

    /// The other ways of naming a value are not read again.
    #[test]
    fn explicit_references_pass_through(text in any::<String>()) {
        let secret = SetEnvValue::from_seed_syntax(SetEnvValue::Secret(text.clone()));
        prop_assert!(matches!(secret, Ok(SetEnvValue::Secret(t)) if t == text));
        let group = SetEnvValue::from_seed_syntax(SetEnvValue::Group(text.clone()));
        prop_assert!(matches!(group, Ok(SetEnvValue::Group(t)) if t == text));
    }
}
