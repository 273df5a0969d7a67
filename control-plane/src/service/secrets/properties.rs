//! Properties of the .env and JSON import parsers over generated documents (proptest;
//! `PROPTEST_CASES` sets the number of cases): no document makes them panic, an error never
//! repeats a document's content (a malformed line may hold a secret), and every variable
//! written in any of the forms the parsers document reads back as it was written.

use std::collections::BTreeMap;

use proptest::prelude::*;
use secrecy::ExposeSecret as _;

use super::{parse_dotenv, parse_json};

/// What a secret looks like inside a malformed document; never in an error.
const MARKER: &str = "s3cr3t-Marker";

fn key() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,20}"
}

/// How a variable is written in a .env document.
#[derive(Debug, Clone)]
enum Form {
    /// `"…"` with `\\`, `\"`, `\n` (and, at random, `\t`) escaped: any value.
    Double { escape_tabs: bool },
    /// `'…'`, literal: values without `'` or a line break.
    Single,
    /// Bare: values of characters no parser misreads.
    Bare,
}

fn write(value: &str, form: &Form) -> Option<String> {
    match form {
        Form::Double { escape_tabs } => {
            let mut out = String::from("\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str("\\n"),
                    '\t' if *escape_tabs => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
            Some(out)
        }
        Form::Single => (!value.contains(['\'', '\n', '\r'])).then(|| format!("'{value}'")),
        Form::Bare => value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@+-$%,".contains(c))
            .then(|| value.to_owned()),
    }
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        any::<bool>().prop_map(|escape_tabs| Form::Double { escape_tabs }),
        Just(Form::Single),
        Just(Form::Bare),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_./:@+-]{0,30}",
        "[ -~\t\n]{0,40}"
    ]
}

/// A variable line, maybe with `export `, spaces around `=`, and a trailing comment.
fn line() -> impl Strategy<Value = (String, String, String)> {
    (
        key(),
        value(),
        form(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(key, value, form, export, spaced, comment)| {
            // Double quotes hold any value: the form when the one drawn cannot.
            let written = write(&value, &form)
                .or_else(|| write(&value, &Form::Double { escape_tabs: true }))
                .expect("double quotes hold any value");
            let mut line = String::new();
            if export {
                line.push_str("export ");
            }
            line.push_str(&key);
            line.push_str(if spaced { " = " } else { "=" });
            line.push_str(&written);
            if comment {
                line.push_str(" # a comment");
            }
            (key, value, line)
        })
}

fn lines_of(document: &str) -> Vec<(String, String)> {
    parse_dotenv(document)
        .unwrap_or_else(|e| panic!("{document:?}: {e}"))
        .into_iter()
        .map(|(k, v)| (k, v.expose_secret().to_owned()))
        .collect()
}

proptest! {
    #[test]
    fn no_document_makes_the_parsers_panic(document in prop_oneof![
        any::<String>(),
        "([A-Za-z_ =\"'#\\\\nt]{0,12}\n?){0,6}",
    ]) {
        let _ = parse_dotenv(&document);
        let _ = parse_json(&document);
    }

    /// Comments and blank lines between them change nothing.
    #[test]
    fn dotenv_variables_read_back_as_written(
        lines in proptest::collection::vec((line(), any::<bool>()), 0..8),
        crlf in any::<bool>(),
    ) {
        let mut document = String::new();
        let newline = if crlf { "\r\n" } else { "\n" };
        for ((_, _, line), noise) in &lines {
            if *noise {
                document.push_str(&format!("# {MARKER}{newline}{newline}"));
            }
            document.push_str(line);
            document.push_str(newline);
        }
        let expected: Vec<(String, String)> =
            lines.into_iter().map(|((k, v, _), _)| (k, v)).collect();
        prop_assert_eq!(lines_of(&document), expected);
    }

    /// A malformed document is refused naming a line, never repeating what it holds.
    #[test]
    fn errors_never_repeat_the_document(
        prefix in "[A-Za-z_ =\"'#]{0,8}",
        suffix in "[A-Za-z_ =\"'#\\\\]{0,8}",
        lines in 0usize..3,
    ) {
        let document = format!("{}{prefix}{MARKER}{suffix}\n", "OK=1\n".repeat(lines));
        if let Err(e) = parse_dotenv(&document) {
            prop_assert!(!e.to_string().contains(MARKER), "{}", e);
        }
        // A value that is not a string, maybe in a document that does not parse.
        let json = format!("{{\"A\": [\"{MARKER}\"]{suffix}");
        if let Err(e) = parse_json(&json) {
            prop_assert!(!e.to_string().contains(MARKER), "{}", e);
        }
    }

    /// A JSON object of strings reads back as the same pairs.
    #[test]
    fn json_objects_read_back_as_written(
        pairs in proptest::collection::btree_map(any::<String>(), any::<String>(), 0..8),
        pretty in any::<bool>(),
    ) {
        let document = if pretty {
            serde_json::to_string_pretty(&pairs).unwrap()
        } else {
            serde_json::to_string(&pairs).unwrap()
        };
        let read: BTreeMap<String, String> = parse_json(&document)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.expose_secret().to_owned()))
            .collect();
        prop_assert_eq!(read, pairs);
    }
}
