//! # pin-buffer: pin the buffer and the stage 1 tables that translate it
//!
//! On a buffer enable or retarget (trapped PMB* writes) the strategy walks the guest's stage 1
//! over `PMBPTR..LIMIT` and pins every buffer page **and every table page the walk read**: a
//! stage 2 fault on a table page during the SPU's own walk is reported exactly like one on the
//! buffer (spec sheet §3.9), so both must stay mapped. Cheap and reliable, not fast: every
//! enable costs a walk and pins. KVM SPE RFC v6 (2025) takes this approach.
//!
//! * Pins are cached per vCPU across disable/enable (Linux re-programs the buffer at every AUX
//!   start), keyed by VA page; a re-enable whose window is cached costs a lookup, no walk.
//! * A per-vCPU cap bounds what a guest can make the host pin; a window over the cap is refused
//!   with PMBSR BSC "size too large", and PMBIDR_EL1.MaxBuffSize reports the cap.
//! * Pins are shared between vCPUs with reference counts ([`PinLedger`]).
//! * A stage 2 fault the strategy did not expect (the guest remapped its tables after the
//!   enable) is repaired: the new pages are pinned and the buffer recovered.
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parking_lot::Mutex;
use spe_policy::arch::walk::{RangeLimits, Stage1Regs, WalkError, WalkOptions, Walker};
use spe_policy::arch::{BufferEvent, BufferEventKind, Pmbidr, Stage};
use spe_policy::buffer_recovery::{RecoverySettings, recover_buffer};
use spe_policy::config::{PinKind, defaults};
use spe_policy::errata::{Erratum, GuestTold, Profile, Property};
use spe_policy::event::{BufferReg, BufferRegs, Event, Outcome, Refusal};
use spe_policy::guest_notice::{StrategyId, bits};
use spe_policy::pin_ledger::PinLedger;
use spe_policy::saved::{STATE_VERSION, SavedStage1};
use spe_policy::strategy::notice_for;
use spe_policy::{
    BackingStrategy, Granule, GuestMemoryRead, Gva, HostBacking, HostError, Ipa, IpaRange,
    PolicyError, StrategyStats, VcpuId,
};

/// Configuration of pin-buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PinBufferConfig {
    /// Most bytes one vCPU may have pinned (buffer pages plus table pages).
    pub cap_bytes_per_vcpu: u64,
    /// Keep pins across a disable so the next enable of the same buffer needs no walk.
    pub pin_cache: bool,
    /// Recovery after an unexpected stage 2 fault with DL=1.
    pub recovery: RecoverySettings,
    /// The implementation the walks model (PAMax, features), as the SPU's walk does.
    pub walk: WalkOptions,
    /// What the host's pins are: with `mlock`, PB-09 applies.
    pub pin: PinKind,
}

impl Default for PinBufferConfig {
    fn default() -> Self {
        PinBufferConfig {
            cap_bytes_per_vcpu: defaults::PIN_BUFFER_CAP,
            pin_cache: defaults::PIN_CACHE,
            recovery: RecoverySettings::default(),
            // Recursive mappings are legal and the SPU follows them (bounded: five reads).
            walk: WalkOptions {
                allow_recursive_tables: true,
                ..WalkOptions::default()
            },
            pin: PinKind::LongTerm,
        }
    }
}

const NAME: &str = "pin-buffer";

/// The errata of pin-buffer.
pub static ERRATA: [Erratum; 10] = [
    Erratum {
        id: "PB-01",
        title: "Buffers larger than the per-vCPU cap are refused",
        trigger: "A buffer enable whose window (plus the table pages translating it) exceeds the cap, `[spe.pin_buffer] cap_per_vcpu`.",
        guest_visible: "A buffer management event with EC=0, BSC=0b000100 (size too large); Linux treats it as fatal and stops the perf session. PMBIDR_EL1.MaxBuffSize reports the cap.",
        host_visible: "Nothing is pinned for the window; the refusal is counted.",
        mitigation: "Size the cap for the guests' perf AUX buffers (perf's default is 4 MiB per CPU for root); guests read the cap from PMBIDR_EL1 or the notice.",
        guest_told: GuestTold::NoticeBit(bits::BUFFER_CAP),
        scenario: "small-cap",
    },
    Erratum {
        id: "PB-02",
        title: "Every buffer enable costs a stage 1 walk and pins",
        trigger: "A buffer enable or retarget to pages not in the vCPU's pin cache (Linux re-programs the buffer at every AUX start).",
        guest_visible: "The trapped PMBLIMITR_EL1 write takes as long as the walk and the pins: a delay before the first record.",
        host_visible: "Walk and pin cost on the profiling path; cached re-enables cost a lookup.",
        mitigation: "Keep pin_cache on; the cache makes steady-state re-enables of the same buffer free.",
        guest_told: GuestTold::No,
        scenario: "steady",
    },
    Erratum {
        id: "PB-03",
        title: "A guest remap of the buffer after enable can still fault",
        trigger: "The guest changes the stage 1 mapping of an enabled buffer (or its tables) without the host seeing the TLB invalidation.",
        guest_visible: "The SPU stops until the host takes the interrupt, then the vCPU stalls while the host repairs the fault; with DL=1, PMBPTR is rewound and the records after the last provable one are lost (PERF_AUX_FLAG_TRUNCATED is not set: the data just ends earlier).",
        host_visible: "An unexpected stage 2 fault, repaired by walking and pinning the new pages; counted.",
        mitigation: "Trap TLB maintenance and deliver GuestStage1Remap events, so pins follow remaps before the SPU writes.",
        guest_told: GuestTold::NoticeBit(bits::STAGE1_REMAP),
        scenario: "guest-remap",
    },
    Erratum {
        id: "PB-04",
        title: "Pinned table and cached buffer pages outlive their use",
        trigger: "A buffer disable with pin_cache on, or table pages shared with memory the guest no longer uses for the buffer.",
        guest_visible: "Nothing: profiling is unaffected.",
        host_visible: "Up to the cap per vCPU stays pinned while idle; an invalidation of an idle cached page unpins it and goes ahead.",
        mitigation: "Turn pin_cache off to unpin at every disable (at the price of PB-02 on every enable).",
        guest_told: GuestTold::No,
        scenario: "idle-pins",
    },
    Erratum {
        id: "PB-05",
        title: "Pre-copy resends the buffer at stop-and-copy",
        trigger: "Pre-copy migration while a buffer is pinned.",
        guest_visible: "Nothing: profiling is unaffected.",
        host_visible: "Buffer and table pages are exempt from write protection and reported dirty in every round until the vCPU stops, then sent in the final copy: downtime grows with the buffer size.",
        mitigation: "Keep guest buffers small on migration-heavy hosts.",
        guest_told: GuestTold::No,
        scenario: "pre-copy",
    },
    Erratum {
        id: "PB-06",
        title: "Post-copy must move the buffer before switch-over",
        trigger: "Post-copy migration while a buffer is pinned.",
        guest_visible: "Nothing: profiling is unaffected.",
        host_visible: "Pinned buffer and table pages are sent before switch-over, delaying it by their transfer time.",
        mitigation: "Keep guest buffers small on migration-heavy hosts.",
        guest_told: GuestTold::No,
        scenario: "post-copy",
    },
    Erratum {
        id: "PB-07",
        title: "A misprogrammed buffer is not pinned and can fault fatally",
        trigger: "LIMIT at or below PMBPTR, tables outside guest RAM or in a loop, or a buffer page outside every memslot.",
        guest_visible: "The SPU may take a stage 2 fault the host cannot repair: the guest receives it (EC=0x25) and Linux stops the session.",
        host_visible: "The enable pins nothing; the walk error is counted, never a host panic.",
        mitigation: "None needed for correct guests; this is guest misbehaviour.",
        guest_told: GuestTold::NoticeBit(bits::FATAL_FAULT),
        scenario: "hostile-guest",
    },
    Erratum {
        id: "PB-08",
        title: "Pins count against the host's locked-memory limit",
        trigger: "A pin the host refuses (RLIMIT_MEMLOCK, accounting).",
        guest_visible: "The enable is refused as in PB-01.",
        host_visible: "A typed error names the limit and the bytes requested; nothing stays half pinned.",
        mitigation: "Raise RLIMIT_MEMLOCK to vCPUs x cap.",
        guest_told: GuestTold::NoticeBit(bits::BUFFER_CAP),
        scenario: "lock-limit",
    },
    Erratum {
        id: "PB-09",
        title: "With mlock pins, the host still moves buffer and table pages under the SPU",
        trigger: "`pin = mlock` and a THP collapse (khugepaged, MADV_COLLAPSE), compaction or a KSM scan of the buffer's pages or its stage 1 tables; file writeback (msync) of a file-backed memslot write-protects them too.",
        guest_visible: "The SPU stops at a stage 2 fault on a pinned page; the host maps it again and resumes after a DL=1 recovery (PMBPTR may be rewound, records after it lost).",
        host_visible: "mlock keeps a page resident, not mapped: on the real kernel MADV_COLLAPSE of a 4 MiB mlocked buffer zapped 1024 of 1024 stage 2 mappings and the next pass took 2 faults (one per new 2 MiB mapping; `spe-policy stage2-check`); a long-term pin made the collapse fail (EAGAIN) and took no fault; msync writeback of an mlocked file-backed buffer write-protected all 1024 pages, and so did a KSM scan of an mlocked buffer (1024 faults on the next pass each).",
        mitigation: "Pin with a long-term pin (`pin = long-term`: io_uring registered buffers, VFIO, pin_user_pages with FOLL_LONGTERM) over anonymous, shmem or guest_memfd memory (the kernel refuses a long-term pin of a regular file mapping with EFAULT, measured), or keep THP collapse off guest RAM (MADV_NOHUGEPAGE).",
        guest_told: GuestTold::NoticeBit(bits::REWIND),
        scenario: "thp-collapse-mlock",
    },
    Erratum {
        id: "PB-10",
        title: "A KSM scan unmaps pinned buffer and table pages it cannot merge",
        trigger: "KSM running on the host over guest RAM the VMM marked mergeable (MADV_MERGEABLE, PR_SET_MEMORY_MERGE; QEMU's mem-merge is on by default), whatever the pin kind.",
        guest_visible: "The SPU stops at a stage 2 fault on a pinned page; the host maps it again and resumes after a DL=1 recovery (PMBPTR may be rewound, records after it lost).",
        host_visible: "KSM write-protects each candidate page under an MMU-notifier invalidation before it checks the page's references; a pinned page fails the check and is not merged, but its stage 2 mapping is gone: on the real kernel a KSM scan of a 4 MiB long-term pinned buffer merged none of it and zapped 1023 of 1024 mappings (`spe-policy stage2-check --ksm`). The pin keeps the memory, so the repair is a cheap fault.",
        mitigation: "Required of the VMM (the guest notice assumes it): keep what is pinned out of KSM (MADV_UNMERGEABLE over it, or QEMU `-machine mem-merge=off`), or keep KSM off on hosts that run SPE guests.",
        guest_told: GuestTold::NoticeBit(bits::REWIND),
        scenario: "ksm-pinned-mergeable",
    },
];

/// pin-buffer's profile.
pub const PROFILE: Profile = Profile {
    keeps: &[Property::Cheap, Property::Reliable],
    gives_up: &[Property::Fast],
    why: "Only the buffer and its tables are pinned, so stage 2 never faults for a correct guest, but every new buffer costs a walk and pins on the enable path.",
};

/// The host pages a guest page of `unit` bytes at `ipa` lies on: several when the guest
/// granule is larger than the host page (16 or 64 KiB on 4 KiB), one (shared with its
/// neighbours) when it is smaller.
fn host_pages(ipa: Ipa, unit: u64, host: Granule) -> impl Iterator<Item = Ipa> {
    IpaRange::new(Ipa(ipa.0 & !(unit - 1)), unit).pages(host)
}

/// The host pages behind `pages` (buffer pages) and `tables` (the stage 1 table pages that
/// translate them): what pinning them takes.
fn host_pages_with_tables<'a>(
    pages: &'a [(Gva, Ipa)],
    tables: &'a [Ipa],
    unit: u64,
    host: Granule,
) -> impl Iterator<Item = Ipa> + 'a {
    pages
        .iter()
        .map(|(_, i)| *i)
        .chain(tables.iter().copied())
        .flat_map(move |p| host_pages(p, unit, host))
}

/// One vCPU's pins and buffer.
#[derive(Debug)]
struct VcpuPins {
    stage1: Option<Stage1Regs>,
    /// The guest's page size for the buffer (its stage 1 granule): `pages` is keyed by it.
    unit: u64,
    /// Buffer pages held: guest VA page -> guest IPA page (each holds the host pages it lies
    /// on).
    pages: BTreeMap<Gva, Ipa>,
    /// How many of `pages` lie on each host page: an invalidation asks "is this host page
    /// held" in constant time, not by scanning every vCPU's pages.
    by_ipa: HashMap<Ipa, u32>,
    /// Host pages of the stage 1 tables held (a guest table larger than a host page is held
    /// whole: the descriptors the SPU reads lie anywhere in it).
    tables: BTreeSet<Ipa>,
    /// The VA ranges `pages` covers, `start -> end`, coalesced: a cached re-enable asks "is
    /// this window inside one range" in O(log n), whatever the buffer's size (Linux re-enables
    /// at every context switch and AUX start).
    ranges: BTreeMap<u64, u64>,
    active: bool,
    /// PMBPTR at the last enable or resume: a record boundary.
    last_safe: Option<Gva>,
    /// The window of the last enable, `PMBPTR..LIMIT`, while active.
    window: Option<(Gva, u64)>,
}

impl Default for VcpuPins {
    fn default() -> Self {
        VcpuPins {
            stage1: None,
            unit: 4096,
            pages: BTreeMap::new(),
            by_ipa: HashMap::new(),
            tables: BTreeSet::new(),
            ranges: BTreeMap::new(),
            active: false,
            last_safe: None,
            window: None,
        }
    }
}

impl VcpuPins {
    /// Bytes of host pages held (distinct pages).
    fn held_bytes(&self, host: Granule) -> u64 {
        (self.by_ipa.len() + self.tables.len()) as u64 * host.size()
    }

    /// Records `va -> ipa` (guest pages); returns the guest page it replaces.
    fn insert_page(&mut self, va: Gva, ipa: Ipa, host: Granule) -> Option<Ipa> {
        for p in host_pages(ipa, self.unit, host) {
            *self.by_ipa.entry(p).or_insert(0) += 1;
        }
        let old = self.pages.insert(va, ipa);
        if let Some(o) = old {
            self.forget_page(o, host);
        }
        old
    }

    fn forget_page(&mut self, ipa: Ipa, host: Granule) {
        for p in host_pages(ipa, self.unit, host) {
            if let Some(n) = self.by_ipa.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    self.by_ipa.remove(&p);
                }
            }
        }
    }

    /// Recomputes `ranges` from `pages` (after the pages changed: at a walk, not a re-enable).
    fn rebuild_ranges(&mut self) {
        self.ranges.clear();
        let mut run: Option<(u64, u64)> = None;
        for va in self.pages.keys() {
            run = match run {
                Some((s, e)) if e == va.0 => Some((s, e + self.unit)),
                Some((s, e)) => {
                    self.ranges.insert(s, e);
                    Some((va.0, va.0 + self.unit))
                }
                None => Some((va.0, va.0.saturating_add(self.unit))),
            };
        }
        if let Some((s, e)) = run {
            self.ranges.insert(s, e);
        }
    }

    /// Whether every page of `first..end` is cached.
    fn covers(&self, first: u64, end: u64) -> bool {
        self.ranges
            .range(..=first)
            .next_back()
            .is_some_and(|(_, e)| *e >= end)
    }

    /// The host pages the buffer pages hold, one entry per reference.
    fn page_refs(&self, host: Granule) -> Vec<Ipa> {
        self.pages
            .values()
            .flat_map(|i| host_pages(*i, self.unit, host))
            .collect()
    }

    /// Whether the vCPU holds `ipa` as a buffer or table page.
    fn holds(&self, ipa: Ipa) -> bool {
        self.by_ipa.contains_key(&ipa) || self.tables.contains(&ipa)
    }
}

#[derive(Debug)]
struct State {
    ledger: Option<PinLedger>,
    vcpus: HashMap<VcpuId, VcpuPins>,
    exempt: BTreeSet<Ipa>,
    dirty_logging: bool,
    stats: StrategyStats,
}

/// The pin-buffer strategy.
#[derive(Debug)]
pub struct PinBuffer {
    config: PinBufferConfig,
    state: Mutex<State>,
}

fn err(action: &'static str) -> impl FnOnce(HostError) -> PolicyError {
    PolicyError::during(NAME, action)
}

/// pin-buffer's saved state ([`PinBuffer::save`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinBufferState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Each vCPU the strategy has seen, by number.
    pub vcpus: Vec<SavedVcpuPins>,
}

/// One vCPU of [`PinBufferState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedVcpuPins {
    /// The vCPU.
    pub vcpu: u32,
    /// Its stage 1 registers at the last enable.
    pub stage1: Option<SavedStage1>,
    /// The enabled buffer's window, `(PMBPTR, bytes to LIMIT)`; `None` while disabled.
    pub window: Option<(u64, u64)>,
    /// PMBPTR at the last enable or resume (a record boundary).
    pub last_safe: Option<u64>,
}

/// The PMBIDR_EL1.MaxBuffSize encoding of the largest size not above `cap` (spec sheet §1.5:
/// `E == 0 ? M << 12 : (1:M) << (E + 11)`, M 9 bits, E 5 bits).
pub fn max_buff_size_field(cap: u64) -> u16 {
    // E = 0 covers up to 511 pages; each larger E is a 9-bit mantissa with an implicit top bit.
    let mut best = (cap >> 12).clamp(1, 511) as u16;
    for e in 1u32..32 {
        let shift = e + 11;
        let Some(units) = cap.checked_shr(shift) else {
            break;
        };
        if units < 512 {
            break;
        }
        let m = (units - 512).min(511);
        let field = ((e << 9) as u16) | m as u16;
        if field_bytes(field) > field_bytes(best) && field_bytes(field) <= cap {
            best = field;
        }
    }
    best
}

/// The largest buffer that always fits under `cap` pinned bytes, whatever its pages: a guest
/// page of `guest` bytes pins `max(guest, host)` bytes of host pages, and its stage 1 tables
/// (a level 3 table per `guest * guest / 8` bytes of buffer, one more where it is not aligned,
/// and up to four above) pin as many pages again. PMBIDR_EL1.MaxBuffSize reports the largest
/// encodable size not above it, so a buffer of exactly MaxBuffSize is never refused.
pub fn max_buffer_bytes(cap: u64, guest: u64, host: u64) -> u64 {
    let guest = guest.max(1);
    let per_page = guest.max(host);
    let table_reach = guest.saturating_mul(guest / 8).max(1);
    let fixed = 5 * per_page;
    let Some(room) = cap.checked_sub(fixed) else {
        return 0;
    };
    // room >= B * per_page / guest + B / table_reach * per_page, so
    // B <= room / (per_page / guest + per_page / table_reach), in integers:
    let scale = 1u128 << 20;
    let cost = u128::from(per_page) * scale / u128::from(guest)
        + u128::from(per_page) * scale / u128::from(table_reach);
    u64::try_from(u128::from(room) * scale / cost.max(1)).unwrap_or(u64::MAX)
}

fn field_bytes(field: u16) -> u64 {
    Pmbidr::new()
        .with_max_buff_size(field)
        .max_buffer_bytes()
        .unwrap_or(0)
}

impl PinBuffer {
    /// A pin-buffer strategy with `config`.
    pub fn new(config: PinBufferConfig) -> Self {
        PinBuffer {
            config,
            state: Mutex::new(State {
                ledger: None,
                vcpus: HashMap::new(),
                exempt: BTreeSet::new(),
                dirty_logging: false,
                stats: StrategyStats::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> PinBufferConfig {
        self.config
    }

    /// The state a migration or snapshot carries: for each vCPU its stage 1 and, while its
    /// buffer is enabled, the window and the last record boundary. The pin cache of disabled
    /// buffers is not carried: the destination walks and pins such a buffer at its next enable
    /// (PB-02 once).
    pub fn save(&self) -> PinBufferState {
        let st = self.state.lock();
        let mut vcpus: Vec<SavedVcpuPins> = st
            .vcpus
            .iter()
            .map(|(id, v)| SavedVcpuPins {
                vcpu: id.0,
                stage1: v.stage1.map(SavedStage1::from),
                window: v.window.filter(|_| v.active).map(|(s, l)| (s.0, l)),
                last_safe: v.last_safe.map(|g| g.0),
            })
            .collect();
        vcpus.sort_by_key(|v| v.vcpu);
        PinBufferState {
            version: STATE_VERSION,
            vcpus,
        }
    }

    /// pin-buffer on a destination host from `state`: every enabled buffer is walked through
    /// the destination's guest memory and pinned, with its tables, before any vCPU runs.
    pub fn restore<G, H>(
        config: PinBufferConfig,
        state: &PinBufferState,
        guest: &G,
        host: &H,
    ) -> Result<Self, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let s = PinBuffer::new(config);
        {
            let mut st = s.state.lock();
            for saved in &state.vcpus {
                let vcpu = VcpuId(saved.vcpu);
                let stage1 = saved.stage1.map(Stage1Regs::from);
                if let (Some(stage1), Some((start, len))) = (stage1, saved.window) {
                    match st.pin_window(&s.config, vcpu, stage1, (Gva(start), len), guest, host) {
                        Ok(EnableResult::Pinned | EnableResult::Cached) => {
                            let v = st.vcpus.entry(vcpu).or_default();
                            v.active = true;
                            v.window = Some((Gva(start), len));
                        }
                        // PB-07, as at the enable: a page the host cannot back is not pinned,
                        // and the SPU's fault on it reaches the guest.
                        Err(HostError::NotInMemslot(_) | HostError::Unavailable { .. }) => {}
                        Ok(EnableResult::OverCap) => {
                            return Err(err("re-pinning a buffer on the migration destination")(
                                HostError::Other(format!(
                                    "vCPU {}'s buffer ({len:#x} bytes) is over this config's cap; migrate to a host with the source's config",
                                    saved.vcpu
                                )),
                            ));
                        }
                        Err(e) => {
                            return Err(err("re-pinning a buffer on the migration destination")(e));
                        }
                    }
                }
                let v = st.vcpus.entry(vcpu).or_default();
                v.stage1 = stage1;
                v.last_safe = saved.last_safe.map(Gva);
            }
        }
        Ok(s)
    }

    /// Bytes `vcpu` holds pinned now (buffer and table pages).
    pub fn vcpu_pinned_bytes(&self, vcpu: VcpuId) -> u64 {
        let st = self.state.lock();
        let g = st.ledger.as_ref().map_or(Granule::K4, |l| l.granule());
        st.vcpus.get(&vcpu).map_or(0, |v| v.held_bytes(g))
    }
}

/// How an enable went.
enum EnableResult {
    /// The window's pages are pinned.
    Pinned,
    /// They were pinned already (the cache), and the vCPU's buffer is recorded as active.
    Cached,
    /// The window is over the cap.
    OverCap,
}

impl State {
    /// Every page (buffer and table) any vCPU holds, in IPA order.
    fn held_pages(&self) -> Vec<Ipa> {
        let held: BTreeSet<Ipa> = self
            .vcpus
            .values()
            .flat_map(|v| v.by_ipa.keys().chain(v.tables.iter()).copied())
            .collect();
        held.into_iter().collect()
    }

    /// Drops every vCPU's hold on the pages `gone` selects and unpins those no one holds now.
    fn release_where<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        gone: impl Fn(Ipa) -> bool,
    ) -> Result<(), HostError> {
        let mut release = Vec::new();
        let granule = host.granule();
        for v in self.vcpus.values_mut() {
            let mut dropped = Vec::new();
            let unit = v.unit;
            v.pages.retain(|_, ipa| {
                let hit = host_pages(*ipa, unit, granule).any(&gone);
                if hit {
                    dropped.push(*ipa);
                }
                !hit
            });
            let changed = !dropped.is_empty();
            for ipa in dropped {
                v.forget_page(ipa, granule);
                release.extend(host_pages(ipa, unit, granule));
            }
            if changed {
                v.rebuild_ranges();
            }
            v.tables.retain(|t| {
                let hit = gone(*t);
                if hit {
                    release.push(*t);
                }
                !hit
            });
        }
        self.ledger(host).release(host, &release)
    }

    fn ledger<H: HostBacking + ?Sized>(&mut self, host: &H) -> &mut PinLedger {
        self.ledger
            .get_or_insert_with(|| PinLedger::new(host.granule()))
    }

    fn sync_stats(&mut self) {
        if let Some(l) = &self.ledger {
            self.stats.record_pins(l);
        }
    }

    /// Drops every pin `vcpu` holds.
    fn release_vcpu<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        vcpu: VcpuId,
    ) -> Result<(), HostError> {
        let Some(v) = self.vcpus.get_mut(&vcpu) else {
            return Ok(());
        };
        let mut held = v.page_refs(host.granule());
        held.extend(v.tables.iter().copied());
        v.pages.clear();
        v.by_ipa.clear();
        v.tables.clear();
        v.ranges.clear();
        v.active = false;
        self.ledger(host).release(host, &held)
    }

    /// Pins `vcpu`'s window `start..start + len` (walking stage 1 unless cached).
    fn pin_window<G, H>(
        &mut self,
        cfg: &PinBufferConfig,
        vcpu: VcpuId,
        stage1: Stage1Regs,
        (start, len): (Gva, u64),
        guest: &G,
        host: &H,
    ) -> Result<EnableResult, HostError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let granule = host.granule();
        // The guest's page size for the buffer: the cache is keyed by it and the walk steps by
        // it, whatever the host's page size.
        let unit = if Stage1Regs::ttbr_index(start) == 1 {
            stage1.tcr.granule1()
        } else {
            stage1.tcr.granule0()
        }
        .size();
        let page = |va: u64| Gva(va & !(unit - 1));
        let first = page(start.0).0;
        let end = start.0.saturating_add(len);
        let window_pages = (end - first).div_ceil(unit);
        if end - start.0 > cfg.cap_bytes_per_vcpu {
            return Ok(EnableResult::OverCap);
        }
        // The path Linux takes at every context switch and AUX start: the same stage 1 and a
        // window inside the cached pages. One map lookup and one range lookup.
        let cover_end = first.saturating_add(window_pages.saturating_mul(unit));
        if let Some(v) = self.vcpus.get_mut(&vcpu) {
            if v.stage1 == Some(stage1) && v.unit == unit && v.covers(first, cover_end) {
                self.stats.cache_hits += 1;
                v.active = true;
                v.last_safe = Some(start);
                v.window = Some((start, len));
                return Ok(EnableResult::Cached);
            }
        }
        // A different stage 1 invalidates the cache.
        if self
            .vcpus
            .get(&vcpu)
            .is_some_and(|v| v.stage1 != Some(stage1))
        {
            self.release_vcpu(host, vcpu)?;
        }
        if self.vcpus.get(&vcpu).is_some_and(|v| v.unit != unit) {
            self.release_vcpu(host, vcpu)?;
        }
        let v = self.vcpus.entry(vcpu).or_default();
        v.stage1 = Some(stage1);
        v.unit = unit;
        let cached = v.covers(first, cover_end);
        if cached {
            self.stats.cache_hits += 1;
            return Ok(EnableResult::Pinned);
        }
        self.stats.walks += 1;
        let walker = Walker::with_options(stage1, cfg.walk, guest);
        let limits = RangeLimits {
            max_steps: window_pages + 1,
        };
        let walk = match walker.translate_range(start, len, limits) {
            // A stage 1 fault inside the window is data (`walk.fault`): the pages before it
            // are pinned and the SPU reports the stage 1 fault to the guest itself.
            Ok(w) => w,
            // PB-07: tables outside RAM or in a loop; nothing to pin, the SPU will fault if it
            // writes.
            Err(WalkError::TableUnreadable { .. } | WalkError::TableCycle { .. }) => {
                return Ok(EnableResult::Pinned);
            }
            Err(WalkError::RangeTooLarge { .. } | WalkError::Fault(_)) => {
                return Ok(EnableResult::OverCap);
            }
        };
        // The walk's pages, by guest VA page. A run maps VA to IPA contiguously and keeps the
        // offset within a guest page, so a guest page's IPA is the run's at its VA.
        let mut new_pages: Vec<(Gva, Ipa)> = Vec::new();
        for run in &walk.runs {
            let mut va = page(run.va.0).0;
            while va < run.va.0 + run.len {
                let ipa = Ipa(run.ipa.0.wrapping_add(va.wrapping_sub(run.va.0)) & !(unit - 1));
                new_pages.push((Gva(va), ipa));
                va += unit;
            }
        }
        // What pinning this window alone takes: the distinct host pages of its buffer pages
        // and of its table pages (what the cap bounds).
        let window_host: BTreeSet<Ipa> =
            host_pages_with_tables(&new_pages, &walk.tables_touched, unit, granule).collect();
        let v = self.vcpus.entry(vcpu).or_default();
        let fresh_pages: Vec<(Gva, Ipa)> = new_pages
            .iter()
            .filter(|(va, ipa)| v.pages.get(va) != Some(ipa))
            .copied()
            .collect();
        let fresh_host: BTreeSet<Ipa> =
            host_pages_with_tables(&fresh_pages, &walk.tables_touched, unit, granule)
                .filter(|p| !v.by_ipa.contains_key(p) && !v.tables.contains(p))
                .collect();
        let added = fresh_host.len() as u64 * granule.size();
        if v.held_bytes(granule) + added > cfg.cap_bytes_per_vcpu {
            // Evict the cache and start again from this window alone.
            self.release_vcpu(host, vcpu)?;
            if window_host.len() as u64 * granule.size() > cfg.cap_bytes_per_vcpu {
                return Ok(EnableResult::OverCap);
            }
            if let Some(v) = self.vcpus.get_mut(&vcpu) {
                v.unit = unit;
                v.stage1 = Some(stage1);
            }
            return self.acquire_for(host, vcpu, &new_pages, &walk.tables_touched);
        }
        self.acquire_for(host, vcpu, &fresh_pages, &walk.tables_touched)
    }

    /// Takes references for `vcpu` on `pages` (replacing stale VA->IPA entries) and `tables`.
    fn acquire_for<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        vcpu: VcpuId,
        pages: &[(Gva, Ipa)],
        tables: &[Ipa],
    ) -> Result<EnableResult, HostError> {
        let granule = host.granule();
        let v = self.vcpus.entry(vcpu).or_default();
        let unit = v.unit;
        let mut want: Vec<Ipa> = pages
            .iter()
            .flat_map(|(_, i)| host_pages(*i, unit, granule))
            .collect();
        // Table pages are guest-granule pages: every host page of each is held.
        let new_tables: Vec<Ipa> = tables
            .iter()
            .flat_map(|t| host_pages(*t, unit, granule))
            .filter(|t| !v.tables.contains(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        want.extend(new_tables.iter().copied());
        self.ledger(host).acquire(host, &want)?;
        let v = self.vcpus.entry(vcpu).or_default();
        let mut stale = Vec::new();
        for (va, ipa) in pages {
            if let Some(old) = v.insert_page(*va, *ipa, granule) {
                stale.extend(host_pages(old, unit, granule));
            }
        }
        if !pages.is_empty() {
            v.rebuild_ranges();
        }
        v.tables.extend(new_tables);
        if !stale.is_empty() {
            self.ledger(host).release(host, &stale)?;
        }
        if self.dirty_logging {
            let exempt: Vec<Ipa> = want
                .iter()
                .copied()
                .filter(|p| !self.exempt.contains(p))
                .collect();
            for p in exempt {
                host.set_dirty_log_exempt(IpaRange::page(p, granule), true)?;
                self.exempt.insert(p);
            }
        }
        Ok(EnableResult::Pinned)
    }

    /// Handles an invalidation or balloon request for `range`.
    fn invalidate<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        range: IpaRange,
    ) -> Result<Outcome, HostError> {
        let granule = host.granule();
        let Some(ledger) = self.ledger.as_ref() else {
            return Ok(Outcome::Resume);
        };
        let pages: Vec<Ipa> = range
            .pages(granule)
            .filter(|p| ledger.refs(*p) > 0)
            .collect();
        if pages.is_empty() {
            return Ok(Outcome::Resume);
        }
        // Pages held by an active buffer cannot go; idle cached ones are unpinned.
        let held_active = self
            .vcpus
            .values()
            .any(|v| v.active && pages.iter().any(|p| v.holds(*p)));
        if held_active {
            self.stats.refused += 1;
            return Ok(Outcome::Refuse(Refusal::Pinned));
        }
        self.release_where(host, |p| pages.contains(&p))?;
        Ok(Outcome::Resume)
    }
}

/// The PMBSR of a "size too large" refusal (EC=0, BSC=0b000100, S=1).
fn size_too_large() -> spe_policy::arch::Pmbsr {
    BufferEvent {
        kind: BufferEventKind::SizeTooLarge,
        service: true,
        data_loss: false,
        collision: false,
        external_abort: false,
    }
    .encode()
}

impl BackingStrategy for PinBuffer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn id(&self) -> StrategyId {
        StrategyId::PinBuffer
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn errata(&self) -> &'static [Erratum] {
        &ERRATA
    }

    fn guest_notice(&self) -> spe_policy::guest_notice::GuestNotice {
        // PB-09 is the mlock pin's: a long-term pin keeps stage 2. PB-10 needs pinned RAM left
        // mergeable, which its mitigation asks the VMM never to do.
        let applies = |e: &&Erratum| {
            e.id != "PB-10" && (e.id != "PB-09" || self.config.pin == PinKind::Mlock)
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

    fn buffer_cap_bytes(&self) -> Option<u64> {
        Some(self.config.cap_bytes_per_vcpu)
    }

    fn on_event<G, H>(&self, event: &Event<'_>, guest: &G, host: &H) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let cfg = &self.config;
        let mut st = self.state.lock();
        let outcome = match *event {
            Event::VmStart { .. } | Event::MemslotAdded(_) | Event::MigrationStart(_) => {
                Outcome::Resume
            }
            Event::MemslotRemoved(slot) => {
                // Pins inside removed memory must go first.
                st.release_where(host, |p| slot.range.contains(p))
                    .map_err(err("unpinning a removed memslot"))?;
                Outcome::Resume
            }
            Event::BufferWrite {
                vcpu, regs, stage1, ..
            } => self.on_buffer_write(&mut st, vcpu, regs, stage1, guest, host)?,
            Event::BufferRead {
                vcpu, reg, pmbidr, ..
            } => match reg {
                BufferReg::Pmbidr => {
                    // The guest's page size: its buffer's, once it enabled one; 4 KiB before
                    // (Linux reads PMBIDR_EL1 at probe, with 4 KiB pages by default).
                    let guest = st.vcpus.get(&vcpu).map_or(4096, |v| v.unit);
                    let max =
                        max_buffer_bytes(cfg.cap_bytes_per_vcpu, guest, host.granule().size());
                    Outcome::Emulated(
                        pmbidr
                            .with_max_buff_size(max_buff_size_field(max))
                            .into_bits(),
                    )
                }
                _ => Outcome::Resume,
            },
            Event::BufferManagement { vcpu, regs, stage1 } => {
                self.on_buffer_management(&mut st, vcpu, regs, stage1, guest, host)?
            }
            Event::HostInvalidation { range, .. } | Event::BalloonInflate(range) => st
                .invalidate(host, range)
                .map_err(err("unpinning idle cached pages"))?,
            Event::DirtyLogStart | Event::DirtyLogClear(_) => {
                // PB-05: keep pinned pages writable and dirty until the vCPUs stop.
                st.dirty_logging = true;
                let granule = host.granule();
                for p in st.held_pages() {
                    if st.exempt.insert(p) {
                        host.set_dirty_log_exempt(IpaRange::page(p, granule), true)
                            .map_err(err("exempting buffer pages from dirty logging"))?;
                    }
                }
                Outcome::Resume
            }
            Event::VcpuStop(_) | Event::DirtyLogStop => {
                // The final copy (or the end of logging): pages go back to normal tracking.
                let granule = host.granule();
                let exempt: Vec<Ipa> = std::mem::take(&mut st.exempt).into_iter().collect();
                for p in exempt {
                    host.set_dirty_log_exempt(IpaRange::page(p, granule), false)
                        .map_err(err("returning buffer pages to dirty logging"))?;
                }
                if matches!(event, Event::DirtyLogStop) {
                    st.dirty_logging = false;
                }
                Outcome::Resume
            }
            Event::PostCopySwitchover => {
                // PB-06: the buffer must be at the destination before it runs.
                let granule = host.granule();
                let held = st.held_pages();
                for run in spe_policy::pin_ledger::runs(&held, granule) {
                    host.send_before_switchover(run)
                        .map_err(err("sending buffer pages before switch-over"))?;
                }
                Outcome::Resume
            }
            Event::GuestStage1Remap { vcpu, stage1 } => {
                // The mapping changed (the VMM trapped the guest's TLB maintenance). An idle
                // cache is dropped; an active buffer is re-walked and its new pages and tables
                // pinned before the guest resumes (PB-03's mitigation), then what it no longer
                // maps is unpinned. A window that no longer fits is left to the fault repair.
                let active = st
                    .vcpus
                    .get(&vcpu)
                    .and_then(|v| v.window.filter(|_| v.active));
                match active {
                    None => st
                        .release_vcpu(host, vcpu)
                        .map_err(err("dropping a stale pin cache"))?,
                    Some(window) => self.repin(&mut st, vcpu, stage1, window, guest, host)?,
                }
                Outcome::Resume
            }
            Event::VmStop => {
                if let Some(l) = st.ledger.as_mut() {
                    l.release_all(host).map_err(err("unpinning at VM stop"))?;
                }
                st.vcpus.clear();
                st.exempt.clear();
                Outcome::Resume
            }
        };
        st.sync_stats();
        Ok(outcome)
    }
}

impl PinBuffer {
    /// Re-pins an active buffer after a remap: the new walk's pages are pinned first, then the
    /// old pins are dropped, so pages mapped before and after stay pinned throughout.
    fn repin<G, H>(
        &self,
        st: &mut State,
        vcpu: VcpuId,
        stage1: Stage1Regs,
        window: (Gva, u64),
        guest: &G,
        host: &H,
    ) -> Result<(), PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let granule = host.granule();
        let Some(v) = st.vcpus.get_mut(&vcpu) else {
            return Ok(());
        };
        let mut old = v.page_refs(granule);
        old.extend(v.tables.iter().copied());
        let unit = v.unit;
        *v = VcpuPins {
            unit,
            active: true,
            last_safe: v.last_safe,
            window: v.window,
            ..VcpuPins::default()
        };
        let pinned = st.pin_window(&self.config, vcpu, stage1, window, guest, host);
        let released = st.ledger(host).release(host, &old);
        match pinned {
            Ok(_) | Err(HostError::NotInMemslot(_) | HostError::Unavailable { .. }) => {}
            Err(HostError::LockLimit { .. }) => st.stats.refused += 1,
            Err(e) => return Err(err("re-pinning a remapped buffer")(e)),
        }
        released.map_err(err("unpinning pages a remap left behind"))
    }

    fn on_buffer_write<G, H>(
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
        let Some((start, len)) = regs.window() else {
            // Disabled, discard mode, or LIMIT at or below PMBPTR (PB-07): nothing to pin.
            if let Some(v) = st.vcpus.get_mut(&vcpu) {
                v.active = false;
            }
            if !cfg.pin_cache {
                st.release_vcpu(host, vcpu)
                    .map_err(err("unpinning a disabled buffer"))?;
            }
            return Ok(Outcome::Resume);
        };
        match st.pin_window(cfg, vcpu, stage1, (start, len), guest, host) {
            Ok(EnableResult::Cached) => Ok(Outcome::Resume),
            Ok(EnableResult::Pinned) => {
                let v = st.vcpus.entry(vcpu).or_default();
                v.active = true;
                v.last_safe = Some(start);
                v.window = Some((start, len));
                Ok(Outcome::Resume)
            }
            Ok(EnableResult::OverCap) | Err(HostError::LockLimit { .. }) => {
                // PB-01 / PB-08.
                st.stats.refused += 1;
                st.stats.injected += 1;
                Ok(Outcome::Inject {
                    pmbsr: size_too_large(),
                    pmbptr: start,
                })
            }
            Err(HostError::NotInMemslot(_) | HostError::Unavailable { .. }) => {
                // PB-07: a buffer or table page the host cannot back (outside RAM, or gone):
                // nothing is pinned (the ledger rolled back), and the SPU's fault on it reaches
                // the guest as it does at a fault (`on_buffer_management`): a guest-visible
                // outcome either way, never a host failure.
                Ok(Outcome::Resume)
            }
            Err(e) => Err(err("pinning the buffer")(e)),
        }
    }

    fn on_buffer_management<G, H>(
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
        let ev = BufferEvent::decode(regs.pmbsr);
        let pass = Outcome::Inject {
            pmbsr: regs.pmbsr,
            pmbptr: regs.pmbptr.address(),
        };
        let BufferEventKind::Fault {
            stage: Stage::Two, ..
        } = ev.kind
        else {
            return Ok(pass);
        };
        // PB-03: a stage 2 fault on a pinned buffer means the guest remapped it. Repair.
        let granule = host.granule();
        let va = regs.pmbptr.address();
        let walker = Walker::with_options(stage1, cfg.walk, guest);
        let Ok(t) = walker.translate(va) else {
            st.stats.injected += 1;
            return Ok(pass);
        };
        let tables: Vec<Ipa> = t.tables_touched.as_slice().to_vec();
        let unit = st.vcpus.get(&vcpu).map_or(4096, |v| v.unit);
        // The SPU's walk reads the tables: a table host page that is not present faulted.
        let on_table = tables
            .iter()
            .any(|t| host_pages(*t, unit, granule).any(|p| !host.page_state(p).present));
        if on_table {
            st.stats.stage2_faults_table += 1;
        } else {
            st.stats.stage2_faults_buffer += 1;
        }
        let page = (Gva(va.0 & !(unit - 1)), Ipa(t.ipa.0 & !(unit - 1)));
        match st.acquire_for(host, vcpu, &[page], &tables) {
            Ok(_) => {}
            Err(HostError::NotInMemslot(_)) | Err(HostError::Unavailable { .. }) => {
                // PB-07: cannot be backed; the guest gets its fault.
                st.stats.injected += 1;
                return Ok(pass);
            }
            Err(e) => return Err(err("pinning a remapped buffer page")(e)),
        }
        // Held is not always mapped writable: an mlock pin (PB-09) keeps the page resident
        // while THP collapse or compaction still moves it (stage 2 zapped) and KSM's scan
        // write-protects it. Map what faulted again, or the SPU would fault at the same PMBPTR
        // forever.
        let faulted = host_pages(page.1, unit, granule)
            .chain(tables.iter().flat_map(|t| host_pages(*t, unit, granule)))
            .filter(|p| !host.page_state(*p).writable())
            .collect::<Vec<_>>();
        for p in faulted {
            match host.fault_in(p) {
                Ok(_) => {}
                Err(HostError::NotInMemslot(_)) | Err(HostError::Unavailable { .. }) => {
                    st.stats.injected += 1;
                    return Ok(pass);
                }
                Err(e) => return Err(err("mapping a pinned page the host moved")(e)),
            }
        }
        // No enable seen for this buffer (or it was disabled since): no record boundary is
        // known before the fault, so nothing before it is judged.
        let safe = st.vcpus.get(&vcpu).and_then(|v| v.last_safe).unwrap_or(va);
        let walker = Walker::with_options(stage1, cfg.walk, guest);
        let r = recover_buffer(&walker, safe, va, ev.data_loss, &cfg.recovery);
        if r.parsed {
            st.stats.bytes_lost_rewind = st.stats.bytes_lost_rewind.saturating_add(r.lost_bytes);
        } else {
            st.stats.bytes_lost_discard = st.stats.bytes_lost_discard.saturating_add(r.lost_bytes);
        }
        if let Some(v) = st.vcpus.get_mut(&vcpu) {
            v.last_safe = Some(r.resume_at);
            v.stage1 = Some(stage1);
        }
        Ok(Outcome::ResumeAt {
            pmbptr: r.resume_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_max_buffer_size_never_exceeds_the_cap() {
        for cap in [0x1000u64, 0x1800, 64 << 10, 4 << 20, 16 << 20, 1 << 30] {
            let f = max_buff_size_field(cap);
            let bytes = field_bytes(f);
            assert!(
                bytes <= cap && bytes > 0,
                "cap {cap:#x}: field {f:#x} = {bytes:#x}"
            );
            assert!(
                bytes * 2 > cap,
                "cap {cap:#x}: {bytes:#x} is needlessly small"
            );
        }
    }
}
