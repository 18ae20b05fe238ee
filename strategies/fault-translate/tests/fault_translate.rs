//! fault-translate against the stage 2 model, event by event.

use std::time::Duration;

use spe_host_model::{Absence, Stage2Model};
use spe_policy::arch::{BufferEvent, BufferEventKind, FaultStatusCode, Stage};
use spe_policy::buffer_recovery::{RecoveryMode, RecoverySettings};
use spe_policy::event::{Event, InvalidationCause, Outcome};
use spe_policy::spe::WriteOrder;
use spe_policy::{BackingStrategy, Gva, HostBacking, Ipa, IpaRange};
use spe_strategy_fault_translate::{FaultTranslate, FaultTranslateConfig};
use spe_strategy_testkit::{BUFFER_VA, GuestFixture, memslots, stress};

fn quipper() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../spe-policy/tests/data/quipper_arm_spe_decoder_test.bin"
    ))
    .expect("data")
}

/// A guest whose buffer holds `records` 64-byte records and then `partial` bytes of another.
fn guest_with_records(records: usize, partial: usize) -> GuestFixture {
    let mut g = GuestFixture::new(8);
    let rec = quipper();
    let mut bytes = Vec::new();
    for i in 0..records {
        bytes.extend_from_slice(&rec[(i % 2) * 64..(i % 2) * 64 + 64]);
    }
    bytes.extend_from_slice(&rec[..partial]);
    g.write_buffer(0, &bytes);
    g
}

fn strategy(recovery: RecoveryMode, order: WriteOrder) -> FaultTranslate {
    FaultTranslate::new(FaultTranslateConfig {
        recovery: RecoverySettings {
            mode: recovery,
            write_order: order,
            ..RecoverySettings::default()
        },
        ..FaultTranslateConfig::default()
    })
}

#[test]
fn nothing_is_ever_pinned() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    s.on_event(&g.stage2_fault(0, 0, 8 * 4096, false), &g.ram, &host)
        .expect("fault");
    assert_eq!(host.pinned_bytes(), 0);
    assert_eq!(s.stats().pin_ops, 0);
}

#[test]
fn a_fault_without_data_loss_makes_the_page_present_and_resumes_where_it_stopped() {
    let g = guest_with_records(3, 0);
    let host = g.host();
    host.unmap(IpaRange::new(g.buffer_pages[0], 4096), Absence::Swapped);
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    let out = s
        .on_event(&g.stage2_fault(0, 192, 8 * 4096, false), &g.ram, &host)
        .expect("fault");
    assert_eq!(
        out,
        Outcome::ResumeAt {
            pmbptr: Gva(BUFFER_VA.0 + 192)
        }
    );
    assert!(host.page_state(g.buffer_pages[0]).writable());
    assert_eq!(host.counters().swap_ins, 1);
    assert_eq!(
        s.stats().bytes_lost_rewind + s.stats().bytes_lost_discard,
        0
    );
}

#[test]
fn dl_with_a_torn_record_rewinds_to_the_last_provable_record_end() {
    let g = guest_with_records(3, 30);
    let host = g.host();
    // Sequential writes: the third record's end is proven.
    let s = strategy(RecoveryMode::Rewind, WriteOrder::Sequential);
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    let out = s
        .on_event(&g.stage2_fault(0, 192 + 30, 8 * 4096, true), &g.ram, &host)
        .expect("fault");
    assert_eq!(
        out,
        Outcome::ResumeAt {
            pmbptr: Gva(BUFFER_VA.0 + 192)
        }
    );
    assert_eq!(s.stats().bytes_lost_rewind, 30);
    // Unordered writes: only records ending 64 bytes before PMBPTR are proven.
    let s = strategy(RecoveryMode::Rewind, WriteOrder::Unordered);
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    let out = s
        .on_event(&g.stage2_fault(0, 192 + 30, 8 * 4096, true), &g.ram, &host)
        .expect("fault");
    assert_eq!(
        out,
        Outcome::ResumeAt {
            pmbptr: Gva(BUFFER_VA.0 + 128)
        }
    );
    assert_eq!(s.stats().bytes_lost_rewind, 94);
}

#[test]
fn discard_mode_goes_back_to_the_last_safe_point() {
    let g = guest_with_records(3, 30);
    let host = g.host();
    let s = strategy(RecoveryMode::Discard, WriteOrder::Sequential);
    s.on_event(&g.enable(0, 64, 8 * 4096 - 64), &g.ram, &host)
        .expect("enable at a record end");
    let out = s
        .on_event(&g.stage2_fault(0, 192 + 30, 8 * 4096, true), &g.ram, &host)
        .expect("fault");
    assert_eq!(
        out,
        Outcome::ResumeAt {
            pmbptr: Gva(BUFFER_VA.0 + 64)
        }
    );
    assert_eq!(s.stats().bytes_lost_discard, 158);
}

#[test]
fn a_fault_on_a_stage_1_table_page_faults_the_table_in_and_is_counted_as_such() {
    let g = guest_with_records(1, 0);
    let host = g.host();
    let tables = g.table_pages();
    host.unmap(IpaRange::new(tables[3], 4096), Absence::Swapped);
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    s.on_event(&g.stage2_fault(0, 64, 8 * 4096, false), &g.ram, &host)
        .expect("fault");
    assert!(host.page_state(tables[3]).present);
    let st = s.stats();
    assert_eq!((st.stage2_faults_table, st.stage2_faults_buffer), (1, 0));
    assert!(s.learned_pages().contains(&tables[3]));
}

#[test]
fn a_page_that_cannot_be_made_present_is_injected_as_the_fatal_fault() {
    let g = guest_with_records(1, 0);
    let host = g.host();
    host.make_unavailable(g.buffer_pages[0]);
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    let fault = g.stage2_fault(0, 64, 8 * 4096, false);
    let out = s.on_event(&fault, &g.ram, &host).expect("fault");
    let Outcome::Inject { pmbsr, .. } = out else {
        panic!("expected an injection, got {out:?}")
    };
    assert!(matches!(
        BufferEvent::decode(pmbsr).kind,
        BufferEventKind::Fault {
            stage: Stage::Two,
            fsc: FaultStatusCode::Translation(3)
        }
    ));
    assert_eq!(s.stats().injected, 1);
}

#[test]
fn learned_pages_are_exempt_from_dirty_logging_until_the_vcpu_stops() {
    let g = guest_with_records(1, 0);
    let host = g.host();
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    host.unmap(IpaRange::new(g.buffer_pages[0], 4096), Absence::Swapped);
    s.on_event(&g.stage2_fault(0, 64, 8 * 4096, false), &g.ram, &host)
        .expect("fault");
    s.on_event(&Event::DirtyLogStart, &g.ram, &host)
        .expect("log");
    host.dirty_log_protect(None);
    assert!(
        host.page_state(g.buffer_pages[0]).writable(),
        "learned page stays writable"
    );
    assert!(
        host.page_state(g.buffer_pages[1]).write_protected,
        "unlearned page is protected"
    );
    let ksm = Event::HostInvalidation {
        range: IpaRange::new(g.buffer_pages[0], 4096),
        cause: InvalidationCause::KsmMerge,
    };
    assert!(matches!(
        s.on_event(&ksm, &g.ram, &host).expect("ksm"),
        Outcome::Refuse(_)
    ));
    s.on_event(&Event::VcpuStop(spe_policy::VcpuId(0)), &g.ram, &host)
        .expect("stop");
    assert!(!host.page_state(g.buffer_pages[0]).dirty_log_exempt);
}

#[test]
fn post_copy_demands_a_left_behind_buffer_page_on_the_fault() {
    let g = guest_with_records(1, 0);
    let host = g.host();
    host.post_copy_switchover(IpaRange::new(Ipa(0x4000_0000), 16 << 20));
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    s.on_event(&g.stage2_fault(0, 64, 8 * 4096, false), &g.ram, &host)
        .expect("fault");
    // The walk's tables and the buffer page are fetched from the source.
    assert_eq!(host.counters().post_copy_fetches, 4 + 1);
}

#[test]
fn hostile_tables_end_in_a_guest_visible_outcome_never_a_panic_and_recursive_ones_are_followed() {
    let mut g = GuestFixture::new(2);
    let host: Stage2Model = g.host();
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    let root = spe_strategy_testkit::TABLES;
    let idx = (BUFFER_VA.0 >> 39) & 0x1ff;
    // A table outside RAM cannot be repaired: the guest gets its fault.
    g.ram
        .write_u64(Ipa(root.0 + idx * 8), 0x9_0000_0000 | 0b11, false)
        .expect("w");
    let out = s
        .on_event(&g.stage2_fault(0, 0, 4096, true), &g.ram, &host)
        .expect("no host error");
    assert!(matches!(out, Outcome::Inject { .. }), "{out:?}");
    // A recursive mapping (the root pointing at itself) is legal and the SPU follows it, as
    // shadow-buffer's copy does: the walk ends within five reads and is repaired like any
    // fault, never a loop or a host error.
    g.ram
        .write_u64(Ipa(root.0 + idx * 8), root.0 | 0b11, false)
        .expect("w");
    let out = s
        .on_event(&g.stage2_fault(0, 0, 4096, true), &g.ram, &host)
        .expect("no host error");
    assert!(
        matches!(out, Outcome::Inject { .. } | Outcome::ResumeAt { .. }),
        "{out:?}"
    );
    let _ = memslots();
}

#[test]
fn many_threads_of_mixed_events_finish_and_pin_nothing() {
    let g = guest_with_records(4, 10);
    let host = g.host();
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    stress(&s, &g, &host, 8, 200, Duration::from_secs(60));
    assert_eq!(host.pinned_bytes(), 0);
    assert!(s.stats().walks > 0);
}

#[test]
fn a_64k_guest_on_4k_host_pages_faults_in_the_page_of_the_descriptor_the_spu_reads() {
    // Issue 15: only the first 4 KiB of a 64 KiB table page was faulted in, so the SPU's walk
    // faulted again on the descriptor's page and fault-translate resumed at the same PMBPTR
    // forever.
    let g = GuestFixture::with_granule(spe_policy::Granule::K64, 4);
    let host = g.host();
    let s = FaultTranslate::new(FaultTranslateConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    s.on_event(&g.enable(0, 0, 4 * (64 << 10)), &g.ram, &host)
        .expect("enable");
    let desc = g.leaf_descriptor(2);
    assert!(
        desc.0 % (64 << 10) >= 4096,
        "the descriptor lies past the table's first 4 KiB"
    );
    host.unmap(IpaRange::new(desc, 4096), Absence::Swapped);
    assert!(!host.page_state(desc).present);
    let out = s
        .on_event(
            &g.stage2_fault(0, 2 * (64 << 10), 4 * (64 << 10), false),
            &g.ram,
            &host,
        )
        .expect("fault");
    assert!(matches!(out, Outcome::ResumeAt { .. }), "{out:?}");
    assert!(
        host.page_state(desc).present,
        "the descriptor's host page is back: the SPU's walk will not fault again"
    );
}
