//! What each strategy costs, side by side: one criterion group per event, the three strategies
//! in each, on real memory (`[real]`: guest RAM is a file-backed mapping pinned with mlock,
//! reclaimed with MADV_PAGEOUT, protected with mprotect; see spe-host-linux). Only the event
//! being measured is timed; set-up and clean-up run outside the clock (`iter_custom`).
//!
//! Plus the pin cost of real memory against touching the same memory, in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spe_policy::event::{Event, InvalidationCause};
use spe_policy::{BackingStrategy, HostBacking, IpaRange};
use spe_policy_bench::{RealGuest, strategies};

const RAM: u64 = 256 << 20;
const BUFFER_SIZES: [u64; 5] = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 64 << 20];

/// Runs `iters` rounds of `setup` (untimed), `timed`, `cleanup` (untimed) for strategy `i`.
fn measure(
    g: &RealGuest,
    i: usize,
    iters: u64,
    setup: impl Fn(&spe_policies::Policy),
    timed: impl Fn(&spe_policies::Policy),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let p = strategies().remove(i);
        setup(&p);
        let t = Instant::now();
        timed(&p);
        total += t.elapsed();
        p.on_event(&Event::VmStop, &g.ram, &g.ram).expect("VM stop");
    }
    total
}

/// One group, the three strategies side by side: `setup` untimed, `timed` measured, VM stop
/// untimed, for each iteration.
fn per_strategy(
    c: &mut Criterion,
    group: &str,
    g: &RealGuest,
    setup: impl Fn(&spe_policies::Policy),
    timed: impl Fn(&spe_policies::Policy),
) {
    let mut grp = c.benchmark_group(group);
    grp.sample_size(10);
    for (i, name) in names() {
        grp.bench_function(name, |b| {
            b.iter_custom(|iters| measure(g, i, iters, &setup, &timed))
        });
    }
    grp.finish();
}

fn start(g: &RealGuest, p: &spe_policies::Policy) {
    let slots = g.memslots();
    p.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &g.ram)
        .expect("VM start");
}

fn vm_start(c: &mut Criterion) {
    let g = RealGuest::new(RAM, 1024);
    per_strategy(c, "vm_start_256mib[real]", &g, |_| {}, |p| start(&g, p));
}

fn buffer_enable(c: &mut Criterion) {
    let g = RealGuest::new(RAM, (64 << 20) / 4096);
    for (group, again) in [
        ("buffer_enable_first[real]", false),
        ("buffer_enable_again[real]", true),
    ] {
        let mut grp = c.benchmark_group(group);
        grp.sample_size(10);
        for size in BUFFER_SIZES {
            grp.throughput(Throughput::Bytes(size));
            for (i, name) in names() {
                grp.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                    b.iter_custom(|iters| {
                        measure(
                            &g,
                            i,
                            iters,
                            |p| {
                                start(&g, p);
                                if again {
                                    p.on_event(&g.enable(size), &g.ram, &g.ram).expect("enable");
                                    p.on_event(&g.disable(), &g.ram, &g.ram).expect("disable");
                                }
                            },
                            |p| {
                                black_box(
                                    p.on_event(&g.enable(size), &g.ram, &g.ram).expect("enable"),
                                );
                            },
                        )
                    })
                });
            }
        }
        grp.finish();
    }
}

/// pin-buffer's cached re-enable (the path Linux's driver takes at every context switch and
/// AUX start) at 4 KiB to 64 MiB, against a trapped register access that changes nothing (a
/// PMBPTR read pin-buffer passes through): the target is at most 2x the no-op, whatever the
/// buffer's size. Only the event is timed; the buffer is pinned once, outside the clock.
fn buffer_reenable_cached(c: &mut Criterion) {
    let g = RealGuest::new(RAM, (64 << 20) / 4096);
    let p = spe_policies::Policy::PinBuffer(spe_policies::PinBuffer::new(
        spe_policies::PinBufferConfig {
            cap_bytes_per_vcpu: 128 << 20,
            ..spe_policies::PinBufferConfig::default()
        },
    ));
    start(&g, &p);
    let mut grp = c.benchmark_group("buffer_reenable_cached[real]");
    let noop = Event::BufferRead {
        vcpu: spe_policy::VcpuId(0),
        reg: spe_policy::event::BufferReg::Pmbptr,
        regs: spe_policy::event::BufferRegs::default(),
        pmbidr: spe_policy::arch::Pmbidr::new(),
    };
    grp.bench_function("baseline_noop_register_write", |b| {
        b.iter(|| black_box(p.on_event(black_box(&noop), &g.ram, &g.ram).expect("read")))
    });
    for size in BUFFER_SIZES {
        p.on_event(&g.enable(size), &g.ram, &g.ram)
            .expect("first enable");
        p.on_event(&g.disable(), &g.ram, &g.ram).expect("disable");
        let enable = g.enable(size);
        grp.bench_with_input(BenchmarkId::new("pin-buffer", size), &size, |b, _| {
            b.iter(|| {
                black_box(
                    p.on_event(black_box(&enable), &g.ram, &g.ram)
                        .expect("enable"),
                )
            })
        });
    }
    grp.finish();
    p.on_event(&Event::VmStop, &g.ram, &g.ram).expect("VM stop");
}

fn stage2_fault(c: &mut Criterion) {
    let g = RealGuest::new(RAM, 1024);
    let around = IpaRange::new(spe_policy::Ipa(g.buffer_pages[0].0 & !0x1f_ffff), 2 << 20);
    per_strategy(
        c,
        "stage2_fault_service[real]",
        &g,
        |p| {
            start(&g, p);
            p.on_event(&g.enable(4 << 20), &g.ram, &g.ram)
                .expect("enable");
            // The host reclaims what it may around the buffer's first page.
            g.ram.page_out(around).expect("page out");
        },
        |p| {
            black_box(
                p.on_event(&g.stage2_fault(0, 4 << 20), &g.ram, &g.ram)
                    .expect("fault"),
            );
        },
    );
}

fn host_invalidation(c: &mut Criterion) {
    let g = RealGuest::new(RAM, 1024);
    per_strategy(
        c,
        "host_invalidation[real]",
        &g,
        |p| {
            start(&g, p);
            p.on_event(&g.enable(4 << 20), &g.ram, &g.ram)
                .expect("enable");
        },
        |p| {
            // The MMU notifier asks; where the strategy allows, the host reclaims.
            let range = IpaRange::new(g.buffer_pages[1], 4096);
            let ev = Event::HostInvalidation {
                range,
                cause: InvalidationCause::Swap,
            };
            if p.on_event(&ev, &g.ram, &g.ram).expect("invalidate") == spe_policy::Outcome::Resume {
                g.ram.page_out(range).expect("page out");
            }
        },
    );
}

fn dirty_log_round(c: &mut Criterion) {
    let g = RealGuest::new(64 << 20, 1024);
    let ram = g.ram.range();
    let mut grp = c.benchmark_group("dirty_log_round_64mib[real]");
    grp.sample_size(10);
    for (i, name) in names() {
        grp.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let d = measure(
                    &g,
                    i,
                    iters,
                    |p| {
                        start(&g, p);
                        p.on_event(&g.enable(4 << 20), &g.ram, &g.ram)
                            .expect("enable");
                        p.on_event(&Event::DirtyLogStart, &g.ram, &g.ram)
                            .expect("log");
                    },
                    |p| {
                        // One round: the strategy exempts its pages, the host re-protects the
                        // rest.
                        p.on_event(&Event::DirtyLogClear(ram), &g.ram, &g.ram)
                            .expect("clear");
                        g.ram.write_protect(ram, true).expect("protect");
                    },
                );
                g.ram.write_protect(ram, false).expect("unprotect");
                d
            })
        });
    }
    grp.finish();
}

fn vm_stop(c: &mut Criterion) {
    let g = RealGuest::new(RAM, 1024);
    let mut grp = c.benchmark_group("vm_stop_256mib[real]");
    grp.sample_size(10);
    for (i, name) in names() {
        grp.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let p = strategies().remove(i);
                    start(&g, &p);
                    p.on_event(&g.enable(4 << 20), &g.ram, &g.ram)
                        .expect("enable");
                    let t = Instant::now();
                    p.on_event(&Event::VmStop, &g.ram, &g.ram).expect("stop");
                    total += t.elapsed();
                }
                total
            })
        });
    }
    grp.finish();
}

fn pin_cost(c: &mut Criterion) {
    let g = RealGuest::new(RAM, 16);
    let all = g.ram.range();
    let mut grp = c.benchmark_group("pin_cost_256mib[real]");
    grp.sample_size(10);
    grp.throughput(Throughput::Bytes(RAM));
    grp.bench_function("baseline_touch_every_page", |b| {
        b.iter(|| black_box(g.ram.touch_pages(all)))
    });
    grp.bench_function("mlock_and_munlock", |b| {
        b.iter(|| {
            g.ram.pin(all).expect("mlock");
            g.ram.unpin(all).expect("munlock");
        })
    });
    grp.finish();
}

fn names() -> impl Iterator<Item = (usize, &'static str)> {
    strategies()
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .into_iter()
        .enumerate()
}

criterion_group!(
    benches,
    vm_start,
    buffer_enable,
    buffer_reenable_cached,
    stage2_fault,
    host_invalidation,
    dirty_log_round,
    vm_stop,
    pin_cost
);
criterion_main!(benches);
