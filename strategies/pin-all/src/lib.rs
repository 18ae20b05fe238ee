//! # pin-all: pin all guest memory
//!
//! Every memslot is pinned (at VM start, or at the first buffer enable), so no stage 2 fault can
//! ever reach the SPU: fast and reliable, not cheap. The price is the whole VM's memory: no swap,
//! KSM, THP reclaim or ballooning, a start-up cost that grows with RAM, live migration refused or
//! degraded to stop-and-copy while SPE may be used, and hot-unplug blocked while a buffer is
//! enabled. KVM SPE RFC v7 (2026) takes this approach.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;
use spe_policy::arch::{BufferEvent, BufferEventKind};
use spe_policy::config::PinKind;
use spe_policy::errata::{Erratum, GuestTold, Profile, Property};
use spe_policy::event::{DisableReason, Event, MigrationMode, Outcome, Refusal};
use spe_policy::guest_notice::{StrategyId, bits};
use spe_policy::saved::{STATE_VERSION, SavedMemslot};
use spe_policy::strategy::notice_for;
use spe_policy::{
    BackingStrategy, GuestMemoryRead, HostBacking, HostError, Memslot, PolicyError, StrategyStats,
    VcpuId,
};

/// pin-all's saved state ([`PinAll::save`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinAllState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The VM's memslots.
    pub memslots: Vec<SavedMemslot>,
    /// Guest RAM was pinned (at VM start, or at the first enable).
    pub pinned: bool,
    /// vCPUs with their buffer enabled.
    pub enabled: Vec<u32>,
}

/// When the memory is pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PinAt {
    /// Before the first vCPU runs: the cost is paid by every VM, SPE used or not.
    #[default]
    VmStart,
    /// At the first buffer enable of any vCPU: VMs that never profile never pay.
    FirstEnable,
}

/// What to do when migration starts while memory is pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PinAllMigration {
    /// Refuse the migration.
    #[default]
    Refuse,
    /// Ask for stop-and-copy instead of pre-copy or post-copy.
    StopAndCopy,
}

/// Configuration of pin-all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PinAllConfig {
    /// When to pin.
    pub pin_at: PinAt,
    /// What migration does.
    pub migration: PinAllMigration,
    /// What the host's pins are: with `mlock`, PA-06 applies.
    pub pin: PinKind,
}

const NAME: &str = "pin-all";

/// The errata of pin-all.
pub static ERRATA: [Erratum; 7] = [
    Erratum {
        id: "PA-01",
        title: "No memory overcommit for the whole VM",
        trigger: "Any host reclaim of guest memory: swap-out, KSM merging, THP split or collapse, NUMA migration, compaction, balloon inflation.",
        guest_visible: "Nothing: profiling is unaffected.",
        host_visible: "Every guest page stays resident and unmovable for the VM's life: invalidations and balloon inflation are refused.",
        mitigation: "Size the host for the VM's full RAM, or choose pin-buffer or fault-translate on overcommitted hosts.",
        guest_told: GuestTold::No,
        scenario: "swap-storm",
    },
    Erratum {
        id: "PA-02",
        title: "Pinning cost proportional to guest RAM at start or first enable",
        trigger: "VM start (pin_at = vm-start) or the first buffer enable of any vCPU (pin_at = first-enable).",
        guest_visible: "With first-enable, the first buffer enable stalls the vCPU for as long as pinning takes.",
        host_visible: "Start-up (or the first enable) faults in and locks every page of every memslot.",
        mitigation: "Use pin_at = first-enable so VMs that never profile never pay; pre-fault with hugetlb or guest_memfd.",
        guest_told: GuestTold::No,
        scenario: "first-enable",
    },
    Erratum {
        id: "PA-03",
        title: "Live migration refused or degraded to stop-and-copy",
        trigger: "Pre-copy or post-copy migration while memory is pinned.",
        guest_visible: "With stop-and-copy: the VM pauses for the whole copy.",
        host_visible: "The migration is refused, or asked to run as stop-and-copy (downtime proportional to RAM).",
        mitigation: "Migrate before the first enable (pin_at = first-enable), or choose another strategy on migration-heavy hosts.",
        guest_told: GuestTold::No,
        scenario: "pre-copy",
    },
    Erratum {
        id: "PA-04",
        title: "Memory hot-unplug blocked while a buffer is enabled",
        trigger: "Removing a memslot while any vCPU has its profiling buffer enabled.",
        guest_visible: "Nothing (the unplug request waits or fails on the host side).",
        host_visible: "The memslot removal is refused until every buffer is disabled.",
        mitigation: "Stop profiling before unplugging memory.",
        guest_told: GuestTold::No,
        scenario: "hot-unplug",
    },
    Erratum {
        id: "PA-05",
        title: "SPE disabled when the host cannot pin the memory",
        trigger: "The locked-memory limit (RLIMIT_MEMLOCK) or a memslot that cannot be pinned, at first enable or (pin_at = vm-start) at VM start.",
        guest_visible: "At first enable: SPE is disabled for the vCPU that enabled its buffer; its perf session stops. At VM start: the VM does not start, so it profiles nothing.",
        host_visible: "A typed error names the limit and the bytes requested; at VM start it is the VMM's start-up error.",
        mitigation: "Raise RLIMIT_MEMLOCK to the VM's RAM, or pin at VM start so the failure stops the VM before it runs.",
        guest_told: GuestTold::NoticeBit(bits::SPE_DISABLED),
        scenario: "lock-limit",
    },
    Erratum {
        id: "PA-06",
        title: "With mlock pins, the host still moves guest pages under the SPU",
        trigger: "`pin = mlock` and a THP collapse (khugepaged, MADV_COLLAPSE), compaction or a KSM scan of guest RAM; file writeback (msync) of a file-backed memslot write-protects the pages too.",
        guest_visible: "The SPU takes a stage 2 fault on memory pin-all believes pinned: the guest receives it (EC=0x25) and Linux stops the perf session.",
        host_visible: "mlock keeps a page resident, not mapped: on the real kernel MADV_COLLAPSE of a 4 MiB mlocked buffer zapped 1024 of 1024 stage 2 mappings (`spe-policy stage2-check`), while a long-term pin made the collapse fail (EAGAIN) and kept them all; msync writeback of an mlocked file-backed buffer write-protected all 1024 pages, and so did a KSM scan of an mlocked buffer (1024 faults on the next pass each).",
        mitigation: "Pin with a long-term pin (`pin = long-term`: io_uring registered buffers, VFIO, pin_user_pages with FOLL_LONGTERM) over anonymous, shmem or guest_memfd memory (the kernel refuses a long-term pin of a regular file mapping with EFAULT, measured), or keep THP collapse off guest RAM (MADV_NOHUGEPAGE).",
        guest_told: GuestTold::NoticeBit(bits::FATAL_FAULT),
        scenario: "thp-collapse-mlock",
    },
    Erratum {
        id: "PA-07",
        title: "A KSM scan unmaps pinned pages it cannot merge",
        trigger: "KSM running on the host over guest RAM the VMM marked mergeable (MADV_MERGEABLE, PR_SET_MEMORY_MERGE; QEMU's mem-merge is on by default), whatever the pin kind.",
        guest_visible: "The SPU takes a stage 2 fault on memory pin-all pinned: the guest receives it (EC=0x25) and Linux stops the perf session.",
        host_visible: "KSM write-protects each candidate page under an MMU-notifier invalidation before it checks the page's references; a pinned page fails the check and is not merged, but its stage 2 mapping is gone: on the real kernel a KSM scan of a 4 MiB long-term pinned buffer merged none of it and zapped 1023 of 1024 mappings (`spe-policy stage2-check --ksm`). The pin keeps the memory, so the page comes back with a cheap fault.",
        mitigation: "Required of the VMM (the guest notice assumes it): keep what is pinned out of KSM (MADV_UNMERGEABLE over it, or QEMU `-machine mem-merge=off`), or keep KSM off on hosts that run SPE guests; pin-all gains nothing from KSM anyway (PA-01).",
        guest_told: GuestTold::NoticeBit(bits::FATAL_FAULT),
        scenario: "ksm-pinned-mergeable",
    },
];

/// pin-all's profile.
pub const PROFILE: Profile = Profile {
    keeps: &[Property::Fast, Property::Reliable],
    gives_up: &[Property::Cheap],
    why: "Stage 2 never faults, so the profiling path costs nothing and loses nothing, but all guest RAM is pinned.",
};

#[derive(Debug)]
struct State {
    /// The VM's memslots, by slot number.
    memslots: BTreeMap<u32, Memslot>,
    /// The memslots pinned at the host, each with one pin of its whole range: a slot is pinned
    /// and unpinned as one, never merged with a neighbour (a removal releases exactly its slot).
    pinned_slots: BTreeMap<u32, Memslot>,
    /// Guest RAM is pinned (every memslot, and every slot added later).
    pinned: bool,
    enabled: BTreeSet<VcpuId>,
    /// Memslot adds with a slot number already known: ignored (KVM would refuse them too).
    duplicate_adds: u64,
    stats: StrategyStats,
}

/// The pin-all strategy.
#[derive(Debug)]
pub struct PinAll {
    config: PinAllConfig,
    state: Mutex<State>,
}

impl PinAll {
    /// A pin-all strategy with `config`.
    pub fn new(config: PinAllConfig) -> Self {
        PinAll {
            config,
            state: Mutex::new(State {
                memslots: BTreeMap::new(),
                pinned_slots: BTreeMap::new(),
                pinned: false,
                enabled: BTreeSet::new(),
                duplicate_adds: 0,
                stats: StrategyStats::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> PinAllConfig {
        self.config
    }

    /// The state a migration or snapshot carries: the memslots, whether guest RAM is pinned,
    /// and which vCPUs have their buffer enabled.
    pub fn save(&self) -> PinAllState {
        let st = self.state.lock();
        PinAllState {
            version: STATE_VERSION,
            memslots: st
                .memslots
                .values()
                .map(|m| SavedMemslot::from(*m))
                .collect(),
            pinned: st.pinned,
            enabled: st.enabled.iter().map(|v| v.0).collect(),
        }
    }

    /// pin-all on a destination host from `state`: guest RAM is pinned again before any vCPU
    /// runs when it was pinned on the source (a refused pin is the host's error, as at VM
    /// start).
    pub fn restore<H: HostBacking + ?Sized>(
        config: PinAllConfig,
        state: &PinAllState,
        host: &H,
    ) -> Result<Self, PolicyError> {
        let s = PinAll::new(config);
        {
            let mut st = s.state.lock();
            for m in &state.memslots {
                let slot = Memslot::from(*m);
                st.memslots.insert(slot.slot, slot);
            }
            st.enabled = state.enabled.iter().map(|v| VcpuId(*v)).collect();
            if state.pinned {
                st.pin_all(host)
                    .map_err(err("pinning guest RAM on the migration destination"))?;
            }
        }
        Ok(s)
    }

    /// Memslot adds ignored because their slot number was already known.
    pub fn duplicate_memslot_adds(&self) -> u64 {
        self.state.lock().duplicate_adds
    }
}

fn err(action: &'static str) -> impl FnOnce(HostError) -> PolicyError {
    PolicyError::during(NAME, action)
}

impl State {
    fn sync_stats(&mut self) {
        let bytes: u64 = self.pinned_slots.values().map(|s| s.range.len).sum();
        self.stats.pinned_bytes = bytes;
        self.stats.peak_pinned_bytes = self.stats.peak_pinned_bytes.max(bytes);
    }

    /// Pins one memslot's whole range (one host call).
    fn pin_slot<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        slot: Memslot,
    ) -> Result<(), HostError> {
        if self.pinned_slots.contains_key(&slot.slot) {
            return Ok(());
        }
        host.pin(slot.range)?;
        self.stats.pin_ops += 1;
        self.pinned_slots.insert(slot.slot, slot);
        self.sync_stats();
        Ok(())
    }

    /// Unpins one memslot, if pinned.
    fn unpin_slot<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        slot: u32,
    ) -> Result<(), HostError> {
        let Some(s) = self.pinned_slots.remove(&slot) else {
            return Ok(());
        };
        self.stats.unpin_ops += 1;
        let r = host.unpin(s.range);
        self.sync_stats();
        r
    }

    /// Unpins every pinned memslot, each on its own; carries on past a failure and returns the
    /// first error (nothing is left recorded as pinned).
    fn unpin_all<H: HostBacking + ?Sized>(&mut self, host: &H) -> Result<(), HostError> {
        let slots: Vec<u32> = self.pinned_slots.keys().copied().collect();
        let mut first = None;
        for s in slots {
            if let Err(e) = self.unpin_slot(host, s) {
                first.get_or_insert(e);
            }
        }
        self.pinned = false;
        first.map_or(Ok(()), Err)
    }

    /// Pins every memslot; on failure unpins what it pinned.
    fn pin_all<H: HostBacking + ?Sized>(&mut self, host: &H) -> Result<(), HostError> {
        if self.pinned {
            return Ok(());
        }
        let slots: Vec<Memslot> = self.memslots.values().copied().collect();
        for slot in slots {
            if let Err(e) = self.pin_slot(host, slot) {
                let _ = self.unpin_all(host);
                return Err(e);
            }
        }
        self.pinned = true;
        Ok(())
    }
}

impl BackingStrategy for PinAll {
    fn name(&self) -> &'static str {
        NAME
    }

    fn id(&self) -> StrategyId {
        StrategyId::PinAll
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn errata(&self) -> &'static [Erratum] {
        &ERRATA
    }

    fn guest_notice(&self) -> spe_policy::guest_notice::GuestNotice {
        // PA-06 is the mlock pin's: a long-term pin keeps stage 2. PA-07 needs pinned RAM left
        // mergeable, which its mitigation asks the VMM never to do.
        let applies = |e: &&Erratum| {
            e.id != "PA-07" && (e.id != "PA-06" || self.config.pin == PinKind::Mlock)
        };
        notice_for(
            self.id(),
            self.errata().iter().filter(applies),
            self.buffer_cap_bytes(),
        )
    }

    fn stats(&self) -> StrategyStats {
        self.state.lock().stats
    }

    fn on_event<G, H>(
        &self,
        event: &Event<'_>,
        _guest: &G,
        host: &H,
    ) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let mut st = self.state.lock();
        let outcome = match *event {
            Event::VmStart { memslots } => {
                for m in memslots {
                    if st.memslots.insert(m.slot, *m).is_some() {
                        st.duplicate_adds += 1;
                    }
                }
                if self.config.pin_at == PinAt::VmStart {
                    st.pin_all(host)
                        .map_err(err("pinning guest RAM at VM start"))?;
                }
                Outcome::Resume
            }
            Event::MemslotAdded(slot) => {
                if let std::collections::btree_map::Entry::Vacant(e) = st.memslots.entry(slot.slot)
                {
                    e.insert(slot);
                    if st.pinned {
                        st.pin_slot(host, slot)
                            .map_err(err("pinning a hot-plugged memslot"))?;
                    }
                } else {
                    // A second add of a known slot: ignored and counted, never a second pin.
                    st.duplicate_adds += 1;
                }
                Outcome::Resume
            }
            Event::MemslotRemoved(slot) => {
                if st.pinned && !st.enabled.is_empty() {
                    st.stats.refused += 1;
                    Outcome::Refuse(Refusal::HotUnplugBlocked)
                } else {
                    st.memslots.remove(&slot.slot);
                    st.unpin_slot(host, slot.slot)
                        .map_err(err("unpinning a removed memslot"))?;
                    Outcome::Resume
                }
            }
            Event::BufferWrite { vcpu, regs, .. } => {
                if regs.writes_memory() {
                    st.enabled.insert(vcpu);
                    if !st.pinned && st.pin_all(host).is_err() {
                        // PA-05: the memory cannot be pinned; SPE cannot be backed.
                        st.enabled.remove(&vcpu);
                        st.stats.refused += 1;
                        return Ok(Outcome::DisableSpe(DisableReason::Unbackable));
                    }
                } else {
                    st.enabled.remove(&vcpu);
                }
                Outcome::Resume
            }
            Event::BufferRead { .. } => Outcome::Resume,
            Event::BufferManagement { regs, .. } => {
                // Nothing of ours to repair: stage 2 is pinned. Whatever happened is the
                // guest's to handle (buffer full; or a fault on memory outside RAM).
                let ev = BufferEvent::decode(regs.pmbsr);
                if let BufferEventKind::Fault { .. } = ev.kind {
                    st.stats.stage2_faults_buffer += 1;
                }
                Outcome::Inject {
                    pmbsr: regs.pmbsr,
                    pmbptr: regs.pmbptr.address(),
                }
            }
            Event::HostInvalidation { .. } | Event::BalloonInflate(_) => {
                if st.pinned {
                    st.stats.refused += 1;
                    Outcome::Refuse(Refusal::Pinned)
                } else {
                    Outcome::Resume
                }
            }
            Event::MigrationStart(mode) => match (st.pinned, mode, self.config.migration) {
                (false, _, _) | (true, MigrationMode::StopAndCopy, _) => Outcome::Resume,
                (true, _, PinAllMigration::Refuse) => {
                    st.stats.refused += 1;
                    Outcome::Refuse(Refusal::MigrationRefused)
                }
                (true, _, PinAllMigration::StopAndCopy) => {
                    st.stats.refused += 1;
                    Outcome::Refuse(Refusal::UseStopAndCopy)
                }
            },
            Event::DirtyLogStart
            | Event::DirtyLogClear(_)
            | Event::DirtyLogStop
            | Event::VcpuStop(_)
            | Event::PostCopySwitchover
            | Event::GuestStage1Remap { .. } => Outcome::Resume,
            Event::VmStop => {
                st.enabled.clear();
                st.memslots.clear();
                // Every slot is unpinned even if one unpin fails; the failure is reported.
                st.unpin_all(host)
                    .map_err(err("unpinning guest RAM at VM stop"))?;
                Outcome::Resume
            }
        };
        Ok(outcome)
    }
}
