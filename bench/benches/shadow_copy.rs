//! shadow-buffer's copy path on real memory: one host half (32 KiB of real SPE records) copied
//! into a scattered, vmap-like guest buffer through the stage 1 walker and the host's write
//! path (`[real]`: file-backed guest RAM, spe-host-linux), against a plain memcpy of the same
//! bytes in the same run. The ratio is SB-03's cost per byte.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spe_policies::{ShadowBuffer, ShadowBufferConfig, SpuWrite};
use spe_policy::arch::{BufferEvent, BufferMode, Pmblimitr, Pmbptr};
use spe_policy::event::{BufferReg, BufferRegs, Event, Outcome};
use spe_policy::{BackingStrategy, Gva, VcpuId};
use spe_policy_bench::{REAL_BUFFER_VA, RealGuest, realistic_spe_buffer};

const HOST_BUFFER: u64 = 64 << 10;
const GUEST_BUFFER: u64 = 4 << 20;

/// Linux's enable sequence (spec sheet §4.2): PMBPTR, PMBLIMITR, PMBSR = 0.
fn enable(s: &ShadowBuffer, g: &RealGuest) {
    let regs = BufferRegs {
        pmbptr: Pmbptr::from_bits(REAL_BUFFER_VA.0),
        pmblimitr: Pmblimitr::for_buffer(
            Gva(REAL_BUFFER_VA.0 + GUEST_BUFFER),
            true,
            BufferMode::Fill,
        ),
        pmbsr: Default::default(),
    };
    for reg in [BufferReg::Pmbptr, BufferReg::Pmblimitr, BufferReg::Pmbsr] {
        let ev = Event::BufferWrite {
            vcpu: VcpuId(0),
            reg,
            regs,
            stage1: g.stage1,
        };
        s.on_event(&ev, &g.ram, &g.ram).expect("enable");
    }
}

/// Real records, cut at record boundaries (44 and 64 bytes).
fn records() -> Vec<Vec<u8>> {
    let bytes = realistic_spe_buffer(64 << 10);
    let mut out = Vec::new();
    let mut records = spe_policy::spe::Records::new(&bytes, Default::default());
    let mut r = spe_policy::spe::Record::default();
    while records.next_into(&mut r) == spe_policy::spe::Fill::Record {
        out.push(bytes[r.offset..r.offset + r.len].to_vec());
    }
    out
}

fn copy_half(c: &mut Criterion) {
    let g = RealGuest::new(256 << 20, GUEST_BUFFER / 4096);
    let recs = records();
    assert!(!recs.is_empty(), "records");
    let s = ShadowBuffer::new(ShadowBufferConfig {
        host_buffer_bytes: HOST_BUFFER,
        max_record_bytes: 64,
        ..ShadowBufferConfig::default()
    });
    let slots = g.memslots();
    s.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &g.ram)
        .expect("start");
    enable(&s, &g);
    let full = Event::BufferManagement {
        vcpu: VcpuId(0),
        regs: BufferRegs {
            pmbsr: BufferEvent::buffer_full().encode(),
            ..BufferRegs::default()
        },
        stage1: g.stage1,
    };
    // Bytes per half as the SPU fills it (the window is 32 KiB; it stops within 64 bytes).
    let mut next = 0;
    let mut fill = |s: &ShadowBuffer| -> u64 {
        let mut bytes = 0;
        loop {
            let r = &recs[next % recs.len()];
            next += 1;
            match s.spu_write(VcpuId(0), r) {
                SpuWrite::Written => bytes += r.len() as u64,
                SpuWrite::HostBufferFull => return bytes + r.len() as u64,
                other => panic!("{other:?}"),
            }
        }
    };
    let probe = fill(&s);
    s.on_event(&full, &g.ram, &g.ram).expect("copy");
    let mut grp = c.benchmark_group("shadow_copy_32k[real]");
    grp.throughput(Throughput::Bytes(probe));
    grp.bench_function("copy_through_stage1", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fill(&s);
                let t = Instant::now();
                let out = s.on_event(&full, &g.ram, &g.ram).expect("copy");
                total += t.elapsed();
                if out != Outcome::Resume {
                    // The guest's buffer filled: re-arm it, untimed.
                    enable(&s, &g);
                }
            }
            total
        })
    });
    let bytes: Vec<u8> = recs
        .iter()
        .flatten()
        .copied()
        .cycle()
        .take(probe as usize)
        .collect();
    // Source and destination in one allocation, 1.5 halves apart. Two separate 32 KiB heap
    // blocks land a power of two (plus the allocator's header) apart, and there AMD's
    // `rep movsb`, which glibc's memcpy uses for copies this size, runs 10x slow (the
    // baseline measured 11-14 µs, slower than the path it is the baseline for).
    let n = probe as usize;
    let mut both = vec![0u8; n + n / 2 + n];
    let (src, rest) = both.split_at_mut(n + n / 2);
    src[..n].copy_from_slice(&bytes);
    let (src, dst) = (&src[..n], &mut rest[..n]);
    grp.bench_function("baseline_memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(src));
            black_box(&mut *dst);
        })
    });
    // The baseline the target is set against: the same bytes copied into the same scattered
    // 4 KiB pages, at the same place in the 4 MiB buffer as the copy path's half, in memory
    // laid out as the guest's RAM (so the destinations are as cold in the caches): what any
    // copy must pay, without the walks and the host's write path.
    let ram = g.ram.range();
    let mut shadow_ram = vec![0u8; ram.len as usize];
    let pages = g.buffer_pages.clone();
    let mut at = 0u64;
    grp.bench_function("baseline_memcpy_scattered", |b| {
        b.iter(|| {
            if at + probe > GUEST_BUFFER {
                at = 0;
            }
            let mut done = 0usize;
            while done < n {
                let va_off = at + done as u64;
                let page = pages[(va_off / 4096) as usize];
                let off = (page.0 - ram.start.0 + va_off % 4096) as usize;
                let len = (4096 - (va_off % 4096) as usize).min(n - done);
                shadow_ram[off..off + len].copy_from_slice(black_box(&src[done..done + len]));
                done += len;
            }
            at += probe;
            black_box(&mut shadow_ram);
        })
    });
    grp.finish();
    // The timed calls did copy: every half reached guest memory.
    let st = s.shadow_stats();
    assert!(
        st.bytes_copied >= st.host_buffer_fulls * (probe / 2) && st.bytes_dropped == 0,
        "{st:?}"
    );
    s.on_event(&Event::VmStop, &g.ram, &g.ram).expect("stop");
}

criterion_group!(benches, copy_half);
criterion_main!(benches);
