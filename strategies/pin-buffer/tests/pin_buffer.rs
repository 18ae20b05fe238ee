//! pin-buffer against the stage 2 model, event by event.

use std::time::Duration;

use spe_host_model::Absence;
use spe_policy::arch::{BufferEvent, BufferEventKind, Pmbidr};
use spe_policy::event::{BufferReg, BufferRegs, Event, InvalidationCause, Outcome, Refusal};
use spe_policy::{BackingStrategy, Gva, HostBacking, Ipa, IpaRange, VcpuId};
use spe_strategy_pin_buffer::{PinBuffer, PinBufferConfig};
use spe_strategy_testkit::{BUFFER_VA, GuestFixture, RAM, memslots, stress, window_regs};

fn setup(pages: u64) -> (GuestFixture, spe_host_model::Stage2Model, PinBuffer) {
    let g = GuestFixture::new(pages);
    let host = g.host();
    let s = PinBuffer::new(PinBufferConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    (g, host, s)
}

#[test]
fn enabling_pins_every_buffer_page_and_every_table_page_that_translates_it() {
    let (g, host, s) = setup(32);
    let out = s
        .on_event(&g.enable(0, 0, 32 * 4096), &g.ram, &host)
        .expect("enable");
    assert_eq!(out, Outcome::Resume);
    for p in &g.buffer_pages {
        assert!(host.is_pinned(*p), "buffer page {p} not pinned");
    }
    let tables = g.table_pages();
    assert_eq!(tables.len(), 4);
    for t in &tables {
        assert!(host.is_pinned(*t), "table page {t} not pinned");
    }
    assert_eq!(host.pinned_bytes(), (32 + 4) * 4096);
    assert_eq!(s.stats().walks, 1);
}

#[test]
fn re_enabling_a_cached_window_needs_no_walk_and_no_new_pins() {
    let (g, host, s) = setup(64);
    s.on_event(&g.enable(0, 0, 64 * 4096), &g.ram, &host)
        .expect("enable");
    let pins = s.stats().pin_ops;
    s.on_event(&g.disable(0), &g.ram, &host).expect("disable");
    // Linux's next AUX begin: a window inside the same buffer.
    s.on_event(&g.enable(0, 8 * 4096, 16 * 4096), &g.ram, &host)
        .expect("re-enable");
    let st = s.stats();
    assert_eq!((st.walks, st.cache_hits, st.pin_ops), (1, 1, pins));
    assert_eq!(
        host.pinned_bytes(),
        (64 + 4) * 4096,
        "disable kept the cache"
    );
}

#[test]
fn without_the_cache_a_disable_unpins_everything() {
    let g = GuestFixture::new(8);
    let host = g.host();
    let s = PinBuffer::new(PinBufferConfig {
        pin_cache: false,
        ..PinBufferConfig::default()
    });
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    assert!(host.pinned_bytes() > 0);
    s.on_event(&g.disable(0), &g.ram, &host).expect("disable");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_window_over_the_cap_is_refused_with_size_too_large_and_nothing_pinned() {
    let g = GuestFixture::new(64);
    let host = g.host();
    let s = PinBuffer::new(PinBufferConfig {
        cap_bytes_per_vcpu: 16 * 4096,
        ..PinBufferConfig::default()
    });
    let out = s
        .on_event(&g.enable(0, 0, 64 * 4096), &g.ram, &host)
        .expect("enable");
    let Outcome::Inject { pmbsr, pmbptr } = out else {
        panic!("expected a refusal, got {out:?}")
    };
    assert_eq!(
        BufferEvent::decode(pmbsr).kind,
        BufferEventKind::SizeTooLarge
    );
    assert!(BufferEvent::decode(pmbsr).service);
    assert_eq!(pmbptr, BUFFER_VA);
    assert_eq!(host.pinned_bytes(), 0);
    assert_eq!(s.stats().refused, 1);
    // The guest can read the cap in PMBIDR_EL1.MaxBuffSize.
    let read = Event::BufferRead {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmbidr,
        regs: BufferRegs::default(),
        pmbidr: Pmbidr::new().with_align(6).with_f(true),
    };
    let Outcome::Emulated(v) = s.on_event(&read, &g.ram, &host).expect("read") else {
        panic!("PMBIDR must be emulated")
    };
    let idr = Pmbidr::from_bits(v);
    // The cap less what the tables may take: a buffer of MaxBuffSize always fits.
    assert_eq!(idr.max_buffer_bytes(), Some(10 * 4096));
    assert_eq!(
        (idr.align(), idr.f()),
        (6, true),
        "other fields pass through"
    );
    assert_eq!(s.guest_notice().buffer_cap_pages, 16);
}

#[test]
fn two_vcpus_sharing_a_buffer_share_pins_with_reference_counts() {
    let (g, host, s) = setup(16);
    s.on_event(&g.enable(0, 0, 16 * 4096), &g.ram, &host)
        .expect("vcpu 0");
    s.on_event(&g.enable(1, 0, 16 * 4096), &g.ram, &host)
        .expect("vcpu 1");
    assert_eq!(host.pinned_bytes(), (16 + 4) * 4096, "pinned once");
    // vCPU 0 moves to a different stage 1 (its cache is dropped); vCPU 1 keeps the pages.
    let mut other = g.stage1;
    other.tcr = other.tcr.with_hd(true);
    let ev = Event::BufferWrite {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmblimitr,
        regs: window_regs(BUFFER_VA, Gva(BUFFER_VA.0 + 4096), true),
        stage1: other,
    };
    s.on_event(&ev, &g.ram, &host).expect("retarget");
    for p in &g.buffer_pages {
        assert!(host.is_pinned(*p));
    }
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_buffer_crossing_64k_and_2m_boundaries_pins_both_sides() {
    // 600 pages from VA 0x...8000_0000: crosses 64K boundaries and a 2MiB (L3 table) boundary.
    let (g, host, s) = setup(600);
    s.on_event(&g.enable(0, 0, 600 * 4096), &g.ram, &host)
        .expect("enable");
    let tables = g.table_pages();
    assert_eq!(tables.len(), 5, "root, L1, L2 and two L3 tables");
    for p in g.buffer_pages.iter().chain(&tables) {
        assert!(host.is_pinned(*p));
    }
}

#[test]
fn host_invalidation_of_an_active_buffer_page_is_refused_and_of_an_idle_one_allowed() {
    let (g, host, s) = setup(8);
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    let page = IpaRange::new(g.buffer_pages[2], 4096);
    let swap = Event::HostInvalidation {
        range: page,
        cause: InvalidationCause::Swap,
    };
    assert_eq!(
        s.on_event(&swap, &g.ram, &host).expect("swap"),
        Outcome::Refuse(Refusal::Pinned)
    );
    s.on_event(&g.disable(0), &g.ram, &host).expect("disable");
    assert_eq!(
        s.on_event(&swap, &g.ram, &host).expect("swap"),
        Outcome::Resume
    );
    assert!(
        !host.is_pinned(g.buffer_pages[2]),
        "idle cached page unpinned for the host"
    );
}

#[test]
fn a_stage_2_fault_after_a_guest_remap_is_repaired_and_the_buffer_rewound() {
    let mut g = GuestFixture::new(4);
    let host = g.host();
    // Sequential writes: the record before the partial one is provably complete.
    let s = PinBuffer::new(PinBufferConfig {
        recovery: spe_policy::buffer_recovery::RecoverySettings {
            write_order: spe_policy::spe::WriteOrder::Sequential,
            ..Default::default()
        },
        ..PinBufferConfig::default()
    });
    s.on_event(&g.enable(0, 0, 4 * 4096), &g.ram, &host)
        .expect("enable");
    // One complete 64-byte record, then a partial one, written by the SPU.
    let rec = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../spe-policy/tests/data/quipper_arm_spe_decoder_test.bin"
    ))
    .expect("data");
    g.write_buffer(0, &rec[..64 + 20]);
    // The guest remaps VA page 0 to a new page (its table page is pinned; the data page is
    // new and not present at stage 2).
    let new_page = Ipa(0x40f0_0000);
    g.ram.write(new_page, &rec[..64 + 20]).expect("copy");
    let old_page = g.buffer_pages[0];
    remap(&mut g, 0, new_page);
    host.unmap(IpaRange::new(new_page, 4096), Absence::Swapped);
    let out = s
        .on_event(&g.stage2_fault(0, 64 + 20, 4 * 4096, true), &g.ram, &host)
        .expect("fault");
    assert_eq!(
        out,
        Outcome::ResumeAt {
            pmbptr: Gva(BUFFER_VA.0 + 64)
        },
        "rewound to the record end"
    );
    assert!(host.is_pinned(new_page), "the remapped page is pinned now");
    assert!(!host.is_pinned(old_page), "the stale page is released");
    assert_eq!(s.stats().bytes_lost_rewind, 20);
}

/// Rewrites the level 3 descriptor of buffer page `index` to point at `ipa`.
fn remap(g: &mut GuestFixture, index: u64, ipa: Ipa) {
    use spe_policy::arch::walk::Walker;
    let va = Gva(BUFFER_VA.0 + index * 4096);
    let t = Walker::new(g.stage1, &g.ram).translate(va).expect("walk");
    let desc_at = t.leaf_descriptor.expect("leaf");
    g.ram
        .write_u64(desc_at, ipa.0 | 0b11 | (1 << 10), false)
        .expect("write");
    g.buffer_pages[index as usize] = ipa;
}

#[test]
fn pre_copy_keeps_pinned_pages_writable_until_the_vcpu_stops() {
    let (g, host, s) = setup(4);
    s.on_event(&g.enable(0, 0, 4 * 4096), &g.ram, &host)
        .expect("enable");
    s.on_event(&Event::DirtyLogStart, &g.ram, &host)
        .expect("log");
    host.dirty_log_protect(None);
    for p in &g.buffer_pages {
        let st = host.page_state(*p);
        assert!(st.writable() && st.dirty_log_exempt, "{p}: {st:?}");
    }
    s.on_event(&Event::VcpuStop(VcpuId(0)), &g.ram, &host)
        .expect("stop");
    assert!(!host.page_state(g.buffer_pages[0]).dirty_log_exempt);
}

#[test]
fn post_copy_sends_the_buffer_before_switch_over() {
    let (g, host, s) = setup(4);
    s.on_event(&g.enable(0, 0, 4 * 4096), &g.ram, &host)
        .expect("enable");
    s.on_event(&Event::PostCopySwitchover, &g.ram, &host)
        .expect("switch-over");
    assert_eq!(host.counters().sent_before_switchover, 4 + 4);
}

#[test]
fn removing_a_memslot_while_pinned_releases_its_pins() {
    let (g, host, s) = setup(4);
    s.on_event(&g.enable(0, 0, 4 * 4096), &g.ram, &host)
        .expect("enable");
    s.on_event(&Event::MemslotRemoved(memslots()[0]), &g.ram, &host)
        .expect("remove");
    assert_eq!(host.pinned_bytes(), 0);
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
}

#[test]
fn hostile_buffers_never_panic_and_never_pin_without_bound() {
    let (g, host, s) = setup(4);
    let cases = [
        // LIMIT below PMBPTR.
        window_regs(Gva(BUFFER_VA.0 + 0x3000), BUFFER_VA, true),
        // Misaligned pointer.
        window_regs(Gva(BUFFER_VA.0 + 3), Gva(BUFFER_VA.0 + 0x2000), true),
        // A buffer covering all of the VA space of the half.
        window_regs(Gva(0xffff_0000_0000_0000), Gva(0xffff_ffff_ffff_f000), true),
        // A window the guest never mapped.
        window_regs(Gva(0xffff_9000_0000_0000), Gva(0xffff_9000_0010_0000), true),
    ];
    for regs in cases {
        let ev = Event::BufferWrite {
            vcpu: VcpuId(0),
            reg: BufferReg::Pmblimitr,
            regs,
            stage1: g.stage1,
        };
        s.on_event(&ev, &g.ram, &host).expect("no host error");
        assert!(s.vcpu_pinned_bytes(VcpuId(0)) <= s.config().cap_bytes_per_vcpu);
    }
    // Tables outside RAM and tables in a loop.
    let mut bad = g.clone();
    let root = spe_strategy_testkit::TABLES;
    let idx = (BUFFER_VA.0 >> 39) & 0x1ff;
    bad.ram
        .write_u64(Ipa(root.0 + idx * 8), 0x9_0000_0000 | 0b11, false)
        .expect("w");
    s.on_event(&bad.enable(1, 0, 4096), &bad.ram, &host)
        .expect("outside RAM");
    bad.ram
        .write_u64(Ipa(root.0 + idx * 8), root.0 | 0b11, false)
        .expect("w");
    s.on_event(&bad.enable(2, 0, 4096), &bad.ram, &host)
        .expect("loop");
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_refused_lock_limit_leaves_nothing_half_pinned() {
    let (g, host, s) = setup(16);
    host.set_lock_limit(Some(8 * 4096));
    let out = s
        .on_event(&g.enable(0, 0, 16 * 4096), &g.ram, &host)
        .expect("enable");
    assert!(matches!(out, Outcome::Inject { .. }), "{out:?}");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn many_threads_of_mixed_events_leave_nothing_pinned_and_finish() {
    let g = GuestFixture::new(16);
    let host = g.host();
    let s = PinBuffer::new(PinBufferConfig::default());
    stress(&s, &g, &host, 8, 200, Duration::from_secs(60));
    assert_eq!(host.pinned_bytes(), 0);
    let st = s.stats();
    assert_eq!(st.pinned_bytes, 0);
    assert!(st.pin_ops > 0 && st.unpin_ops > 0);
    let _ = RAM;
}

#[test]
fn a_buffer_page_the_host_cannot_back_at_enable_is_a_guest_visible_outcome_not_a_host_error() {
    // Issue 18: the same condition was a PolicyError at enable and a guest-visible outcome
    // at a fault. Now both leave it to the SPU's fault, which reaches the guest (PB-07).
    let (g, host, s) = setup(8);
    host.make_unavailable(g.buffer_pages[3]);
    let out = s
        .on_event(&g.enable(0, 0, 8 * 0x1000), &g.ram, &host)
        .expect("not a host failure");
    assert_eq!(out, Outcome::Resume);
    assert_eq!(host.pinned_bytes(), 0, "nothing stays half pinned");
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_64k_guest_on_4k_host_pages_pins_the_host_page_of_every_descriptor_the_spu_reads() {
    // Issue 15: table pages were aligned down to the host page, so only the first 4 KiB of a
    // 64 KiB table was pinned while the leaf descriptor usually lies elsewhere in it.
    let g = GuestFixture::with_granule(spe_policy::Granule::K64, 8);
    let host = g.host();
    let s = PinBuffer::new(PinBufferConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    let len = 8 * (64 << 10);
    assert_eq!(
        s.on_event(&g.enable(0, 0, len), &g.ram, &host)
            .expect("enable"),
        Outcome::Resume
    );
    for n in 0..8 {
        let desc = g.leaf_descriptor(n);
        assert!(
            desc.0 % (64 << 10) >= 4096,
            "the descriptor lies past the table's first 4 KiB"
        );
        assert!(
            host.is_pinned(desc),
            "page {n}: descriptor at {desc} is not pinned"
        );
        // All 16 host pages of the guest page are pinned.
        let page = g.buffer_pages[n as usize];
        for k in 0..16 {
            assert!(
                host.is_pinned(Ipa(page.0 + k * 4096)),
                "page {n} host page {k}"
            );
        }
    }
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_4k_guest_on_64k_host_pages_pins_a_small_buffer_under_the_cap() {
    // Issue 15: the walk budget was counted in host pages while the walk steps per guest page,
    // so a 128 KiB buffer under a 16 MiB cap was refused as "size too large".
    let g = GuestFixture::new(32);
    let host = g.host_with(spe_policy::Granule::K64);
    let s = PinBuffer::new(PinBufferConfig::default());
    let slots = memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
        .expect("start");
    let out = s
        .on_event(&g.enable(0, 0, 32 * 4096), &g.ram, &host)
        .expect("enable");
    assert_eq!(out, Outcome::Resume, "not refused");
    for (n, page) in g.buffer_pages.iter().enumerate() {
        assert!(host.is_pinned(*page), "buffer page {n} at {page}");
    }
    assert!(host.is_pinned(g.leaf_descriptor(0)));
    // A re-enable of the same buffer is a cache hit.
    let before = s.stats().cache_hits;
    s.on_event(&g.enable(0, 0, 32 * 4096), &g.ram, &host)
        .expect("re-enable");
    assert_eq!(s.stats().cache_hits, before + 1);
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_remap_of_an_active_buffer_is_followed_by_pins_of_the_new_page_before_the_guest_resumes() {
    // Issue 15 (PB-03's mitigation): a trapped TLB invalidation re-walks and re-pins the
    // active window, and unpins the page it no longer maps.
    let (mut g, host, s) = setup(8);
    s.on_event(&g.enable(0, 0, 8 * 4096), &g.ram, &host)
        .expect("enable");
    let old = g.buffer_pages[0];
    let new = Ipa(RAM.start.0 + (12 << 20));
    assert!(host.is_pinned(old) && !host.is_pinned(new));
    let desc = g.leaf_descriptor(0);
    g.ram
        .write_u64(
            desc,
            new.0 | 0b11 | spe_policy::arch::walk::builder::LEAF_RW,
            false,
        )
        .expect("remap");
    let remap = Event::GuestStage1Remap {
        vcpu: VcpuId(0),
        stage1: g.stage1,
    };
    assert_eq!(s.on_event(&remap, &g.ram, &host), Ok(Outcome::Resume));
    assert!(
        host.is_pinned(new),
        "the new page is pinned before the SPU writes it"
    );
    assert!(
        !host.is_pinned(old),
        "the page no longer mapped is unpinned"
    );
    for p in &g.buffer_pages[1..] {
        assert!(host.is_pinned(*p), "the rest stays pinned");
    }
    s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    assert_eq!(host.pinned_bytes(), 0);
}

#[test]
fn a_buffer_of_exactly_max_buff_size_is_accepted() {
    // Issue 15: MaxBuffSize reported the cap while the enforced cap also counts table pages,
    // so a buffer of exactly MaxBuffSize was refused (BSC size too large).
    for cap in [64u64 << 10, 1 << 20, 16 << 20] {
        let g = GuestFixture::new(1024);
        let host = g.host();
        let s = PinBuffer::new(PinBufferConfig {
            cap_bytes_per_vcpu: cap,
            ..PinBufferConfig::default()
        });
        let slots = memslots();
        s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
            .expect("start");
        let read = Event::BufferRead {
            vcpu: VcpuId(0),
            reg: BufferReg::Pmbidr,
            regs: BufferRegs::default(),
            pmbidr: Pmbidr::new(),
        };
        let Ok(Outcome::Emulated(v)) = s.on_event(&read, &g.ram, &host) else {
            panic!("emulated");
        };
        let max = Pmbidr::from_bits(v).max_buffer_bytes().expect("a size");
        assert!(max <= cap && max * 2 > cap / 2, "cap {cap:#x}: {max:#x}");
        let len = max.min(1024 * 4096);
        let out = s
            .on_event(&g.enable(0, 0, len), &g.ram, &host)
            .expect("enable");
        assert_eq!(
            out,
            Outcome::Resume,
            "cap {cap:#x}: a {len:#x} buffer is refused"
        );
        s.on_event(&Event::VmStop, &g.ram, &host).expect("stop");
    }
}
