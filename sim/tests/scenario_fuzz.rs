//! Hostile scenario files: any text is a scenario or a typed error; any scenario that parses
//! runs (briefly) or is refused with the limit it breaks, never a panic, a hang or unbounded
//! work. `SPE_PROPTEST_CASES` sets the case count for a long run by hand.

use proptest::prelude::*;
use spe_policy::config::{SpeConfig, StrategyName};
use spe_policy_sim::{RunOptions, Scenario, run_one};

fn cases() -> u32 {
    std::env::var("SPE_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48)
}

fn kind() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("swap-out"),
        Just("ksm-merge"),
        Just("dirty-log-start"),
        Just("dirty-log-round"),
        Just("dirty-log-stop"),
        Just("post-copy-switchover"),
        Just("guest-remap"),
        Just("thp-collapse"),
        Just("balloon-inflate"),
        Just("page-unavailable"),
        Just("guest-map-outside-ram"),
        Just("guest-bad-limit"),
        Just("memslot-hotplug"),
        Just("memslot-unplug"),
        Just("guest-disable"),
        Just("guest-enable"),
        Just("meteor"),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0.0..5.0f64).prop_map(|x| format!("{x:.3}")),
        Just("-1.0".to_string()),
        Just("1e300".to_string()),
        Just("nan".to_string()),
        Just("0.0".to_string()),
    ]
}

fn scenario_text() -> impl Strategy<Value = String> {
    (
        number(),
        number(),
        prop::collection::vec((number(), kind(), number()), 0..8),
        prop_oneof![
            Just(""),
            Just("[vm]\nvcpus = 2\nram = \"256MiB\"\nbuffer_per_vcpu = \"64KiB\"\n"),
            Just("[vm]\nvcpus = 100000\n"),
            Just("[vm]\nram = \"1B\"\n"),
            Just("[vm]\nhost_page_size = \"64KiB\"\n"),
            Just("[spe]\nstrategy = \"pin-all\"\nmigration = \"post-copy\"\n"),
            Just("[spe.pin_buffer]\ncap_per_vcpu = 1\n"),
            Just("[tasks]\nrun_ms = [0.1, 0.2]\naway_ms = [0.1, 0.2]\n"),
            Just("[tasks]\nrun_ms = [5.0, 1.0]\naway_ms = [0.0, 0.0]\n"),
            Just("[host]\nlock_available = \"4KiB\"\n"),
        ],
    )
        .prop_map(|(duration, rate, events, extra)| {
            let mut s = format!(
                "name = \"fuzz\"\ndescription = \"d\"\nduration_ms = {duration}\nrecords_per_ms = {}\n{extra}",
                if rate.starts_with('0') { "1000.0".to_string() } else { rate.clone() }
            );
            for (at, kind, fraction) in events {
                s.push_str(&format!(
                    "[[events]]\nat_ms = {at}\nkind = \"{kind}\"\nfraction = {fraction}\n"
                ));
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_are_a_scenario_or_an_error_naming_the_file(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = Scenario::from_toml("fuzz.toml", &text) {
            prop_assert!(e.to_string().contains("fuzz.toml"), "{e}");
        }
    }

    #[test]
    fn a_generated_scenario_runs_or_is_refused_with_its_limit(text in scenario_text()) {
        let Ok(sc) = Scenario::from_toml("fuzz.toml", &text) else {
            return Ok(());
        };
        for strategy in [StrategyName::PinAll, StrategyName::PinBuffer, StrategyName::FaultTranslate, StrategyName::ShadowBuffer] {
            let opts = RunOptions { time_scale: 0.2, ..RunOptions::default() };
            match run_one(&SpeConfig::default(), None, &sc, strategy, opts) {
                Ok(m) => {
                    prop_assert_eq!(m.pinned_after_stop, 0);
                    prop_assert_eq!(m.unexplained_loss, 0);
                    prop_assert_eq!(m.records_written + m.samples_lost + m.baseline_lost, m.samples_due);
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }
}
