//! The facade: building policies, dispatch, the errata catalogue and the guest notices.

use std::collections::BTreeSet;

use spe_policies::{
    FaultTranslateConfig, PinAllConfig, PinBufferConfig, Policy, StrategyConfig, all_errata,
};
use spe_policy::BackingStrategy;
use spe_policy::errata::{GuestTold, Property};
use spe_policy::event::{Event, Outcome};
use spe_policy::guest_notice::{GuestNotice, StrategyId, bits};
use spe_strategy_testkit::{GuestFixture, memslots};

#[test]
fn each_config_builds_the_strategy_it_names() {
    let cases = [
        (
            StrategyConfig::PinAll(PinAllConfig::default()),
            "pin-all",
            StrategyId::PinAll,
        ),
        (
            StrategyConfig::PinBuffer(PinBufferConfig::default()),
            "pin-buffer",
            StrategyId::PinBuffer,
        ),
        (
            StrategyConfig::FaultTranslate(FaultTranslateConfig::default()),
            "fault-translate",
            StrategyId::FaultTranslate,
        ),
    ];
    for (cfg, name, id) in cases {
        let p = Policy::new(cfg);
        assert_eq!((p.name(), p.id()), (name, id));
    }
}

#[test]
fn dispatch_reaches_the_strategy_and_its_pins() {
    let g = GuestFixture::new(4);
    let host = g.host();
    let p = Policy::new(StrategyConfig::PinBuffer(PinBufferConfig::default()));
    let slots = memslots();
    p.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    assert_eq!(
        p.on_event(&g.enable(0, 0, 4 * 4096), &g.ram, &host)
            .expect("enable"),
        Outcome::Resume
    );
    assert_eq!(p.stats().pinned_bytes, host.pinned_bytes());
    p.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn every_profile_names_each_property_once_as_kept_or_given_up_and_none_keeps_all_three() {
    // "Cheap, fast, reliable: pick two" is the question; the measured answer may be fewer
    // (fault-translate keeps only cheap: its fault service stalls for milliseconds).
    for p in Policy::all_defaults() {
        let prof = p.profile();
        assert!(
            !prof.keeps.is_empty() && prof.keeps.len() <= 2,
            "{}",
            p.name()
        );
        let all: BTreeSet<Property> = prof.keeps.iter().chain(prof.gives_up).copied().collect();
        assert_eq!(all.len(), 3, "{}", p.name());
        assert_eq!(prof.keeps.len() + prof.gives_up.len(), 3, "{}", p.name());
    }
}

#[test]
fn errata_ids_are_unique_and_every_field_is_written() {
    let mut ids = BTreeSet::new();
    for (name, errata) in all_errata() {
        let prefix = match name {
            "pin-all" => "PA-",
            "pin-buffer" => "PB-",
            "fault-translate" => "FT-",
            "shadow-buffer" => "SB-",
            other => panic!("unknown strategy {other}"),
        };
        assert!(!errata.is_empty());
        for e in errata {
            assert!(e.id.starts_with(prefix), "{}", e.id);
            assert!(ids.insert(e.id), "duplicate id {}", e.id);
            // A scenario file stem (the simulator's tests check the file reproduces it).
            assert!(
                !e.scenario.is_empty()
                    && e.scenario
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}: scenario {:?}",
                e.id,
                e.scenario
            );
            assert!(
                e.title.len() > 10 && !e.title.ends_with('.'),
                "{}: title",
                e.id
            );
            for field in [e.trigger, e.guest_visible, e.host_visible, e.mitigation] {
                assert!(
                    field.len() > 10 && field.ends_with('.'),
                    "{}: field {field:?} is not a sentence",
                    e.id
                );
            }
        }
    }
}

#[test]
fn guest_notices_carry_each_strategys_guest_visible_errata() {
    for p in Policy::all_defaults() {
        let notice = p.guest_notice();
        let decoded = GuestNotice::decode(&notice.encode()).expect("decodes");
        assert_eq!(decoded, notice);
        assert_eq!(notice.strategy, p.id());
        for e in p.errata() {
            if matches!(e.id, "PA-06" | "PB-09" | "PA-07" | "PB-10") {
                // PA-06, PB-09: told only when the VMM pins with mlock (the defaults pin
                // long-term): see the_guest_is_told_of_the_mlock_errata_only_when_the_vmm_pins_with_mlock.
                // PA-07, PB-10: never, because their mitigation (pinned RAM kept out of KSM)
                // is required of the VMM; a VMM that cannot follow it sets the bit itself.
                assert_eq!(
                    e.guest_told,
                    GuestTold::NoticeBit(if e.id.starts_with("PA") {
                        bits::FATAL_FAULT
                    } else {
                        bits::REWIND
                    })
                );
                continue;
            }
            if let GuestTold::NoticeBit(b) = e.guest_told {
                assert!(notice.errata & (1 << b) != 0, "{} bit {b}", e.id);
            }
        }
    }
    let pb = Policy::new(StrategyConfig::PinBuffer(PinBufferConfig::default()));
    assert!(pb.guest_notice().errata & (1 << bits::BUFFER_CAP) != 0);
    assert_eq!(pb.guest_notice().buffer_cap_pages, 4096);
    let ft = Policy::new(StrategyConfig::FaultTranslate(
        FaultTranslateConfig::default(),
    ));
    assert!(ft.guest_notice().errata & (1 << bits::REWIND) != 0);
    assert_eq!(ft.guest_notice().buffer_cap_pages, 0);
}

#[test]
fn errata_pages_cover_every_erratum_and_say_what_was_measured() {
    let pages = spe_policies::errata_doc::all_pages(&|e| Some(format!("measured {}", e.id)));
    for (strategy, errata) in all_errata() {
        let (_, page) = pages
            .iter()
            .find(|(name, _)| *name == format!("{strategy}.md"))
            .expect("a page per strategy");
        for e in errata {
            assert!(
                page.contains(&format!("## {}: {}", e.id, e.title)),
                "{}",
                e.id
            );
            assert!(page.contains(&format!("measured {}", e.id)), "{}", e.id);
        }
    }
    // The committed pages are checked against the simulator's figures by
    // `spe-policy errata --check docs/errata` (cli tests and .ci/run).
}

#[test]
fn a_config_file_builds_its_policy_for_the_vm_and_a_bad_one_names_the_problem() {
    use spe_policy::config::{MigrationPolicy, StrategyName, load_toml};
    use spe_policy::{VmSpec, config::ByteSize};
    let vm = VmSpec::default();
    let c = load_toml("[spe]\nstrategy = \"fault-translate\"\n").expect("loads");
    assert_eq!(
        Policy::from_config(&c, &vm).expect("builds").name(),
        "fault-translate"
    );
    // pin-all alone is valid: its migration default is stop-and-copy.
    let pin_all = load_toml("[spe]\nstrategy = \"pin-all\"\n").expect("pin-all alone");
    assert_eq!(pin_all.migration(), MigrationPolicy::StopAndCopy);
    assert_eq!(
        Policy::from_config(&pin_all, &vm).expect("builds").name(),
        "pin-all"
    );
    let mut bad = c;
    bad.strategy = StrategyName::PinAll;
    bad.migration = Some(MigrationPolicy::PreCopy);
    let e = Policy::from_config(&bad, &vm).expect_err("pin-all with pre-copy");
    assert!(e.to_string().contains("spe.migration"), "{e}");
    // A rule that needs the VM: pin-buffer's cap must hold two host pages.
    let pb =
        load_toml("[spe]\nstrategy = \"pin-buffer\"\n[spe.pin_buffer]\ncap_per_vcpu = \"64KiB\"\n")
            .expect("loads");
    Policy::from_config(&pb, &vm).expect("64 KiB holds two 4 KiB pages");
    let big_pages = VmSpec {
        host_page_size: ByteSize(64 << 10),
        ..vm
    };
    let e = Policy::from_config(&pb, &big_pages).expect_err("not two 64 KiB pages");
    assert!(e.to_string().contains("spe.pin_buffer.cap_per_vcpu"), "{e}");
}

#[test]
fn a_restored_pin_buffer_pins_the_enabled_buffer_on_the_destination_before_any_vcpu_runs() {
    let g = GuestFixture::new(4);
    let source = g.host();
    let config = spe_policy::config::SpeConfig::default(); // pin-buffer
    let vm = spe_policy::VmSpec::default();
    let p = Policy::from_config(&config, &vm).expect("policy");
    let slots = memslots();
    p.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &source)
        .expect("start");
    p.on_event(&g.enable(0, 0, 4 * 4096), &g.ram, &source)
        .expect("enable");
    let pinned = source.pinned_bytes();
    assert!(pinned >= 4 * 4096);
    // Through JSON, as a VMM's snapshot carries it.
    let json = serde_json::to_string(&p.save()).expect("serialize");
    assert!(json.contains("\"strategy\":\"pin-buffer\""), "{json}");
    let state: spe_policies::PolicyState = serde_json::from_str(&json).expect("deserialize");
    p.on_event(&Event::VmStop, &g.ram, &source).expect("stop");
    assert_eq!(source.pinned_bytes(), 0);
    let destination = g.host();
    let q = Policy::restore(&config, &vm, &state, &g.ram, &destination).expect("restore");
    assert_eq!(
        destination.pinned_bytes(),
        pinned,
        "the same pages, pinned before any vCPU runs"
    );
    assert_eq!(q.save(), state, "what is restored saves the same");
    q.on_event(&Event::VmStop, &g.ram, &destination)
        .expect("stop");
    assert_eq!(destination.pinned_bytes(), 0);
}

#[test]
fn a_state_is_refused_by_another_strategys_config_and_by_another_layout_version() {
    let g = GuestFixture::new(4);
    let host = g.host();
    let vm = spe_policy::VmSpec::default();
    let pin_buffer = spe_policy::config::SpeConfig::default();
    let state = Policy::from_config(&pin_buffer, &vm)
        .expect("policy")
        .save();
    let fault_translate = spe_policy::config::SpeConfig {
        strategy: spe_policy::config::StrategyName::FaultTranslate,
        ..spe_policy::config::SpeConfig::default()
    };
    let e = Policy::restore(&fault_translate, &vm, &state, &g.ram, &host).expect_err("other");
    assert!(
        e.to_string().contains("pin-buffer") && e.to_string().contains("fault-translate"),
        "{e}"
    );
    let mut v: serde_json::Value = serde_json::to_value(&state).expect("json");
    v["version"] = serde_json::json!(99);
    let future: spe_policies::PolicyState = serde_json::from_value(v).expect("state");
    let e = Policy::restore(&pin_buffer, &vm, &future, &g.ram, &host).expect_err("version");
    assert!(e.to_string().contains("version 99"), "{e}");
}

#[test]
fn the_guest_is_told_of_the_mlock_errata_only_when_the_vmm_pins_with_mlock() {
    use spe_policy::config::{PinKind, SpeConfig, StrategyName};
    let vm = spe_policy::VmSpec::default();
    let notice = |strategy, pin| {
        let c = SpeConfig {
            strategy,
            pin,
            migration: Some(spe_policy::config::MigrationPolicy::StopAndCopy),
            ..SpeConfig::default()
        };
        Policy::from_config(&c, &vm)
            .expect("policy")
            .guest_notice()
            .errata
    };
    let fatal = 1 << bits::FATAL_FAULT;
    assert_eq!(notice(StrategyName::PinAll, PinKind::LongTerm) & fatal, 0);
    assert_ne!(
        notice(StrategyName::PinAll, PinKind::Mlock) & fatal,
        0,
        "PA-06"
    );
    let rewind = 1 << bits::REWIND;
    assert_eq!(
        notice(StrategyName::PinBuffer, PinKind::LongTerm) & rewind,
        0
    );
    assert_ne!(
        notice(StrategyName::PinBuffer, PinKind::Mlock) & rewind,
        0,
        "PB-09"
    );
}
