//! The simulator: one VM whose vCPUs profile with SPE while the host does what a scenario says,
//! with a backing strategy in between. Virtual time is counted in sample intervals ("ticks"),
//! taken in the order `order.rs` describes; everything is seeded, so the same inputs give the
//! same metrics.
//!
//! * The VM is the one asked for ([`VmSpec`]): every vCPU, all of its RAM at stage 2 (one byte
//!   of state per host page), bytes only where the SPU and the tables need them. What cannot be
//!   simulated is refused ([`SimError::Unsupported`]), never clamped.
//! * The SPU writes real records (the 44- and 64-byte records of the shared test data). With
//!   the guest owning the buffer it writes at PMBPTR through the guest's stage 1 and the host's
//!   stage 2 model; a record that meets a page not present (or not writable) stops with a
//!   stage 2 fault, DL=1 when the fault is past the record's first byte (spec sheet §1.11
//!   rule 5), the bytes before it written. With shadow-buffer it writes into the host buffer
//!   and the strategy copies (§1.11b).
//! * Sampling follows the Arm pseudocode (`SPEPreExecution`, spec sheet §1.11b): no sample is
//!   due while a vCPU is in the host (a *stall*), only while the guest executes; guest
//!   execution with the SPU stopped is *lost* profile, charged to the strategy or, where bare
//!   metal loses it too (the guest driver's own interrupt handling), to the baseline. See
//!   `metrics.rs`.
//! * The guest driver (spec sheet §4.3) re-programs the buffer at every buffer-full and stops
//!   the session on any fault or unknown status it receives; with `[tasks]` it disables and
//!   re-enables the buffer at every context switch of the profiled task (§4.2).
//! * The host applies the scenario's events through the strategy (MMU-notifier invalidations,
//!   migrations, hot-plug, a guest remap) to the stage 2 model.

mod guest;
mod metrics;
mod order;
mod sim_host;

use spe_host_model::{Absence, Stage2Model};
use spe_policies::{PinAt, Policy, ShadowBuffer, Spu, SpuWrite};
use spe_policy::arch::walk::builder::LEAF_RW;
use spe_policy::arch::walk::{TablesTouched, WalkOptions, Walker};
use spe_policy::arch::{
    BufferEvent, BufferEventKind, BufferMode, FaultStatusCode, Pmbidr, Pmblimitr, Pmbptr, Pmbsr,
    Stage,
};
use spe_policy::config::{PinKind, ServiceMode, SpeConfig, WriteOrderName};
use spe_policy::event::{
    BufferReg, BufferRegs, Event, InvalidationCause, MigrationMode, Outcome, Refusal,
};
use spe_policy::{
    BackingStrategy, Granule, Gva, HostBacking, Ipa, IpaRange, Memslot, VcpuId, VmSpec,
};

use crate::scenario::{HostEventKind, Scenario, SpuModel};
pub use guest::RAM_BASE;
use guest::{BUFFER_VA, Guest, OUTSIDE_RAM, Rng, build_guest, sample_records};
pub use metrics::{FaultOrigin, Loss, LossCause, LossOrigin, Metrics, StallKind};
use sim_host::SimHost;

/// Costs of host work in virtual time, in nanoseconds (defaults in one place; from the real
/// benchmarks where the host part was measured, docs/BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Handling a trapped register access or a buffer management exit.
    pub trap_ns: f64,
    /// The host taking a buffer management interrupt while the guest runs (exit, handler,
    /// re-entry): forwarding the guest's own, or shadow-buffer's host buffer-full.
    pub host_irq_ns: f64,
    /// From the SPU stopping (PMBSR.S = 1) to the PE taking its interrupt: the guest runs on
    /// unprofiled meanwhile. An estimate (GIC PPI delivery and exception entry), the same on
    /// bare metal; the architecture gives no figure.
    pub spu_irq_latency_ns: f64,
    /// The guest driver's buffer interrupt handler with the buffer stopped
    /// (`arm_spe_pmu_irq_handler`: commit the AUX data, re-arm): lost on bare metal too, the
    /// baseline.
    pub guest_irq_handler_ns: f64,
    /// Walking one page of a buffer at enable.
    pub walk_page_ns: f64,
    /// One host pin call (mlock of a range: the system call and its VMA split; 6.5 ms for
    /// 1024 scattered 4 KiB pages, kvm-host-facts).
    pub pin_call_ns: f64,
    /// Pinning one page within a call (17 ms for 256 MiB in one call, docs/BENCHMARKS.md).
    pub pin_page_ns: f64,
    /// Servicing a stage 2 fault in the strategy (walk, fault-in of present pages, recovery).
    pub fault_service_ns: f64,
    /// Bringing one page back from swap.
    pub swap_in_ns: f64,
    /// Fetching one page from the post-copy source.
    pub post_copy_fetch_ns: f64,
    /// Scanning one byte of buffer during recovery.
    pub scan_byte_ns: f64,
    /// Copying one byte into guest memory (shadow-buffer; the walk is priced per page).
    pub copy_byte_ns: f64,
    /// Sending one 4 KiB page to the migration destination (10 Gb/s).
    pub send_page_ns: f64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            trap_ns: 1_000.0,
            host_irq_ns: 2_000.0,
            spu_irq_latency_ns: 1_000.0,
            guest_irq_handler_ns: 4_000.0,
            walk_page_ns: 40.0,
            pin_call_ns: 7_800.0,
            pin_page_ns: 260.0,
            fault_service_ns: 25_000.0,
            swap_in_ns: 60_000.0,
            post_copy_fetch_ns: 500_000.0,
            scan_byte_ns: 0.6,
            copy_byte_ns: 0.15,
            send_page_ns: 3_300.0,
        }
    }
}

impl CostModel {
    /// Every cost zero: a run where only the mechanism matters (differential tests).
    pub const FREE: CostModel = CostModel {
        trap_ns: 0.0,
        host_irq_ns: 0.0,
        spu_irq_latency_ns: 0.0,
        guest_irq_handler_ns: 0.0,
        walk_page_ns: 0.0,
        pin_call_ns: 0.0,
        pin_page_ns: 0.0,
        fault_service_ns: 0.0,
        swap_in_ns: 0.0,
        post_copy_fetch_ns: 0.0,
        scan_byte_ns: 0.0,
        copy_byte_ns: 0.0,
        send_page_ns: 0.0,
    };
}

/// How a run is made: its costs, and the probes only tests need. The default is what
/// `compare` runs: the default costs, no digest, vCPUs running ahead, the scenario's length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunOptions {
    /// The cost model.
    pub cost: CostModel,
    /// Fold every guest-visible interrupt into [`Metrics::guest_digest`]. It reads each guest
    /// buffer back at each interrupt, which costs about a quarter of a run (cache misses on
    /// the scattered buffer pages), so only the differential tests turn it on.
    pub guest_digest: bool,
    /// Take every sample interval in the reference order, tick by tick and vCPU by vCPU,
    /// instead of letting each vCPU run ahead between its calls into the strategy. Slower;
    /// the results are the same, which a test checks.
    pub lockstep: bool,
    /// Scales the scenario's duration and event times (1.0: as written). Tests of mechanisms
    /// run shortened sessions; figures come from full ones.
    pub time_scale: f64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cost: CostModel::default(),
            guest_digest: false,
            lockstep: false,
            time_scale: 1.0,
        }
    }
}

impl From<CostModel> for RunOptions {
    fn from(cost: CostModel) -> Self {
        RunOptions {
            cost,
            ..RunOptions::default()
        }
    }
}

impl From<&CostModel> for RunOptions {
    fn from(cost: &CostModel) -> Self {
        RunOptions::from(*cost)
    }
}

/// What the simulator can simulate, in one place: a VM beyond these is refused with the limit.
pub mod limits {
    /// vCPUs (KVM/arm64's KVM_MAX_VCPUS).
    pub const MAX_VCPUS: u32 = 512;
    /// Guest RAM: 1 TiB (256 Mi host pages of 4 KiB, one byte of state each).
    pub const MAX_RAM: u64 = 1 << 40;
    /// Bytes of all the vCPUs' buffers together, held in memory: 1 GiB.
    pub const MAX_BUFFER_BYTES: u64 = 1 << 30;
    /// Sample intervals one run may simulate (vCPUs x duration x rate): about a minute of
    /// simulation on one core.
    pub const MAX_SAMPLES: u64 = 1 << 32;
    /// Host invalidation chunks one run may deliver to the strategy.
    pub const MAX_HOST_CHUNKS: u64 = 1 << 22;
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The strategy reported a host failure.
    #[error(transparent)]
    Policy(#[from] spe_policy::PolicyError),
    /// The guest could not be built.
    #[error("building the simulated guest: {0}")]
    Guest(String),
    /// The VM or the scenario is beyond what the simulator simulates.
    #[error("{what} = {value}: {reason}; {fix}")]
    Unsupported {
        /// The key.
        what: &'static str,
        /// Its value.
        value: String,
        /// The limit it breaks.
        reason: String,
        /// What to do.
        fix: &'static str,
    },
}

/// What a window of a vCPU's time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// The vCPU is in the host: no sample is due.
    Stall,
    /// The guest runs with the SPU stopped: samples due are lost to it.
    Lost(Loss),
}

/// A vCPU's pending windows after an event, back to back from the tick after it: e.g. the SPU
/// stopped until the host takes the interrupt, then the host's service. Lengths are whole
/// ticks, rounded with a carried remainder so that the counts stay exact on average.
#[derive(Clone, Copy, Debug)]
struct Windows {
    ends: [(f64, Effect); 6],
    n: usize,
    /// The end of the last window pushed.
    end: f64,
    /// The fraction of a tick carried to the next window.
    carry: f64,
}

impl Windows {
    const fn new() -> Self {
        Windows {
            ends: [(0.0, Effect::Stall); 6],
            n: 0,
            end: f64::NEG_INFINITY,
            carry: 0.0,
        }
    }

    /// Appends a window of `ns` starting after tick `now` (or after the last window).
    fn push(&mut self, now: f64, ns: f64, interval: f64, effect: Effect) {
        let x = self.carry + ns / interval;
        let ticks = x.floor();
        self.carry = x - ticks;
        if ticks < 1.0 {
            return;
        }
        let start = self.end.max(now + 0.5 * interval);
        let end = start + ticks * interval;
        if self.n == self.ends.len() {
            // Merge into the last window (never expected: a chain has at most five).
            self.ends[self.n - 1].0 = end;
        } else {
            self.ends[self.n] = (end, effect);
            self.n += 1;
        }
        self.end = end;
    }

    /// The effect at `now`, forgetting windows that ended.
    #[inline(always)]
    fn at(&mut self, now: f64) -> Option<Effect> {
        while self.n > 0 && self.ends[0].0 <= now {
            self.ends.copy_within(1..self.n, 0);
            self.n -= 1;
        }
        (self.n > 0).then(|| self.ends[0].1)
    }
}

/// The profiled task of a vCPU under `[tasks]`: running or away, and the guest-time ticks left
/// until the next switch.
#[derive(Clone, Copy, Debug)]
struct Task {
    away: bool,
    left: u64,
    /// The task's own generator for its run and away times: the records the SPU writes do not
    /// depend on where the switches fall (nor on how many samples were lost before them).
    rng: Rng,
}

#[derive(Debug)]
struct Vcpu {
    base: u64,
    size: u64,
    /// The guest's PMBPTR, as an offset (guest-owned buffers).
    ptr: u64,
    safe: u64,
    /// Where each record since the last buffer enable starts (offsets; buffers are at most
    /// 1 GiB), for counting what a rewind gives up.
    starts: Vec<u32>,
    /// Stalls and SPU-stopped windows pending.
    windows: Windows,
    fatal: bool,
    fatal_cause: Loss,
    /// Buffer pages (offsets) the guest remapped behind the host's back: a stage 2 fault on
    /// one of them is the remap's.
    remapped: Vec<u64>,
    /// The guest disabled its buffer (perf stopped): no sample is due.
    disabled: bool,
    /// Per-task profiling.
    task: Option<Task>,
    /// shadow-buffer: when the copy of the last full host half ends.
    copy_busy_until: f64,
    /// shadow-buffer: when the first record not yet copied was written.
    oldest_uncopied: Option<f64>,
    /// The last buffer page the SPU wrote: (page VA, IPA, stage 2 generation). While the host's
    /// generation is unchanged the page and its tables are still writable and present.
    last_page: Option<(u64, Ipa, u64)>,
    /// The vCPU's first buffer enable is behind it (later ones are re-enables).
    enabled_once: bool,
    /// Stage 1 translations of the buffer's pages, by page number: the IPA and the table
    /// pages read, or the stage 1 fault the SPU's walk takes there.
    xlat: Vec<Option<Xlat>>,
    /// shadow-buffer: this vCPU's SPU port.
    spu: Option<Spu>,
    /// The guest's registers break the enable rules: the SPU writes nothing.
    unpredictable: bool,
    /// When the last sampled operation leaves the pipeline.
    in_flight_until: f64,
    /// This vCPU's generator (operation latencies, record sizes): one per vCPU, so a vCPU's
    /// records do not depend on how the others' intervals are ordered; drawn only for samples
    /// taken, so they do not depend on which samples were lost either.
    rng: Rng,
    /// A collision happened since the SPU's PMBSR.COLL was last handed over.
    coll_pending: bool,
}

/// What a fatal buffer event handed to the guest says started the loss: its BSC or EC, read
/// from the PMBSR the guest received (`lock_limit`: the host had just refused a pin at its
/// locked-memory limit).
fn handed(pmbsr: Pmbsr, lock_limit: bool) -> LossOrigin {
    match BufferEvent::decode(pmbsr).kind {
        BufferEventKind::SizeTooLarge => LossOrigin::SizeTooLarge { lock_limit },
        BufferEventKind::Fault {
            stage: Stage::Two, ..
        } => LossOrigin::Stage2Handed,
        _ => LossOrigin::Other,
    }
}

/// What a strategy outcome other than an injection says ended the session.
fn ended_by(out: &Outcome) -> LossOrigin {
    match out {
        Outcome::DisableSpe(_) => LossOrigin::SpeDisabled,
        _ => LossOrigin::Other,
    }
}

/// A buffer page's stage 1 translation as the SPU's walk finds it.
type Xlat = Result<(Ipa, TablesTouched), FaultStatusCode>;

/// Why the SPU cannot write a buffer page (spec sheet §1.11 rule 5, §3.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpuFault {
    /// The guest's stage 1 faults (EC 0x24, the walker's FSC): the guest's own mapping.
    Stage1(FaultStatusCode),
    /// Stage 2 refuses the write or a table read (EC 0x25): a Translation fault when the page
    /// is not mapped, a Permission fault when it is write-protected (dirty logging, KSM).
    Stage2 {
        fsc: FaultStatusCode,
        /// The page is outside every memslot (the guest pointed its buffer there).
        outside_ram: bool,
        /// Why the page (or a table page) was not writable.
        origin: FaultOrigin,
    },
}

impl SpuFault {
    /// The guest itself is to blame (its stage 1, or a page outside its RAM).
    fn guest_error(self) -> bool {
        matches!(
            self,
            SpuFault::Stage1(_)
                | SpuFault::Stage2 {
                    outside_ram: true,
                    ..
                }
        )
    }

    fn pmbsr(self, data_loss: bool) -> Pmbsr {
        match self {
            SpuFault::Stage1(fsc) => BufferEvent::fault(Stage::One, fsc, data_loss).encode(),
            SpuFault::Stage2 { fsc, .. } => BufferEvent::fault(Stage::Two, fsc, data_loss).encode(),
        }
    }
}

/// Where stage 2 lets the SPU write one record: the pages it reaches (buffer offset and IPA
/// of each), and the fault that stops it, if any.
#[derive(Clone, Copy, Debug)]
struct WritePlan {
    targets: [(u64, Ipa); 2],
    /// How many of `targets` are writable.
    n: usize,
    /// The buffer offset of the first byte the SPU cannot write.
    fault_at: Option<u64>,
    /// What stops it there.
    fault: Option<SpuFault>,
    /// The host hears of this record: it faults, or the buffer is full after it.
    reaches_host: bool,
}

/// A vCPU's sample interval that must wait for its turn among the vCPUs (`order.rs`),
/// because it involves the strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// Not taken yet: take it with the strategy's help.
    Sample,
    /// Taken, and the SPU stopped at the end of its host buffer: the host's interrupt.
    HostBufferFull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Migration {
    None,
    PreCopy,
    /// Refused or degraded: dirty-log events of the scenario do not apply.
    NotLive,
}

fn regs(ptr: u64, limit: u64, enabled: bool, pmbsr: Pmbsr) -> BufferRegs {
    BufferRegs {
        pmbptr: Pmbptr::from_bits(ptr),
        pmblimitr: Pmblimitr::for_buffer(Gva(limit), enabled, BufferMode::Fill),
        pmbsr,
    }
}

/// FNV-1a style over 64-byte blocks in eight independent lanes (so the multiplies pipeline),
/// then the tail bytes: a digest of every buffer at every interrupt must not dominate the run.
/// Interrupts digested one by one per vCPU (the guest digest probe): enough for any test.
const MAX_INTERRUPT_DIGESTS: usize = 4096;

fn fnv(h: u64, bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0100_0000_01b3;
    let word = |b: &[u8]| {
        let mut x = [0u8; 8];
        x.copy_from_slice(b);
        u64::from_le_bytes(x)
    };
    let mut blocks = bytes.chunks_exact(64);
    let mut lanes = [h, h ^ 1, h ^ 2, h ^ 3, h ^ 4, h ^ 5, h ^ 6, h ^ 7];
    for b in blocks.by_ref() {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = (*lane ^ word(&b[8 * k..8 * k + 8])).wrapping_mul(PRIME);
        }
    }
    let h = lanes.iter().fold(h, |h, l| (h ^ *l).wrapping_mul(PRIME));
    blocks
        .remainder()
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

struct Sim<'a> {
    policy: &'a Policy,
    shadow: Option<&'a ShadowBuffer>,
    /// The config and VM a restored policy is built from, and where it lives
    /// (`snapshot-restore`).
    config: &'a SpeConfig,
    vm: &'a VmSpec,
    restored: &'a std::cell::OnceCell<Policy>,
    cost: &'a CostModel,
    /// Whether [`Metrics::guest_digest`] is computed.
    digest: bool,
    /// [`RunOptions::lockstep`].
    lockstep: bool,
    /// Where the host services buffer events.
    service: ServiceMode,
    /// Whether the strategy traps the guest's PMB* writes (pin-all pinning at VM start needs
    /// none: KVM SPE RFC v7's "fewer traps").
    traps_writes: bool,
    guest: Guest,
    host: SimHost,
    m: Metrics,
    declared: Vec<&'static str>,
    cpus: Vec<Vcpu>,
    rng: Rng,
    buffers: Vec<Vec<Ipa>>,
    migration: Migration,
    max_record: u64,
    records: Vec<&'static [u8]>,
    /// Bytes the strategy has pinned, read after every event (pins change only then).
    pinned_now: u64,
    spu: SpuModel,
    /// The SPU writes record bytes in any order (`vm.write_order`).
    unordered: bool,
    /// Stage 2 states of the active RAM pages (tables, buffers), each with the model
    /// generation it was read at.
    states: Vec<(u64, spe_policy::host::PageState)>,
    /// The sample interval, ns.
    interval: f64,
    /// All of guest RAM.
    ram: IpaRange,
    /// The hot-plugged memslot of `memslot-hotplug`, above RAM.
    hotplug: Memslot,
    /// `[tasks]`: run and away ranges in ticks.
    tasks: Option<[(u64, u64); 2]>,
    /// The SPU's walk on this VM (its PAMax).
    walk: WalkOptions,
    /// Pinned pages whose stage 2 mapping a KSM scan zapped (it cannot merge a pinned page,
    /// but its attempt unmaps it first): what a fault on such a page started at.
    ksm_zapped_pins: std::collections::BTreeSet<u64>,
    /// `[host] pinned_ram_mergeable`.
    pinned_ram_mergeable: bool,
}

/// Refuses what the simulator cannot simulate, naming the limit.
fn check_limits(vm: &VmSpec, scenario: &Scenario, time_scale: f64) -> Result<(), SimError> {
    let unsupported = |what, value: String, reason: String, fix| {
        Err(SimError::Unsupported {
            what,
            value,
            reason,
            fix,
        })
    };
    if vm.guest_granule.bytes() != 4096 || vm.host_page_size.bytes() != 4096 {
        return unsupported(
            "vm.guest_granule / vm.host_page_size",
            format!("{} / {}", vm.guest_granule, vm.host_page_size),
            "the simulator models 4KiB guest granules on 4KiB host pages so far".into(),
            "simulate with 4KiB pages; the library itself takes any granule",
        );
    }
    if vm.vcpus > limits::MAX_VCPUS {
        return unsupported(
            "vm.vcpus",
            vm.vcpus.to_string(),
            format!("the simulator runs at most {} vCPUs", limits::MAX_VCPUS),
            "simulate fewer vCPUs",
        );
    }
    if vm.ram.bytes() > limits::MAX_RAM {
        return unsupported(
            "vm.ram",
            vm.ram.to_string(),
            format!(
                "the simulator keeps stage 2 state for at most {} of RAM",
                spe_policy::config::ByteSize(limits::MAX_RAM)
            ),
            "simulate a smaller VM",
        );
    }
    let top = RAM_BASE.0 + vm.ram.bytes() + (16 << 20);
    if top > 1u64 << vm.pa_bits.min(63) {
        return unsupported(
            "vm.ram",
            vm.ram.to_string(),
            format!(
                "RAM from {RAM_BASE} (and a hot-plug slot above it) does not fit in {} bits of IPA",
                vm.pa_bits
            ),
            "raise vm.pa_bits or lower vm.ram",
        );
    }
    let total = vm
        .buffer_per_vcpu
        .bytes()
        .saturating_mul(u64::from(vm.vcpus));
    if total > limits::MAX_BUFFER_BYTES {
        return unsupported(
            "vm.buffer_per_vcpu",
            vm.buffer_per_vcpu.to_string(),
            format!(
                "{} vCPUs x {} is more than the {} of buffers the simulator holds in memory",
                vm.vcpus,
                vm.buffer_per_vcpu,
                spe_policy::config::ByteSize(limits::MAX_BUFFER_BYTES)
            ),
            "simulate fewer vCPUs or smaller buffers",
        );
    }
    let samples = f64::from(vm.vcpus) * scenario.duration_ms * time_scale * scenario.records_per_ms;
    if samples > limits::MAX_SAMPLES as f64 {
        return unsupported(
            "duration_ms",
            scenario.duration_ms.to_string(),
            format!(
                "{samples:.3e} sample intervals ({} vCPUs at {} per ms) is more than the {:.3e} one run simulates",
                vm.vcpus,
                scenario.records_per_ms,
                limits::MAX_SAMPLES as f64
            ),
            "simulate a shorter session or fewer vCPUs",
        );
    }
    let pages = vm.ram.bytes() / 4096;
    let chunks: f64 = scenario
        .events
        .iter()
        .map(|e| (pages as f64 * e.fraction) / chunk_pages(e.kind) as f64)
        .sum();
    if chunks > limits::MAX_HOST_CHUNKS as f64 {
        return unsupported(
            "events",
            format!("{} events", scenario.events.len()),
            format!(
                "they invalidate {chunks:.3e} chunks of RAM, more than the {} one run delivers",
                limits::MAX_HOST_CHUNKS
            ),
            "use fewer or smaller (fraction) host events",
        );
    }
    Ok(())
}

/// The pages of one MMU-notifier invalidation of `kind`: khugepaged collapses and THP splits
/// work on 2 MiB; reclaim, KSM, NUMA balancing and compaction on batches of 16 pages (64 KiB,
/// a large folio or an LRU batch).
fn chunk_pages(kind: HostEventKind) -> u64 {
    match kind {
        HostEventKind::ThpCollapse | HostEventKind::ThpSplit => 512,
        _ => 16,
    }
}

/// Runs `scenario` against `policy` (built from `config` for `vm`) on the VM `vm` describes.
pub fn run(
    config: &SpeConfig,
    vm: &VmSpec,
    policy: &Policy,
    scenario: &Scenario,
    opts: impl Into<RunOptions>,
) -> Result<Metrics, SimError> {
    let opts = opts.into();
    let scale = if opts.time_scale > 0.0 {
        opts.time_scale
    } else {
        1.0
    };
    check_limits(vm, scenario, scale)?;
    let cost = &opts.cost;
    let vcpus = vm.vcpus;
    let buffer = vm.buffer_per_vcpu.bytes();
    let (guest, buffers) = build_guest(vcpus, buffer)?;
    let ram = IpaRange::new(RAM_BASE, vm.ram.bytes());
    let slot = [Memslot {
        slot: 0,
        range: ram,
    }];
    let model = Stage2Model::new(Granule::K4, &slot);
    let configured = match vm.lock_limit {
        spe_policy::config::Limit::Bytes(limit) => Some(limit.bytes()),
        spe_policy::config::Limit::Unlimited => None,
    };
    let available = scenario.host.lock_available.map(|b| b.bytes());
    model.set_lock_limit(match (configured, available) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    });
    let shadow = match policy {
        Policy::ShadowBuffer(s) => Some(s),
        _ => None,
    };
    let traps_writes = !matches!(policy, Policy::PinAll(p) if p.config().pin_at == PinAt::VmStart);
    let interval = 1e6 / scenario.records_per_ms;
    let to_ticks = |ms: f64| ((ms * 1e6 / interval).round() as u64).max(1);
    let tasks = scenario.tasks.map(|t| {
        [
            (to_ticks(t.run_ms[0]), to_ticks(t.run_ms[1])),
            (to_ticks(t.away_ms[0]), to_ticks(t.away_ms[1])),
        ]
    });
    let active_pages = (guest.layout.active / 4096) as usize;
    let restored = std::cell::OnceCell::new();
    let mut sim = Sim {
        policy,
        shadow,
        config,
        vm,
        restored: &restored,
        cost,
        digest: opts.guest_digest,
        lockstep: opts.lockstep,
        service: config.service,
        traps_writes,
        guest,
        host: SimHost::new(model),
        m: Metrics {
            strategy: policy.name().into(),
            scenario: scenario.name.clone(),
            vcpus,
            ram_bytes: vm.ram.bytes(),
            buffer_bytes: buffer,
            duration_ms: scenario.duration_ms * scale,
            guest_digest: opts.guest_digest.then_some(0xcbf2_9ce4_8422_2325),
            ..Metrics::default()
        },
        declared: policy.errata().iter().map(|e| e.id).collect(),
        cpus: Vec::new(),
        rng: Rng(scenario.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        buffers,
        migration: Migration::None,
        max_record: vm.max_record.bytes().max(64),
        records: sample_records(),
        pinned_now: 0,
        spu: scenario.spu,
        unordered: vm.write_order == WriteOrderName::Unordered,
        states: vec![(u64::MAX, Default::default()); active_pages],
        interval,
        ram,
        hotplug: Memslot {
            slot: 1,
            range: IpaRange::new(Ipa(ram.end()), 16 << 20),
        },
        tasks,
        walk: WalkOptions {
            pa_bits: vm.pa_bits,
            ..WalkOptions::default()
        },
        ksm_zapped_pins: std::collections::BTreeSet::new(),
        pinned_ram_mergeable: scenario.host.pinned_ram_mergeable,
    };
    // A VM start the host refuses (pin-all over the lock limit) runs no profiling at all.
    let before = sim.host.model.counters();
    let started = policy
        .on_event(
            &Event::VmStart { memslots: &slot },
            &sim.guest.ram,
            &sim.host,
        )
        .is_ok();
    sim.m.vm_start_ns = sim.pin_cost(before);
    sim.pinned_now = policy.stats().pinned_bytes;
    if !started {
        sim.m.fatal_events += 1;
    }
    sim.cpus = (0..vcpus)
        .map(|v| {
            let rng = Rng(
                (scenario.seed ^ (u64::from(v) + 1).wrapping_mul(0xd1b5_4a32_d192_ed03))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    | 1,
            );
            let task = tasks.map(|[run, _]| {
                let mut rng = Rng(rng.0.rotate_left(17) ^ 0x5851_f42d_4c95_7f2d | 1);
                Task {
                    away: false,
                    left: draw(&mut rng, run),
                    rng,
                }
            });
            Vcpu {
                base: BUFFER_VA + u64::from(v) * (1 << 30),
                size: buffer,
                ptr: 0,
                safe: 0,
                starts: Vec::new(),
                windows: Windows::new(),
                fatal: !started,
                fatal_cause: Loss::new(LossCause::Fatal, LossOrigin::VmStartRefused),
                remapped: Vec::new(),
                disabled: false,
                task,
                copy_busy_until: 0.0,
                oldest_uncopied: None,
                last_page: None,
                enabled_once: false,
                xlat: vec![None; (buffer / 4096) as usize],
                spu: None,
                unpredictable: false,
                in_flight_until: 0.0,
                coll_pending: false,
                rng,
            }
        })
        .collect();
    let mut events = scenario.events.clone();
    for e in &mut events {
        e.at_ms *= scale;
    }
    events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let ticks = (sim.m.duration_ms * 1e6 / interval) as u64;
    // Each vCPU enables its buffer at time 0.
    for v in (0..vcpus).filter(|_| started) {
        sim.enable(v, 0.0)?;
    }
    let pinned_sum = sim.run_ticks(&events, interval, ticks)?;
    sim.finish(ticks, pinned_sum)
}

/// A number of ticks drawn uniformly from `lo..=hi`.
fn draw(rng: &mut Rng, (lo, hi): (u64, u64)) -> u64 {
    lo + rng.next() % (hi - lo + 1)
}

impl Sim<'_> {
    fn on_event(&mut self, ev: &Event<'_>) -> Result<Outcome, SimError> {
        let out = self.policy.on_event(ev, &self.guest.ram, &self.host)?;
        self.host.flush_writes(&mut self.guest);
        self.pinned_now = self.policy.stats().pinned_bytes;
        Ok(out)
    }

    /// What the host's pins since `before` cost: per call and per page.
    fn pin_cost(&self, before: spe_host_model::Stage2Counters) -> f64 {
        let after = self.host.model.counters();
        (after.pin_calls - before.pin_calls) as f64 * self.cost.pin_call_ns
            + (after.pages_pinned - before.pages_pinned) as f64 * self.cost.pin_page_ns
    }

    fn finish(mut self, ticks: u64, pinned_sum: u128) -> Result<Metrics, SimError> {
        let stats = self.policy.stats();
        let m = &mut self.m;
        m.pinned_peak_bytes = stats.peak_pinned_bytes;
        m.table_faults = stats.stage2_faults_table;
        m.pin_ops = stats.pin_ops + stats.unpin_ops;
        m.bytes_lost = stats.bytes_lost_rewind + stats.bytes_lost_discard;
        m.pinned_mean_bytes = if ticks > 0 {
            pinned_sum as f64 / ticks as f64
        } else {
            0.0
        };
        m.invalidations_refused = stats.refused;
        m.pages_sent_before_switchover = self.host.model.counters().sent_before_switchover;
        if let Some(s) = self.shadow {
            let st = s.shadow_stats();
            m.bytes_copied = st.bytes_copied;
            m.bytes_dropped = st.bytes_dropped;
        }
        self.on_event(&Event::VmStop)?;
        self.m.pinned_after_stop =
            self.host.model.pinned_bytes() + self.policy.stats().pinned_bytes;
        guest::return_ram(self.guest);
        Ok(self.m)
    }

    /// vCPU `v` is kept in the host for `ns` after the event at `now`: no sample is due.
    fn stall(&mut self, v: u32, now: f64, ns: f64, kind: StallKind) {
        if ns <= 0.0 {
            return;
        }
        self.m.stall(now, ns, kind);
        let interval = self.interval;
        self.cpus[v as usize]
            .windows
            .push(now, ns, interval, Effect::Stall);
    }

    /// vCPU `v`'s guest runs for `ns` after the event at `now` with its SPU stopped: the
    /// samples due are lost to `loss`.
    fn stopped(&mut self, v: u32, now: f64, ns: f64, loss: Loss) {
        if ns <= 0.0 {
            return;
        }
        let interval = self.interval;
        self.cpus[v as usize]
            .windows
            .push(now, ns, interval, Effect::Lost(loss));
    }

    /// The work the host does for a buffer event, where the config says: a stall before the
    /// guest re-enters, or SPU-stopped guest time in the background (lost to `origin`).
    fn service(&mut self, v: u32, now: f64, ns: f64, kind: StallKind, origin: LossOrigin) {
        match self.service {
            ServiceMode::BeforeEntry => self.stall(v, now, ns, kind),
            ServiceMode::Background => {
                let loss = Loss::new(LossCause::BackgroundService, origin);
                self.stopped(v, now, ns, loss)
            }
        }
    }

    /// A sample due at vCPU `v` (it counts towards the interval): the profiled task's clock
    /// advances too.
    #[inline(always)]
    fn due(&mut self, v: u32) {
        self.m.samples_due += 1;
        self.executed(v, 1);
    }

    /// `n` ticks of guest execution on vCPU `v` (due or not): the task switch comes closer.
    #[inline(always)]
    fn executed(&mut self, v: u32, n: u64) {
        if let Some(t) = &mut self.cpus[v as usize].task {
            t.left = t.left.saturating_sub(n);
        }
    }

    /// The IPA of the buffer page at `va` for vCPU `v` and the table pages that translate it,
    /// or the stage 1 fault the SPU's walk takes (a table the walk cannot read is a stage 2
    /// fault on the walk: reported at IPA 0, outside RAM). Pages of the buffer are cached (the
    /// SPU's TLB); a page outside it is walked each time.
    fn translate(&mut self, v: u32, va: u64) -> Xlat {
        let page = va & !0xfff;
        let guest = &self.guest;
        let walk_options = self.walk;
        let walk = || match Walker::with_options(guest.stage1, walk_options, &guest.ram)
            .translate(Gva(page))
        {
            Ok(t) => Ok((t.ipa, t.tables_touched)),
            Err(spe_policy::arch::walk::WalkError::Fault(f)) => Err(f.fsc()),
            Err(_) => Ok((Ipa(0), TablesTouched::default())),
        };
        let c = &mut self.cpus[v as usize];
        let slot = page
            .checked_sub(c.base)
            .and_then(|off| c.xlat.get_mut((off >> 12) as usize));
        match slot {
            Some(Some(hit)) => *hit,
            Some(slot) => *slot.insert(walk()),
            None => walk(),
        }
    }

    /// The IPA of buffer page `page` if the SPU can write it now (its tables present, the page
    /// writable), else whether the page is outside RAM. The last page is cached per vCPU while
    /// the host's stage 2 generation is unchanged.
    #[inline(always)]
    fn writable_page(&mut self, v: u32, page: u64) -> Result<Ipa, SpuFault> {
        let generation = self.host.model.generation();
        match self.cpus[v as usize].last_page {
            Some((p, ipa, g)) if p == page && g == generation => Ok(ipa),
            _ => self.check_page(v, page, generation),
        }
    }

    /// [`Self::writable_page`] past its cache: the page's translation and stage 2 states.
    #[inline(never)]
    fn check_page(&mut self, v: u32, page: u64, generation: u64) -> Result<Ipa, SpuFault> {
        let (ipa, tables) = self.translate(v, page).map_err(SpuFault::Stage1)?;
        let data = self.page_state(ipa, generation);
        let tables_present = tables
            .as_slice()
            .iter()
            .all(|t| self.page_state(*t, generation).present);
        // The host maps guest RAM with last-level (4 KiB) pages at stage 2.
        if !tables_present || !data.present {
            let moved_pin = |s: spe_policy::host::PageState| s.pinned && !s.present;
            let mut table_moved = false;
            let mut ksm_zapped = false;
            for t in tables.as_slice() {
                let moved = moved_pin(self.page_state(*t, generation));
                table_moved |= moved;
                ksm_zapped |= moved && self.ksm_zapped_pins.contains(&t.0);
            }
            let data_moved = tables_present && moved_pin(data);
            ksm_zapped |=
                data_moved && self.ksm_zapped_pins.contains(&ipa.page_base(Granule::K4).0);
            let c = &self.cpus[v as usize];
            let origin = if ksm_zapped {
                FaultOrigin::PinnedZappedByKsm
            } else if table_moved || data_moved {
                FaultOrigin::PinnedMoved
            } else if !tables_present {
                FaultOrigin::TablePage
            } else if c.remapped.contains(&(page - c.base)) {
                FaultOrigin::Remapped
            } else if self.host.model.absence(ipa) == Some(Absence::PostCopyPending) {
                FaultOrigin::PostCopy
            } else {
                FaultOrigin::Reclaimed
            };
            return Err(SpuFault::Stage2 {
                fsc: FaultStatusCode::Translation(3),
                outside_ram: !data.in_memslot,
                origin,
            });
        }
        if data.write_protected {
            // Mapped read-only for dirty logging or KSM: a Permission fault (spec sheet §3.9).
            // A pinned page write-protected anyway: KSM's scan under an mlock pin (PB-09).
            let origin = if data.pinned {
                FaultOrigin::PinnedMoved
            } else {
                FaultOrigin::WriteProtected
            };
            return Err(SpuFault::Stage2 {
                fsc: FaultStatusCode::Permission(3),
                outside_ram: false,
                origin,
            });
        }
        self.cpus[v as usize].last_page = Some((page, ipa, generation));
        // The SPU writes this page from now on (bursts write it without marking it again).
        self.guest.written.mark(ipa, 4096);
        Ok(ipa)
    }

    /// The stage 2 state of `ipa`'s page; pages of the active RAM are cached while the
    /// model's generation stays `generation`.
    fn page_state(&mut self, ipa: Ipa, generation: u64) -> spe_policy::host::PageState {
        let model = &self.host.model;
        let slot = ipa
            .0
            .checked_sub(RAM_BASE.0)
            .and_then(|off| self.states.get_mut((off >> 12) as usize));
        match slot {
            Some((g, state)) if *g == generation => *state,
            Some((g, state)) => {
                *g = generation;
                *state = model.page_state(ipa);
                *state
            }
            None => model.page_state(ipa),
        }
    }

    /// One sample interval of vCPU `v` at `now`. With `full` unset, the interval is taken
    /// only if it needs nothing from the strategy (the vCPU may be running ahead of the
    /// others, see `order.rs`); otherwise nothing is done and [`Waiting::Sample`] says so.
    /// `None`: the interval is taken and nothing waits.
    #[inline(always)]
    fn sample(&mut self, v: u32, now: f64, full: bool) -> Result<Option<Waiting>, SimError> {
        let c = &mut self.cpus[v as usize];
        match c.windows.at(now) {
            Some(Effect::Stall) => return Ok(None),
            Some(Effect::Lost(loss)) if !c.disabled => {
                self.due(v);
                self.m.lose(loss, 1, &self.declared);
                return Ok(None);
            }
            _ => {}
        }
        if c.disabled {
            return Ok(None);
        }
        if let Some(t) = c.task {
            if t.left == 0 {
                // A context switch of the profiled task: the driver calls into the buffer.
                if !full {
                    return Ok(Some(Waiting::Sample));
                }
                self.switch_task(v, now)?;
                return Ok(None);
            }
            if t.away {
                self.executed(v, 1);
                return Ok(None);
            }
        }
        let c = &self.cpus[v as usize];
        if c.fatal || c.unpredictable {
            let loss = if c.fatal {
                c.fatal_cause
            } else {
                Loss::baseline(LossCause::GuestError)
            };
            self.due(v);
            self.m.lose(loss, 1, &self.declared);
            return Ok(None);
        }
        // The vCPU's generator is advanced only once the interval is taken.
        let mut rng = c.rng;
        let mut in_flight_until = c.in_flight_until;
        if self.spu.op_latency_ns > 0.0 {
            // §1.11 rule 13: one sampled operation in flight at a time in this model.
            if now < in_flight_until {
                self.due(v);
                self.m
                    .lose(Loss::baseline(LossCause::Collision), 1, &self.declared);
                self.cpus[v as usize].coll_pending = true;
                return Ok(None);
            }
            let jitter = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            in_flight_until = now + self.spu.op_latency_ns * (0.5 + jitter);
        }
        let rec = rng.pick(&self.records);
        let take = |c: &mut Vcpu| {
            c.rng = rng;
            c.in_flight_until = in_flight_until;
        };
        if self.spu.discard_mode {
            // §1.2: FM = discard; the sample is taken and dropped, nothing is written.
            take(&mut self.cpus[v as usize]);
            self.due(v);
            self.m
                .lose(Loss::baseline(LossCause::DiscardMode), 1, &self.declared);
            return Ok(None);
        }
        match self.shadow {
            Some(s) => {
                take(&mut self.cpus[v as usize]);
                self.due(v);
                self.spu_into_host_buffer(s, v, now, rec, full)
            }
            None => {
                let plan = self.plan_write(v, rec.len() as u64);
                if plan.reaches_host && !full {
                    return Ok(Some(Waiting::Sample));
                }
                take(&mut self.cpus[v as usize]);
                self.due(v);
                self.spu_into_guest_buffer(v, now, rec, plan).map(|()| None)
            }
        }
    }

    /// The profiled task is switched out (the driver disables the buffer) or back in (it
    /// re-enables it where the data reached).
    fn switch_task(&mut self, v: u32, now: f64) -> Result<(), SimError> {
        let Some([run, away]) = self.tasks else {
            return Ok(());
        };
        let c = &mut self.cpus[v as usize];
        let Some(mut t) = c.task else {
            return Ok(());
        };
        if t.away {
            let left = draw(&mut t.rng, run);
            c.task = Some(Task {
                away: false,
                left,
                ..t
            });
            if !c.fatal {
                self.enable(v, now)?;
            }
        } else {
            let left = draw(&mut t.rng, away);
            c.task = Some(Task {
                away: true,
                left,
                ..t
            });
            if !c.fatal {
                self.disable_buffer(v, now)?;
            }
        }
        Ok(())
    }

    /// Where stage 2 stops a `len`-byte record written at vCPU `v`'s PMBPTR. (Tables are
    /// read: present suffices; the data page is written: it must be writable.)
    fn plan_write(&mut self, v: u32, len: u64) -> WritePlan {
        let (base, ptr, size) = {
            let c = &self.cpus[v as usize];
            (c.base, c.ptr, c.size)
        };
        let mut plan = WritePlan {
            targets: [(0, Ipa(0)); 2],
            n: 0,
            fault_at: None,
            fault: None,
            reaches_host: ptr + len + self.max_record > size,
        };
        let mut at = ptr;
        while at < ptr + len && plan.n < plan.targets.len() {
            let page = (base + at) & !0xfff;
            match self.writable_page(v, page) {
                Ok(ipa) => plan.targets[plan.n] = (at, ipa),
                Err(fault) => {
                    plan.fault = Some(fault);
                    plan.fault_at = Some(at);
                    plan.reaches_host = true;
                    break;
                }
            }
            plan.n += 1;
            at += (0x1000 - ((base + at) & 0xfff)).min(ptr + len - at);
        }
        plan
    }

    /// The guest owns the buffer: the SPU writes through stage 1 and stage 2, as `plan` says.
    fn spu_into_guest_buffer(
        &mut self,
        v: u32,
        now: f64,
        rec: &[u8],
        plan: WritePlan,
    ) -> Result<(), SimError> {
        let len = rec.len() as u64;
        let (base, ptr) = {
            let c = &self.cpus[v as usize];
            (c.base, c.ptr)
        };
        let WritePlan {
            targets,
            n,
            fault_at,
            fault,
            ..
        } = plan;
        // Pages are checked first, then written: a sequential SPU writes every byte before
        // the fault; an unordered one (§1.11 rule 2) may have tried a later byte first, so the
        // bytes before PMBPTR can be left stale.
        let write_before_fault = fault_at.is_none() || !self.unordered;
        if !write_before_fault {
            if let Some(f) = fault_at {
                self.m.stale_bytes_before_fault += f - ptr;
            }
        }
        for (at, ipa) in targets
            .iter()
            .take(n)
            .copied()
            .filter(|_| write_before_fault)
        {
            let end = fault_at.unwrap_or(ptr + len);
            let chunk = (0x1000 - ((base + at) & 0xfff)).min(end - at);
            let from = (at - ptr) as usize;
            let off = (base + at) & 0xfff;
            let _ = self
                .guest
                .ram
                .write(Ipa(ipa.0 + off), &rec[from..from + chunk as usize]);
            self.host.mark_dirty(ipa);
        }
        match fault_at {
            None => {
                let c = &mut self.cpus[v as usize];
                c.starts.push(c.ptr as u32);
                c.ptr += len;
                self.m.records_written += 1;
                self.m.spu_bytes += len;
            }
            Some(f) => {
                let fault = fault.unwrap_or(SpuFault::Stage2 {
                    fsc: FaultStatusCode::Translation(3),
                    outside_ram: false,
                    origin: FaultOrigin::Reclaimed,
                });
                self.spu_fault(v, now, f, fault)?
            }
        }
        // §1.11 rule 4: buffer full once another largest record might not fit; the guest's
        // driver takes the data and re-programs the buffer.
        let c = &self.cpus[v as usize];
        if !c.fatal && c.ptr + self.max_record > c.size {
            let (pmbsr, pmbptr) = (BufferEvent::buffer_full().encode(), c.base + c.ptr);
            self.guest_interrupt(v, now, pmbsr, pmbptr)?;
        }
        Ok(())
    }

    /// The SPU stops at buffer offset `f` with `fault` (spec sheet §1.11 rule 5): the
    /// strategy sees the buffer management event first.
    fn spu_fault(&mut self, v: u32, now: f64, f: u64, fault: SpuFault) -> Result<(), SimError> {
        let (base, size, ptr, safe) = {
            let c = &self.cpus[v as usize];
            (c.base, c.size, c.ptr, c.safe)
        };
        match fault {
            SpuFault::Stage1(_) => self.m.stage1_faults += 1,
            SpuFault::Stage2 {
                fsc, outside_ram, ..
            } => {
                self.m.stage2_faults += 1;
                self.m.guest_error_faults += u64::from(outside_ram);
                self.m.stage2_permission_faults +=
                    u64::from(matches!(fsc, FaultStatusCode::Permission(_)));
            }
        }
        let mid_record = f != ptr;
        let dl = mid_record && self.spu.dl_on_mid_record_fault.0;
        self.m.dl_events += u64::from(dl);
        let before = self.host.model.counters();
        let ev = Event::BufferManagement {
            vcpu: VcpuId(v),
            regs: regs(base + f, base + size, true, fault.pmbsr(dl)),
            stage1: self.guest.stage1,
        };
        let out = self.on_event(&ev)?;
        let after = self.host.model.counters();
        let cost = self.cost;
        let service = cost.trap_ns
            + cost.fault_service_ns
            + (after.swap_ins - before.swap_ins) as f64 * cost.swap_in_ns
            + (after.post_copy_fetches - before.post_copy_fetches) as f64 * cost.post_copy_fetch_ns
            + (f - safe) as f64 * cost.scan_byte_ns
            + self.pin_cost(before);
        // What started any loss here: the page's state the fault observed.
        let origin = match fault {
            SpuFault::Stage2 { origin, .. } => LossOrigin::Stage2Fault(origin),
            SpuFault::Stage1(_) => LossOrigin::Guest,
        };
        let outcome_resumes = matches!(out, Outcome::ResumeAt { .. } | Outcome::Resume);
        if outcome_resumes {
            // The SPU stopped at a fault bare metal would not take; the guest runs on
            // unprofiled until the host takes the interrupt, then the host services it.
            let stop = Loss::new(LossCause::SpuStopped, origin);
            self.stopped(v, now, cost.spu_irq_latency_ns, stop);
            self.service(v, now, service, StallKind::FaultService, origin);
        }
        let recovery = Loss::new(LossCause::Recovery, origin);
        match out {
            Outcome::ResumeAt { pmbptr } => {
                let resume = pmbptr.0.saturating_sub(base).min(f);
                // A partial record stays in the stream when the host resumes past its start.
                self.m.torn_records += u64::from(mid_record && resume > ptr);
                // Records that started at or after the resume point are gone.
                let c = &mut self.cpus[v as usize];
                let mut gone = 1; // the record that faulted
                while c.starts.last().is_some_and(|s| u64::from(*s) >= resume) {
                    c.starts.pop();
                    gone += 1;
                }
                c.ptr = resume;
                c.safe = resume;
                self.m.records_written -= gone - 1;
                self.m.lose(recovery, gone, &self.declared);
            }
            Outcome::Resume => {
                // The SPU restarts at the faulting address: a mid-record fault leaves a torn
                // record.
                self.m.torn_records += u64::from(mid_record);
                self.cpus[v as usize].ptr = f;
                self.m.lose(recovery, 1, &self.declared);
            }
            Outcome::Inject { pmbsr, pmbptr } => {
                let loss = if fault.guest_error() {
                    Loss::baseline(LossCause::GuestError)
                } else if matches!(
                    origin,
                    LossOrigin::Stage2Fault(
                        FaultOrigin::PinnedMoved | FaultOrigin::PinnedZappedByKsm
                    )
                ) {
                    // What the guest was handed started at a pin that did not hold.
                    Loss::new(LossCause::Fatal, origin)
                } else {
                    Loss::new(LossCause::Fatal, handed(pmbsr, false))
                };
                self.m.lose(loss, 1, &self.declared);
                self.cpus[v as usize].fatal_cause = loss;
                self.guest_interrupt(v, now, pmbsr, pmbptr.0)?;
            }
            out => {
                // SPE disabled or refused: Linux's session ends.
                let loss = Loss::new(LossCause::Fatal, ended_by(&out));
                self.m.lose(loss, 1, &self.declared);
                self.end_session(v, loss);
            }
        }
        Ok(())
    }

    /// shadow-buffer: the SPU writes into the host buffer; a host buffer-full is handled by
    /// the strategy (copy, then restart on the other half, or a guest event).
    fn spu_into_host_buffer(
        &mut self,
        s: &ShadowBuffer,
        v: u32,
        now: f64,
        rec: &[u8],
        full: bool,
    ) -> Result<Option<Waiting>, SimError> {
        let c = &mut self.cpus[v as usize];
        if c.spu.is_none() {
            c.spu = s.spu(VcpuId(v));
        }
        let written = match &c.spu {
            Some(spu) => spu.write(rec),
            None => SpuWrite::NotProfiling,
        };
        match written {
            SpuWrite::Written | SpuWrite::HostBufferFull => {
                self.m.records_written += 1;
                self.m.spu_bytes += rec.len() as u64;
                self.cpus[v as usize].oldest_uncopied.get_or_insert(now);
                match written {
                    SpuWrite::HostBufferFull if full => self.host_buffer_full(s, v, now)?,
                    SpuWrite::HostBufferFull => return Ok(Some(Waiting::HostBufferFull)),
                    _ => {}
                }
                Ok(None)
            }
            SpuWrite::NotProfiling | SpuWrite::Oversized => {
                // Not expected from a well-behaved guest: counted as unexplained so tests see it.
                self.m.unexplained_loss += 1;
                Ok(None)
            }
        }
    }

    pub(super) fn host_buffer_full(
        &mut self,
        s: &ShadowBuffer,
        v: u32,
        now: f64,
    ) -> Result<(), SimError> {
        let before = (
            self.host.model.counters(),
            s.shadow_stats(),
            self.policy.stats(),
        );
        let ev = Event::BufferManagement {
            vcpu: VcpuId(v),
            regs: BufferRegs {
                // The host SPU's PMBSR, with COLL if a sample collided since the last handover.
                pmbsr: BufferEvent::buffer_full()
                    .encode()
                    .with_coll(std::mem::take(&mut self.cpus[v as usize].coll_pending)),
                ..BufferRegs::default()
            },
            stage1: self.guest.stage1,
        };
        let out = self.on_event(&ev)?;
        let (hc, sc, ps) = (
            self.host.model.counters(),
            s.shadow_stats(),
            self.policy.stats(),
        );
        let cost = self.cost;
        let cpu = (sc.bytes_copied - before.1.bytes_copied) as f64 * cost.copy_byte_ns
            + (ps.walks - before.2.walks) as f64 * cost.walk_page_ns;
        let copy = cpu
            + (hc.swap_ins - before.0.swap_ins) as f64 * cost.swap_in_ns
            + (hc.post_copy_fetches - before.0.post_copy_fetches) as f64 * cost.post_copy_fetch_ns;
        self.m.copy_ns += cpu;
        let c = &mut self.cpus[v as usize];
        if let Some(t) = c.oldest_uncopied.take() {
            self.m.max_copy_delay_ns = self.m.max_copy_delay_ns.max(now - t);
        }
        match out {
            Outcome::Resume => {
                // The host's own interrupt: the SPU stood stopped from the buffer-full until
                // the host took it (bare metal has no such stop), then the host flips halves.
                let stop = Loss::new(LossCause::SpuStopped, LossOrigin::HostBufferFull);
                self.stopped(v, now, cost.spu_irq_latency_ns, stop);
                self.stall(v, now, cost.host_irq_ns, StallKind::HostIrq);
                match self.service {
                    ServiceMode::BeforeEntry => self.stall(v, now, copy, StallKind::Copy),
                    ServiceMode::Background => {
                        // Double buffering: the SPU restarts on the other half at once,
                        // unless that half is still being copied.
                        let c = &mut self.cpus[v as usize];
                        let wait = (c.copy_busy_until - now).max(0.0);
                        c.copy_busy_until = c.copy_busy_until.max(now) + copy;
                        if wait > 0.0 {
                            self.m.copy_wait_ns += wait;
                            let busy = Loss::new(LossCause::CopyWait, LossOrigin::CopyBusy);
                            self.stopped(v, now, wait, busy);
                        }
                    }
                }
                Ok(())
            }
            Outcome::Inject { pmbsr, pmbptr } => {
                // The guest's buffer filled (or faulted) at this copy: its driver handles it.
                self.stall(v, now, copy, StallKind::Copy);
                if let BufferEventKind::Fault { stage, .. } = BufferEvent::decode(pmbsr).kind {
                    let page = pmbptr.0 & !0xfff;
                    let outside = match self.translate(v, page) {
                        Ok((ipa, _)) => !self.host.model.page_state(ipa).in_memslot,
                        Err(_) => true,
                    } || stage == Stage::One;
                    self.m.guest_error_faults += u64::from(outside);
                    self.cpus[v as usize].fatal_cause = if outside {
                        Loss::baseline(LossCause::GuestError)
                    } else {
                        Loss::new(LossCause::Fatal, handed(pmbsr, false))
                    };
                }
                self.guest_interrupt(v, now, pmbsr, pmbptr.0)
            }
            out => {
                self.end_session(v, Loss::new(LossCause::Fatal, ended_by(&out)));
                Ok(())
            }
        }
    }

    /// A trapped read of `reg` (shadow-buffer emulates it).
    fn read_reg(&mut self, v: u32, now: f64, reg: BufferReg) -> Result<Option<u64>, SimError> {
        // The hardware registers are the host SPU's: its PMBSR.COLL is handed over.
        let coll = self.shadow.is_some() && std::mem::take(&mut self.cpus[v as usize].coll_pending);
        let ev = Event::BufferRead {
            vcpu: VcpuId(v),
            reg,
            regs: BufferRegs {
                pmbsr: Pmbsr::new().with_coll(coll),
                ..BufferRegs::default()
            },
            pmbidr: Pmbidr::new(),
        };
        self.m.traps += 1;
        self.m.pmb_accesses += 1;
        let trap = self.cost.trap_ns;
        self.stall(v, now, trap, StallKind::Trap);
        Ok(match self.on_event(&ev)? {
            Outcome::Emulated(x) => Some(x),
            _ => None,
        })
    }

    /// shadow-buffer: the guest reads its (emulated) PMBPTR and carries on from there; the
    /// strategy, not the simulator, knows where the SPU's records reached.
    fn read_back_pmbptr(&mut self, v: u32, now: f64) -> Result<(), SimError> {
        if let Some(ptr) = self.read_reg(v, now, BufferReg::Pmbptr)? {
            let c = &mut self.cpus[v as usize];
            c.ptr = ptr.saturating_sub(c.base).min(c.size);
        }
        Ok(())
    }

    /// The guest takes a buffer management interrupt (spec sheet §4.3): it reads PMBSR and
    /// PMBPTR, commits the data, and re-arms on buffer-full or stops the session otherwise.
    /// What bare metal loses here too (the stop-to-interrupt latency, the driver's handler
    /// with the buffer stopped) is the baseline; the host forwarding the interrupt is a stall.
    fn guest_interrupt(
        &mut self,
        v: u32,
        now: f64,
        pmbsr: Pmbsr,
        pmbptr: u64,
    ) -> Result<(), SimError> {
        let cost = self.cost;
        let irq = Loss::baseline(LossCause::GuestIrq);
        self.stopped(v, now, cost.spu_irq_latency_ns, irq);
        self.stall(v, now, cost.host_irq_ns, StallKind::IrqForward);
        let (pmbsr, pmbptr) = if self.shadow.is_some() {
            let sr = self.read_reg(v, now, BufferReg::Pmbsr)?;
            let pr = self.read_reg(v, now, BufferReg::Pmbptr)?;
            (sr.map_or(pmbsr, Pmbsr::from_bits), pr.unwrap_or(pmbptr))
        } else {
            // The guest's own PMBSR: COLL stays set from the collision to this event.
            let c = &mut self.cpus[v as usize];
            let coll = std::mem::take(&mut c.coll_pending);
            (pmbsr.with_coll(pmbsr.coll() || coll), pmbptr)
        };
        self.stopped(v, now, cost.guest_irq_handler_ns, irq);
        self.note_guest_event(pmbsr);
        self.m.guest_interrupts += 1;
        self.m.guest_truncated += u64::from(pmbsr.dl());
        self.m.guest_collisions += u64::from(pmbsr.coll());
        if self.digest {
            self.digest(v, pmbsr, pmbptr);
        }
        if BufferEvent::decode(pmbsr).kind == BufferEventKind::BufferFull {
            let c = &mut self.cpus[v as usize];
            c.ptr = 0;
            c.safe = 0;
            c.starts.clear();
            self.enable(v, now)
        } else {
            let cause = self.cpus[v as usize].fatal_cause;
            self.end_session(v, cause);
            Ok(())
        }
    }

    /// Linux's session on vCPU `v` ends (a fault or status it cannot handle, a refused
    /// enable): the guest-visible fatal event, and every later sample lost to `loss`.
    fn end_session(&mut self, v: u32, loss: Loss) {
        self.m.fatal_events += 1;
        let c = &mut self.cpus[v as usize];
        c.fatal = true;
        c.fatal_cause = loss;
    }

    fn digest(&mut self, v: u32, pmbsr: Pmbsr, pmbptr: u64) {
        let base = self.cpus[v as usize].base;
        // This interrupt alone, without PMBSR.COLL (whether a sample collided depends on
        // timing): what a run with other costs must also show at this vCPU's same interrupt.
        let mut h = fnv(0, &pmbsr.with_coll(false).into_bits().to_le_bytes());
        h = fnv(h, &pmbptr.wrapping_sub(base).to_le_bytes());
        let end = pmbptr.saturating_sub(base).min(self.cpus[v as usize].size);
        let mut at = 0;
        while at < end {
            let n = (0x1000 - (at & 0xfff)).min(end - at);
            if let Ok((ipa, _)) = self.translate(v, base + at) {
                if let Some(bytes) = self.guest.ram.slice(Ipa(ipa.0 + (at & 0xfff)), n as usize) {
                    h = fnv(h, bytes);
                }
            }
            at += n;
        }
        let per_vcpu = &mut self.m.guest_interrupt_digests;
        if per_vcpu.len() <= v as usize {
            per_vcpu.resize(v as usize + 1, Vec::new());
        }
        if per_vcpu[v as usize].len() < MAX_INTERRUPT_DIGESTS {
            per_vcpu[v as usize].push(h);
        }
        let mut chain = self.m.guest_digest.unwrap_or_default();
        chain = fnv(chain, &v.to_le_bytes());
        chain = fnv(chain, &pmbsr.into_bits().to_le_bytes());
        self.m.guest_digest = Some(fnv(chain, &h.to_le_bytes()));
    }

    /// The guest programs its buffer (Linux: PMBPTR, PMBLIMITR with E = 1, then PMBSR = 0),
    /// from its current write pointer to the end of the AUX buffer.
    fn enable(&mut self, v: u32, now: f64) -> Result<(), SimError> {
        let before = (self.policy.stats(), self.host.model.counters());
        let (base, size, ptr) = {
            let c = &self.cpus[v as usize];
            (c.base, c.size, c.ptr)
        };
        let mut r = regs(base + ptr, base + size, true, Pmbsr::new());
        if self.spu.discard_mode {
            r.pmblimitr = r.pmblimitr.with_fm(BufferMode::Discard);
        }
        let writes: &[BufferReg] = if self.shadow.is_some() {
            &[BufferReg::Pmbptr, BufferReg::Pmblimitr, BufferReg::Pmbsr]
        } else {
            &[BufferReg::Pmblimitr]
        };
        let mut out = Outcome::Resume;
        for reg in writes {
            let ev = Event::BufferWrite {
                vcpu: VcpuId(v),
                reg: *reg,
                regs: r,
                stage1: self.guest.stage1,
            };
            out = self.on_event(&ev)?;
        }
        let after = self.policy.stats();
        let cost = self.cost;
        let traps = if self.traps_writes { writes.len() } else { 0 };
        self.m.traps += traps as u64;
        self.m.pmb_accesses += writes.len() as u64;
        let walked = (after.walks - before.0.walks) as f64 * ((size - ptr) / 4096) as f64;
        let ns = traps as f64 * cost.trap_ns + walked * cost.walk_page_ns + self.pin_cost(before.1);
        self.stall(v, now, ns, StallKind::Enable);
        let c = &mut self.cpus[v as usize];
        if c.enabled_once {
            self.m.reenables += 1;
            self.m.reenable_stall_ns += ns;
        } else {
            c.enabled_once = true;
            self.m.first_enable_stall_ns = self.m.first_enable_stall_ns.max(ns);
            self.m.first_enable_stall_total_ns += ns;
        }
        match out {
            Outcome::Resume | Outcome::ResumeAt { .. } => Ok(()),
            Outcome::Inject { pmbsr, .. } => {
                // The SPU raises the event at once (a refused enable: BSC size too large); the
                // driver reads it as an unknown status and stops the session (§4.3). Whether
                // the host had just refused a pin at its locked-memory limit tells PB-08 from
                // PB-01.
                let refused = self.host.model.counters().pins_refused_at_lock_limit
                    > before.1.pins_refused_at_lock_limit;
                self.note_guest_event(pmbsr);
                self.end_session(v, Loss::new(LossCause::Fatal, handed(pmbsr, refused)));
                Ok(())
            }
            out => {
                if matches!(out, Outcome::DisableSpe(_)) {
                    *self
                        .m
                        .guest_events
                        .entry("spe-disabled".into())
                        .or_insert(0) += 1;
                }
                self.end_session(v, Loss::new(LossCause::Fatal, ended_by(&out)));
                Ok(())
            }
        }
    }

    /// Counts a buffer management event the guest received, by what its PMBSR says.
    fn note_guest_event(&mut self, pmbsr: Pmbsr) {
        let kind = match BufferEvent::decode(pmbsr).kind {
            BufferEventKind::BufferFull => "buffer-full",
            BufferEventKind::SizeTooLarge => "size-too-large",
            BufferEventKind::Fault {
                stage: Stage::One, ..
            } => "stage1-fault",
            BufferEventKind::Fault {
                stage: Stage::Two, ..
            } => "stage2-fault",
            _ => "other",
        };
        *self.m.guest_events.entry(kind.into()).or_insert(0) += 1;
    }

    /// The guest's driver disables the buffer (perf stopped, or the profiled task switched
    /// out): PMBLIMITR = 0; with shadow-buffer it then reads PMBPTR to commit the data
    /// (`arm_spe_perf_aux_output_end`) and starts from there next time.
    fn disable_buffer(&mut self, v: u32, now: f64) -> Result<(), SimError> {
        let ev = Event::BufferWrite {
            vcpu: VcpuId(v),
            reg: BufferReg::Pmblimitr,
            regs: BufferRegs::default(),
            stage1: self.guest.stage1,
        };
        self.on_event(&ev)?;
        self.m.pmb_accesses += 1;
        if self.traps_writes {
            self.m.traps += 1;
            let trap = self.cost.trap_ns;
            self.stall(v, now, trap, StallKind::Trap);
        }
        if self.shadow.is_some() {
            self.read_back_pmbptr(v, now)?;
        }
        Ok(())
    }

    fn host_event(&mut self, kind: HostEventKind, fraction: f64, now: f64) -> Result<(), SimError> {
        let ram = self.ram;
        let pages = ram.len / 4096;
        match kind {
            HostEventKind::SwapOut
            | HostEventKind::KsmMerge
            | HostEventKind::ThpSplit
            | HostEventKind::NumaMigration
            | HostEventKind::Compaction
            | HostEventKind::ThpCollapse => {
                let cause = match kind {
                    HostEventKind::SwapOut => InvalidationCause::Swap,
                    HostEventKind::KsmMerge => InvalidationCause::KsmMerge,
                    HostEventKind::NumaMigration => InvalidationCause::NumaMigration,
                    HostEventKind::Compaction => InvalidationCause::Compaction,
                    HostEventKind::ThpCollapse => InvalidationCause::ThpCollapse,
                    _ => InvalidationCause::ThpSplit,
                };
                let unit = chunk_pages(kind);
                let n = (pages as f64 * fraction) as u64 / unit;
                for _ in 0..n {
                    let first = (self.rng.next() % (pages / unit)) * unit;
                    let page = Ipa(RAM_BASE.0 + first * 4096);
                    let range = IpaRange::new(page, unit * 4096);
                    let ev = Event::HostInvalidation { range, cause };
                    let out = self.on_event(&ev)?;
                    if self.config.pin == PinKind::Mlock && kind == HostEventKind::KsmMerge {
                        // KSM's scan write-protects mlocked pages too (measured).
                        self.host.model.ksm_merge_mlocked_too(range);
                    } else if kind == HostEventKind::KsmMerge && self.pinned_ram_mergeable {
                        // The kernel does not ask (no MMU-notifier veto): the scan merges the
                        // unpinned pages and zaps the stage 2 of the pinned ones (measured on
                        // the real kernel, PA-07 / PB-10), whatever the strategy answered.
                        let host = &self.host.model;
                        for p in range.pages(Granule::K4) {
                            if host.is_pinned(p) && host.page_state(p).present {
                                self.ksm_zapped_pins.insert(p.0);
                            }
                        }
                        host.ksm_merge(range);
                    } else if self.config.pin == PinKind::Mlock
                        && matches!(kind, HostEventKind::ThpCollapse | HostEventKind::Compaction)
                    {
                        // An mlock pin does not stop the kernel moving the page (a refusal
                        // by the strategy cannot either): the mapping is zapped anyway.
                        self.host
                            .model
                            .unmap_moving_mlocked(range, Absence::NeverTouched);
                    } else if out == Outcome::Resume {
                        let host = &self.host.model;
                        match kind {
                            HostEventKind::SwapOut => {
                                host.unmap(range, Absence::Swapped);
                            }
                            HostEventKind::KsmMerge => {
                                host.ksm_merge_unpinned(range);
                            }
                            // Moved or remapped: back on the next touch, no I/O.
                            _ => {
                                host.unmap(range, Absence::NeverTouched);
                            }
                        }
                    }
                }
            }
            HostEventKind::BalloonInflate => {
                // Free guest pages: never the part of RAM that holds the page tables and the
                // buffers. The balloon never takes pages the guest is using.
                let active = self.guest.layout.active;
                let unit = 16;
                let n = (pages as f64 * fraction) as u64 / unit;
                for _ in 0..n {
                    let first = (self.rng.next() % (pages / unit)) * unit;
                    let page = Ipa(RAM_BASE.0 + first * 4096);
                    if page.0 < RAM_BASE.0 + active {
                        continue;
                    }
                    let range = IpaRange::new(page, unit * 4096);
                    if self.on_event(&Event::BalloonInflate(range))? == Outcome::Resume {
                        self.host.model.unmap(range, Absence::NeverTouched);
                    }
                }
            }
            HostEventKind::DirtyLogStart => {
                match self.on_event(&Event::MigrationStart(MigrationMode::PreCopy))? {
                    Outcome::Refuse(r) => {
                        self.migration_refused(r);
                        self.migration = Migration::NotLive;
                    }
                    _ => {
                        self.migration = Migration::PreCopy;
                        self.on_event(&Event::DirtyLogStart)?;
                        self.host.model.dirty_log_protect(None);
                        self.host.start_logging();
                    }
                }
            }
            HostEventKind::DirtyLogRound if self.migration == Migration::PreCopy => {
                self.m.pages_resent += self.host.take_resend();
                self.on_event(&Event::DirtyLogClear(ram))?;
                self.host.model.dirty_log_protect(None);
            }
            HostEventKind::DirtyLogStop if self.migration == Migration::PreCopy => {
                // Stop-and-copy: what is dirty or untracked is sent while the VM is stopped.
                self.m.untracked_pages_at_stop = self.host.model.untracked_pages();
                let last = self.host.take_resend();
                self.m.pages_resent += last;
                self.m.migration_downtime_ns += last as f64 * self.cost.send_page_ns;
                for v in 0..self.cpus.len() as u32 {
                    self.on_event(&Event::VcpuStop(VcpuId(v)))?;
                }
                self.on_event(&Event::DirtyLogStop)?;
                self.host.model.dirty_log_stop();
                self.host.stop_logging();
                self.migration = Migration::None;
            }
            HostEventKind::DirtyLogRound | HostEventKind::DirtyLogStop => {}
            HostEventKind::PostCopySwitchover => {
                match self.on_event(&Event::MigrationStart(MigrationMode::PostCopy))? {
                    Outcome::Refuse(r) => self.migration_refused(r),
                    _ => {
                        let before = self.host.model.counters().sent_before_switchover;
                        self.on_event(&Event::PostCopySwitchover)?;
                        self.host.model.post_copy_switchover(ram);
                        let sent = self.host.model.counters().sent_before_switchover - before;
                        self.m.migration_downtime_ns += sent as f64 * self.cost.send_page_ns;
                    }
                }
            }
            HostEventKind::PageUnavailable => {
                if let Some(page) = self.buffers.first().and_then(|b| b.first()).copied() {
                    self.host.model.make_unavailable(page);
                    self.host
                        .model
                        .unmap(IpaRange::new(page, 4096), Absence::PostCopyPending);
                }
            }
            HostEventKind::GuestRemap => {
                let spare = self.guest.layout.spare_page;
                self.remap_first_page(1, spare, true);
            }
            HostEventKind::GuestMapOutsideRam => {
                // A hostile or broken guest points the 16th page of its buffer (60 KiB in,
                // still ahead of the SPU) at a device IPA and re-arms the buffer where it is (a
                // perf restart).
                self.remap_first_page(16, OUTSIDE_RAM, false);
                if !self.cpus[0].fatal && !self.cpus[0].disabled {
                    if self.shadow.is_some() {
                        self.read_back_pmbptr(0, now)?;
                    }
                    self.enable(0, now)?;
                }
            }
            HostEventKind::GuestUnmapBuffer => {
                // vCPU 2's buffer page 16 (60 KiB in, ahead of the SPU) loses its stage 1
                // entry: the SPU's walk faults at stage 1 (EC 0x24), the guest's own doing.
                if self.cpus.len() > 2 {
                    self.remap_page(2, 16, None, false);
                }
            }
            HostEventKind::GuestBadLimit => {
                if let Some(c) = self.cpus.get_mut(1).filter(|c| !c.fatal && !c.disabled) {
                    c.ptr = c.size - 32;
                    c.unpredictable = true;
                    self.enable(1, now)?;
                }
            }
            HostEventKind::MemslotHotplug => {
                if self.host.model.add_memslot(self.hotplug) {
                    self.on_event(&Event::MemslotAdded(self.hotplug))?;
                }
            }
            HostEventKind::MemslotUnplug => {
                match self.on_event(&Event::MemslotRemoved(self.hotplug))? {
                    Outcome::Refuse(_) => self.m.unplugs_refused += 1,
                    _ => self.host.model.remove_memslot(self.hotplug.slot),
                }
            }
            HostEventKind::GuestDisable => {
                for v in 0..self.cpus.len() as u32 {
                    if !self.cpus[v as usize].disabled {
                        self.disable_buffer(v, now)?;
                        self.cpus[v as usize].disabled = true;
                    }
                }
            }
            HostEventKind::SnapshotRestore => self.snapshot_restore()?,
            HostEventKind::GuestEnable => {
                for v in 0..self.cpus.len() as u32 {
                    let c = &mut self.cpus[v as usize];
                    if c.disabled {
                        c.disabled = false;
                        if !c.fatal {
                            self.enable(v, now)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// PA-03: no live migration. A forced stop-and-copy sends all RAM while the VM is stopped.
    fn migration_refused(&mut self, r: Refusal) {
        self.m.migrations_refused += 1;
        if r == Refusal::UseStopAndCopy {
            self.m.migration_downtime_ns += (self.ram.len / 4096) as f64 * self.cost.send_page_ns;
        }
    }

    /// The guest points vCPU 0's buffer page number `nth` (1-based) at `to` and updates its
    /// tables; the host does not see the TLB invalidation. `copy` keeps the page's contents.
    fn remap_first_page(&mut self, nth: u64, to: Ipa, copy: bool) {
        self.remap_page(0, nth, Some(to), copy);
    }

    /// The guest points vCPU `v`'s buffer page number `nth` (1-based) at `to`, or clears its
    /// stage 1 entry (`None`: the SPU's walk takes a Translation fault, EC 0x24), behind the
    /// host's back. `copy` keeps the page's contents.
    fn remap_page(&mut self, v: u32, nth: u64, to: Option<Ipa>, copy: bool) {
        let Some(old) = self
            .buffers
            .get(v as usize)
            .and_then(|b| b.get(nth as usize - 1))
            .copied()
        else {
            return;
        };
        let va = Gva(BUFFER_VA + u64::from(v) * (1 << 30) + (nth - 1) * 4096);
        if let Some(c) = self.cpus.get_mut(v as usize) {
            if !c.remapped.contains(&((nth - 1) * 4096)) {
                c.remapped.push((nth - 1) * 4096);
            }
        }
        let walker = Walker::with_options(self.guest.stage1, self.walk, &self.guest.ram);
        let Some(desc) = walker.translate(va).ok().and_then(|t| t.leaf_descriptor) else {
            return;
        };
        let Some(to) = to else {
            let _ = self.guest.ram.write_u64(desc, 0, false);
            self.cpus[v as usize].xlat.fill(None);
            self.cpus[v as usize].last_page = None;
            return;
        };
        if copy {
            let mut page = vec![0u8; 4096];
            let _ = self
                .guest
                .ram
                .slice(old, 4096)
                .map(|b| page.copy_from_slice(b));
            let _ = self.guest.ram.write(to, &page);
            self.guest.written.mark(to, 4096);
            // The new page was never touched, so it is not present at stage 2.
            self.host
                .model
                .unmap(IpaRange::new(to, 4096), Absence::NeverTouched);
        }
        let _ = self.guest.ram.write_u64(desc, to.0 | 0b11 | LEAF_RW, false);
        // Stage 1 changed behind the host's back: the SPU's cached translations go.
        self.cpus[v as usize].xlat.fill(None);
        self.cpus[v as usize].last_page = None;
    }
}

impl<'a> Sim<'a> {
    /// `snapshot-restore`: the policy's state is saved, carried as JSON, the source policy
    /// stopped (its pins released) and a fresh policy restored from the state; the run goes on
    /// with it. Once per run (a second one is ignored).
    fn snapshot_restore(&mut self) -> Result<(), SimError> {
        if self.restored.get().is_some() {
            return Ok(());
        }
        let wire = serde_json::to_vec(&self.policy.save()).map_err(|e| SimError::Unsupported {
            what: "snapshot-restore",
            value: self.policy.name().into(),
            reason: format!("the state does not serialize: {e}"),
            fix: "report it: every strategy's state is plain serde data",
        })?;
        let state: spe_policies::PolicyState =
            serde_json::from_slice(&wire).map_err(|e| SimError::Unsupported {
                what: "snapshot-restore",
                value: self.policy.name().into(),
                reason: format!("the state does not read back: {e}"),
                fix: "report it: the state must round-trip through JSON",
            })?;
        self.on_event(&Event::VmStop)?;
        let policy = Policy::restore(self.config, self.vm, &state, &self.guest.ram, &self.host)
            .map_err(|e| SimError::Unsupported {
                what: "snapshot-restore",
                value: self.policy.name().into(),
                reason: e.to_string(),
                fix: "the destination must be able to back what the source did",
            })?;
        self.host.flush_writes(&mut self.guest);
        let p: &'a Policy = self.restored.get_or_init(|| policy);
        self.policy = p;
        self.shadow = match p {
            Policy::ShadowBuffer(s) => Some(s),
            _ => None,
        };
        self.pinned_now = p.stats().pinned_bytes;
        for c in &mut self.cpus {
            // The SPU ports were the source's; stage 1 caches stay (the guest did not change).
            c.spu = None;
        }
        self.m.snapshot_restores += 1;
        Ok(())
    }
}
