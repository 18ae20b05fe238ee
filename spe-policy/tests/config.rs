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
        let hand =
            r#"{"spe": {"strategy": "pin-buffer", "pin_buffer": {"cap_per_vcpu": 8388608}}}"#;
        let from_json: ConfigFile = serde_json::from_str(hand).expect("hand json");
        let from_toml = load_toml(
            "[spe]\nstrategy = \"pin-buffer\"\n[spe.pin_buffer]\ncap_per_vcpu = \"8MiB\"\n",
        )
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
    let keys =
        explicit_keys("[spe]\nstrategy = \"pin-all\"\n[spe.pin_all]\npin_at = \"first-enable\"\n");
    assert_eq!(
        keys,
        vec!["spe.pin_all.pin_at".to_string(), "spe.strategy".to_string()]
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
        "[spe]\n[spe.guest]\nvcpus = 4\n",
        "spe.guest",
        &["no longer part of the [spe] policy", "[vm] table"],
        2,
    ),
    (
        "[spe]\n[spe.host]\nlock_limit = \"1GiB\"\n",
        "spe.host",
        &["vm.host_page_size", "vm.lock_limit"],
        2,
    ),
    (
        "[spe]\n[spe.pin_buffer]\ncap_per_vcpu = \"16 MB\"\n",
        "spe.pin_buffer.cap_per_vcpu",
        &["ambiguous", "16MiB"],
        3,
    ),
    (
        "[spe]\n[spe.pin_buffer]\ncap_per_vcpu = \"4TiB\"\n",
        "spe.pin_buffer.cap_per_vcpu",
        &["more than 1GiB per vCPU"],
        3,
    ),
    (
        "[spe]\n[spe.pin_buffer]\ncap_per_vcpu = \"16 furlongs\"\n",
        "spe.pin_buffer.cap_per_vcpu",
        &["unknown unit", "MiB"],
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

/// One rule that needs the VM per entry: (policy, `[vm]` keys, key, words).
const BROKEN_FOR_VM: &[(&str, &str, &str, &[&str])] = &[
    (
        "[spe.pin_buffer]\ncap_per_vcpu = \"4KiB\"\n",
        "",
        "spe.pin_buffer.cap_per_vcpu",
        &["4KiB", "smaller than 8KiB", "raise it"],
    ),
    (
        "",
        "max_record = \"100B\"",
        "vm.max_record",
        &["100B", "power of two from 16 B to 2 KiB"],
    ),
    (
        "",
        "host_page_size = \"8KiB\"",
        "vm.host_page_size",
        &["8KiB", "4KiB, 16KiB or 64KiB"],
    ),
    ("", "vcpus = 0", "vm.vcpus", &["1 to 4096"]),
    (
        "[spe]\nstrategy = \"pin-all\"\n",
        "ram = \"8GiB\"\nlock_limit = \"1GiB\"",
        "vm.lock_limit",
        &["1GiB", "all 8GiB of guest RAM", "RLIMIT_MEMLOCK"],
    ),
    (
        "",
        "lock_limit = \"8MiB\"",
        "vm.lock_limit",
        &["4 vCPUs x 16MiB cap", "may need 64MiB"],
    ),
    (
        "[spe]\nstrategy = \"shadow-buffer\"\n[spe.shadow_buffer]\nhost_buffer = \"96KiB\"\n",
        "host_page_size = \"64KiB\"",
        "spe.shadow_buffer.host_buffer",
        &["whole host pages (64KiB)"],
    ),
];

#[test]
fn each_config_that_does_not_fit_its_vm_names_the_key_the_value_the_reason_and_the_fix() {
    for (spe, vm, key, words) in BROKEN_FOR_VM {
        let c = load_toml(spe).expect(spe);
        let vm: spe_policy::VmSpec = toml::from_str(vm).expect(vm);
        let errs = c.validate_for(&vm).expect_err(key);
        let e = errs
            .0
            .iter()
            .find(|e| e.key == *key)
            .unwrap_or_else(|| panic!("no error for {key} in {errs}"));
        let text = e.to_string();
        for w in *words {
            assert!(text.contains(w), "{key}: {text:?} lacks {w:?}");
        }
        assert!(!e.fix.is_empty(), "{key}: no fix");
    }
}

#[test]
fn every_example_config_fits_its_example_vm() {
    for (config, vm) in [
        ("migration-heavy-cloud.toml", "cloud-tenant.toml"),
        ("overcommitted-host.toml", "overcommitted.toml"),
        ("profiling-first.toml", "profiling.toml"),
        ("small-desktop.toml", "desktop.toml"),
    ] {
        let c = load_toml(&std::fs::read_to_string(configs_dir().join(config)).expect(config))
            .expect(config);
        let text = std::fs::read_to_string(configs_dir().join("vms").join(vm)).expect(vm);
        let doc: toml::Table = text.parse().expect(vm);
        let vm_spec: spe_policy::VmSpec = doc["vm"].clone().try_into().expect(vm);
        c.validate_for(&vm_spec)
            .unwrap_or_else(|e| panic!("{config} on {vm}: {e}"));
    }
}

#[test]
fn sizes_serialize_with_units() {
    let c = load_toml("[spe.pin_buffer]\ncap_per_vcpu = 33554432\n").expect("loads");
    assert_eq!(c.pin_buffer.cap_per_vcpu, ByteSize(32 << 20));
    assert!(to_toml(&c).contains("cap_per_vcpu = \"32MiB\""));
}

#[test]
fn sizes_take_binary_units_in_any_case_and_refuse_si_units_and_fractions() {
    let ok = |s: &str| s.parse::<ByteSize>().map(|b| b.bytes());
    assert_eq!(ok("4096"), Ok(4096));
    assert_eq!(ok("16MiB"), Ok(16 << 20));
    assert_eq!(ok("16 mib"), Ok(16 << 20), "case and a space");
    assert_eq!(ok("4k"), Ok(4096), "K alone is binary");
    assert_eq!(ok("1_024 KiB"), Ok(1 << 20), "digit grouping");
    assert_eq!(ok("2EiB"), Ok(2 << 60));
    for si in ["16MB", "16 mb", "4KB", "4kB", "1GB", "1TB"] {
        let e = ok(si).expect_err(si);
        assert!(e.contains("ambiguous") && e.contains("iB"), "{si}: {e}");
    }
    for bad in ["1.5MiB", "1e6", "-4KiB", "", "MiB", "16 furlongs"] {
        assert!(ok(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(ok("16EiB").expect_err("overflow").contains("64 bits"));
}
