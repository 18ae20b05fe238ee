//! Hostile config text: whatever the bytes, the loaders return a config or typed errors naming
//! a key and a fix, never a panic. Generated TOML and JSON documents mix valid keys, wrong
//! types, wrong shapes and garbage. CI runs a fixed number of cases; set `SPE_PROPTEST_CASES`
//! for a long run by hand.

use proptest::prelude::*;
use spe_policy::VmSpec;
use spe_policy::config::SpeConfig;

fn cases() -> u32 {
    std::env::var("SPE_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

/// A value as TOML text: valid ones, wrong types, sizes with and without units, extremes.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"pin-all\"".to_string()),
        Just("\"pin-buffer\"".to_string()),
        Just("\"fault-translate\"".to_string()),
        Just("\"shadow-buffer\"".to_string()),
        Just("\"post-copy\"".to_string()),
        Just("\"background\"".to_string()),
        Just("\"unlimited\"".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| format!("{n:?}")
            .replace("inf", "1e400")
            .replace("NaN", "nan")),
        (
            any::<u32>(),
            prop_oneof![
                Just(""),
                Just("KiB"),
                Just("MB"),
                Just("TiB"),
                Just(" furlongs")
            ]
        )
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
        "[a-z \\-_]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn key() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("strategy"),
        Just("migration"),
        Just("dirty_log"),
        Just("recovery"),
        Just("service"),
        Just("pin_at"),
        Just("cap_per_vcpu"),
        Just("pin_cache"),
        Just("host_buffer"),
        Just("vcpus"),
        Just("lock_limit"),
        Just("bogus"),
    ]
}

fn table() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("[spe]"),
        Just("[spe.pin_all]"),
        Just("[spe.pin_buffer]"),
        Just("[spe.shadow_buffer]"),
        Just("[spe.guest]"),
        Just("[spe.host]"),
        Just("[[spe]]"),
        Just("[sep]"),
        Just("[vm]"),
        Just(""),
    ]
}

fn toml_doc() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (table(), prop::collection::vec((key(), toml_value()), 0..4)),
        0..5,
    )
    .prop_map(|tables| {
        let mut s = String::new();
        for (t, kvs) in tables {
            s.push_str(t);
            s.push('\n');
            for (k, v) in kvs {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s
    })
}

fn check_errors(
    r: Result<spe_policy::config::Loaded, spe_policy::config::ConfigErrors>,
) -> Result<(), TestCaseError> {
    match r {
        Ok(l) => {
            // A loaded config is valid on its own, and checking it against a VM never panics.
            prop_assert!(l.config.validate().is_ok());
            let _ = l.config.validate_for(&VmSpec::default());
            let _ = l.config.warnings_for(&VmSpec::default());
        }
        Err(errs) => {
            prop_assert!(!errs.0.is_empty());
            for e in &errs.0 {
                prop_assert!(!e.key.is_empty(), "{e}");
                prop_assert!(!e.fix.is_empty(), "{e}");
                prop_assert!(!e.reason.contains("untagged"), "serde internals leak: {e}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_as_toml_or_json_give_a_config_or_errors_naming_a_key_and_a_fix(
        bytes in prop::collection::vec(any::<u8>(), 0..400)
    ) {
        let text = String::from_utf8_lossy(&bytes);
        check_errors(SpeConfig::from_toml_str(&text))?;
        check_errors(SpeConfig::from_json_str(&text))?;
    }

    #[test]
    fn generated_toml_documents_give_a_config_or_errors_naming_a_key_and_a_fix(doc in toml_doc()) {
        check_errors(SpeConfig::from_toml_str(&doc))?;
    }

    #[test]
    fn generated_json_documents_give_a_config_or_errors_naming_a_key_and_a_fix(doc in toml_doc()) {
        // The same documents through TOML's JSON form, where TOML could parse them.
        if let Ok(v) = doc.parse::<toml::Table>() {
            let json = serde_json::to_string(&v).unwrap_or_default();
            check_errors(SpeConfig::from_json_str(&json))?;
            check_errors(SpeConfig::from_json_str(&format!("{json} trailing")))?;
        }
    }

    #[test]
    fn any_vm_table_is_valid_or_refused_with_the_key(doc in prop::collection::vec((prop_oneof![
        Just("vcpus"), Just("ram"), Just("buffer_per_vcpu"), Just("guest_granule"),
        Just("host_page_size"), Just("pa_bits"), Just("max_record"), Just("write_order"),
        Just("lock_limit")
    ], toml_value()), 0..6)) {
        let text: String = doc.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if let Ok(vm) = toml::from_str::<VmSpec>(&text) {
            match vm.validate() {
                Ok(()) => {}
                Err(errs) => {
                    for e in &errs.0 {
                        prop_assert!(e.key.starts_with("vm."), "{e}");
                    }
                }
            }
        }
    }
}
