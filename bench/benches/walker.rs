//! Stage 1 walker cost against its baseline: a 4-level 4KB walk vs the four dependent loads it
//! needs, from the same memory, in the same run (target: within 5x). Also a 64KiB..64MiB
//! buffer range walk vs per-page walks of the same range.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use spe_policy::arch::walk::{RangeLimits, Walker};
use spe_policy::{Gva, Ipa};
use spe_policy_bench::{TABLES, four_dependent_loads, four_level_guest};

const VA: Gva = Gva(0x0000_7f00_0000_0000);

fn walk_vs_loads(c: &mut Criterion) {
    let (ram, regs) = four_level_guest(VA, 512);
    let tables = ram.slice(TABLES, 0x10_0000).expect("tables").to_vec();
    let walker = Walker::new(regs, &ram);
    let vas: Vec<u64> = (0..512u64).map(|i| VA.0 + i * 0x1000 + 0x40).collect();
    assert_eq!(
        walker.translate(Gva(vas[3])).expect("walk").ipa.0 & !0xfff,
        four_dependent_loads(&tables, TABLES.0, vas[3]) & 0x0000_ffff_ffff_f000,
        "baseline and walker must agree"
    );
    let mut g = c.benchmark_group("walk_4level_4k");
    g.throughput(Throughput::Elements(vas.len() as u64));
    g.bench_function("baseline_4_dependent_loads", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &va in &vas {
                acc ^= four_dependent_loads(black_box(&tables), TABLES.0, black_box(va));
            }
            acc
        })
    });
    g.bench_function("walker_translate", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for &va in &vas {
                acc ^= walker
                    .translate(black_box(Gva(va)))
                    .map(|t| t.ipa.0)
                    .unwrap_or(0);
            }
            acc
        })
    });
    g.finish();
}

fn range_walk(c: &mut Criterion) {
    let mut g = c.benchmark_group("walk_buffer_range");
    for pages in [16u64, 1024, 16_384] {
        let (ram, regs) = four_level_guest(VA, pages);
        let walker = Walker::new(regs, &ram);
        let len = pages * 0x1000;
        g.throughput(Throughput::Elements(pages));
        g.bench_with_input(BenchmarkId::new("per_page_walks", len), &len, |b, &len| {
            b.iter(|| {
                let mut last = Ipa(0);
                for off in (0..len).step_by(0x1000) {
                    last = walker
                        .translate(Gva(VA.0 + off))
                        .map(|t| t.ipa)
                        .unwrap_or(last);
                }
                last
            })
        });
        g.bench_with_input(BenchmarkId::new("translate_range", len), &len, |b, &len| {
            b.iter(|| walker.translate_range(black_box(VA), len, RangeLimits::default()))
        });
    }
    g.finish();
}

criterion_group!(benches, walk_vs_loads, range_walk);
criterion_main!(benches);
