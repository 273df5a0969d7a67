//! Properties of the image allowlist's pattern language over generated images and patterns
//! (proptest; `PROPTEST_CASES` sets the number of cases). Components are drawn from a small
//! alphabet so that one is often a prefix of another (`reg.io` / `reg.io.x`, `team` /
//! `teamx`), where a string-level slip would over-match.

use proptest::prelude::*;

use super::{pattern_allows, validate_pattern};

/// One path component, or a registry host with a port.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-c]{1,3}(\\.[a-c]{1,2})?",
        "[a-c]{1,2}\\.[a-c]{1,2}:[0-9]{1,2}"
    ]
}

fn components() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(component(), 1..4)
}

/// The three forms of a pattern over `base`: exact, `base/*`, `base*`.
fn pattern_of(base: &[String], form: u8) -> String {
    let base = base.join("/");
    match form {
        0 => base,
        1 => format!("{base}/*"),
        _ => format!("{base}*"),
    }
}

/// The language, stated on components.
fn expected(base: &[String], form: u8, image: &[String]) -> bool {
    match form {
        0 => image == base,
        1 => image.len() > base.len() && image.starts_with(base),
        _ => image.starts_with(base),
    }
}

proptest! {
    #[test]
    fn patterns_match_whole_components_only(
        base in components(),
        form in 0u8..3,
        image in components(),
    ) {
        let pattern = pattern_of(&base, form);
        prop_assert_eq!(
            pattern_allows(&pattern, &image.join("/")),
            expected(&base, form, &image),
            "{} vs {}", pattern, image.join("/")
        );
    }

    /// An image is allowed by every pattern written from its own leading components.
    #[test]
    fn an_image_is_allowed_by_patterns_of_its_own_prefixes(image in components(), cut in 1usize..4) {
        let k = cut.min(image.len());
        let image_text = image.join("/");
        prop_assert!(pattern_allows(&image_text, &image_text));
        prop_assert!(pattern_allows(&pattern_of(&image[..k], 2), &image_text));
        if k < image.len() {
            prop_assert!(pattern_allows(&pattern_of(&image[..k], 1), &image_text));
        }
    }

    /// No text makes either half panic; whatever a stored pattern allows starts with the
    /// pattern's own components.
    #[test]
    fn stored_patterns_never_over_match(
        pattern in prop_oneof![any::<String>(), "[a-c./:*0-9]{0,12}"],
        image in prop_oneof![any::<String>(), "[a-c./:0-9]{0,12}"],
    ) {
        let stored = validate_pattern(&pattern).is_ok();
        if pattern_allows(&pattern, &image) && stored {
            let base = pattern.trim_end_matches('*').trim_end_matches('/');
            let base: Vec<&str> = base.split('/').collect();
            let image: Vec<&str> = image.split('/').collect();
            prop_assert!(image.starts_with(&base), "{:?} allows {:?}", pattern, image);
        }
    }
}
