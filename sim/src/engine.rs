//! The simulator: one VM whose vCPUs profile with SPE while the host does what a scenario says,
//! with a backing strategy in between. Virtual time advances one record interval at a time;
//! everything is seeded, so the same inputs give the same metrics.
//!
//! * The SPU writes real records (the 44- and 64-byte records of the shared test data) at
//!   PMBPTR through the guest's stage 1 tables and the host's stage 2 model; a record that meets
//!   a page not present (or not writable) stops with a stage 2 fault, DL=1 when the fault is
//!   past the record's first byte (spec sheet §1.11 rule 5), the bytes before it written.
//! * The guest driver (spec sheet §4) re-programs the buffer at every buffer-full and disables
//!   the session on any fault or unknown status it receives.
//! * The host applies the scenario's events through the strategy (MMU-notifier invalidations,
//!   dirty logging, post-copy, a guest remap) to the stage 2 model.

use std::collections::{HashMap, VecDeque};

use spe_policies::Policy;
use spe_policy::arch::walk::builder::{LEAF_RW, TableBuilder};
use spe_policy::arch::walk::{Stage1Regs, Walker};
use spe_policy::arch::{BufferEvent, BufferMode, FaultStatusCode, Pmblimitr, Pmbptr, Stage};
use spe_policy::config::SpeConfig;
use spe_policy::event::{BufferReg, BufferRegs, Event, InvalidationCause, Outcome};
use spe_policy::stage2::{Absence, Stage2Model};
use spe_policy::{
    BackingStrategy, Granule, GuestRam, Gva, HostBacking, Ipa, IpaRange, Memslot, VcpuId,
};

use crate::scenario::{HostEventKind, Scenario};

/// Where the simulated RAM starts.
pub const RAM_BASE: Ipa = Ipa(0x4000_0000);
/// The simulated RAM: the guest's tables and buffers live in it.
pub const SIM_RAM: u64 = 64 << 20;
const TABLE_POOL: u64 = 4 << 20;
const BUFFER_REGION: u64 = 8 << 20;
const SPARE_PAGE: Ipa = Ipa(RAM_BASE.0 + 6 * (1 << 20));
const BUFFER_VA: u64 = 0xffff_8000_8000_0000;

/// Costs of host work in virtual time, in nanoseconds (defaults in one place; from the real
/// benchmarks where the host part was measured, docs/BENCHMARKS.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Handling a trapped register access or a buffer management exit.
    pub trap_ns: f64,
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
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel {
            trap_ns: 1_000.0,
            walk_page_ns: 40.0,
            pin_page_ns: 8_000.0,
            fault_service_ns: 25_000.0,
            swap_in_ns: 60_000.0,
            post_copy_fetch_ns: 500_000.0,
            scan_byte_ns: 0.6,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// The strategy.
    pub strategy: String,
    /// The scenario.
    pub scenario: String,
    /// Records the SPUs tried to write.
    pub records_attempted: u64,
    /// Records that reached the guest's buffer and were kept.
    pub records_written: u64,
    /// Records not taken because profiling was stopped (blackout) for a fault or an enable.
    pub lost_blackout: u64,
    /// Of those, records lost while a buffer enable was being served.
    pub lost_blackout_enable: u64,
    /// Records given up by a rewind or discard after a repaired fault.
    pub lost_recovery: u64,
    /// Records lost because the guest's session was stopped by a fatal event.
    pub lost_fatal: u64,
    /// Stage 2 faults the SPUs took.
    pub stage2_faults: u64,
    /// Guest-visible fatal events (injected faults, refusals, SPE disabled).
    pub fatal_events: u64,
    /// Most bytes pinned at once.
    pub pinned_peak_bytes: u64,
    /// Bytes pinned, averaged over the run.
    pub pinned_mean_bytes: f64,
    /// Total blackout time over all vCPUs, ns.
    pub blackout_ns: f64,
    /// Longest single blackout, ns.
    pub longest_blackout_ns: f64,
    /// Longest time a buffer enable kept the SPU from profiling, ns (0: enables are free).
    pub longest_enable_ns: f64,
    /// Stage 2 faults the strategy attributed to a stage 1 table page.
    pub table_faults: u64,
    /// Faults with PMBSR.DL = 1.
    pub dl_events: u64,
    /// Host pin and unpin operations.
    pub pin_ops: u64,
    /// Bytes of buffer given up by rewinds and discards.
    pub bytes_lost: u64,
    /// Host invalidations the strategy refused.
    pub invalidations_refused: u64,
    /// Pages the strategy had sent before post-copy switch-over.
    pub pages_sent_before_switchover: u64,
    /// Bytes still pinned after VM stop (must be 0).
    pub pinned_after_stop: u64,
    /// Records lost, by the erratum of the strategy that explains the loss.
    pub loss_by_erratum: std::collections::BTreeMap<String, u64>,
    /// Records lost for a reason no declared erratum of the strategy covers (must be 0).
    pub unexplained_loss: u64,
}

/// Why a record was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LossCause {
    /// Profiling stopped while a buffer enable was served.
    EnableBlackout,
    /// Profiling stopped while a fault was serviced.
    FaultBlackout,
    /// Given up by a rewind or discard after a repaired fault.
    Recovery,
    /// The session was stopped by a buffer enable the strategy refused or SPE disabled.
    FatalAtEnable,
    /// The session was stopped by a fault handed to the guest.
    FatalAtFault,
}

/// The erratum of `strategy` that explains a loss of `cause`, if any (docs/errata).
fn explaining_erratum(strategy: &str, cause: LossCause) -> Option<&'static str> {
    use LossCause::*;
    match (strategy, cause) {
        ("pin-all", EnableBlackout) => Some("PA-02"),
        ("pin-all", FatalAtEnable) => Some("PA-05"),
        ("pin-buffer", EnableBlackout) => Some("PB-02"),
        ("pin-buffer", FaultBlackout | Recovery) => Some("PB-03"),
        ("pin-buffer", FatalAtEnable) => Some("PB-01"),
        ("pin-buffer", FatalAtFault) => Some("PB-07"),
        ("fault-translate", FaultBlackout) => Some("FT-02"),
        ("fault-translate", Recovery) => Some("FT-01"),
        ("fault-translate", FatalAtFault) => Some("FT-05"),
        _ => None,
    }
}

impl Metrics {
    /// Counts `n` records lost for `cause` against the erratum that explains it, or as
    /// unexplained when `declared` (the strategy's errata ids) has none.
    fn lose(&mut self, cause: LossCause, n: u64, declared: &[&str]) {
        match explaining_erratum(&self.strategy, cause).filter(|id| declared.contains(id)) {
            Some(id) => *self.loss_by_erratum.entry(id.to_string()).or_insert(0) += n,
            None => self.unexplained_loss += n,
        }
    }
}

impl Metrics {
    /// Records lost, all causes.
    pub fn lost(&self) -> u64 {
        self.lost_blackout + self.lost_recovery + self.lost_fatal
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

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Copy, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Debug)]
struct Vcpu {
    /// The current blackout is an enable (not a fault).
    enabling: bool,
    base: u64,
    size: u64,
    ptr: u64,
    safe: u64,
    starts: VecDeque<u64>,
    blackout_until: f64,
    fatal: bool,
    fatal_cause: LossCause,
}

/// Real record bytes: Kunpeng's 44-byte branch records and Neoverse-style 64-byte records.
fn sample_records() -> Vec<&'static [u8]> {
    let kunpeng: &'static [u8] =
        include_bytes!("../../spe-policy/tests/data/kunpeng_branch_2021_a.bin");
    let quipper: &'static [u8] =
        include_bytes!("../../spe-policy/tests/data/quipper_arm_spe_decoder_test.bin");
    vec![
        &kunpeng[..44],
        &kunpeng[44..88],
        &quipper[..64],
        &quipper[64..128],
    ]
}

struct Guest {
    ram: GuestRam,
    stage1: Stage1Regs,
}

fn build_guest(vcpus: u32, buffer_bytes: u64) -> Result<(Guest, Vec<Vec<Ipa>>), SimError> {
    let g = |e: &dyn std::fmt::Display| SimError::Guest(e.to_string());
    let mut ram = GuestRam::new();
    ram.insert(RAM_BASE, vec![0; SIM_RAM as usize])
        .map_err(|e| g(&e))?;
    let mut b = TableBuilder::new(
        GuestRam::new(),
        Granule::K4,
        16,
        RAM_BASE,
        TABLE_POOL,
        false,
    )
    .map_err(|e| g(&e))?;
    let pages_per = buffer_bytes / 4096;
    let region_pages = (SIM_RAM - BUFFER_REGION) / 4096;
    let mut all = Vec::new();
    for v in 0..u64::from(vcpus) {
        let pages: Vec<Ipa> = (0..pages_per)
            .map(|i| {
                let n = v * pages_per + i;
                Ipa(RAM_BASE.0 + BUFFER_REGION + ((n * 7919) % region_pages) * 4096)
            })
            .collect();
        b.map_pages(
            Gva(BUFFER_VA + v * (1 << 30)),
            pages.iter().copied(),
            LEAF_RW,
        )
        .map_err(|e| g(&e))?;
        all.push(pages);
    }
    let tables = b.into_ram();
    for (base, len) in tables.regions() {
        let bytes = tables
            .slice(base, len as usize)
            .ok_or_else(|| g(&"tables"))?
            .to_vec();
        ram.write(base, &bytes).map_err(|e| g(&e))?;
    }
    let stage1 = Stage1Regs::linux_kernel_4k(RAM_BASE);
    Ok((Guest { ram, stage1 }, all))
}

fn regs(ptr: u64, limit: u64, pmbsr: spe_policy::arch::Pmbsr) -> BufferRegs {
    BufferRegs {
        pmbptr: Pmbptr::from_bits(ptr),
        pmblimitr: Pmblimitr::for_buffer(Gva(limit), true, BufferMode::Fill),
        pmbsr,
    }
}

fn fault_pmbsr(data_loss: bool) -> spe_policy::arch::Pmbsr {
    BufferEvent::fault(Stage::Two, FaultStatusCode::Translation(3), data_loss).encode()
}

/// Runs `scenario` against `policy` with the VM `config` describes (at most 8 vCPUs and 4 MiB
/// buffers are simulated, in 64 MiB of RAM).
pub fn run(
    config: &SpeConfig,
    policy: &Policy,
    scenario: &Scenario,
    cost: &CostModel,
) -> Result<Metrics, SimError> {
    let vcpus = config.guest.vcpus.clamp(1, 8);
    let buffer = config
        .guest
        .buffer_per_vcpu
        .bytes()
        .clamp(16 << 10, 4 << 20)
        & !0xfff;
    let max_record = config.guest.max_record.bytes().max(64);
    let (mut guest, buffers) = build_guest(vcpus, buffer)?;
    let slot = [Memslot {
        slot: 0,
        range: IpaRange::new(RAM_BASE, SIM_RAM),
    }];
    let host = Stage2Model::new(Granule::K4, &slot);
    if let spe_policy::config::Limit::Bytes(limit) = config.host.lock_limit {
        host.set_lock_limit(Some(limit.bytes()));
    }
    let records = sample_records();
    let mut rng = Rng(scenario.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let declared: Vec<&str> = policy.errata().iter().map(|e| e.id).collect();
    let mut m = Metrics {
        strategy: policy.name().into(),
        scenario: scenario.name.clone(),
        ..Metrics::default()
    };
    // A VM start the host refuses (pin-all over the lock limit) runs no profiling at all.
    let started = policy
        .on_event(&Event::VmStart { memslots: &slot }, &guest.ram, &host)
        .is_ok();
    if !started {
        m.fatal_events += 1;
    }
    let mut cpus: Vec<Vcpu> = (0..vcpus)
        .map(|v| Vcpu {
            enabling: false,
            base: BUFFER_VA + u64::from(v) * (1 << 30),
            size: buffer,
            ptr: 0,
            safe: 0,
            starts: VecDeque::new(),
            blackout_until: 0.0,
            fatal: !started,
            fatal_cause: LossCause::FatalAtEnable,
        })
        .collect();
    // Translation cache: (vCPU, buffer page) -> (IPA, table pages).
    let mut xlat: HashMap<(u32, u64), (Ipa, Vec<Ipa>)> = HashMap::new();
    let mut events = scenario.events.clone();
    events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    let mut next_event = 0;
    let interval = 1e6 / scenario.records_per_ms;
    let ticks = (scenario.duration_ms * 1e6 / interval) as u64;
    let mut pinned_sum = 0.0;

    // Each vCPU enables its buffer at time 0.
    for v in (0..vcpus).filter(|_| started) {
        enable(
            policy,
            &guest,
            &host,
            &mut cpus[v as usize],
            v,
            0.0,
            cost,
            &mut m,
        )?;
    }
    for tick in 0..ticks {
        let now = tick as f64 * interval;
        while let Some(e) = events.get(next_event).filter(|e| e.at_ms * 1e6 <= now) {
            host_event(
                policy, &mut guest, &host, e.kind, e.fraction, &mut rng, &buffers, &mut xlat,
            )?;
            next_event += 1;
        }
        for v in 0..vcpus {
            m.records_attempted += 1;
            let c = &mut cpus[v as usize];
            if c.fatal {
                m.lost_fatal += 1;
                m.lose(c.fatal_cause, 1, &declared);
                continue;
            }
            if now < c.blackout_until {
                m.lost_blackout += 1;
                if c.enabling {
                    m.lost_blackout_enable += 1;
                    m.lose(LossCause::EnableBlackout, 1, &declared);
                } else {
                    m.lose(LossCause::FaultBlackout, 1, &declared);
                }
                continue;
            }
            let rec = records[(rng.next() % records.len() as u64) as usize];
            let len = rec.len() as u64;
            // Where does stage 2 stop the write? (Tables are read: present suffices; the data
            // page is written: it must be writable.)
            let mut fault_at = None;
            let mut at = c.ptr;
            while at < c.ptr + len {
                let page = (c.base + at) & !0xfff;
                let (ipa, tables) = xlat
                    .entry((v, page))
                    .or_insert_with(|| {
                        // An untranslatable page is left at IPA 0, outside RAM: it faults.
                        Walker::new(guest.stage1, &guest.ram)
                            .translate(Gva(page))
                            .map(|t| (t.ipa, t.tables_touched.as_slice().to_vec()))
                            .unwrap_or((Ipa(0), Vec::new()))
                    })
                    .clone();
                let ok = tables.iter().all(|t| host.page_state(*t).present)
                    && host.page_state(ipa).writable();
                let chunk = (0x1000 - ((c.base + at) & 0xfff)).min(c.ptr + len - at);
                if !ok {
                    fault_at = Some(at);
                    break;
                }
                let from = (at - c.ptr) as usize;
                let off = (c.base + at) & 0xfff;
                let _ = guest
                    .ram
                    .write(Ipa(ipa.0 + off), &rec[from..from + chunk as usize]);
                at += chunk;
            }
            match fault_at {
                None => {
                    c.starts.push_back(c.ptr);
                    c.ptr += len;
                    m.records_written += 1;
                }
                Some(f) => {
                    m.stage2_faults += 1;
                    let dl = f != c.ptr;
                    m.dl_events += u64::from(dl);
                    let before = host.counters();
                    let ev = Event::BufferManagement {
                        vcpu: VcpuId(v),
                        regs: regs(c.base + f, c.base + c.size, fault_pmbsr(dl)),
                        stage1: guest.stage1,
                    };
                    let out = policy.on_event(&ev, &guest.ram, &host)?;
                    let after = host.counters();
                    let service = cost.trap_ns
                        + cost.fault_service_ns
                        + (after.swap_ins - before.swap_ins) as f64 * cost.swap_in_ns
                        + (after.post_copy_fetches - before.post_copy_fetches) as f64
                            * cost.post_copy_fetch_ns
                        + (f - c.safe) as f64 * cost.scan_byte_ns;
                    match out {
                        Outcome::ResumeAt { pmbptr } => {
                            let resume = pmbptr.0.saturating_sub(c.base).min(f);
                            // Records that started at or after the resume point are gone.
                            while c.starts.back().is_some_and(|s| *s >= resume) {
                                c.starts.pop_back();
                                m.records_written -= 1;
                                m.lost_recovery += 1;
                                m.lose(LossCause::Recovery, 1, &declared);
                            }
                            m.lost_recovery += 1; // the record that faulted
                            m.lose(LossCause::Recovery, 1, &declared);
                            c.ptr = resume;
                            c.safe = resume;
                            c.enabling = false;
                            blackout(c, now, service, &mut m);
                        }
                        Outcome::Resume => {
                            m.lost_recovery += 1;
                            m.lose(LossCause::Recovery, 1, &declared);
                            c.enabling = false;
                            blackout(c, now, service, &mut m);
                        }
                        _ => {
                            // Injected fault or SPE disabled: Linux stops the session.
                            m.fatal_events += 1;
                            m.lost_fatal += 1;
                            m.lose(LossCause::FatalAtFault, 1, &declared);
                            c.fatal = true;
                            c.fatal_cause = LossCause::FatalAtFault;
                        }
                    }
                }
            }
            // Buffer full: the driver takes the data and re-programs the buffer.
            let c = &mut cpus[v as usize];
            if !c.fatal && c.ptr + max_record > c.size {
                c.ptr = 0;
                c.safe = 0;
                c.starts.clear();
                enable(policy, &guest, &host, c, v, now, cost, &mut m)?;
            }
        }
        pinned_sum += policy.stats().pinned_bytes as f64;
    }
    let stats = policy.stats();
    m.pinned_peak_bytes = stats.peak_pinned_bytes;
    m.table_faults = stats.stage2_faults_table;
    m.pin_ops = stats.pin_ops + stats.unpin_ops;
    m.bytes_lost = stats.bytes_lost_rewind + stats.bytes_lost_discard;
    m.pinned_mean_bytes = if ticks > 0 {
        pinned_sum / ticks as f64
    } else {
        0.0
    };
    m.invalidations_refused = stats.refused;
    m.pages_sent_before_switchover = host.counters().sent_before_switchover;
    policy.on_event(&Event::VmStop, &guest.ram, &host)?;
    m.pinned_after_stop = host.pinned_bytes();
    Ok(m)
}

fn blackout(c: &mut Vcpu, now: f64, ns: f64, m: &mut Metrics) {
    c.blackout_until = now + ns;
    m.blackout_ns += ns;
    m.longest_blackout_ns = m.longest_blackout_ns.max(ns);
}

#[allow(clippy::too_many_arguments)]
fn enable(
    policy: &Policy,
    guest: &Guest,
    host: &Stage2Model,
    c: &mut Vcpu,
    v: u32,
    now: f64,
    cost: &CostModel,
    m: &mut Metrics,
) -> Result<(), SimError> {
    let before = policy.stats();
    let ev = Event::BufferWrite {
        vcpu: VcpuId(v),
        reg: BufferReg::Pmblimitr,
        regs: regs(c.base + c.ptr, c.base + c.size, Default::default()),
        stage1: guest.stage1,
    };
    let out = policy.on_event(&ev, &guest.ram, host)?;
    let after = policy.stats();
    let walked = (after.walks - before.walks) as f64 * (c.size / 4096) as f64;
    let pinned = after.pinned_bytes.saturating_sub(before.pinned_bytes) as f64 / 4096.0;
    let ns = cost.trap_ns + walked * cost.walk_page_ns + pinned * cost.pin_page_ns;
    match out {
        Outcome::Resume | Outcome::ResumeAt { .. } => {
            if ns > cost.trap_ns {
                c.enabling = true;
                blackout(c, now, ns, m);
            }
            m.longest_enable_ns = m.longest_enable_ns.max(ns);
            Ok(())
        }
        _ => {
            m.fatal_events += 1;
            c.fatal = true;
            c.fatal_cause = LossCause::FatalAtEnable;
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn host_event(
    policy: &Policy,
    guest: &mut Guest,
    host: &Stage2Model,
    kind: HostEventKind,
    fraction: f64,
    rng: &mut Rng,
    buffers: &[Vec<Ipa>],
    xlat: &mut HashMap<(u32, u64), (Ipa, Vec<Ipa>)>,
) -> Result<(), SimError> {
    let ram = IpaRange::new(RAM_BASE, SIM_RAM);
    let pages = SIM_RAM / 4096;
    match kind {
        HostEventKind::SwapOut | HostEventKind::KsmMerge | HostEventKind::ThpSplit => {
            let n = (pages as f64 * fraction) as u64;
            let cause = match kind {
                HostEventKind::SwapOut => InvalidationCause::Swap,
                HostEventKind::KsmMerge => InvalidationCause::KsmMerge,
                _ => InvalidationCause::ThpSplit,
            };
            for _ in 0..n {
                let page = Ipa(RAM_BASE.0 + (rng.next() % pages) * 4096);
                let range = IpaRange::new(page, 4096);
                let ev = Event::HostInvalidation { range, cause };
                if policy.on_event(&ev, &guest.ram, host)? == Outcome::Resume {
                    match kind {
                        HostEventKind::SwapOut => {
                            host.unmap(range, Absence::Swapped);
                        }
                        HostEventKind::KsmMerge => {
                            host.ksm_merge(range);
                        }
                        _ => {
                            host.unmap(range, Absence::NeverTouched);
                        }
                    }
                }
            }
        }
        HostEventKind::DirtyLogStart => {
            policy.on_event(&Event::DirtyLogStart, &guest.ram, host)?;
            host.dirty_log_protect(None);
        }
        HostEventKind::DirtyLogRound => {
            policy.on_event(&Event::DirtyLogClear(ram), &guest.ram, host)?;
            host.dirty_log_protect(None);
        }
        HostEventKind::DirtyLogStop => {
            policy.on_event(&Event::DirtyLogStop, &guest.ram, host)?;
            host.dirty_log_stop();
        }
        HostEventKind::PostCopySwitchover => {
            policy.on_event(&Event::PostCopySwitchover, &guest.ram, host)?;
            host.post_copy_switchover(ram);
        }
        HostEventKind::PageUnavailable => {
            if let Some(page) = buffers.first().and_then(|b| b.first()).copied() {
                host.make_unavailable(page);
                host.unmap(IpaRange::new(page, 4096), Absence::PostCopyPending);
            }
        }
        HostEventKind::GuestRemap => {
            // The guest moves vCPU 0's first buffer page to a spare page and updates its
            // tables; the host does not see the TLB invalidation. The new page was never
            // touched, so it is not present at stage 2.
            let Some(old) = buffers.first().and_then(|b| b.first()).copied() else {
                return Ok(());
            };
            let walker = Walker::new(guest.stage1, &guest.ram);
            if let Ok(t) = walker.translate(Gva(BUFFER_VA)) {
                if let Some(desc) = t.leaf_descriptor {
                    let mut page = vec![0u8; 4096];
                    let _ = guest.ram.slice(old, 4096).map(|b| page.copy_from_slice(b));
                    let _ = guest.ram.write(SPARE_PAGE, &page);
                    let _ = guest
                        .ram
                        .write_u64(desc, SPARE_PAGE.0 | 0b11 | LEAF_RW, false);
                    host.unmap(IpaRange::new(SPARE_PAGE, 4096), Absence::NeverTouched);
                    xlat.retain(|(v, _), _| *v != 0);
                }
            }
        }
    }
    Ok(())
}
