//! The simulator's speed: simulated sample intervals per second, each group against a bare
//! loop writing the same number of 64-byte records in the same run.
//!
//! * `simulator_steady_500ms`: the `steady` scenario shortened to 500 ms on the default VM
//!   (4 vCPUs, 8 GiB, 4 MiB buffers), one run per strategy, default `RunOptions` (vCPUs
//!   running ahead, no guest digest), as `compare` runs (target: within 20x the bare loop).
//! * `simulator_large_vm`: 64 vCPUs x 4 MiB buffers in a 64 GiB VM, 10 s of guest time, with
//!   shadow-buffer and pin-buffer (target: within 60 s on 2 cores and 2 GiB; the peak RSS is
//!   printed). In test mode (`cargo test --benches`) it runs 1% of the session.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spe_policy::config::SpeConfig;
use spe_policy_sim::{CostModel, RunOptions, Scenario, builtin, run_one};

fn steady(duration_ms: f64) -> Scenario {
    let mut s = builtin()
        .expect("built-in scenarios")
        .into_iter()
        .find(|s| s.name == "steady")
        .expect("steady");
    s.duration_ms = duration_ms;
    s
}

/// A bare loop writing `records` 64-byte records into a 4 MiB buffer.
fn bare_writes(records: u64, buffer: &mut [u8]) {
    let record = [0x5au8; 64];
    let mut at = 0;
    for _ in 0..records {
        if at + 64 > buffer.len() {
            at = 0;
        }
        buffer[at..at + 64].copy_from_slice(black_box(&record));
        at += 64;
    }
    black_box(buffer);
}

fn records_per_second(c: &mut Criterion) {
    let config = SpeConfig::default();
    let scenario = steady(500.0);
    let vcpus = spe_policy::VmSpec::default().vcpus;
    let records = (scenario.duration_ms * scenario.records_per_ms) as u64 * u64::from(vcpus);
    let mut grp = c.benchmark_group("simulator_steady_500ms");
    grp.sample_size(10);
    grp.throughput(Throughput::Elements(records));
    for strategy in spe_policy_sim::STRATEGIES {
        grp.bench_function(strategy.as_str(), |b| {
            b.iter(|| {
                run_one(&config, None, &scenario, strategy, CostModel::default()).expect("run")
            })
        });
    }
    let mut buffer = vec![0u8; 4 << 20];
    grp.bench_function("bare_64_byte_writes", |b| {
        b.iter(|| bare_writes(records, &mut buffer))
    });
    grp.finish();
}

/// Peak resident memory of this process, KiB (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn large_vm(c: &mut Criterion) {
    let benching = std::env::args().any(|a| a == "--bench");
    let config = SpeConfig::default();
    let mut scenario = steady(10_000.0);
    scenario.vm = Some(
        toml::from_str("vcpus = 64\nram = \"64GiB\"\nbuffer_per_vcpu = \"4MiB\"").expect("vm"),
    );
    let scale = if benching { 1.0 } else { 0.01 };
    let opts = RunOptions {
        time_scale: scale,
        ..RunOptions::default()
    };
    let records = (scenario.duration_ms * scale * scenario.records_per_ms) as u64 * 64;
    let mut grp = c.benchmark_group("simulator_large_vm");
    grp.sample_size(10);
    grp.throughput(Throughput::Elements(records));
    for strategy in [
        spe_policy::config::StrategyName::ShadowBuffer,
        spe_policy::config::StrategyName::PinBuffer,
    ] {
        grp.bench_function(strategy.as_str(), |b| {
            b.iter(|| run_one(&config, None, &scenario, strategy, opts).expect("run"))
        });
    }
    let mut buffer = vec![0u8; 4 << 20];
    grp.bench_function("bare_64_byte_writes", |b| {
        b.iter(|| bare_writes(records, &mut buffer))
    });
    grp.finish();
    if let Some(kib) = peak_rss_kib() {
        eprintln!("simulator_large_vm: peak RSS {} MiB", kib >> 10);
    }
}

criterion_group!(benches, records_per_second, large_vm);
criterion_main!(benches);
