use proptest::prelude::*;
use spe_policy::arch::{BufferEvent, BufferEventKind, Pmbidr, Stage};
use spe_policy::event::InvalidationCause;
use spe_policy::{Gva, IpaRange, Memslot};
use spe_strategy_testkit::{BUFFER_VA, GuestFixture, RamHost, window_regs};

use super::*;

/// Real records: Kunpeng's 44-byte branch records and quipper's 64-byte ones.
fn records() -> Vec<&'static [u8]> {
    let kunpeng: &'static [u8] =
        include_bytes!("../../../spe-policy/tests/data/kunpeng_branch_2021_a.bin");
    let quipper: &'static [u8] =
        include_bytes!("../../../spe-policy/tests/data/quipper_arm_spe_decoder_test.bin");
    vec![
        &kunpeng[..44],
        &quipper[..64],
        &kunpeng[44..88],
        &quipper[64..128],
    ]
}

fn strategy(host_buffer: u64) -> ShadowBuffer {
    ShadowBuffer::new(ShadowBufferConfig {
        host_buffer_bytes: host_buffer,
        max_record_bytes: 64,
        ..ShadowBufferConfig::default()
    })
}

fn host_full() -> BufferRegs {
    BufferRegs {
        pmbsr: BufferEvent::buffer_full().encode(),
        ..BufferRegs::default()
    }
}

/// What the hardware would do with the guest's own buffer (pin-all: never faults): records
/// written in order until PMBPTR passes `limit - 64` (spec sheet §1.11 rule 4). Returns the
/// bytes written and how many records it took.
fn hardware(window: u64, recs: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        out.extend_from_slice(r);
        if out.len() as u64 > window - 64 {
            return (out, i + 1);
        }
    }
    (out, recs.len())
}

/// Drives the SPU with `recs` through the strategy as a VMM would, until the guest gets an
/// event; returns it.
fn drive(
    s: &ShadowBuffer,
    f: &GuestFixture,
    host: &RamHost,
    recs: &[&[u8]],
) -> (Option<Outcome>, usize) {
    for (i, r) in recs.iter().enumerate() {
        match s.spu_write(VcpuId(0), r) {
            SpuWrite::Written => {}
            SpuWrite::HostBufferFull => {
                let ev = Event::BufferManagement {
                    vcpu: VcpuId(0),
                    regs: host_full(),
                    stage1: f.stage1,
                };
                match s.on_event(&ev, &f.ram, host).expect("host event") {
                    Outcome::Resume => {}
                    other => return (Some(other), i + 1),
                }
            }
            other => panic!("record {i}: {other:?}"),
        }
    }
    (None, recs.len())
}

/// Linux's order (spec sheet §4.2): PMBPTR, then PMBLIMITR with E = 1.
fn enable(s: &ShadowBuffer, f: &GuestFixture, host: &RamHost, vcpu: u32, off: u64, len: u64) {
    let regs = window_regs(Gva(BUFFER_VA.0 + off), Gva(BUFFER_VA.0 + off + len), true);
    for reg in [BufferReg::Pmbptr, BufferReg::Pmblimitr, BufferReg::Pmbsr] {
        let ev = Event::BufferWrite {
            vcpu: VcpuId(vcpu),
            reg,
            regs,
            stage1: f.stage1,
        };
        assert_eq!(s.on_event(&ev, &f.ram, host), Ok(Outcome::Resume));
    }
}

fn read(s: &ShadowBuffer, f: &GuestFixture, host: &RamHost, reg: BufferReg) -> u64 {
    let ev = Event::BufferRead {
        vcpu: VcpuId(0),
        reg,
        regs: BufferRegs::default(),
        pmbidr: Pmbidr::new(),
    };
    match s.on_event(&ev, &f.ram, host).expect("read") {
        Outcome::Emulated(v) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_guest_buffer_fills_at_the_same_record_and_holds_the_same_bytes_as_on_hardware() {
    let f = GuestFixture::new(8);
    let host = RamHost::new(&f);
    // A host half (1 KiB) much smaller than the guest's window: many host fulls first.
    let s = strategy(2048);
    let (off, len) = (0x40, 3 * 0x1000 - 0x40);
    enable(&s, &f, &host, 0, off, len);
    let recs: Vec<&[u8]> = (0..400).map(|i| records()[i % 4]).collect();
    let (expected, taken) = hardware(len, &recs);
    let (event, used) = drive(&s, &f, &host, &recs);
    assert_eq!(used, taken, "the buffer filled at a different record");
    let Some(Outcome::Inject { pmbsr, pmbptr }) = event else {
        panic!("no buffer-full: {event:?}");
    };
    assert_eq!(
        BufferEvent::decode(pmbsr).kind,
        BufferEventKind::BufferFull,
        "{pmbsr:?}"
    );
    assert!(!pmbsr.dl() && pmbsr.s());
    assert_eq!(pmbptr, Gva(BUFFER_VA.0 + off + expected.len() as u64));
    assert_eq!(host.buffer_bytes(&f, off, expected.len() as u64), expected);
    // The guest reads exactly what was injected.
    assert_eq!(read(&s, &f, &host, BufferReg::Pmbsr), pmbsr.into_bits());
    assert_eq!(read(&s, &f, &host, BufferReg::Pmbptr), pmbptr.0);
    // Profiling is stopped until the guest clears PMBSR.S.
    assert_eq!(s.spu_write(VcpuId(0), records()[0]), SpuWrite::NotProfiling);
    assert_eq!(s.stats().pinned_bytes, 2048, "only the host buffer is held");
}

#[test]
fn a_pmbptr_read_copies_the_records_in_flight_first() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    let recs = records();
    for r in &recs {
        assert_eq!(s.spu_write(VcpuId(0), r), SpuWrite::Written);
    }
    let all: Vec<u8> = recs.concat();
    // Not copied yet: SB-01.
    assert_ne!(host.buffer_bytes(&f, 0, all.len() as u64), all);
    let ptr = read(&s, &f, &host, BufferReg::Pmbptr);
    assert_eq!(ptr, BUFFER_VA.0 + all.len() as u64);
    assert_eq!(host.buffer_bytes(&f, 0, all.len() as u64), all);
    assert_eq!(s.shadow_stats().bytes_copied, all.len() as u64);
    // Profiling goes on after the read, into the same guest buffer.
    assert_eq!(s.spu_write(VcpuId(0), recs[0]), SpuWrite::Written);
    let ptr2 = read(&s, &f, &host, BufferReg::Pmbptr);
    assert_eq!(ptr2, ptr + recs[0].len() as u64);
}

#[test]
fn a_stage1_fault_in_the_guest_buffer_is_reported_as_the_spu_would() {
    let mut f = GuestFixture::new(4);
    // The guest unmaps its third buffer page: clear the level 3 descriptor.
    let walker = spe_policy::arch::walk::Walker::new(f.stage1, &f.ram);
    let t = walker
        .translate(Gva(BUFFER_VA.0 + 2 * 4096))
        .expect("mapped");
    let desc = t.leaf_descriptor.expect("leaf");
    f.ram.write_u64(desc, 0, false).expect("unmap");
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    // 44-byte records: 8192 is not a multiple of 44, so the fault lands mid-record.
    let rec = records()[0];
    let mut n = 0;
    while n * 44 < 8192 + 44 {
        assert_eq!(s.spu_write(VcpuId(0), rec), SpuWrite::Written);
        n += 1;
    }
    let ptr = read(&s, &f, &host, BufferReg::Pmbptr);
    assert_eq!(ptr, BUFFER_VA.0 + 8192, "PMBPTR is the faulting VA");
    let pmbsr = Pmbsr::from_bits(read(&s, &f, &host, BufferReg::Pmbsr));
    let ev = BufferEvent::decode(pmbsr);
    assert!(
        matches!(
            ev.kind,
            BufferEventKind::Fault {
                stage: Stage::One,
                ..
            }
        ),
        "{ev:?}"
    );
    assert!(ev.data_loss, "8192 is mid-record: DL = 1");
    // The bytes before the fault are there, as the SPU would have written them.
    let expected: Vec<u8> = rec.iter().copied().cycle().take(8192).collect();
    assert_eq!(host.buffer_bytes(&f, 0, 8192), expected);
    assert!(s.shadow_stats().bytes_dropped > 0);
}

#[test]
fn a_fault_on_a_record_boundary_leaves_dl_clear() {
    let mut f = GuestFixture::new(4);
    let walker = spe_policy::arch::walk::Walker::new(f.stage1, &f.ram);
    let desc = walker
        .translate(Gva(BUFFER_VA.0 + 4096))
        .expect("mapped")
        .leaf_descriptor
        .expect("leaf");
    f.ram.write_u64(desc, 0, false).expect("unmap");
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    let rec = records()[1]; // 64 bytes: 4096 is a boundary
    for _ in 0..66 {
        assert_eq!(s.spu_write(VcpuId(0), rec), SpuWrite::Written);
    }
    assert_eq!(read(&s, &f, &host, BufferReg::Pmbptr), BUFFER_VA.0 + 4096);
    let pmbsr = Pmbsr::from_bits(read(&s, &f, &host, BufferReg::Pmbsr));
    assert!(pmbsr.s() && !pmbsr.dl(), "{pmbsr:?}");
}

/// A host that knows only the first 8 MiB of RAM: the buffer pages (from 0x4080_0000) are
/// outside every memslot.
fn host_without_the_buffer(f: &GuestFixture) -> RamHost {
    let host = RamHost::new(f);
    host.model.remove_memslot(0);
    host.model.add_memslot(Memslot {
        slot: 1,
        range: IpaRange::new(spe_strategy_testkit::RAM.start, 8 << 20),
    });
    host
}

#[test]
fn a_buffer_over_memory_outside_every_memslot_gets_a_stage2_fault() {
    let f = GuestFixture::new(4);
    let host = host_without_the_buffer(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    assert_eq!(s.spu_write(VcpuId(0), records()[1]), SpuWrite::Written);
    let ptr = read(&s, &f, &host, BufferReg::Pmbptr);
    assert_eq!(ptr, BUFFER_VA.0);
    let pmbsr = Pmbsr::from_bits(read(&s, &f, &host, BufferReg::Pmbsr));
    assert!(
        matches!(
            BufferEvent::decode(pmbsr).kind,
            BufferEventKind::Fault {
                stage: Stage::Two,
                ..
            }
        ),
        "{pmbsr:?}"
    );
}

#[test]
fn records_taken_before_a_retarget_land_in_the_old_buffer() {
    let f = GuestFixture::new(8);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 2 * 4096);
    let rec = records()[1];
    assert_eq!(s.spu_write(VcpuId(0), rec), SpuWrite::Written);
    // The guest moves its buffer to pages 4..8 while a record is in flight.
    let moved = Event::BufferWrite {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmbptr,
        regs: window_regs(
            Gva(BUFFER_VA.0 + 4 * 4096),
            Gva(BUFFER_VA.0 + 8 * 4096),
            true,
        ),
        stage1: f.stage1,
    };
    assert_eq!(s.on_event(&moved, &f.ram, &host), Ok(Outcome::Resume));
    assert_eq!(host.buffer_bytes(&f, 0, 64), rec);
    let limit = Event::BufferWrite {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmblimitr,
        regs: window_regs(
            Gva(BUFFER_VA.0 + 4 * 4096),
            Gva(BUFFER_VA.0 + 8 * 4096),
            true,
        ),
        stage1: f.stage1,
    };
    s.on_event(&limit, &f.ram, &host).expect("limit");
    assert_eq!(s.spu_write(VcpuId(0), rec), SpuWrite::Written);
    assert_eq!(
        read(&s, &f, &host, BufferReg::Pmbptr),
        BUFFER_VA.0 + 4 * 4096 + 64
    );
    assert_eq!(host.buffer_bytes(&f, 4 * 4096, 64), rec);
}

#[test]
fn registers_against_the_enable_rules_take_no_records_and_are_counted() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    // LIMIT at PMBPTR + 32: less than one largest record of room (rule 3).
    let ev = Event::BufferWrite {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmblimitr,
        regs: window_regs(Gva(BUFFER_VA.0 + 4096 - 32), Gva(BUFFER_VA.0 + 4096), true),
        stage1: f.stage1,
    };
    assert_eq!(s.on_event(&ev, &f.ram, &host), Ok(Outcome::Resume));
    assert_eq!(s.spu_write(VcpuId(0), records()[0]), SpuWrite::NotProfiling);
    assert_eq!(s.shadow_stats().unpredictable_enables, 1);
    assert_eq!(s.spu_write(VcpuId(0), &[0; 65]), SpuWrite::Oversized);
}

#[test]
fn guest_memory_is_never_pinned_and_the_host_buffer_goes_at_vm_stop() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    for v in 0..4 {
        enable(&s, &f, &host, v, 0, 4 * 4096);
    }
    let inval = Event::HostInvalidation {
        range: IpaRange::new(f.buffer_pages[0], 4096),
        cause: InvalidationCause::Swap,
    };
    assert_eq!(s.on_event(&inval, &f.ram, &host), Ok(Outcome::Resume));
    assert_eq!(host.model.pinned_bytes(), 0);
    assert_eq!(s.stats().pinned_bytes, 4 * (64 << 10));
    let port = s.spu(VcpuId(1)).expect("vCPU 1 has a port");
    assert_eq!(port.write(records()[0]), SpuWrite::Written);
    s.on_event(&Event::VmStop, &f.ram, &host).expect("stop");
    assert_eq!(s.stats().pinned_bytes, 0);
    assert_eq!(s.spu_write(VcpuId(0), records()[0]), SpuWrite::NotProfiling);
    // A port kept across VM stop holds nothing and takes nothing.
    assert_eq!(port.write(records()[0]), SpuWrite::NotProfiling);
}

#[test]
fn a_copy_brings_swapped_out_buffer_pages_back_through_the_host_write_path() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    host.model.unmap(
        IpaRange::new(f.buffer_pages[0], 4096),
        spe_host_model::Absence::Swapped,
    );
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    assert_eq!(s.spu_write(VcpuId(0), records()[1]), SpuWrite::Written);
    assert_eq!(read(&s, &f, &host, BufferReg::Pmbptr), BUFFER_VA.0 + 64);
    assert!(host.model.page_state(f.buffer_pages[0]).present);
    assert_eq!(host.model.counters().guest_bytes_written, 64);
}

#[test]
fn many_vcpu_threads_at_once_keep_their_own_buffers_and_leave_nothing_held() {
    let f = GuestFixture::new(16);
    let host = RamHost::new(&f);
    let s = strategy(4096);
    let recs = records();
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            let (s, f, host, recs) = (&s, &f, &host, &recs);
            scope.spawn(move || {
                // Each vCPU owns two pages of the buffer.
                let off = u64::from(t) * 2 * 4096;
                for round in 0..50 {
                    enable(s, f, host, t, off, 2 * 4096);
                    for r in recs.iter().cycle().take(20 + round) {
                        if s.spu_write(VcpuId(t), r) == SpuWrite::HostBufferFull {
                            let ev = Event::BufferManagement {
                                vcpu: VcpuId(t),
                                regs: host_full(),
                                stage1: f.stage1,
                            };
                            s.on_event(&ev, &f.ram, host).expect("host full");
                        }
                    }
                    let ev = Event::BufferRead {
                        vcpu: VcpuId(t),
                        reg: BufferReg::Pmbptr,
                        regs: BufferRegs::default(),
                        pmbidr: Pmbidr::new(),
                    };
                    let Outcome::Emulated(ptr) = s.on_event(&ev, &f.ram, host).expect("read")
                    else {
                        panic!("not emulated");
                    };
                    assert!((BUFFER_VA.0 + off..=BUFFER_VA.0 + off + 2 * 4096).contains(&ptr));
                    s.on_event(&f.disable(t), &f.ram, host).expect("disable");
                }
            });
        }
    });
    assert_eq!(s.stats().pinned_bytes, 8 * 4096);
    s.on_event(&Event::VmStop, &f.ram, &host).expect("stop");
    assert_eq!(s.stats().pinned_bytes, 0);
    assert_eq!(host.model.pinned_bytes(), 0);
}

#[test]
fn an_event_other_than_buffer_full_on_the_host_buffer_is_a_typed_error() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    let e = s
        .on_event(&f.stage2_fault(0, 0, 4096, true), &f.ram, &host)
        .expect_err("a fault on the host's own buffer is a host bug");
    assert!(e.to_string().contains("host buffer"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Hostile guests: any register values, any order of writes, any record lengths. No panic,
    /// host memory bounded by the configured host buffer, PMBPTR only ever moves by what was
    /// copied.
    #[test]
    fn any_register_values_and_records_never_panic_and_hold_bounded_host_memory(
        ops in proptest::collection::vec((0u8..5, any::<u64>(), 0usize..100), 1..60)
    ) {
        let f = GuestFixture::new(4);
        let host = RamHost::new(&f);
        let s = strategy(8192);
        for (op, value, len) in ops {
            let mut regs = BufferRegs::default();
            let reg = match op {
                0 => { regs.pmbptr = Pmbptr::from_bits(value); BufferReg::Pmbptr }
                1 => { regs.pmblimitr = Pmblimitr::from_bits(value); BufferReg::Pmblimitr }
                2 => { regs.pmbsr = Pmbsr::from_bits(value); BufferReg::Pmbsr }
                _ => BufferReg::Pmbidr,
            };
            if op < 3 {
                let ev = Event::BufferWrite { vcpu: VcpuId(0), reg, regs, stage1: f.stage1 };
                let _ = s.on_event(&ev, &f.ram, &host);
            } else if op == 3 {
                let _ = read(&s, &f, &host, BufferReg::Pmbptr);
            } else {
                let rec = vec![0u8; len];
                if s.spu_write(VcpuId(0), &rec) == SpuWrite::HostBufferFull {
                    let ev = Event::BufferManagement {
                        vcpu: VcpuId(0), regs: host_full(), stage1: f.stage1,
                    };
                    let _ = s.on_event(&ev, &f.ram, &host);
                }
            }
            prop_assert!(s.stats().pinned_bytes <= 8192);
        }
        s.on_event(&Event::VmStop, &f.ram, &host).expect("stop");
        prop_assert_eq!(s.stats().pinned_bytes, 0);
    }
}

#[test]
fn post_copy_switch_over_sends_the_remaining_buffer_window_and_its_tables_first() {
    let f = GuestFixture::new(8);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 2 * 4096, 6 * 4096);
    s.on_event(&Event::PostCopySwitchover, &f.ram, &host)
        .expect("switch-over");
    let sent = host.model.counters().sent_before_switchover;
    let tables = f.table_pages().len() as u64;
    assert_eq!(
        sent,
        6 + tables,
        "six window pages and {tables} table pages"
    );
    // Nothing was pinned for it.
    assert_eq!(host.model.pinned_bytes(), 0);
}

#[test]
fn a_collision_on_the_host_spu_shows_in_the_guests_pmbsr_until_it_clears_it() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    assert_eq!(s.spu_write(VcpuId(0), records()[1]), SpuWrite::Written);
    // The host's PMBSR has COLL (rule 13: S is not set); the VMM passes it with the read.
    let ev = Event::BufferRead {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmbsr,
        regs: BufferRegs {
            pmbsr: Pmbsr::new().with_coll(true),
            ..BufferRegs::default()
        },
        pmbidr: Pmbidr::new(),
    };
    let Ok(Outcome::Emulated(bits)) = s.on_event(&ev, &f.ram, &host) else {
        panic!("not emulated");
    };
    let pmbsr = Pmbsr::from_bits(bits);
    assert!(pmbsr.coll() && !pmbsr.s(), "{pmbsr:?}");
    // Linux writes PMBSR = 0 after handling the event: COLL goes.
    enable(&s, &f, &host, 0, 64, 4 * 4096 - 64);
    assert!(!Pmbsr::from_bits(read(&s, &f, &host, BufferReg::Pmbsr)).coll());
}

#[test]
fn a_burst_of_spu_writes_ends_where_single_writes_would_with_the_same_bytes() {
    let recs: Vec<&[u8]> = records().into_iter().cycle().take(200).collect();
    let run = |burst: bool| {
        let f = GuestFixture::new(4);
        let host = RamHost::new(&f);
        let s = strategy(4096);
        enable(&s, &f, &host, 0, 0, 4 * 4096);
        let (taken, last) = if burst {
            let mut it = recs.iter().copied();
            s.spu(VcpuId(0)).expect("port").write_each(|| it.next())
        } else {
            let mut taken = 0;
            let mut last = SpuWrite::Written;
            for r in &recs {
                taken += 1;
                last = s.spu_write(VcpuId(0), r);
                if last != SpuWrite::Written {
                    break;
                }
            }
            (taken, last)
        };
        let ptr = read(&s, &f, &host, BufferReg::Pmbptr);
        let bytes = host.buffer_bytes(&f, 0, ptr - BUFFER_VA.0);
        (taken, last, ptr, bytes)
    };
    let single = run(false);
    // A 2 KiB half fills after about 40 records, well before the 200.
    assert_eq!(single.1, SpuWrite::HostBufferFull);
    assert!(
        single.0 < 100 && !single.3.is_empty(),
        "{:?}",
        (single.0, single.2)
    );
    assert_eq!(run(true), single);
}

#[test]
fn a_pmbsr_read_alone_reports_the_fault_the_spu_would_have_taken_and_raises_it_once() {
    // Issue 15: a PMBSR read did not drain, so the guest read S = 0 after the point where the
    // SPU would have faulted; a PMBPTR read that found the fault dropped the interrupt.
    let f = GuestFixture::new(4);
    let host = host_without_the_buffer(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    assert_eq!(s.spu_write(VcpuId(0), records()[1]), SpuWrite::Written);
    let pmbsr = Pmbsr::from_bits(read(&s, &f, &host, BufferReg::Pmbsr));
    assert!(
        pmbsr.s(),
        "S = 1 at the first read after the fault point: {pmbsr:?}"
    );
    assert!(matches!(
        BufferEvent::decode(pmbsr).kind,
        BufferEventKind::Fault {
            stage: Stage::Two,
            ..
        }
    ));
    // The interrupt is raised once, and counted once, however many reads follow.
    let _ = read(&s, &f, &host, BufferReg::Pmbptr);
    let _ = read(&s, &f, &host, BufferReg::Pmbsr);
    assert_eq!(
        host.model.injected().len(),
        1,
        "{:?}",
        host.model.injected()
    );
    assert_eq!(s.stats().injected, 1);
}

#[test]
fn pmbidr_reads_f_0_because_the_copy_does_no_hardware_access_flag_or_dirty_update() {
    let f = GuestFixture::new(4);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    let ev = Event::BufferRead {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmbidr,
        regs: BufferRegs::default(),
        pmbidr: Pmbidr::new().with_f(true).with_align(0),
    };
    let Ok(Outcome::Emulated(v)) = s.on_event(&ev, &f.ram, &host) else {
        panic!("emulated");
    };
    assert!(!Pmbidr::from_bits(v).f());
}

#[test]
fn a_buffer_full_keeps_dl_and_ea_as_the_rules_say() {
    // §1.11 rule 4: buffer full sets S, EC = 0 and BSC; DL and EA are unchanged.
    let f = GuestFixture::new(8);
    let host = RamHost::new(&f);
    let s = strategy(2048);
    enable(&s, &f, &host, 0, 0, 4096);
    // The guest left DL set (it does not clear PMBSR fields it does not handle).
    let dl = Event::BufferWrite {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmbsr,
        regs: BufferRegs {
            pmbsr: Pmbsr::new().with_dl(true),
            ..window_regs(Gva(BUFFER_VA.0), Gva(BUFFER_VA.0 + 4096), true)
        },
        stage1: f.stage1,
    };
    s.on_event(&dl, &f.ram, &host).expect("write");
    let recs: Vec<&[u8]> = (0..200).map(|i| records()[i % 4]).collect();
    let (event, _) = drive(&s, &f, &host, &recs);
    let Some(Outcome::Inject { pmbsr, .. }) = event else {
        panic!("no buffer-full: {event:?}");
    };
    assert_eq!(BufferEvent::decode(pmbsr).kind, BufferEventKind::BufferFull);
    assert!(pmbsr.dl(), "DL kept: {pmbsr:?}");
}

#[test]
fn a_remap_with_new_stage_1_registers_copies_the_records_in_flight_through_the_old_ones() {
    let f = GuestFixture::new(8);
    let host = RamHost::new(&f);
    let s = strategy(64 << 10);
    enable(&s, &f, &host, 0, 0, 4 * 4096);
    let rec = records()[1];
    assert_eq!(s.spu_write(VcpuId(0), rec), SpuWrite::Written);
    // The guest switches to tables that map nothing (TTBR1 at an empty page), and the host
    // traps the TLB invalidation.
    let mut empty = f.stage1;
    empty.ttbr1 = spe_policy::arch::Ttbr::from_bits(spe_strategy_testkit::RAM.start.0 + (8 << 20));
    let remap = Event::GuestStage1Remap {
        vcpu: VcpuId(0),
        stage1: empty,
    };
    assert_eq!(s.on_event(&remap, &f.ram, &host), Ok(Outcome::Resume));
    assert_eq!(
        host.buffer_bytes(&f, 0, 64),
        rec,
        "copied through the tables it was written under"
    );
}
