//! Input rules shared by every entry point (gRPC, webhook, import). Each returns a lowercase
//! message naming the field, never the offending secret value.

use crate::error::{Error, Result};

pub const MAX_ENV_KEY_LEN: usize = 128;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// Environment variable keys: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
pub fn env_key(key: &str) -> Result<()> {
    let mut chars = key.chars();
    let valid_start = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(format!(
            "invalid variable name {:?}: must match [A-Za-z_][A-Za-z0-9_]*",
            truncate(key)
        )));
    }
    if key.len() > MAX_ENV_KEY_LEN {
        return Err(Error::invalid(format!(
            "variable name is longer than {MAX_ENV_KEY_LEN} characters"
        )));
    }
    Ok(())
}

/// Secret names become variable names when a group is expanded, so they follow the same rule.
pub fn secret_name(name: &str) -> Result<()> {
    env_key(name).map_err(|_| {
        Error::invalid(format!(
            "invalid secret name {:?}: must match [A-Za-z_][A-Za-z0-9_]* (it becomes a variable name)",
            truncate(name)
        ))
    })
}

/// The most a resolved environment (names and values) may weigh: it travels in one deploy
/// command, which agents decode with a 4 MiB limit, and Docker keeps it in the container's
/// config.
pub const MAX_ENVIRONMENT_BYTES: usize = 1024 * 1024;

/// Refuses a resolved environment above [`MAX_ENVIRONMENT_BYTES`], naming its largest entries
/// (never a value).
pub fn environment_size<'a>(
    app: &str,
    entries: impl Iterator<Item = (&'a str, usize)>,
) -> Result<()> {
    let mut sizes: Vec<(&str, usize)> = entries.map(|(k, v)| (k, k.len() + v)).collect();
    let total: usize = sizes.iter().map(|(_, n)| n).sum();
    if total <= MAX_ENVIRONMENT_BYTES {
        return Ok(());
    }
    sizes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let largest: Vec<String> = sizes
        .iter()
        .take(3)
        .map(|(k, n)| format!("{k} ({} KiB)", n.div_ceil(1024)))
        .collect();
    Err(Error::FailedPrecondition(format!(
        "the resolved environment of {app} is {} KiB, above the {} KiB a deploy command may carry (largest: {}); move large values to a file or a volume",
        total.div_ceil(1024),
        MAX_ENVIRONMENT_BYTES / 1024,
        largest.join(", ")
    )))
}

pub fn env_value(key: &str, value: &str) -> Result<()> {
    if value.len() > MAX_ENV_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "value of {key} is {} bytes, the limit is {MAX_ENV_VALUE_BYTES}",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "value of {key} contains a NUL byte"
        )));
    }
    Ok(())
}

pub fn secret_value(name: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("secret {name} has an empty value")));
    }
    if value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "secret {name} is {} bytes, the limit is {MAX_SECRET_VALUE_BYTES}",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(Error::invalid(format!("secret {name} contains a NUL byte")));
    }
    Ok(())
}

/// Names of groups, applications, API keys, repositories: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at
/// most 64 characters (they end up in container names and URLs).
pub fn name(kind: &str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid_start = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric());
    if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(Error::invalid(format!(
            "invalid {kind} name {:?}: use letters, digits, '_', '.', '-', starting with a letter or digit",
            truncate(name)
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "{kind} name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

pub fn description(description: Option<&str>) -> Result<()> {
    match description {
        Some(d) if d.len() > MAX_DESCRIPTION_LEN => Err(Error::invalid(format!(
            "description is longer than {MAX_DESCRIPTION_LEN} bytes"
        ))),
        _ => Ok(()),
    }
}

/// A Docker image reference without tag or digest: `[host[:port]/]path`, as Docker's own
/// grammar (distribution/reference) has it, so nothing accepted here fails at the agent's
/// pull: a host of dot-separated labels (letters, digits, inner `-`) and an optional numeric
/// port; path components of lowercase letters and digits, joined by one separator (`.`,
/// `_`, `__` or a run of `-`).
pub fn image(image: &str) -> Result<()> {
    let bad = || {
        Error::invalid(format!(
            "invalid image {:?}: expected [registry[:port]/]name without tag (the version is separate)",
            truncate(image)
        ))
    };
    if image.is_empty() || image.len() > 255 {
        return Err(bad());
    }
    let mut parts: Vec<&str> = image.split('/').collect();
    // A first component with '.', ':' or "localhost" is a registry host.
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        let host = parts.remove(0);
        let (h, port) = host.split_once(':').unwrap_or((host, "0"));
        let label = |l: &str| {
            !l.is_empty()
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !h.split('.').all(label)
            || !port.chars().all(|c| c.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(bad());
        }
    }
    if !parts.into_iter().all(path_component) {
        return Err(bad());
    }
    Ok(())
}

/// `[a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*`: what lies between the runs of letters and digits
/// is one separator, and there is nothing before the first run or after the last.
fn path_component(part: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separators: Vec<&str> = part.split(alphanumeric).collect();
    let (Some(first), Some(last)) = (separators.first(), separators.last()) else {
        return false;
    };
    !part.is_empty()
        && first.is_empty()
        && last.is_empty()
        && separators
            .iter()
            .all(|s| matches!(*s, "" | "." | "_" | "__") || s.chars().all(|c| c == '-'))
}

/// A Docker tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) or a digest (`sha256:<64 hex>`).
pub fn version(version: &str) -> Result<()> {
    if let Some(hex) = version.strip_prefix("sha256:") {
        if hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return Ok(());
        }
    } else {
        let mut chars = version.chars();
        let valid_start = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_');
        if valid_start
            && version.len() <= 128
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Ok(());
        }
    }
    Err(Error::invalid(format!(
        "invalid version {:?}: must be a docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}) or sha256 digest",
        truncate(version)
    )))
}

/// Longest host name (RFC 1035, without the trailing dot).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// A host name the host proxy routes by Host header and SNI, returned lower-cased: labels of
/// `[a-z0-9-]`, 1 to 63 characters, not starting or ending with '-', at most 253 characters
/// in all. IP addresses, wildcards, ports and trailing dots are refused, each with its own
/// message; a single label (`localhost`, an intranet name) is accepted.
pub fn host_name(host: &str) -> Result<String> {
    let shown = truncate(host);
    if host.is_empty() {
        return Err(Error::invalid(
            "domain is empty: give a host name such as shop.example.com",
        ));
    }
    if host.parse::<std::net::IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.split_once(']'))
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
    {
        return Err(Error::invalid(format!(
            "domain {shown:?} is an ip address: the host proxy routes host names; publish a host port to reach the app by address"
        )));
    }
    if host.contains('*') {
        return Err(Error::invalid(format!(
            "domain {shown:?} is a wildcard: add each host name on its own"
        )));
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        return Err(Error::invalid(format!(
            "domain {shown:?} has a port ({port:?}): give the host name only ({:?}); the proxy serves domains on 80 and 443",
            truncate(name)
        )));
    }
    if host.ends_with('.') {
        return Err(Error::invalid(format!(
            "domain {shown:?} ends with a dot: give it without the trailing dot"
        )));
    }
    if !host.is_ascii() {
        return Err(Error::invalid(format!(
            "domain {shown:?} is not ascii: give an internationalized name in its punycode (xn--) form"
        )));
    }
    if host.len() > MAX_HOST_NAME_LEN {
        return Err(Error::invalid(format!(
            "domain is {} characters long, the limit is {MAX_HOST_NAME_LEN}",
            host.len()
        )));
    }
    let host = host.to_ascii_lowercase();
    for label in host.split('.') {
        if label.is_empty() {
            return Err(Error::invalid(format!(
                "domain {shown:?} has an empty label (two dots in a row, or a leading dot)"
            )));
        }
        if label.len() > 63 {
            return Err(Error::invalid(format!(
                "label {:?} of domain {shown:?} is {} characters long, the limit is 63",
                truncate(label),
                label.len()
            )));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(Error::invalid(format!(
                "label {:?} of domain {shown:?} contains {bad:?}: use letters, digits and '-'",
                truncate(label)
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Error::invalid(format!(
                "label {label:?} of domain {shown:?} starts or ends with '-'"
            )));
        }
    }
    // A top-level label of digits only is an address in disguise (`10.1`, `1.2.3`).
    if host
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(Error::invalid(format!(
            "domain {shown:?} looks like an ip address (its last label is all digits): give a host name"
        )));
    }
    Ok(host)
}

/// The longest time a previous container may be drained or given to stop.
pub const MAX_STOP_SECONDS: u32 = 3600;

/// Drain and stop timeouts: 0 to 3600 seconds.
pub fn stop_seconds(what: &str, seconds: u32) -> Result<()> {
    if seconds > MAX_STOP_SECONDS {
        return Err(Error::invalid(format!(
            "{what} is {seconds} s, the limit is {MAX_STOP_SECONDS} s"
        )));
    }
    Ok(())
}

/// A stop signal, returned normalized: `SIG[A-Z0-9]+` (upper-cased), a number from 1 to 64,
/// or empty (the image's STOPSIGNAL).
pub fn stop_signal(signal: &str) -> Result<String> {
    if signal.is_empty() {
        return Ok(String::new());
    }
    if let Ok(n) = signal.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n.to_string());
        }
    } else {
        let upper = signal.to_ascii_uppercase();
        if let Some(name) = upper.strip_prefix("SIG") {
            if !name.is_empty()
                && upper.len() <= 16
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                return Ok(upper);
            }
        }
    }
    Err(Error::invalid(format!(
        "invalid stop signal {:?}: give a name such as SIGTERM, SIGQUIT, SIGINT, or a number from 1 to 64",
        truncate(signal)
    )))
}

/// Quotes at most 64 characters of user input back in an error message.
fn truncate(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(64).collect::<String>())
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys() {
        for ok in ["A", "_", "DATABASE_URL", "a1_b2"] {
            env_key(ok).unwrap();
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "ÄÖ", "A\n"] {
            assert!(env_key(bad).is_err(), "{bad:?}");
        }
        assert!(env_key(&"A".repeat(129)).is_err());
    }

    #[test]
    fn images_and_versions() {
        for ok in [
            "busybox",
            "mycompany/myapp",
            "127.0.0.1:5000/team/app",
            "localhost/x",
            "reg.io/a-b/c_d.e",
            "a__b/c---d",
            "Reg.IO:5000/a",
        ] {
            image(ok).unwrap();
        }
        for bad in [
            "",
            "Busybox",
            "app:1.0",
            "a//b",
            "../etc",
            "a/-b",
            "a b",
            "a;rm",
            // Found by `properties::an_accepted_image_is_a_docker_name`: Docker refuses
            // these at the pull.
            "a/0-.a",
            "a..b",
            "a___b",
            "reg.io:+5/a",
            "a-.reg.io/a",
        ] {
            assert!(image(bad).is_err(), "{bad:?}");
        }
        for ok in [
            "v1.2.3",
            "latest",
            "1",
            "_x",
            &format!("sha256:{}", "a".repeat(64)),
        ] {
            version(ok).unwrap();
        }
        for bad in [
            "",
            "-x",
            ".x",
            "v1;rm -rf /",
            "../../etc",
            "v1\n",
            "v1 2",
            "ü",
            &"a".repeat(129),
            "sha256:xyz",
        ] {
            assert!(version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("Shop.Example.COM").unwrap(), "shop.example.com");
        for ok in [
            "localhost",
            "a.b",
            "xn--bcher-kva.example",
            "a-1.b2",
            &format!("{}.com", "a".repeat(63)),
        ] {
            host_name(ok).unwrap();
        }
        let refused = |host: &str, says: &str| {
            let e = host_name(host).unwrap_err().to_string();
            assert!(e.contains(says), "{host:?}: {e}");
        };
        refused("", "empty");
        refused("10.0.0.1", "ip address");
        refused("::1", "ip address");
        refused("[::1]:443", "ip address");
        refused("1.2.3", "ip address");
        refused("*.example.com", "wildcard");
        refused("shop.example.com:8080", "has a port");
        refused("shop.example.com.", "trailing dot");
        refused("a..b", "empty label");
        refused(".a.b", "empty label");
        refused("-a.b", "starts or ends with '-'");
        refused("a-.b", "starts or ends with '-'");
        refused("a_b.com", "contains '_'");
        refused("a b.com", "contains ' '");
        refused("bücher.example", "punycode");
        refused(&format!("{}.com", "a".repeat(64)), "limit is 63");
        refused(
            &format!("{}.com", vec!["a".repeat(60); 5].join(".")),
            "limit is 253",
        );
    }

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal("sigquit").unwrap(), "SIGQUIT");
        assert_eq!(stop_signal("SIGRTMIN3").unwrap(), "SIGRTMIN3");
        assert_eq!(stop_signal("15").unwrap(), "15");
        assert_eq!(stop_signal("").unwrap(), "");
        for bad in ["TERM", "SIG", "0", "65", "SIG-TERM", "SIGTERM;", "-9"] {
            assert!(stop_signal(bad).is_err(), "{bad:?}");
        }
        stop_seconds("drain timeout", 3600).unwrap();
        assert!(stop_seconds("drain timeout", 3601).is_err());
    }

    #[test]
    fn names() {
        name("group", "production-db").unwrap();
        assert!(name("group", "").is_err());
        assert!(name("group", "-x").is_err());
        assert!(name("group", "a/b").is_err());
        assert!(name("group", "名前").is_err());
    }
}
