//! SPE codec cost on a 4 MiB buffer of real records, each against a plain copy of the same
//! 4 MiB in the same run: recovery scanner (target within 15x), full decode into records
//! (target within 30x, and at least 400 MB/s), packet iteration, and perf text output.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spe_policy::spe::{
    DecodeMode, Fill, Packets, Record, RecordItem, Records, RecoveryInput, StreamItem, WriteOrder,
    dump_line, recover,
};
use spe_policy_bench::realistic_spe_buffer;

const LEN: usize = 4 << 20;

fn codec(c: &mut Criterion) {
    let buf = realistic_spe_buffer(LEN);
    // Cut inside the last record, as a DL=1 fault would.
    let region = &buf[..buf.len() - 20];
    let mut dst = vec![0u8; buf.len()];
    let mut g = c.benchmark_group("spe_4mib");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(20);
    g.bench_function("baseline_memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&buf));
            black_box(&dst);
        })
    });
    g.bench_function("recovery_scanner", |b| {
        b.iter(|| {
            recover(&RecoveryInput {
                bytes: black_box(region),
                data_loss: true,
                max_record_bytes: 64,
                write_order: WriteOrder::Unordered,
            })
        })
    });
    g.bench_function("decode_records", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let mut ts = 0u64;
            let mut records = Records::new(black_box(&buf), DecodeMode::Architecture);
            let mut r = Record::default();
            while let Fill::Record = records.next_into(&mut r) {
                n += 1;
                ts ^= r.timestamp.unwrap_or(0) ^ r.pc.unwrap_or(0);
            }
            (n, ts)
        })
    });
    g.bench_function("decode_records_iterator", |b| {
        b.iter(|| {
            Records::new(black_box(&buf), DecodeMode::Architecture)
                .filter(|i| matches!(i, RecordItem::Record(_)))
                .count()
        })
    });
    // Packet iteration in both modes: perf mode is what Linux perf's arm_spe_get_packet()
    // does (PAD runs grouped, perf's quirks); docs/BENCHMARKS.md compares it with perf's own
    // decoder built from a kernel tree (bench/perf_compare).
    g.bench_function("decode_packets", |b| {
        b.iter(|| Packets::new(black_box(&buf), DecodeMode::Architecture).count())
    });
    g.bench_function("decode_packets_perf", |b| {
        b.iter(|| Packets::new(black_box(&buf), DecodeMode::Perf).count())
    });
    let mut text = String::with_capacity(64 << 20);
    g.bench_function("perf_text", |b| {
        b.iter(|| {
            text.clear();
            for item in Packets::new(black_box(&buf), DecodeMode::Perf) {
                if let StreamItem::Packet {
                    offset,
                    bytes,
                    packet,
                } = item
                {
                    let _ = dump_line(offset, bytes, Some(&packet), &mut text);
                    text.push('\n');
                }
            }
            text.len()
        })
    });
    let _ = write!(text, "");
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
