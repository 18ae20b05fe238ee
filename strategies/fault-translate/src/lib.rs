//! # fault-translate: pin nothing, repair on the fault
//!
//! Nothing is pinned. When the SPU stops with a stage 2 fault, the strategy takes PMBPTR as the
//! faulting VA, walks the guest's stage 1 — faulting in table pages that are themselves absent,
//! since a fault on a table page looks identical (spec sheet §3.9) — makes the buffer page
//! present, recovers the buffer with the record scanner (rewind to the last provable record, or
//! discard back to the last safe point) and resumes. Cheap and fast, not reliable: every fault
//! stops the SPU, its service stalls the vCPU (or, serviced in the background, leaves the guest
//! running unprofiled), and DL=1 loses data. The seed thread's proposal (Marc Zyngier, 2022).
//!
//! Buffer and table pages seen in faults are learned, so dirty logging and KSM can leave them
//! alone (pre-copy: kept dirty until the vCPU stops).
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;
use spe_policy::arch::walk::{Stage1Regs, WalkError, WalkOptions, Walker};
use spe_policy::arch::{BufferEvent, BufferEventKind, Stage};
use spe_policy::buffer_recovery::{RecoverySettings, recover_buffer};
use spe_policy::errata::{Erratum, GuestTold, Profile, Property};
use spe_policy::event::{BufferRegs, Event, InvalidationCause, Outcome};
use spe_policy::guest_notice::{StrategyId, bits};
use spe_policy::host::FaultIn;
use spe_policy::saved::STATE_VERSION;
use spe_policy::{
    BackingStrategy, GuestMemoryRead, Gva, HostBacking, HostError, Ipa, IpaRange, PolicyError,
    StrategyStats, VcpuId,
};

/// Configuration of fault-translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultTranslateConfig {
    /// How the buffer is recovered after DL=1: rewind to the last provable record (parse), or
    /// discard since the last safe point.
    pub recovery: RecoverySettings,
    /// Exempt learned buffer and table pages from dirty-log write protection (pre-copy keeps
    /// them dirty until the vCPU stops).
    pub exempt_learned_pages: bool,
    /// The implementation the walks model (PAMax, features), as the SPU's walk does.
    pub walk: WalkOptions,
}

impl Default for FaultTranslateConfig {
    fn default() -> Self {
        FaultTranslateConfig {
            recovery: RecoverySettings::default(),
            exempt_learned_pages: true,
            // Recursive mappings are legal and the SPU follows them (bounded: five reads).
            walk: WalkOptions {
                allow_recursive_tables: true,
                ..WalkOptions::default()
            },
        }
    }
}

const NAME: &str = "fault-translate";

/// The errata of fault-translate.
pub static ERRATA: [Erratum; 7] = [
    Erratum {
        id: "FT-01",
        title: "A stage 2 fault with DL=1 loses the partial record and what cannot be proven",
        trigger: "A stage 2 fault in the middle of a record (PMBSR_EL1.DL=1).",
        guest_visible: "PMBPTR is rewound: with recovery = rewind, to the end of the last provably complete record (under unordered writes, at least MaxSize bytes before the fault); with recovery = discard, to the last safe point. The records after it are lost without a flag.",
        host_visible: "Lost bytes are counted by cause (rewind, discard).",
        mitigation: "Choose pin-buffer or pin-all where samples must not be lost; write_order = sequential on SPUs known to write records in order shrinks the loss to the partial record.",
        guest_told: GuestTold::NoticeBit(bits::REWIND),
        scenario: "swap-storm",
    },
    Erratum {
        id: "FT-02",
        title: "Every fault stops the SPU, and its service stalls the vCPU",
        trigger: "Any stage 2 fault on the buffer or its tables: swap-in, KSM unsharing, THP or NUMA moves, post-copy fetch.",
        guest_visible: "The guest runs unprofiled from the fault until the host takes the interrupt; then the vCPU is kept out of the guest while the host walks, faults the page in (a swap-in, a post-copy network fetch) and scans the buffer back to the last safe point: milliseconds. With service = \"background\" the vCPU runs on and that time is unprofiled instead.",
        host_visible: "A walk, a fault-in and a recovery scan of up to the whole buffer on the vCPU's path.",
        mitigation: "Exempt learned pages from reclaim where the host allows; keep buffers warm.",
        guest_told: GuestTold::NoticeBit(bits::BLACKOUT),
        scenario: "swap-storm",
    },
    Erratum {
        id: "FT-03",
        title: "Faults on stage 1 table pages look like buffer faults",
        trigger: "The host reclaimed a page holding the guest's stage 1 tables for the buffer.",
        guest_visible: "As FT-01/FT-02.",
        host_visible: "PMBSR has no S1PTW bit: every fault costs a full walk, faulting in each table page the walk needs.",
        mitigation: "None in the architecture; learned table pages are exempted like buffer pages.",
        guest_told: GuestTold::No,
        scenario: "swap-storm",
    },
    Erratum {
        id: "FT-04",
        title: "Dirty logging and KSM fault the buffer unless learned pages are exempt",
        trigger: "Dirty-log write protection or KSM merging of a buffer page.",
        guest_visible: "As FT-01/FT-02 on the first write after each protection.",
        host_visible: "With dirty_log = keep-buffer-dirty (the default), pages seen in a fault stay writable and are resent at stop-and-copy (downtime grows with the buffer); pages never faulted on are not known and fault once.",
        mitigation: "Keep dirty_log = keep-buffer-dirty (the default); write-protect only where the dirty log must be exact.",
        guest_told: GuestTold::NoticeBit(bits::BLACKOUT),
        scenario: "pre-copy",
    },
    Erratum {
        id: "FT-05",
        title: "A page that cannot be made present is a fatal guest fault",
        trigger: "The faulting IPA is outside every memslot, or cannot be brought in (post-copy source lost, backing gone).",
        guest_visible: "The stage 2 fault is injected (EC=0x25); Linux logs \"Unexpected buffer fault\" and stops the session.",
        host_visible: "Counted as injected.",
        mitigation: "None for misprogrammed guests; keep post-copy sources alive.",
        guest_told: GuestTold::NoticeBit(bits::FATAL_FAULT),
        scenario: "unbackable",
    },
    Erratum {
        id: "FT-06",
        title: "Post-copy demands the buffer from the source at fault time",
        trigger: "A buffer page left behind at post-copy switch-over.",
        guest_visible: "A stall of one network round trip per missing page (FT-02).",
        host_visible: "Demand-paging requests on the profiling path.",
        mitigation: "Prefer pre-copy for VMs that profile.",
        guest_told: GuestTold::NoticeBit(bits::BLACKOUT),
        scenario: "post-copy",
    },
    Erratum {
        id: "FT-07",
        title: "A guest remap of its buffer is repaired like any fault",
        trigger: "The guest changes the stage 1 mapping of its buffer while it is enabled.",
        guest_visible: "Nothing beyond FT-01/FT-02 if the new pages are not present at stage 2.",
        host_visible: "Nothing to keep coherent: nothing was pinned.",
        mitigation: "None needed.",
        guest_told: GuestTold::NoticeBit(bits::STAGE1_REMAP),
        scenario: "guest-remap",
    },
];

/// fault-translate's profile: cheap only, as measured. Its enables cost one trap, but each
/// stage 2 fault's service (walk, fault-in, swap-in or post-copy fetch, and a recovery scan of
/// up to the whole buffer since the last safe point) keeps the vCPU out of the guest for
/// milliseconds, and the SPU stopping at every fault and DL=1 lose samples. With
/// `service = "background"` the stall becomes lost samples instead.
pub const PROFILE: Profile = Profile {
    keeps: &[Property::Cheap],
    gives_up: &[Property::Fast, Property::Reliable],
    why: "Nothing is pinned and enables cost one trap, but every stage 2 fault stops the SPU, its service (fault-in, swap-in or post-copy fetch, and a recovery scan of up to the whole buffer) stalls the vCPU for milliseconds, and DL=1 loses records.",
};

#[derive(Debug, Default, Clone, Copy)]
struct VcpuBuffer {
    /// PMBPTR at the last enable or resume: a record boundary.
    last_safe: Gva,
}

#[derive(Debug, Default)]
struct State {
    vcpus: HashMap<VcpuId, VcpuBuffer>,
    /// Buffer and table pages seen in faults.
    learned: BTreeSet<Ipa>,
    exempt: BTreeSet<Ipa>,
    dirty_logging: bool,
    stats: StrategyStats,
}

/// fault-translate's saved state ([`FaultTranslate::save`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FaultTranslateState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// `(vCPU, PMBPTR at its last enable or resume)`.
    pub last_safe: Vec<(u32, u64)>,
}

/// The fault-translate strategy.
#[derive(Debug)]
pub struct FaultTranslate {
    config: FaultTranslateConfig,
    state: Mutex<State>,
}

fn err(action: &'static str) -> impl FnOnce(HostError) -> PolicyError {
    PolicyError::during(NAME, action)
}

impl FaultTranslate {
    /// A fault-translate strategy with `config`.
    pub fn new(config: FaultTranslateConfig) -> Self {
        FaultTranslate {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> FaultTranslateConfig {
        self.config
    }

    /// The state a migration or snapshot carries: each vCPU's last record boundary (where a
    /// DL=1 recovery may rewind to). Learned pages are not carried: they matter only while the
    /// source's dirty logging runs, and the destination learns its own at its first faults.
    pub fn save(&self) -> FaultTranslateState {
        let st = self.state.lock();
        let mut vcpus: Vec<(u32, u64)> =
            st.vcpus.iter().map(|(v, b)| (v.0, b.last_safe.0)).collect();
        vcpus.sort_unstable();
        FaultTranslateState {
            version: STATE_VERSION,
            last_safe: vcpus,
        }
    }

    /// fault-translate on a destination from `state`: nothing to pin.
    pub fn restore(config: FaultTranslateConfig, state: &FaultTranslateState) -> Self {
        let s = FaultTranslate::new(config);
        s.state.lock().vcpus = state
            .last_safe
            .iter()
            .map(|(v, safe)| {
                (
                    VcpuId(*v),
                    VcpuBuffer {
                        last_safe: Gva(*safe),
                    },
                )
            })
            .collect();
        s
    }

    /// Pages learned so far (buffer and table pages seen in faults).
    pub fn learned_pages(&self) -> Vec<Ipa> {
        self.state.lock().learned.iter().copied().collect()
    }

    fn learn<H: HostBacking + ?Sized>(
        &self,
        st: &mut State,
        host: &H,
        pages: &[Ipa],
    ) -> Result<(), HostError> {
        let granule = host.granule();
        for p in pages {
            let page = p.page_base(granule);
            st.learned.insert(page);
            if st.dirty_logging && self.config.exempt_learned_pages && st.exempt.insert(page) {
                host.set_dirty_log_exempt(IpaRange::page(page, granule), true)?;
            }
        }
        Ok(())
    }

    fn on_fault<G, H>(
        &self,
        st: &mut State,
        vcpu: VcpuId,
        regs: BufferRegs,
        stage1: Stage1Regs,
        guest: &G,
        host: &H,
    ) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let cfg = &self.config;
        let data_loss = BufferEvent::decode(regs.pmbsr).data_loss;
        let va = regs.pmbptr.address();
        let inject = Outcome::Inject {
            pmbsr: regs.pmbsr,
            pmbptr: va,
        };
        let walker = Walker::with_options(stage1, cfg.walk, guest);
        // The walk reads the tables through the VMM (which faults them in on the host side);
        // each table page must also be present at stage 2 for the SPU's own walk.
        let (tables, ipa) = match walker.translate(va) {
            Ok(t) => (t.tables_touched.as_slice().to_vec(), Some(t.ipa)),
            // A stage 1 fault: make the tables read so far present; the SPU will then report
            // the stage 1 fault to the guest itself.
            Err(WalkError::Fault(f)) => (f.tables_touched.as_slice().to_vec(), None),
            Err(_) => {
                // FT-05: tables outside RAM or in a loop cannot be repaired.
                st.stats.injected += 1;
                return Ok(inject);
            }
        };
        // Table pages are guest-granule pages; the SPU's walk reads descriptors anywhere in
        // them, so every host page of each must be present (a 64 KiB guest table is sixteen
        // 4 KiB host pages).
        let granule = host.granule();
        let unit = if Stage1Regs::ttbr_index(va) == 1 {
            stage1.tcr.granule1()
        } else {
            stage1.tcr.granule0()
        }
        .size();
        let table_pages: Vec<Ipa> = tables
            .iter()
            .flat_map(|t| IpaRange::new(Ipa(t.0 & !(unit - 1)), unit).pages(granule))
            .collect();
        let mut table_fault = false;
        for t in &table_pages {
            match host.fault_in(*t) {
                Ok(FaultIn::MadePresent) => table_fault = true,
                Ok(FaultIn::AlreadyPresent) => {}
                Err(HostError::NotInMemslot(_) | HostError::Unavailable { .. }) => {
                    st.stats.injected += 1;
                    return Ok(inject);
                }
                Err(e) => return Err(err("faulting in a stage 1 table page")(e)),
            }
        }
        if let Some(ipa) = ipa {
            match host.fault_in(ipa) {
                Ok(_) => {}
                Err(HostError::NotInMemslot(_) | HostError::Unavailable { .. }) => {
                    // FT-05.
                    st.stats.injected += 1;
                    return Ok(inject);
                }
                Err(e) => return Err(err("faulting in a buffer page")(e)),
            }
        }
        if table_fault {
            st.stats.stage2_faults_table += 1;
        } else {
            st.stats.stage2_faults_buffer += 1;
        }
        st.stats.walks += 1;
        let mut learned = tables;
        learned.extend(ipa);
        self.learn(st, host, &learned)
            .map_err(err("exempting learned pages from dirty logging"))?;
        let safe = st.vcpus.get(&vcpu).map_or(va, |v| v.last_safe);
        let r = recover_buffer(&walker, safe, va, data_loss, &cfg.recovery);
        if r.parsed {
            st.stats.bytes_lost_rewind = st.stats.bytes_lost_rewind.saturating_add(r.lost_bytes);
        } else {
            st.stats.bytes_lost_discard = st.stats.bytes_lost_discard.saturating_add(r.lost_bytes);
        }
        st.vcpus.entry(vcpu).or_default().last_safe = r.resume_at;
        Ok(Outcome::ResumeAt {
            pmbptr: r.resume_at,
        })
    }
}

impl BackingStrategy for FaultTranslate {
    fn name(&self) -> &'static str {
        NAME
    }

    fn id(&self) -> StrategyId {
        StrategyId::FaultTranslate
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn errata(&self) -> &'static [Erratum] {
        &ERRATA
    }

    fn stats(&self) -> StrategyStats {
        self.state.lock().stats
    }

    fn on_event<G, H>(&self, event: &Event<'_>, guest: &G, host: &H) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let mut st = self.state.lock();
        match *event {
            Event::BufferWrite { vcpu, regs, .. } => {
                if let Some((start, _)) = regs.window() {
                    st.vcpus.entry(vcpu).or_default().last_safe = start;
                }
                Ok(Outcome::Resume)
            }
            Event::BufferManagement { vcpu, regs, stage1 } => {
                let ev = BufferEvent::decode(regs.pmbsr);
                match ev.kind {
                    BufferEventKind::Fault {
                        stage: Stage::Two, ..
                    } => self.on_fault(&mut st, vcpu, regs, stage1, guest, host),
                    // Buffer full, stage 1 faults and the rest are the guest's.
                    _ => Ok(Outcome::Inject {
                        pmbsr: regs.pmbsr,
                        pmbptr: regs.pmbptr.address(),
                    }),
                }
            }
            Event::HostInvalidation { range, cause } => {
                // Nothing is pinned: the host may take anything. KSM on a learned page is
                // declined only where the host asks (FT-04: exempt pages are not merged).
                let learned = range.pages(host.granule()).any(|p| st.learned.contains(&p));
                if learned
                    && cause == InvalidationCause::KsmMerge
                    && self.config.exempt_learned_pages
                {
                    st.stats.refused += 1;
                    return Ok(Outcome::Refuse(spe_policy::event::Refusal::Pinned));
                }
                Ok(Outcome::Resume)
            }
            Event::DirtyLogStart | Event::DirtyLogClear(_) => {
                st.dirty_logging = true;
                if self.config.exempt_learned_pages {
                    let granule = host.granule();
                    let todo: Vec<Ipa> = st.learned.difference(&st.exempt).copied().collect();
                    for p in todo {
                        host.set_dirty_log_exempt(IpaRange::page(p, granule), true)
                            .map_err(err("exempting learned pages from dirty logging"))?;
                        st.exempt.insert(p);
                    }
                }
                Ok(Outcome::Resume)
            }
            Event::VcpuStop(_) | Event::DirtyLogStop => {
                let granule = host.granule();
                let exempt: Vec<Ipa> = std::mem::take(&mut st.exempt).into_iter().collect();
                for p in exempt {
                    host.set_dirty_log_exempt(IpaRange::page(p, granule), false)
                        .map_err(err("returning learned pages to dirty logging"))?;
                }
                if matches!(event, Event::DirtyLogStop) {
                    st.dirty_logging = false;
                }
                Ok(Outcome::Resume)
            }
            Event::MemslotRemoved(slot) => {
                st.learned.retain(|p| !slot.range.contains(*p));
                st.exempt.retain(|p| !slot.range.contains(*p));
                Ok(Outcome::Resume)
            }
            Event::VmStop => {
                st.vcpus.clear();
                st.learned.clear();
                st.exempt.clear();
                Ok(Outcome::Resume)
            }
            Event::VmStart { .. }
            | Event::MemslotAdded(_)
            | Event::BufferRead { .. }
            | Event::BalloonInflate(_)
            | Event::MigrationStart(_)
            | Event::PostCopySwitchover
            | Event::GuestStage1Remap { .. } => Ok(Outcome::Resume),
        }
    }
}
