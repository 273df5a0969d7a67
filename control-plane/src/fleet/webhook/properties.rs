//! Properties of how a registry notification finds its applications over generated
//! registries and images (proptest; `PROPTEST_CASES` sets the number of cases): a push of
//! `host/repository` reaches an application of that repository in a registry at that host,
//! however the registry's URL is written and whatever the case of the host, or one whose
//! image is the full `host/repository`; never one of another repository or another host.

use proptest::prelude::*;

use super::{image_matches, registry_host};

fn host() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}(:[1-9][0-9]{0,4})?"
}

fn repository() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}"
}

/// A registry URL as an operator may write it for `host`.
fn url(host: &str, form: u8) -> String {
    match form {
        0 => host.to_owned(),
        1 => format!("https://{host}"),
        2 => format!("https://{host}/"),
        _ => format!("http://{}/", host.to_ascii_uppercase()),
    }
}

proptest! {
    #[test]
    fn a_push_reaches_the_apps_of_its_repository(
        host in host(),
        repository in repository(),
        form in 0u8..4,
        upper in any::<bool>(),
    ) {
        let registry = registry_host(&url(&host, form));
        let pushed_host = if upper { host.to_ascii_uppercase() } else { host.clone() };
        let full = format!("{host}/{repository}");
        prop_assert!(image_matches(&repository, Some(&registry), &pushed_host, &repository));
        // An image named with its registry needs no registry entry.
        prop_assert!(image_matches(&full, None, &pushed_host, &repository));
    }

    #[test]
    fn a_push_reaches_no_other_app(
        host in host(),
        other_host in host(),
        repository in repository(),
        other in repository(),
        form in 0u8..4,
    ) {
        let registry = registry_host(&url(&host, form));
        let (full, full_other) = (format!("{host}/{repository}"), format!("{host}/{other}"));
        if other != repository {
            prop_assert!(!image_matches(&other, Some(&registry), &host, &repository));
            prop_assert!(!image_matches(&full_other, None, &host, &repository));
        }
        if !other_host.eq_ignore_ascii_case(&host) {
            prop_assert!(!image_matches(&repository, Some(&registry), &other_host, &repository));
            prop_assert!(!image_matches(&full, None, &other_host, &repository));
        }
        // Without a registry, a bare repository is Docker Hub's, never a pushed one.
        prop_assert!(!image_matches(&repository, None, &host, &repository));
    }

    #[test]
    fn no_input_makes_matching_panic(
        image in any::<String>(),
        registry in proptest::option::of(any::<String>()),
        host in any::<String>(),
        repository in any::<String>(),
    ) {
        let registry = registry.map(|r| registry_host(&r));
        let _ = image_matches(&image, registry.as_deref(), &host, &repository);
    }
}
