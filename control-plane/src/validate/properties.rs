//! Properties of the input rules, over generated input (proptest; `PROPTEST_CASES` sets the
//! number of cases, 256 by default): no input makes a rule panic; each rule accepts exactly
//! what its stated grammar allows (written here a second way, on characters and components,
//! so a slip in either shows as a difference); and what a normalizing rule returns is
//! accepted again unchanged.

use proptest::prelude::*;

use super::*;

/// Strings over the characters these rules care about, plus some they refuse.
fn reference_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9._:/+@ -]{0,48}|sha256:[0-9a-fA-F]{60,66}").unwrap()
}

/// Any string: every Unicode scalar value, control characters included.
fn anything() -> impl Strategy<Value = String> {
    any::<String>()
}

/// distribution/reference (the grammar Docker parses names with):
/// `path-component := [a-z0-9]+ (separator [a-z0-9]+)*`, `separator := [._] | __ | -+`.
fn docker_path_component(c: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut rest = c;
    loop {
        let run = rest.find(|c: char| !alnum(c)).unwrap_or(rest.len());
        if run == 0 {
            return false;
        }
        rest = &rest[run..];
        if rest.is_empty() {
            return true;
        }
        let sep = rest.find(|c: char| alnum(c)).unwrap_or(rest.len());
        let separator = &rest[..sep];
        let ok = matches!(separator, "." | "_" | "__") || separator.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
        rest = &rest[sep..];
    }
}

/// `domain := domain-name (':' [0-9]+)?`, `domain-name := component ('.' component)*`,
/// `component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn docker_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !c.starts_with('-')
            && !c.ends_with('-')
    };
    host.split('.').all(component_ok)
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// A name (no tag or digest) Docker accepts: the first component is a registry when it has a
/// `.` or `:`, is `localhost`, or has an upper-case letter; at most 255 characters.
fn docker_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let components: Vec<&str> = s.split('/').collect();
    let first = components[0];
    let has_domain = components.len() > 1
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    let path = if has_domain {
        if !docker_domain(first) {
            return false;
        }
        &components[1..]
    } else {
        &components[..]
    };
    path.iter().all(|c| docker_path_component(c))
}

/// Names Docker accepts, drawn the way people write them: an optional registry host (with
/// a dot, maybe a port) and one to three path components.
fn docker_names() -> impl Strategy<Value = String> {
    let component = "[a-z0-9]{1,8}(([._]|__|-{1,2})[a-z0-9]{1,8}){0,2}";
    let host = "[a-z0-9]{1,10}(\\.[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?){1,3}(:[1-9][0-9]{0,3})?";
    (
        proptest::option::of(proptest::string::string_regex(host).unwrap()),
        proptest::collection::vec(proptest::string::string_regex(component).unwrap(), 1..4),
    )
        .prop_map(|(host, mut path)| {
            // Without a host, a first component with a dot would be read as one.
            if host.is_none() {
                path[0] = path[0].replace('.', "-");
            }
            let path = path.join("/");
            match host {
                Some(host) => format!("{host}/{path}"),
                None => path,
            }
        })
}

fn tag_model(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn digest_model(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    })
}

proptest! {
    #[test]
    fn no_input_makes_a_rule_panic(s in prop_oneof![anything(), reference_like()]) {
        let _ = env_key(&s);
        let _ = secret_name(&s);
        let _ = env_value("K", &s);
        let _ = secret_value("S", &s);
        let _ = name("app", &s);
        let _ = description(Some(&s));
        let _ = image(&s);
        let _ = version(&s);
        let _ = host_name(&s);
        let _ = stop_signal(&s);
        let _ = environment_size("app", [(s.as_str(), s.len())].into_iter());
    }

    /// Every image the rule accepts is a name Docker accepts: nothing passes validation only
    /// to fail at the agent's pull.
    #[test]
    fn an_accepted_image_is_a_docker_name(s in prop_oneof![
        anything(),
        reference_like(),
        docker_names(),
        "[a-z0-9._-]{1,6}(/[a-z0-9._-]{1,6}){0,2}",
        "[a-z0-9.-]{1,8}:[+0-9]{0,3}/[a-z]{1,3}",
    ]) {
        if image(&s).is_ok() {
            prop_assert!(docker_name(&s), "accepted {s:?}, which docker refuses");
        }
    }

    /// (A first component with a dot is a registry host to Docker too: such names are
    /// valid only when that host is.)
    #[test]
    fn docker_names_are_accepted(s in docker_names()) {
        prop_assume!(docker_name(&s));
        prop_assert!(image(&s).is_ok(), "refused {s:?}");
    }

    #[test]
    fn versions_are_tags_or_digests(s in prop_oneof![
        anything(),
        reference_like(),
        "[A-Za-z0-9_][A-Za-z0-9_.-]{0,130}",
        "sha256:[0-9a-f]{64}",
    ]) {
        prop_assert_eq!(version(&s).is_ok(), tag_model(&s) || digest_model(&s), "{:?}", s);
    }

    #[test]
    fn variable_and_resource_names_follow_their_grammar(s in prop_oneof![
        anything(),
        "[A-Za-z0-9_.-]{0,140}",
    ]) {
        let mut chars = s.chars();
        let key = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && s.len() <= MAX_ENV_KEY_LEN;
        prop_assert_eq!(env_key(&s).is_ok(), key);
        prop_assert_eq!(secret_name(&s).is_ok(), key);
        let mut chars = s.chars();
        let resource = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && s.len() <= MAX_NAME_LEN;
        prop_assert_eq!(name("app", &s).is_ok(), resource);
    }

    /// A host name comes back lower-cased, and that form is accepted as it is.
    #[test]
    fn host_names_normalize_once(s in prop_oneof![
        anything(),
        "[a-zA-Z0-9-]{1,12}(\\.[a-zA-Z0-9-]{1,12}){0,4}",
    ]) {
        if let Ok(host) = host_name(&s) {
            prop_assert_eq!(&host, &s.to_ascii_lowercase());
            prop_assert_eq!(host_name(&host).ok(), Some(host.clone()));
        }
    }

    #[test]
    fn stop_signals_normalize_once(s in prop_oneof![anything(), "(?i)(sig)?[a-z0-9]{0,14}|[0-9]{1,3}"]) {
        if let Ok(signal) = stop_signal(&s) {
            prop_assert_eq!(stop_signal(&signal).ok(), Some(signal.clone()));
        }
    }
}
