//! The simulator: one VM whose vCPUs profile with SPE while the host does what a scenario says,
//! with a backing strategy in between. Virtual time is counted in record intervals, taken in
//! the order `order.rs` describes; everything is seeded, so the same inputs give the same
//! metrics.
//!
//! * The SPU writes real records (the 44- and 64-byte records of the shared test data). With
//!   the guest owning the buffer it writes at PMBPTR through the guest's stage 1 and the host's
//!   stage 2 model; a record that meets a page not present (or not writable) stops with a
//!   stage 2 fault, DL=1 when the fault is past the record's first byte (spec sheet §1.11
//!   rule 5), the bytes before it written. With shadow-buffer it writes into the host buffer
//!   and the strategy copies (§1.11b).
//! * The guest driver (spec sheet §4.3) re-programs the buffer at every buffer-full and stops
//!   the session on any fault or unknown status it receives.
//! * The host applies the scenario's events through the strategy (MMU-notifier invalidations,
//!   migrations, hot-plug, a guest remap) to the stage 2 model.

mod guest;
mod metrics;
mod order;
mod sim_host;

use spe_host_model::{Absence, Stage2Model};
use spe_policies::{Policy, ShadowBuffer, Spu, SpuWrite};
use spe_policy::arch::walk::builder::LEAF_RW;
use spe_policy::arch::walk::{TablesTouched, Walker};
use spe_policy::arch::{
    BufferEvent, BufferEventKind, BufferMode, FaultStatusCode, Pmbidr, Pmblimitr, Pmbptr, Pmbsr,
    Stage,
};
use spe_policy::config::SpeConfig;
use spe_policy::event::{
    BufferReg, BufferRegs, Event, InvalidationCause, MigrationMode, Outcome, Refusal,
};
use spe_policy::{BackingStrategy, Granule, Gva, HostBacking, Ipa, IpaRange, Memslot, VcpuId};

use crate::scenario::{HostEventKind, Scenario, SpuModel, SpuWriteOrder};
use guest::{BUFFER_VA, Guest, OUTSIDE_RAM, Rng, SPARE_PAGE, build_guest, sample_records};
pub use guest::{RAM_BASE, SIM_RAM};
use metrics::LossCause;
pub use metrics::Metrics;
use sim_host::SimHost;

/// Costs of host work in virtual time, in nanoseconds (defaults in one place; from the real
/// benchmarks where the host part was measured, docs/BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Handling a trapped register access or a buffer management exit.
    pub trap_ns: f64,
    /// A host interrupt taken while the guest runs (exit, handler, re-entry): shadow-buffer's
    /// host buffer-full.
    pub host_irq_ns: f64,
    /// Walking one page of a buffer at enable.
    pub walk_page_ns: f64,
    /// Pinning one page (mlock of a scattered page).
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
            walk_page_ns: 40.0,
            pin_page_ns: 8_000.0,
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
        walk_page_ns: 0.0,
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
/// `compare` runs: the default costs, no digest, vCPUs running ahead.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
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
}

impl From<CostModel> for RunOptions {
    fn from(cost: CostModel) -> Self {
        RunOptions {
            cost,
            guest_digest: false,
            lockstep: false,
        }
    }
}

impl From<&CostModel> for RunOptions {
    fn from(cost: &CostModel) -> Self {
        RunOptions::from(*cost)
    }
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
}

#[derive(Debug)]
struct Vcpu {
    base: u64,
    size: u64,
    /// The guest's PMBPTR, as an offset (guest-owned buffers).
    ptr: u64,
    safe: u64,
    /// Where each record since the last buffer enable starts (offsets; buffers are at most
    /// 4 MiB), for counting what a rewind gives up.
    starts: Vec<u32>,
    blackout_until: f64,
    blackout_cause: LossCause,
    fatal: bool,
    fatal_cause: LossCause,
    /// The guest disabled its buffer (perf stopped): no records are attempted.
    disabled: bool,
    /// shadow-buffer: when the copy of the last full host half ends.
    copy_busy_until: f64,
    /// shadow-buffer: when the first record not yet copied was written.
    oldest_uncopied: Option<f64>,
    /// The last buffer page the SPU wrote: (page VA, IPA, stage 2 generation). While the host's
    /// generation is unchanged the page and its tables are still writable and present.
    last_page: Option<(u64, Ipa, u64)>,
    /// When the buffer was last enabled, until its first record is kept.
    enabled_at: Option<f64>,
    /// Stage 1 translations of the buffer's pages, by page number: the IPA and the table
    /// pages read.
    xlat: Vec<Option<(Ipa, TablesTouched)>>,
    /// shadow-buffer: this vCPU's SPU port.
    spu: Option<Spu>,
    /// The guest's registers break the enable rules: the SPU writes nothing.
    unpredictable: bool,
    /// When the last sampled operation leaves the pipeline.
    in_flight_until: f64,
    /// This vCPU's generator (operation latencies, record sizes): one per vCPU, so a vCPU's
    /// records do not depend on how the others' intervals are ordered.
    rng: Rng,
    /// A collision happened since the SPU's PMBSR.COLL was last handed over.
    coll_pending: bool,
}

/// Where stage 2 lets the SPU write one record: the pages it reaches (buffer offset and IPA
/// of each), and the fault that stops it, if any.
#[derive(Clone, Copy, Debug)]
struct WritePlan {
    targets: [(u64, Ipa); 2],
    /// How many of `targets` are writable.
    n: usize,
    /// The buffer offset of the first byte stage 2 refuses.
    fault_at: Option<u64>,
    /// The refused page is outside every memslot.
    outside_ram: bool,
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

const HOTPLUG_SLOT: Memslot = Memslot {
    slot: 1,
    range: IpaRange::new(Ipa(RAM_BASE.0 + SIM_RAM), 16 << 20),
};

fn regs(ptr: u64, limit: u64, enabled: bool, pmbsr: Pmbsr) -> BufferRegs {
    BufferRegs {
        pmbptr: Pmbptr::from_bits(ptr),
        pmblimitr: Pmblimitr::for_buffer(Gva(limit), enabled, BufferMode::Fill),
        pmbsr,
    }
}

fn fault_pmbsr(data_loss: bool) -> Pmbsr {
    BufferEvent::fault(Stage::Two, FaultStatusCode::Translation(3), data_loss).encode()
}

/// FNV-1a style over 64-byte blocks in eight independent lanes (so the multiplies pipeline),
/// then the tail bytes: a digest of every buffer at every interrupt must not dominate the run.
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
    cost: &'a CostModel,
    /// Whether [`Metrics::guest_digest`] is computed.
    digest: bool,
    /// [`RunOptions::lockstep`].
    lockstep: bool,
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
    /// Stage 2 states of the RAM pages, each with the model generation it was read at.
    states: Vec<(u64, spe_policy::host::PageState)>,
}

/// Runs `scenario` against `policy` with the VM `config` describes (at most 8 vCPUs and 4 MiB
/// buffers are simulated, in 64 MiB of RAM).
pub fn run(
    config: &SpeConfig,
    policy: &Policy,
    scenario: &Scenario,
    opts: impl Into<RunOptions>,
) -> Result<Metrics, SimError> {
    let opts = opts.into();
    let cost = &opts.cost;
    let vcpus = config.guest.vcpus.clamp(1, 8);
    let buffer = config
        .guest
        .buffer_per_vcpu
        .bytes()
        .clamp(16 << 10, 4 << 20)
        & !0xfff;
    let (guest, buffers) = build_guest(vcpus, buffer)?;
    let slot = [Memslot {
        slot: 0,
        range: IpaRange::new(RAM_BASE, SIM_RAM),
    }];
    let model = Stage2Model::new(Granule::K4, &slot);
    if let spe_policy::config::Limit::Bytes(limit) = config.host.lock_limit {
        model.set_lock_limit(Some(limit.bytes()));
    }
    let shadow = match policy {
        Policy::ShadowBuffer(s) => Some(s),
        _ => None,
    };
    let mut sim = Sim {
        policy,
        shadow,
        cost,
        digest: opts.guest_digest,
        lockstep: opts.lockstep,
        guest,
        host: SimHost::new(model),
        m: Metrics {
            strategy: policy.name().into(),
            scenario: scenario.name.clone(),
            guest_digest: opts.guest_digest.then_some(0xcbf2_9ce4_8422_2325),
            ..Metrics::default()
        },
        declared: policy.errata().iter().map(|e| e.id).collect(),
        cpus: Vec::new(),
        rng: Rng(scenario.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        buffers,
        migration: Migration::None,
        max_record: config.guest.max_record.bytes().max(64),
        records: sample_records(),
        pinned_now: 0,
        spu: scenario.spu,
        states: vec![(u64::MAX, Default::default()); (SIM_RAM / 4096) as usize],
    };
    // A VM start the host refuses (pin-all over the lock limit) runs no profiling at all.
    let started = policy
        .on_event(
            &Event::VmStart { memslots: &slot },
            &sim.guest.ram,
            &sim.host,
        )
        .is_ok();
    sim.pinned_now = policy.stats().pinned_bytes;
    if !started {
        sim.m.fatal_events += 1;
    }
    sim.cpus = (0..vcpus)
        .map(|v| Vcpu {
            base: BUFFER_VA + u64::from(v) * (1 << 30),
            size: buffer,
            ptr: 0,
            safe: 0,
            starts: Vec::new(),
            blackout_until: 0.0,
            blackout_cause: LossCause::EnableBlackout,
            fatal: !started,
            fatal_cause: LossCause::FatalAtEnable,
            disabled: false,
            copy_busy_until: 0.0,
            oldest_uncopied: None,
            last_page: None,
            xlat: vec![None; (buffer / 4096) as usize],
            enabled_at: None,
            spu: None,
            unpredictable: false,
            in_flight_until: 0.0,
            coll_pending: false,
            rng: Rng(
                (scenario.seed ^ (u64::from(v) + 1).wrapping_mul(0xd1b5_4a32_d192_ed03))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    | 1,
            ),
        })
        .collect();
    let mut events = scenario.events.clone();
    events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let interval = 1e6 / scenario.records_per_ms;
    let ticks = (scenario.duration_ms * 1e6 / interval) as u64;
    // Each vCPU enables its buffer at time 0.
    for v in (0..vcpus).filter(|_| started) {
        sim.enable(v, 0.0)?;
    }
    let pinned_sum = sim.run_ticks(&events, interval, ticks)?;
    sim.finish(ticks, pinned_sum)
}

impl Sim<'_> {
    fn on_event(&mut self, ev: &Event<'_>) -> Result<Outcome, SimError> {
        let out = self.policy.on_event(ev, &self.guest.ram, &self.host)?;
        self.host.flush_writes(&mut self.guest);
        self.pinned_now = self.policy.stats().pinned_bytes;
        Ok(out)
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
            m.traps = st.traps;
            m.bytes_copied = st.bytes_copied;
        }
        self.on_event(&Event::VmStop)?;
        self.m.pinned_after_stop =
            self.host.model.pinned_bytes() + self.policy.stats().pinned_bytes;
        guest::return_ram(self.guest);
        Ok(self.m)
    }

    fn blackout(&mut self, v: u32, now: f64, ns: f64, cause: LossCause) {
        let c = &mut self.cpus[v as usize];
        c.blackout_until = now + ns;
        c.blackout_cause = cause;
        self.m.blackout_count += 1;
        self.m.blackout_ns += ns;
        self.m.longest_blackout_ns = self.m.longest_blackout_ns.max(ns);
        if self.m.blackout_windows.len() < 256 {
            self.m.blackout_windows.push([now / 1e6, ns / 1e3]);
        }
    }

    /// The IPA of the buffer page at `va` for vCPU `v` and the table pages that translate it
    /// (an untranslatable page is left at IPA 0, outside RAM: it faults). Pages of the buffer
    /// are cached (the SPU's TLB); a page outside it is walked each time.
    fn translate(&mut self, v: u32, va: u64) -> (Ipa, TablesTouched) {
        let page = va & !0xfff;
        let guest = &self.guest;
        let walk = || {
            Walker::new(guest.stage1, &guest.ram)
                .translate(Gva(page))
                .map_or((Ipa(0), TablesTouched::default()), |t| {
                    (t.ipa, t.tables_touched)
                })
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
    fn writable_page(&mut self, v: u32, page: u64) -> Result<Ipa, bool> {
        let generation = self.host.model.generation();
        match self.cpus[v as usize].last_page {
            Some((p, ipa, g)) if p == page && g == generation => Ok(ipa),
            _ => self.check_page(v, page, generation),
        }
    }

    /// [`Self::writable_page`] past its cache: the page's translation and stage 2 states.
    #[inline(never)]
    fn check_page(&mut self, v: u32, page: u64, generation: u64) -> Result<Ipa, bool> {
        let (ipa, tables) = self.translate(v, page);
        let data = self.page_state(ipa, generation);
        let tables_present = tables
            .as_slice()
            .iter()
            .all(|t| self.page_state(*t, generation).present);
        if !(tables_present && data.writable()) {
            return Err(!data.in_memslot);
        }
        self.cpus[v as usize].last_page = Some((page, ipa, generation));
        // The SPU writes this page from now on (bursts write it without marking it again).
        self.guest.written.mark(ipa, 4096);
        Ok(ipa)
    }

    /// The stage 2 state of `ipa`'s page; pages of RAM are cached while the model's generation
    /// stays `generation`.
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
    /// others, see `order.rs`); otherwise nothing is done and [`Waiting::Sample`] says so. `None`: the
    /// interval is taken and nothing waits.
    #[inline(always)]
    fn sample(&mut self, v: u32, now: f64, full: bool) -> Result<Option<Waiting>, SimError> {
        let c = &self.cpus[v as usize];
        if c.disabled {
            return Ok(None);
        }
        if c.fatal {
            let cause = c.fatal_cause;
            self.m.records_attempted += 1;
            self.m.lost_fatal += 1;
            self.m.lose(cause, 1, &self.declared);
            return Ok(None);
        }
        if c.unpredictable {
            self.m.records_attempted += 1;
            self.m.lost_fatal += 1;
            self.m.lose(LossCause::GuestError, 1, &self.declared);
            return Ok(None);
        }
        if now < c.blackout_until {
            let cause = c.blackout_cause;
            self.m.records_attempted += 1;
            self.m.lost_blackout += 1;
            if cause == LossCause::EnableBlackout {
                self.m.lost_blackout_enable += 1;
            }
            self.m.lose(cause, 1, &self.declared);
            return Ok(None);
        }
        // The vCPU's generator is advanced only once the interval is taken.
        let mut rng = c.rng;
        let mut in_flight_until = c.in_flight_until;
        if self.spu.op_latency_ns > 0.0 {
            // §1.11 rule 13: one sampled operation in flight at a time in this model.
            if now < in_flight_until {
                self.m.records_attempted += 1;
                self.m.samples_collided += 1;
                self.cpus[v as usize].coll_pending = true;
                return Ok(None);
            }
            let jitter = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            in_flight_until = now + self.spu.op_latency_ns * (0.5 + jitter);
        }
        let rec = rng.pick(&self.records);
        let take = |c: &mut Vcpu, m: &mut Metrics| {
            c.rng = rng;
            c.in_flight_until = in_flight_until;
            m.records_attempted += 1;
        };
        if self.spu.discard_mode {
            // §1.2: FM = discard; the sample is taken and dropped, nothing is written.
            take(&mut self.cpus[v as usize], &mut self.m);
            self.m.records_discarded_by_mode += 1;
            return Ok(None);
        }
        match self.shadow {
            Some(s) => {
                take(&mut self.cpus[v as usize], &mut self.m);
                self.spu_into_host_buffer(s, v, now, rec, full)
            }
            None => {
                let plan = self.plan_write(v, rec.len() as u64);
                if plan.reaches_host && !full {
                    return Ok(Some(Waiting::Sample));
                }
                take(&mut self.cpus[v as usize], &mut self.m);
                self.spu_into_guest_buffer(v, now, rec, plan).map(|()| None)
            }
        }
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
            outside_ram: false,
            reaches_host: ptr + len + self.max_record > size,
        };
        let mut at = ptr;
        while at < ptr + len && plan.n < plan.targets.len() {
            let page = (base + at) & !0xfff;
            match self.writable_page(v, page) {
                Ok(ipa) => plan.targets[plan.n] = (at, ipa),
                Err(outside) => {
                    plan.outside_ram = outside;
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
            outside_ram,
            ..
        } = plan;
        // Pages are checked first, then written: a sequential SPU writes every byte before
        // the fault; an unordered one (§1.11 rule 2) may have tried a later byte first, so the
        // bytes before PMBPTR can be left stale.
        let write_before_fault =
            fault_at.is_none() || self.spu.write_order == SpuWriteOrder::Sequential;
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
                self.first_record(v, now);
            }
            Some(f) => self.stage2_fault(v, now, f, outside_ram)?,
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

    fn stage2_fault(
        &mut self,
        v: u32,
        now: f64,
        f: u64,
        outside_ram: bool,
    ) -> Result<(), SimError> {
        let (base, size, ptr, safe) = {
            let c = &self.cpus[v as usize];
            (c.base, c.size, c.ptr, c.safe)
        };
        self.m.stage2_faults += 1;
        self.m.guest_error_faults += u64::from(outside_ram);
        let mid_record = f != ptr;
        let dl = mid_record && self.spu.dl_on_mid_record_fault.0;
        self.m.dl_events += u64::from(dl);
        let before = self.host.model.counters();
        let ev = Event::BufferManagement {
            vcpu: VcpuId(v),
            regs: regs(base + f, base + size, true, fault_pmbsr(dl)),
            stage1: self.guest.stage1,
        };
        let out = self.on_event(&ev)?;
        let after = self.host.model.counters();
        let cost = self.cost;
        let service = cost.trap_ns
            + cost.fault_service_ns
            + (after.swap_ins - before.swap_ins) as f64 * cost.swap_in_ns
            + (after.post_copy_fetches - before.post_copy_fetches) as f64 * cost.post_copy_fetch_ns
            + (f - safe) as f64 * cost.scan_byte_ns;
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
                self.m.lost_recovery += gone;
                self.m.lose(LossCause::Recovery, gone, &self.declared);
                self.blackout(v, now, service, LossCause::FaultBlackout);
            }
            Outcome::Resume => {
                // The SPU restarts at the faulting address: a mid-record fault leaves a torn
                // record.
                self.m.torn_records += u64::from(mid_record);
                self.cpus[v as usize].ptr = f;
                self.m.lost_recovery += 1;
                self.m.lose(LossCause::Recovery, 1, &self.declared);
                self.blackout(v, now, service, LossCause::FaultBlackout);
            }
            Outcome::Inject { pmbsr, pmbptr } => {
                self.m.lost_fatal += 1;
                let cause = if outside_ram {
                    LossCause::GuestError
                } else {
                    LossCause::FatalAtFault
                };
                self.m.lose(cause, 1, &self.declared);
                self.cpus[v as usize].fatal_cause = cause;
                self.guest_interrupt(v, now, pmbsr, pmbptr.0)?;
            }
            _ => {
                // SPE disabled or refused: Linux's session ends.
                self.m.lost_fatal += 1;
                self.m.lose(LossCause::FatalAtFault, 1, &self.declared);
                self.end_session(v, LossCause::FatalAtFault);
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
                self.first_record(v, now);
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
        let copy = (sc.bytes_copied - before.1.bytes_copied) as f64 * cost.copy_byte_ns
            + (ps.walks - before.2.walks) as f64 * cost.walk_page_ns
            + (hc.swap_ins - before.0.swap_ins) as f64 * cost.swap_in_ns
            + (hc.post_copy_fetches - before.0.post_copy_fetches) as f64 * cost.post_copy_fetch_ns;
        self.m.copy_ns += copy;
        let c = &mut self.cpus[v as usize];
        if let Some(t) = c.oldest_uncopied.take() {
            self.m.max_copy_delay_ns = self.m.max_copy_delay_ns.max(now - t);
        }
        // Double buffering: the SPU restarts on the other half after the host interrupt,
        // unless that half is still being copied.
        let wait = (c.copy_busy_until - now).max(0.0);
        c.copy_busy_until = c.copy_busy_until.max(now) + copy;
        match out {
            Outcome::Resume => {
                if wait > 0.0 {
                    self.m.copy_wait_ns += wait;
                    self.blackout(v, now, cost.host_irq_ns + wait, LossCause::CopyWait);
                } else if cost.host_irq_ns > 0.0 {
                    self.blackout(v, now, cost.host_irq_ns, LossCause::HostInterrupt);
                }
                Ok(())
            }
            Outcome::Inject { pmbsr, pmbptr } => {
                // The guest's buffer filled (or faulted) at this copy: its driver handles it.
                if let BufferEventKind::Fault { .. } = BufferEvent::decode(pmbsr).kind {
                    let page = pmbptr.0 & !0xfff;
                    let (ipa, _) = self.translate(v, page);
                    let outside = !self.host.model.page_state(ipa).in_memslot;
                    self.m.guest_error_faults += u64::from(outside);
                    self.cpus[v as usize].fatal_cause = if outside {
                        LossCause::GuestError
                    } else {
                        LossCause::FatalAtFault
                    };
                }
                self.guest_interrupt(v, now, pmbsr, pmbptr.0)
            }
            _ => {
                self.end_session(v, LossCause::FatalAtFault);
                Ok(())
            }
        }
    }

    /// A record was kept: the first since an enable closes the enable-to-first-record window.
    fn first_record(&mut self, v: u32, now: f64) {
        if let Some(t) = self.cpus[v as usize].enabled_at.take() {
            self.m.longest_enable_to_first_record_ns =
                self.m.longest_enable_to_first_record_ns.max(now - t);
        }
    }

    /// A trapped read of `reg` (shadow-buffer emulates it).
    fn read_reg(&mut self, v: u32, reg: BufferReg) -> Result<Option<u64>, SimError> {
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
        Ok(match self.on_event(&ev)? {
            Outcome::Emulated(x) => Some(x),
            _ => None,
        })
    }

    /// shadow-buffer: the guest reads its (emulated) PMBPTR and carries on from there; the
    /// strategy, not the simulator, knows where the SPU's records reached.
    fn read_back_pmbptr(&mut self, v: u32) -> Result<(), SimError> {
        if let Some(ptr) = self.read_reg(v, BufferReg::Pmbptr)? {
            let c = &mut self.cpus[v as usize];
            c.ptr = ptr.saturating_sub(c.base).min(c.size);
        }
        Ok(())
    }

    /// The guest takes a buffer management interrupt (spec sheet §4.3): it reads PMBSR and
    /// PMBPTR, commits the data, and re-arms on buffer-full or stops the session otherwise.
    fn guest_interrupt(
        &mut self,
        v: u32,
        now: f64,
        pmbsr: Pmbsr,
        pmbptr: u64,
    ) -> Result<(), SimError> {
        let (pmbsr, pmbptr) = if self.shadow.is_some() {
            let sr = self.read_reg(v, BufferReg::Pmbsr)?;
            let pr = self.read_reg(v, BufferReg::Pmbptr)?;
            (sr.map_or(pmbsr, Pmbsr::from_bits), pr.unwrap_or(pmbptr))
        } else {
            // The guest's own PMBSR: COLL stays set from the collision to this event.
            let c = &mut self.cpus[v as usize];
            let coll = std::mem::take(&mut c.coll_pending);
            (pmbsr.with_coll(pmbsr.coll() || coll), pmbptr)
        };
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
            // A cause set before (a guest error) stays; the enable's default does not.
            let cause = match self.cpus[v as usize].fatal_cause {
                LossCause::FatalAtEnable => LossCause::FatalAtFault,
                set => set,
            };
            self.end_session(v, cause);
            Ok(())
        }
    }

    /// Linux's session on vCPU `v` ends (a fault or status it cannot handle, a refused
    /// enable): the guest-visible fatal event, and every later sample lost to `cause`.
    fn end_session(&mut self, v: u32, cause: LossCause) {
        self.m.fatal_events += 1;
        let c = &mut self.cpus[v as usize];
        c.fatal = true;
        c.fatal_cause = cause;
    }

    fn digest(&mut self, v: u32, pmbsr: Pmbsr, pmbptr: u64) {
        let base = self.cpus[v as usize].base;
        let mut h = self.m.guest_digest.unwrap_or_default();
        h = fnv(h, &v.to_le_bytes());
        h = fnv(h, &pmbsr.into_bits().to_le_bytes());
        h = fnv(h, &pmbptr.wrapping_sub(base).to_le_bytes());
        let end = pmbptr.saturating_sub(base).min(self.cpus[v as usize].size);
        let mut at = 0;
        while at < end {
            let n = (0x1000 - (at & 0xfff)).min(end - at);
            let ipa = self.translate(v, base + at).0;
            if let Some(bytes) = self.guest.ram.slice(Ipa(ipa.0 + (at & 0xfff)), n as usize) {
                h = fnv(h, bytes);
            }
            at += n;
        }
        self.m.guest_digest = Some(h);
    }

    /// The guest programs its buffer (Linux: PMBPTR, PMBLIMITR with E = 1, then PMBSR = 0).
    fn enable(&mut self, v: u32, now: f64) -> Result<(), SimError> {
        let before = self.policy.stats();
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
        let walked = (after.walks - before.walks) as f64 * (size / 4096) as f64;
        let pinned = after.pinned_bytes.saturating_sub(before.pinned_bytes) as f64 / 4096.0;
        let ns = if self.shadow.is_some() {
            // Allocating the host buffer is not on the enable path after the first time, and
            // no guest page is walked or pinned.
            cost.trap_ns
        } else {
            cost.trap_ns + walked * cost.walk_page_ns + pinned * cost.pin_page_ns
        };
        match out {
            Outcome::Resume | Outcome::ResumeAt { .. } => {
                self.cpus[v as usize].enabled_at = Some(now);
                if ns > cost.trap_ns {
                    self.blackout(v, now, ns, LossCause::EnableBlackout);
                }
                self.m.longest_enable_ns = self.m.longest_enable_ns.max(ns);
                Ok(())
            }
            _ => {
                self.end_session(v, LossCause::FatalAtEnable);
                Ok(())
            }
        }
    }

    /// The guest stops profiling on vCPU `v` (perf disabled): PMBLIMITR = 0.
    fn disable(&mut self, v: u32) -> Result<(), SimError> {
        let ev = Event::BufferWrite {
            vcpu: VcpuId(v),
            reg: BufferReg::Pmblimitr,
            regs: BufferRegs::default(),
            stage1: self.guest.stage1,
        };
        self.on_event(&ev)?;
        if self.shadow.is_some() {
            // Linux reads PMBPTR to commit the data (arm_spe_perf_aux_output_end) and starts
            // from there next time.
            self.read_back_pmbptr(v)?;
        }
        self.cpus[v as usize].disabled = true;
        Ok(())
    }

    fn host_event(&mut self, kind: HostEventKind, fraction: f64, now: f64) -> Result<(), SimError> {
        let ram = IpaRange::new(RAM_BASE, SIM_RAM);
        let pages = SIM_RAM / 4096;
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
                // Collapse works on 2 MiB ranges; the others on pages.
                let unit = if kind == HostEventKind::ThpCollapse {
                    512
                } else {
                    1
                };
                let n = (pages as f64 * fraction) as u64 / unit;
                for _ in 0..n {
                    let first = (self.rng.next() % (pages / unit)) * unit;
                    let page = Ipa(RAM_BASE.0 + first * 4096);
                    let range = IpaRange::new(page, unit * 4096);
                    let ev = Event::HostInvalidation { range, cause };
                    if self.on_event(&ev)? == Outcome::Resume {
                        let host = &self.host.model;
                        match kind {
                            HostEventKind::SwapOut => {
                                host.unmap(range, Absence::Swapped);
                            }
                            HostEventKind::KsmMerge => {
                                host.ksm_merge(range);
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
                // Free guest pages: not the first 16 MiB (the page tables) and not a buffer
                // page. The balloon never takes pages the guest is using.
                let n = (pages as f64 * fraction) as u64;
                let in_use: std::collections::BTreeSet<u64> =
                    self.buffers.iter().flatten().map(|p| p.0).collect();
                for _ in 0..n {
                    let page = Ipa(RAM_BASE.0 + (self.rng.next() % pages) * 4096);
                    if page.0 < RAM_BASE.0 + (16 << 20) || in_use.contains(&page.0) {
                        continue;
                    }
                    let range = IpaRange::new(page, 4096);
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
            HostEventKind::GuestRemap => self.remap_first_page(1, SPARE_PAGE, true),
            HostEventKind::GuestMapOutsideRam => {
                // A hostile or broken guest points the 16th page of its buffer (60 KiB in,
                // still ahead of the SPU) at a device IPA and re-arms the buffer where it is (a
                // perf restart).
                self.remap_first_page(16, OUTSIDE_RAM, false);
                if !self.cpus[0].fatal && !self.cpus[0].disabled {
                    if self.shadow.is_some() {
                        self.read_back_pmbptr(0)?;
                    }
                    self.enable(0, now)?;
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
                self.host.model.add_memslot(HOTPLUG_SLOT);
                self.on_event(&Event::MemslotAdded(HOTPLUG_SLOT))?;
            }
            HostEventKind::MemslotUnplug => {
                match self.on_event(&Event::MemslotRemoved(HOTPLUG_SLOT))? {
                    Outcome::Refuse(_) => self.m.unplugs_refused += 1,
                    _ => self.host.model.remove_memslot(HOTPLUG_SLOT.slot),
                }
            }
            HostEventKind::GuestDisable => {
                for v in 0..self.cpus.len() as u32 {
                    if !self.cpus[v as usize].disabled {
                        self.disable(v)?;
                    }
                }
            }
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
            self.m.migration_downtime_ns += (SIM_RAM / 4096) as f64 * self.cost.send_page_ns;
        }
    }

    /// The guest points vCPU 0's buffer page number `nth` (1-based) at `to` and updates its
    /// tables; the host does not see the TLB invalidation. `copy` keeps the page's contents.
    fn remap_first_page(&mut self, nth: u64, to: Ipa, copy: bool) {
        let Some(old) = self
            .buffers
            .first()
            .and_then(|b| b.get(nth as usize - 1))
            .copied()
        else {
            return;
        };
        let va = Gva(BUFFER_VA + (nth - 1) * 4096);
        let walker = Walker::new(self.guest.stage1, &self.guest.ram);
        let Some(desc) = walker.translate(va).ok().and_then(|t| t.leaf_descriptor) else {
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
        self.cpus[0].xlat.fill(None);
        self.cpus[0].last_page = None;
    }
}
