//! The real kernel's stage 2 (`[real]`, hosts/kvm): what a write pass over the buffer costs
//! after each host event, against the same pass with no event, and what each kind of pin costs
//! against touching the same memory, all in the same run. Without a usable `/dev/kvm` the
//! groups say so and measure nothing.
//!
//! The pass is the SPU stand-in: a CPL3 vCPU storing once per 64-byte record over the buffer's
//! IPAs, ending in a port-I/O exit (about 28 us of it under nested `kvm_pvm`), so compare
//! ratios within a group, not absolute times between machines.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spe_host_kvm::{KvmVm, PAGE, usable};

const BUFFER_IPA: u64 = 4 << 20;
const BUFFER: u64 = 4 << 20;

fn vm(ram: u64, group: &str) -> Option<KvmVm> {
    if let Err(e) = usable() {
        eprintln!("SKIPPED (measured nothing): {group}: KVM is not usable here: {e}");
        return None;
    }
    let mut vm = KvmVm::new(ram).expect("a VM");
    vm.write_pass(BUFFER_IPA, BUFFER).expect("warm-up");
    Some(vm)
}

/// One write pass after each host event, the no-event pass as the baseline: a 4 MiB buffer,
/// and the dirty-log rounds again over 64 MiB.
fn write_pass(c: &mut Criterion) {
    write_pass_over(c, "kvm_write_pass_4MiB[real]", 16 << 20, BUFFER, true);
    write_pass_over(
        c,
        "kvm_dirty_log_round_64MiB[real]",
        72 << 20,
        64 << 20,
        false,
    );
}

fn write_pass_over(c: &mut Criterion, group_name: &str, ram: u64, len: u64, discard: bool) {
    let Some(mut vm) = vm(ram, group_name) else {
        return;
    };
    vm.write_pass(BUFFER_IPA, len).expect("warm-up");
    let mut g = c.benchmark_group(group_name);
    g.throughput(Throughput::Bytes(len));
    if len > BUFFER {
        g.sample_size(20);
    }
    g.bench_function("baseline_no_event", |b| {
        b.iter(|| vm.write_pass(BUFFER_IPA, len).expect("pass"));
    });
    // Each iteration: the event untimed, then the timed pass that meets it.
    let mut timed_after = |name: &str, vm: &mut KvmVm, event: &dyn Fn(&mut KvmVm)| {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    event(vm);
                    let t = Instant::now();
                    vm.write_pass(BUFFER_IPA, len).expect("pass");
                    total += t.elapsed();
                }
                total
            });
        });
    };
    if discard {
        timed_after("after_discard_of_64_pages", &mut vm, &|vm| {
            vm.discard(BUFFER_IPA, 64 * PAGE).expect("discard");
        });
    }
    vm.enable_manual_dirty_protect().expect("manual protect");
    vm.set_dirty_logging(true).expect("dirty logging");
    timed_after("dirty_log_round_buffer_cleared", &mut vm, &|vm| {
        vm.take_dirty_pages().expect("get");
        vm.clear_dirty_log_except(0, 0).expect("clear");
    });
    timed_after("dirty_log_round_buffer_exempt", &mut vm, &move |vm| {
        vm.take_dirty_pages().expect("get");
        vm.clear_dirty_log_except(BUFFER_IPA, len).expect("clear");
    });
    g.finish();
}

/// Post-copy with userfaultfd: a pass whose pages must all be demanded from the source, and one
/// after three quarters were sent before switch-over, against the pass with no event.
fn post_copy(c: &mut Criterion) {
    let group_name = "kvm_post_copy_4MiB[real]";
    let Some(mut vm) = vm(16 << 20, group_name) else {
        return;
    };
    let mut g = c.benchmark_group(group_name);
    g.throughput(Throughput::Bytes(BUFFER));
    g.sample_size(20);
    g.bench_function("baseline_no_event", |b| {
        b.iter(|| vm.write_pass(BUFFER_IPA, BUFFER).expect("pass"));
    });
    for (name, sent_quarters) in [("all_pages_demanded", 0u64), ("three_quarters_sent", 3)] {
        let sent: Vec<u64> = (0..BUFFER / PAGE * sent_quarters / 4)
            .map(|i| BUFFER_IPA + i * PAGE)
            .collect();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let pc = spe_host_kvm::post_copy::PostCopy::switch_over(
                        &mut vm, BUFFER_IPA, BUFFER, &sent, 0,
                    )
                    .expect("switch-over");
                    let t = Instant::now();
                    vm.write_pass(BUFFER_IPA, BUFFER).expect("pass");
                    total += t.elapsed();
                    pc.finish().expect("finish");
                }
                total
            });
        });
    }
    g.finish();
}

/// Pinning `size` bytes: mlock (resident only) and a long-term pin, against first touch (a
/// discard then a pass: what faulting the range in costs) in the same run.
fn pins(c: &mut Criterion) {
    for (size, ram) in [(4u64 << 20, 16u64 << 20), (256 << 20, 264 << 20)] {
        let group_name = format!("kvm_pin_{}MiB[real]", size >> 20);
        let Some(mut vm) = vm(ram, &group_name) else {
            return;
        };
        vm.write_pass(BUFFER_IPA, size).expect("resident");
        let mut g = c.benchmark_group(&group_name);
        g.throughput(Throughput::Bytes(size));
        g.sample_size(10);
        g.bench_function("baseline_first_touch", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    vm.discard(BUFFER_IPA, size).expect("discard");
                    let t = Instant::now();
                    vm.write_pass(BUFFER_IPA, size).expect("pass");
                    total += t.elapsed();
                }
                total
            });
        });
        g.bench_function("mlock_then_munlock", |b| {
            b.iter(|| {
                vm.mlock(BUFFER_IPA, size).expect("mlock");
                vm.munlock(BUFFER_IPA, size).expect("munlock");
            });
        });
        g.bench_function("long_term_pin_then_unpin", |b| {
            b.iter(|| {
                vm.pin_long_term(BUFFER_IPA, size).expect("pin");
                vm.unpin_long_term(BUFFER_IPA, size).expect("unpin");
            });
        });
        g.finish();
    }
}

criterion_group!(benches, write_pass, post_copy, pins);
criterion_main!(benches);
