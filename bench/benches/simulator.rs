//! The simulator's speed: simulated SPE records per second on the `steady` scenario (one run
//! per strategy, default `RunOptions`: vCPUs running ahead, no guest digest, as `compare`
//! runs), against a bare loop writing the same number of 64-byte records into a 4 MiB buffer
//! in the same run (target: within 20x).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spe_policy::config::SpeConfig;
use spe_policy_sim::{CostModel, STRATEGIES, Scenario, run_one};

fn steady(duration_ms: f64) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/scenarios/steady.toml");
    let text = std::fs::read_to_string(&path).expect("steady.toml");
    let mut s = Scenario::from_toml("steady.toml", &text).expect("scenario");
    s.duration_ms = duration_ms;
    s
}

fn records_per_second(c: &mut Criterion) {
    let config = SpeConfig::default();
    let scenario = steady(500.0);
    let records =
        (scenario.duration_ms * scenario.records_per_ms) as u64 * u64::from(config.guest.vcpus);
    let mut grp = c.benchmark_group("simulator_steady_500ms");
    grp.sample_size(10);
    grp.throughput(Throughput::Elements(records));
    for strategy in STRATEGIES {
        grp.bench_function(strategy.as_str(), |b| {
            b.iter(|| run_one(&config, &scenario, strategy, CostModel::default()).expect("run"))
        });
    }
    let record = [0x5au8; 64];
    let mut buffer = vec![0u8; 4 << 20];
    grp.bench_function("bare_64_byte_writes", |b| {
        b.iter(|| {
            let mut at = 0;
            for _ in 0..records {
                if at + 64 > buffer.len() {
                    at = 0;
                }
                buffer[at..at + 64].copy_from_slice(black_box(&record));
                at += 64;
            }
            black_box(&mut buffer);
        })
    });
    grp.finish();
}

criterion_group!(benches, records_per_second);
criterion_main!(benches);
