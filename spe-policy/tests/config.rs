//! The VMM config: example configs, every validation rule, formats and round trips.

use std::path::PathBuf;

use spe_policy::config::{
    ByteSize, ConfigFile, SpeConfig, StrategyName, explicit_keys, load_toml, to_toml,
};

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn example_configs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(configs_dir()).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            out.push((name, std::fs::read_to_string(&path).expect("read")));
        }
    }
    out.sort();
    out
}

#[test]
fn every_example_config_loads_and_validates() {
    let configs = example_configs();
    assert!(configs.len() >= 5, "{configs:?}");
    for (name, src) in &configs {
        let c = load_toml(src).unwrap_or_else(|e| panic!("{name}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let strategies: Vec<StrategyName> = configs
        .iter()
        .map(|(_, s)| load_toml(s).expect("loads").strategy)
        .collect();
    for s in [
        StrategyName::PinAll,
        StrategyName::PinBuffer,
        StrategyName::FaultTranslate,
    ] {
        assert!(strategies.contains(&s), "no example for {s:?}");
    }
}

#[test]
fn the_default_config_file_is_the_default() {
    let src = std::fs::read_to_string(configs_dir().join("default.toml")).expect("read");
    assert_eq!(load_toml(&src).expect("loads"), SpeConfig::default());
    assert_eq!(load_toml("").expect("empty file"), SpeConfig::default());
}

#[test]
fn toml_and_json_forms_of_the_same_config_give_the_same_value() {
    for (name, src) in example_configs() {
        let c = load_toml(&src).expect("loads");
        let json = serde_json::to_string(&ConfigFile { spe: c }).expect("json");
        let back: ConfigFile = serde_json::from_str(&json).expect("json loads");
        assert_eq!(back.spe, c, "{name}");
        // Hand-written JSON with sizes as integers.
        let hand = r#"{"spe": {"strategy": "fault-translate", "guest": {"ram": 8589934592, "max_record": "64B"}}}"#;
        let from_json: ConfigFile = serde_json::from_str(hand).expect("hand json");
        let from_toml =
            load_toml("[spe]\nstrategy = \"fault-translate\"\n[spe.guest]\nram = \"8GiB\"\n")
                .expect("toml");
        assert_eq!(from_json.spe, from_toml);
    }
}

#[test]
fn config_to_toml_to_config_is_the_identity() {
    for (name, src) in example_configs() {
        let c = load_toml(&src).expect("loads");
        let text = to_toml(&c);
        assert_eq!(load_toml(&text).expect("reloads"), c, "{name}:\n{text}");
    }
}

#[test]
fn explicit_keys_distinguish_written_values_from_defaults() {
    let keys = explicit_keys("[spe]\nstrategy = \"pin-all\"\n[spe.guest]\nvcpus = 2\n");
    assert_eq!(
        keys,
        vec!["spe.guest.vcpus".to_string(), "spe.strategy".to_string()]
    );
}

/// One broken config per rule: (source, key, words the message must contain, line).
const BROKEN: &[(&str, &str, &[&str], usize)] = &[
    (
        "[spe]\nstrategy = \"pin-buffer\"\n[spe.pin_buffer]\ncap_per_cpu = \"4MiB\"\n",
        "spe.pin_buffer.cap_per_cpu",
        &["unknown field", "did you mean `cap_per_vcpu`?"],
        4,
    ),
    (
        "[spe]\nstrategy = \"pin-buffers\"\n",
        "spe.strategy",
        &["unknown variant", "did you mean `pin-buffer`?"],
        2,
    ),
    (
        "[spe]\n[spe.guest]\nvcpus = \"four\"\n",
        "spe.guest.vcpus",
        &["invalid type", "\"four\""],
        3,
    ),
    (
        "[spe]\n[spe.pin_buffer]\ncap_per_vcpu = \"16 furlongs\"\n",
        "spe.pin_buffer.cap_per_vcpu",
        &["unknown unit", "MiB"],
        3,
    ),
    (
        "[spe]\n[spe.pin_buffer]\ncap_per_vcpu = \"4KiB\"\n",
        "spe.pin_buffer.cap_per_vcpu",
        &["4KiB", "smaller than 8KiB", "raise it"],
        3,
    ),
    (
        "[spe]\nstrategy = \"pin-all\"\nmigration = \"post-copy\"\n",
        "spe.migration",
        &["\"post-copy\"", "pin-all pins every page", "stop-and-copy"],
        3,
    ),
    (
        "[spe]\nstrategy = \"pin-all\"\nmigration = \"refuse\"\nrecovery = \"discard\"\n",
        "spe.recovery",
        &["\"discard\"", "never takes a stage 2 fault"],
        4,
    ),
    (
        "[spe]\nstrategy = \"pin-buffer\"\ndirty_log = \"write-protect\"\n",
        "spe.dirty_log",
        &["cannot be write-protected", "keep-buffer-dirty"],
        3,
    ),
    (
        "[spe]\n[spe.guest]\nmax_record = \"100B\"\n",
        "spe.guest.max_record",
        &["100B", "power of two from 16 B to 2 KiB"],
        3,
    ),
    (
        "[spe]\n[spe.host]\npage_size = \"8KiB\"\n",
        "spe.host.page_size",
        &["8KiB", "4KiB, 16KiB or 64KiB"],
        3,
    ),
    (
        "[spe]\n[spe.guest]\nvcpus = 0\n",
        "spe.guest.vcpus",
        &["1 to 4096"],
        3,
    ),
    (
        "[spe]\nstrategy = \"pin-all\"\nmigration = \"refuse\"\n[spe.guest]\nram = \"8GiB\"\n[spe.host]\nlock_limit = \"1GiB\"\n",
        "spe.host.lock_limit",
        &["1GiB", "all 8GiB of guest RAM", "RLIMIT_MEMLOCK"],
        7,
    ),
    (
        "[spe]\n[spe.host]\nlock_limit = \"8MiB\"\n",
        "spe.host.lock_limit",
        &["4 vCPUs x 16MiB cap may need 64MiB"],
        3,
    ),
    (
        "[spe\nstrategy = 1\n",
        "(syntax)",
        &["fix the TOML syntax"],
        1,
    ),
];

#[test]
fn each_broken_config_names_the_key_the_value_the_reason_the_fix_and_the_line() {
    for (src, key, words, line) in BROKEN {
        let errs = load_toml(src).expect_err(src);
        let e = errs
            .0
            .iter()
            .find(|e| e.key == *key)
            .unwrap_or_else(|| panic!("no error for {key} in {errs}"));
        let text = e.to_string();
        for w in *words {
            assert!(text.contains(w), "{key}: {text:?} lacks {w:?}");
        }
        assert_eq!(e.location.map(|l| l.0), Some(*line), "{key}: {text}");
        assert!(!e.fix.is_empty(), "{key}: no fix");
    }
}

#[test]
fn sizes_serialize_with_units() {
    let c = load_toml("[spe.pin_buffer]\ncap_per_vcpu = 33554432\n").expect("loads");
    assert_eq!(c.pin_buffer.cap_per_vcpu, ByteSize(32 << 20));
    assert!(to_toml(&c).contains("cap_per_vcpu = \"32MiB\""));
}
