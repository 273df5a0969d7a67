//! Properties of the `berth app` flags that take text over generated input (proptest;
//! `PROPTEST_CASES` sets the number of cases): `--port`, `--target`, `--health-check`. No
//! text makes them panic; what they accept is in range; and what `app show` prints
//! (`output::port_text`, `output::target_text`) is read back as the same value.

use berth_proto::v1::{target, PortMapping, Target};
use proptest::prelude::*;

use super::{parse_health_check, parse_port, parse_target};
use crate::output::{port_text, target_text};

fn port_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[+-]?[0-9]{0,6}(:[+-]?[0-9]{0,6})?(/[a-zA-Z]{0,4})?",
        "(http|tcp|udp|HTTP)?:?[0-9]{0,6}(/[ -~]{0,12})?",
        "(agent|label)?:?[ -~]{0,16}",
    ]
}

proptest! {
    #[test]
    fn no_text_makes_a_flag_panic(text in port_like()) {
        if let Ok(port) = parse_port(&text) {
            prop_assert!((1..=65535).contains(&port.host) && (1..=65535).contains(&port.container));
            prop_assert!(port.protocol == "tcp" || port.protocol == "udp");
        }
        if let Ok(check) = parse_health_check(&text) {
            prop_assert!((1..=65535).contains(&check.port));
            prop_assert!(check.path.is_empty() || check.path.starts_with('/'));
        }
        let _ = parse_target(&text);
    }

    #[test]
    fn ports_read_back_as_shown(host in 1u32..=65535, container in 1u32..=65535, udp in any::<bool>()) {
        let port = PortMapping {
            host,
            container,
            protocol: if udp { "udp" } else { "tcp" }.into(),
        };
        prop_assert_eq!(parse_port(&port_text(&port)), Ok(port.clone()));
        if !udp {
            prop_assert_eq!(parse_port(&format!("{host}:{container}")), Ok(port.clone()));
            prop_assert_eq!(parse_port(&format!("{host}:{container}/TCP")), Ok(port));
        }
    }

    #[test]
    fn targets_read_back_as_shown(
        name in "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        key in "[A-Za-z0-9_./-]{1,20}",
        value in "[ -~]{0,20}",
        by_label in any::<bool>(),
    ) {
        let target = Target {
            target: Some(if by_label {
                target::Target::Label(format!("{key}={value}"))
            } else {
                target::Target::Agent(name)
            }),
        };
        prop_assert_eq!(parse_target(&target_text(&target)), Ok(target));
    }

    #[test]
    fn health_checks_read_back(port in 1u16..=65535, path in proptest::option::of("[ -~]{0,24}")) {
        let http = match &path {
            Some(path) => format!("http:{port}/{path}"),
            None => format!("http:{port}"),
        };
        let check = parse_health_check(&http).unwrap();
        prop_assert_eq!((check.r#type.as_str(), check.port), ("http", u32::from(port)));
        prop_assert_eq!(check.path, path.map(|p| format!("/{p}")).unwrap_or_default());
        let tcp = parse_health_check(&format!("tcp:{port}")).unwrap();
        prop_assert_eq!((tcp.r#type.as_str(), tcp.port), ("tcp", u32::from(port)));
    }
}
