//! The errata name only config keys that exist: every snake_case word of an erratum's text is
//! a key of the `[spe]` schema (any strategy's table) or of the `[vm]` table, or one of the
//! few other names the texts use (listed below, each a real API or register name).

use std::collections::BTreeSet;

use spe_policies::all_errata;
use spe_policy::config::{SpeConfig, StrategyName};
use spe_policy::vm::VmSpec;

/// Every key, at any depth, of a serialized value.
fn keys(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    if let serde_json::Value::Object(m) = v {
        for (k, v) in m {
            out.insert(k.clone());
            keys(v, out);
        }
    }
}

/// The snake_case words (with at least one underscore) of `text`.
fn snake_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.contains('_')
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|w| !w.starts_with('_') && !w.ends_with('_'))
        .collect()
}

#[test]
fn every_config_key_an_erratum_names_exists_in_the_schema() {
    let mut schema = BTreeSet::new();
    for strategy in [
        StrategyName::PinAll,
        StrategyName::PinBuffer,
        StrategyName::FaultTranslate,
        StrategyName::ShadowBuffer,
    ] {
        let config = SpeConfig {
            strategy,
            ..SpeConfig::default()
        };
        keys(&serde_json::to_value(config).expect("json"), &mut schema);
    }
    keys(
        &serde_json::to_value(VmSpec::default()).expect("json"),
        &mut schema,
    );
    // Not config keys: kernel features and functions, a Linux driver function, a benchmark
    // group.
    let not_keys = [
        "guest_memfd",
        "io_uring",
        "pin_user_pages",
        "arm_spe_perf_aux_output_end",
        "shadow_copy",
    ];
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (strategy, errata) in all_errata() {
        for e in errata {
            for text in [
                e.title,
                e.trigger,
                e.guest_visible,
                e.host_visible,
                e.mitigation,
            ] {
                for w in snake_words(text) {
                    checked += 1;
                    if !(schema.contains(w) || not_keys.contains(&w)) {
                        wrong.push(format!("{strategy} {}: `{w}`", e.id));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not config keys: {wrong:?}; the keys are {schema:?}"
    );
    assert!(checked >= 5, "only {checked} key names found in the errata");
}

#[test]
fn the_key_finder_sees_keys_and_skips_other_words() {
    assert_eq!(
        snake_words("Keep pin_cache on; set pin_at = first-enable (PMBIDR_EL1)."),
        ["pin_cache", "pin_at"]
    );
}
