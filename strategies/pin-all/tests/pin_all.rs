//! pin-all against the stage 2 model, event by event.

use std::time::Duration;

use spe_host_model::Absence;
use spe_policy::event::{Event, InvalidationCause, MigrationMode, Outcome, Refusal};
use spe_policy::{BackingStrategy, Ipa, IpaRange, Memslot};
use spe_strategy_pin_all::{PinAll, PinAllConfig, PinAllMigration, PinAt};
use spe_strategy_testkit::{GuestFixture, RAM, memslots, stress};

#[test]
fn vm_start_pins_every_memslot_and_vm_stop_unpins_it() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = PinAll::new(PinAllConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    assert_eq!(host.pinned_bytes(), RAM.len);
    assert_eq!(s.stats().peak_pinned_bytes, RAM.len);
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn first_enable_pinning_costs_nothing_until_a_buffer_is_enabled() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = PinAll::new(PinAllConfig {
        pin_at: PinAt::FirstEnable,
        ..PinAllConfig::default()
    });
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    assert_eq!(host.pinned_bytes(), 0);
    s.on_event(&g.enable(0, 0, 4096), &g.ram, &host)
        .expect("enable");
    assert_eq!(host.pinned_bytes(), RAM.len);
}

#[test]
fn reclaim_of_any_page_is_refused_once_pinned() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = PinAll::new(PinAllConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    for cause in [
        InvalidationCause::Swap,
        InvalidationCause::KsmMerge,
        InvalidationCause::ThpSplit,
    ] {
        let ev = Event::HostInvalidation {
            range: IpaRange::new(Ipa(0x4010_0000), 4096),
            cause,
        };
        assert_eq!(
            s.on_event(&ev, &g.ram, &host).expect("inval"),
            Outcome::Refuse(Refusal::Pinned)
        );
    }
    let balloon = Event::BalloonInflate(IpaRange::new(Ipa(0x4010_0000), 1 << 20));
    assert_eq!(
        s.on_event(&balloon, &g.ram, &host).expect("balloon"),
        Outcome::Refuse(Refusal::Pinned)
    );
    assert!(
        host.unmap(RAM, Absence::Swapped) == 0,
        "the model agrees: nothing can go"
    );
}

#[test]
fn migration_is_refused_or_degraded_per_config() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let slots = memslots();
    for (cfg, want) in [
        (PinAllMigration::Refuse, Refusal::MigrationRefused),
        (PinAllMigration::StopAndCopy, Refusal::UseStopAndCopy),
    ] {
        let s = PinAll::new(PinAllConfig {
            migration: cfg,
            ..PinAllConfig::default()
        });
        s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
            .expect("start");
        for mode in [MigrationMode::PreCopy, MigrationMode::PostCopy] {
            assert_eq!(
                s.on_event(&Event::MigrationStart(mode), &g.ram, &host)
                    .expect("migrate"),
                Outcome::Refuse(want)
            );
        }
        assert_eq!(
            s.on_event(
                &Event::MigrationStart(MigrationMode::StopAndCopy),
                &g.ram,
                &host
            )
            .expect("migrate"),
            Outcome::Resume
        );
        s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    }
}

#[test]
fn hot_plug_pins_the_new_slot_and_hot_unplug_waits_for_buffers_to_be_disabled() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = PinAll::new(PinAllConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    let extra = Memslot {
        slot: 1,
        range: IpaRange::new(Ipa(0x8000_0000), 1 << 20),
    };
    host.add_memslot(extra);
    s.on_event(&Event::MemslotAdded(extra), &g.ram, &host)
        .expect("add");
    assert_eq!(host.pinned_bytes(), RAM.len + (1 << 20));
    s.on_event(&g.enable(0, 0, 4096), &g.ram, &host)
        .expect("enable");
    assert_eq!(
        s.on_event(&Event::MemslotRemoved(extra), &g.ram, &host)
            .expect("remove"),
        Outcome::Refuse(Refusal::HotUnplugBlocked)
    );
    s.on_event(&g.disable(0), &g.ram, &host).expect("disable");
    assert_eq!(
        s.on_event(&Event::MemslotRemoved(extra), &g.ram, &host)
            .expect("remove"),
        Outcome::Resume
    );
    assert_eq!(host.pinned_bytes(), RAM.len);
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_lock_limit_below_ram_disables_spe_at_first_enable_and_pins_nothing() {
    let g = GuestFixture::new(8);
    let host = g.host();
    host.set_lock_limit(Some(RAM.len / 2));
    let s = PinAll::new(PinAllConfig {
        pin_at: PinAt::FirstEnable,
        ..PinAllConfig::default()
    });
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    let out = s
        .on_event(&g.enable(0, 0, 4096), &g.ram, &host)
        .expect("enable");
    assert!(matches!(out, Outcome::DisableSpe(_)), "{out:?}");
    assert_eq!(host.pinned_bytes(), 0);
    // At VM start the same failure is an error the VMM sees before the VM runs.
    let s = PinAll::new(PinAllConfig::default());
    let e = s
        .on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect_err("limit");
    assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_stage_2_fault_never_happens_but_is_passed_to_the_guest_if_it_does() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = PinAll::new(PinAllConfig::default());
    let out = s
        .on_event(&g.stage2_fault(0, 0, 4096, false), &g.ram, &host)
        .expect("fault");
    assert!(matches!(out, Outcome::Inject { .. }));
    assert_eq!(s.stats().stage2_faults_buffer, 1);
}

#[test]
fn many_threads_of_mixed_events_leave_nothing_pinned_and_finish() {
    let g = GuestFixture::new(16);
    let host = g.host();
    let s = PinAll::new(PinAllConfig::default());
    stress(&s, &g, &host, 8, 100, Duration::from_secs(60));
    assert_eq!(host.pinned_bytes(), 0);
    assert_eq!(s.stats().pinned_bytes, 0);
}

#[test]
fn a_memslot_added_twice_then_removed_leaves_nothing_pinned_after_vm_stop() {
    // Issue 18: add, add, remove used to take two references and drop one, then VM stop
    // merged the neighbouring slots into one unpin that failed: 16 MiB stayed pinned.
    let g = GuestFixture::new(8);
    let host = g.host();
    let slots = memslots();
    let hot = Memslot {
        slot: 1,
        range: IpaRange::new(Ipa(RAM.end()), 16 << 20),
    };
    assert!(host.add_memslot(hot));
    let s = PinAll::new(PinAllConfig::default());
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    for _ in 0..2 {
        s.on_event(&Event::MemslotAdded(hot), &g.ram, &host)
            .expect("add");
    }
    assert_eq!(
        s.duplicate_memslot_adds(),
        1,
        "the second add is ignored and counted"
    );
    assert_eq!(host.pinned_bytes(), RAM.len + hot.range.len);
    s.on_event(&Event::MemslotRemoved(hot), &g.ram, &host)
        .expect("remove");
    host.remove_memslot(hot.slot);
    assert_eq!(
        host.pinned_bytes(),
        RAM.len,
        "the removal released exactly its slot"
    );
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
    assert_eq!(s.stats().pinned_bytes, 0);
}
