//! The VMSAv8-64 stage 1 walk of the EL1&0 regime, exactly as the SPU performs it for a
//! Profiling Buffer write (spec sheet §3; ARM-D8, ARM-D17.7.6).
//!
//! This is the engine; the strategies are policies over it. A walk returns the IPA, the level and
//! block size, and every table page it read in walk order (what pin-buffer pins and what
//! fault-translate makes present) or a fault with its level and the pages read before it.
//! Each walk reads at most five descriptors, so no table layout can make it loop; tables that
//! point back at an ancestor are still refused unless asked for.

pub mod builder;
mod fault;
mod range;
mod regime;

use core::fmt;

pub use fault::{FaultCause, FaultKind, Stage1Fault, WalkError};
pub use range::{MappedRun, RangeLimits, RangeTranslation};
pub use regime::{Stage1Regs, TxSzOutOfRange, WalkOptions};

use crate::addr::{Gva, Ipa};
use crate::arch::pmbsr::FaultLevel;
use crate::guest_memory::GuestMemoryRead;
use regime::{HalfParams, OaLayout};

/// The most table pages one walk reads: levels -1 to 3.
pub const MAX_WALK_DEPTH: usize = 5;

/// The table pages a single walk read, in walk order. Fixed size: a walk never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TablesTouched {
    len: u8,
    pages: [Ipa; MAX_WALK_DEPTH],
}

impl TablesTouched {
    /// The pages, in walk order.
    #[inline]
    pub fn as_slice(&self) -> &[Ipa] {
        &self.pages[..self.len as usize]
    }

    /// The first `n` of `pages`.
    #[inline(always)]
    fn of(pages: [Ipa; MAX_WALK_DEPTH], n: u8) -> Self {
        TablesTouched { len: n, pages }
    }

    /// The first `n` pages (all of them if there are fewer), the rest cleared as a walk that
    /// read only those would leave them.
    #[inline]
    pub(crate) fn prefix(&self, n: usize) -> Self {
        let mut out = TablesTouched::default();
        let n = n.min(self.len as usize);
        out.pages[..n].copy_from_slice(&self.pages[..n]);
        out.len = n as u8;
        out
    }

    #[inline]
    fn push(&mut self, page: Ipa) {
        // A walk has at most MAX_WALK_DEPTH levels; the bound is structural.
        if let Some(slot) = self.pages.get_mut(self.len as usize) {
            *slot = page;
            self.len += 1;
        }
    }

    #[inline]
    fn contains(&self, page: Ipa) -> bool {
        self.as_slice().contains(&page)
    }
}

impl fmt::Debug for TablesTouched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A successful stage 1 translation of one VA for an SPU write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The input VA.
    pub va: Gva,
    /// The output IPA.
    pub ipa: Ipa,
    /// The level of the leaf descriptor (3 for a page). With stage 1 disabled, 0.
    pub level: FaultLevel,
    /// The size the leaf maps: the page size, or the block size. With stage 1 disabled, the
    /// whole output address space.
    pub block_size: u64,
    /// The IPA of the leaf descriptor (what a hardware AF/dirty update would write).
    pub leaf_descriptor: Option<Ipa>,
    /// The table pages read, in walk order.
    pub tables_touched: TablesTouched,
    /// The write relied on a hardware Access flag update (AF was 0).
    pub sets_access_flag: bool,
    /// The write relied on a hardware dirty state update (DBM=1, AP`[2]` was 1).
    pub sets_dirty: bool,
}

/// A page descriptor the SPU writes through as it is (§3.10): AF set, writable (AP`[2]` = 0)
/// and no APTable write removal above it, so no fault and no hardware update.
#[inline(always)]
fn plain_page(desc: u64, no_write: bool) -> bool {
    desc & (1 << 10) != 0 && desc & (1 << 7) == 0 && !no_write
}

/// The walker: a stage 1 regime over a guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Walker<M> {
    regs: Stage1Regs,
    options: WalkOptions,
    memory: M,
    /// Parameters of the TTBR0 and TTBR1 halves, derived once from the registers.
    halves: [Result<HalfParams, FaultCause>; 2],
}

/// Where a walk resumes: used by the range walker to share the upper levels between
/// neighbouring pages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalkState {
    pub level: FaultLevel,
    pub table: u64,
    pub no_write: bool,
    pub tables: TablesTouched,
}

impl WalkState {
    /// The state before reading the root table.
    #[inline]
    pub(crate) fn root(p: &HalfParams) -> Self {
        WalkState {
            level: p.start_level,
            table: p.root,
            no_write: false,
            tables: TablesTouched::default(),
        }
    }
}

/// Where a walk stood at each level (indexed from the start level): the table it read there
/// and whether a table above removed write access. With the table pages the walk returned,
/// this is the [`WalkState`] at any level, so the range walk can resume a neighbouring VA
/// there. Two words a level, written from registers: recording whole states (with their table
/// lists, just written) stalled every copy on store forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WalkPath {
    levels: [Option<(u64, bool)>; MAX_WALK_DEPTH],
}

impl WalkPath {
    /// Records `s`, the state before reading its level's descriptor.
    #[inline(always)]
    fn record(&mut self, p: &HalfParams, s: &WalkState) {
        if let Some(slot) = self.levels.get_mut((s.level - p.start_level) as usize) {
            *slot = Some((s.table, s.no_write));
        }
    }

    /// The deepest level recorded, as an index from the start level.
    #[inline]
    pub(crate) fn deepest(&self) -> Option<usize> {
        self.levels.iter().rposition(Option::is_some)
    }

    /// Whether level `i` (from the start level) was recorded.
    #[inline]
    pub(crate) fn has(&self, i: usize) -> bool {
        self.levels.get(i).is_some_and(Option::is_some)
    }

    /// The state at level `i` (from the start level), given the table pages of the walk that
    /// recorded it (its first `i` pages are the ones read above that level).
    #[inline]
    pub(crate) fn state(
        &self,
        p: &HalfParams,
        i: usize,
        tables: &TablesTouched,
    ) -> Option<WalkState> {
        let (table, no_write) = (*self.levels.get(i)?)?;
        Some(WalkState {
            level: p.start_level + i as FaultLevel,
            table,
            no_write,
            tables: tables.prefix(i),
        })
    }

    /// Forgets the levels after `i`: they are walked again.
    #[inline]
    pub(crate) fn truncate(&mut self, i: usize) {
        for slot in self.levels.iter_mut().skip(i + 1) {
            *slot = None;
        }
    }
}

impl<M: GuestMemoryRead> Walker<M> {
    /// A walker over `memory` with the given registers and default options.
    pub fn new(regs: Stage1Regs, memory: M) -> Self {
        Self::with_options(regs, WalkOptions::default(), memory)
    }

    /// A walker with explicit features and model choices.
    pub fn with_options(regs: Stage1Regs, options: WalkOptions, memory: M) -> Self {
        let halves = [
            regs.half_params(false, &options),
            regs.half_params(true, &options),
        ];
        Walker {
            regs,
            options,
            memory,
            halves,
        }
    }

    /// The registers.
    pub fn regs(&self) -> &Stage1Regs {
        &self.regs
    }

    /// The guest memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// Translates `va` for an SPU buffer write.
    #[inline(always)]
    pub fn translate(&self, va: Gva) -> Result<Translation, WalkError> {
        match self.params(va).map_err(WalkError::Fault)? {
            None => self.flat(va),
            // Decided before a walk state is built: the unrolled walk keeps its own.
            Some(p) if p.plain_4k_level0 => self.walk_plain_4_levels(va, p, p.root),
            Some(p) => self.walk_plain(va, p, WalkState::root(p), None),
        }
    }

    /// The walk from `s` on, the common case straight through: little-endian tables with
    /// 48-bit output addresses, every level a table or the last a page, each descriptor
    /// readable and the leaf writable as it is. At the first level that is anything else (a
    /// fault, a block, a table loop, another layout) it hands over to [`Walker::walk_from`]
    /// with the descriptor it has read, so every descriptor is read once, as the SPU does,
    /// and the full walk decides with every rule in order. With `states`, records the state
    /// at each level as [`Walker::walk_from`] does, for the range walk.
    #[inline(always)]
    pub(crate) fn walk_plain(
        &self,
        va: Gva,
        p: &HalfParams,
        mut s: WalkState,
        mut states: Option<&mut WalkPath>,
    ) -> Result<Translation, WalkError> {
        if p.big_endian || p.layout != OaLayout::Bits48 {
            return self.walk_full(va, p, s, states, None);
        }
        if states.is_none() && p.plain_4k_level0 && s.level == 0 && s.tables.len == 0 {
            return self.walk_plain_4_levels(va, p, s.table);
        }
        loop {
            if let Some(states) = states.as_deref_mut() {
                states.record(p, &s);
            }
            let level = s.level;
            let desc_ipa = s.table | (p.index(va.0, level) << 3);
            let Ok(raw) = self.memory.read_descriptor(Ipa(desc_ipa)) else {
                // Unreadable: the full walk reads it and reports it.
                return self.walk_full(va, p, s, states, None);
            };
            let desc = u64::from_le_bytes(raw);
            let oa = desc & 0x0000_ffff_ffff_f000 & p.page_mask;
            let page = Ipa(desc_ipa & p.page_mask);
            // Valid and table (levels 0-2) or page (level 3): bits [1:0] = 0b11 (§3.4).
            let plain = desc & 0b11 == 0b11
                && p.oa_in_range(oa)
                && if level == 3 {
                    plain_page(desc, s.no_write)
                } else {
                    self.options.allow_recursive_tables
                        || (Ipa(oa) != page && !s.tables.contains(Ipa(oa)))
                };
            if !plain {
                return self.walk_full(va, p, s, states, Some(raw));
            }
            s.tables.push(page);
            if level == 3 {
                let size = 1u64 << p.page_shift;
                return Ok(Translation {
                    va,
                    ipa: Ipa(oa | (va.0 & (size - 1))),
                    level,
                    block_size: size,
                    leaf_descriptor: Some(Ipa(desc_ipa)),
                    tables_touched: s.tables,
                    sets_access_flag: false,
                    sets_dirty: false,
                });
            }
            s.no_write |= desc & p.aptable_no_write != 0;
            s.table = oa;
            s.level += 1;
        }
    }

    /// [`Walker::walk_plain`] from a level 0 root with the 4 KB granule (48-bit VAs: the
    /// common regime), unrolled so the table pages stay in registers until the translation is
    /// built (a table list stored and copied at once stalls on store forwarding), with the 4 KB
    /// layout's constants: VA`[47:39]`, `[38:30]`, `[29:21]`, `[20:12]` index levels 0-3.
    #[inline(always)]
    fn walk_plain_4_levels(
        &self,
        va: Gva,
        p: &HalfParams,
        root: u64,
    ) -> Result<Translation, WalkError> {
        let mut pages = [Ipa(0); MAX_WALK_DEPTH];
        let mut table = root;
        // APTable write removals seen so far: non-zero removes write (one AND a level).
        let mut no_write = 0u64;
        for level in 0..4u8 {
            let index = (va.0 >> (39 - 9 * u32::from(level))) & 0x1ff;
            let desc_ipa = table | (index << 3);
            let state = |pages, table, no_write: u64| WalkState {
                level: level as FaultLevel,
                table,
                no_write: no_write != 0,
                tables: TablesTouched::of(pages, level),
            };
            let Ok(raw) = self.memory.read_descriptor(Ipa(desc_ipa)) else {
                return self.walk_full(va, p, state(pages, table, no_write), None, None);
            };
            let desc = u64::from_le_bytes(raw);
            let oa = desc & 0x0000_ffff_ffff_f000;
            let page = Ipa(desc_ipa & !0xfff);
            let seen = |a: Ipa| pages[..level as usize].contains(&a) || a == page;
            let plain = desc & 0b11 == 0b11
                && p.oa_in_range(oa)
                && if level == 3 {
                    plain_page(desc, no_write != 0)
                } else {
                    self.options.allow_recursive_tables || !seen(Ipa(oa))
                };
            if !plain {
                return self.walk_full(va, p, state(pages, table, no_write), None, Some(raw));
            }
            pages[level as usize] = page;
            if level == 3 {
                let size = 0x1000;
                return Ok(Translation {
                    va,
                    ipa: Ipa(oa | (va.0 & (size - 1))),
                    level: 3,
                    block_size: size,
                    leaf_descriptor: Some(Ipa(desc_ipa)),
                    tables_touched: TablesTouched::of(pages, 4),
                    sets_access_flag: false,
                    sets_dirty: false,
                });
            }
            no_write |= desc & p.aptable_no_write;
            table = oa;
        }
        // Not reached (level 3 returns above); the full walk is the answer that cannot be wrong.
        self.walk_full(va, p, WalkState::root(p), None, None)
    }

    /// The full walk from `s` for the plain walk's hand-over, out of line: the rare case must
    /// not grow the common one.
    #[inline(never)]
    fn walk_full(
        &self,
        va: Gva,
        p: &HalfParams,
        s: WalkState,
        states: Option<&mut WalkPath>,
        pending: Option<[u8; 8]>,
    ) -> Result<Translation, WalkError> {
        self.walk_from(va, p, s, states, pending)
    }

    /// The IPA of `va` when its level 3 table is `s`'s (a neighbour of the page `s` was
    /// walked for) and the page descriptor there is plain, as [`Walker::walk_plain`] takes
    /// it. Anything else is the full walk's to decide: `Err` with the descriptor read, if one
    /// was, for [`Walker::walk_from`].
    #[inline(always)]
    pub(crate) fn plain_neighbour(
        &self,
        va: Gva,
        p: &HalfParams,
        s: &WalkState,
    ) -> Result<Ipa, Option<[u8; 8]>> {
        if s.level != 3 || p.big_endian || p.layout != OaLayout::Bits48 {
            return Err(None);
        }
        let desc_ipa = s.table | (p.index(va.0, 3) << 3);
        let raw = self
            .memory
            .read_descriptor(Ipa(desc_ipa))
            .map_err(|_| None)?;
        let desc = u64::from_le_bytes(raw);
        let oa = desc & 0x0000_ffff_ffff_f000 & p.page_mask;
        if desc & 0b11 == 0b11 && p.oa_in_range(oa) && plain_page(desc, s.no_write) {
            Ok(Ipa(oa | (va.0 & !p.page_mask)))
        } else {
            Err(Some(raw))
        }
    }

    /// The walk parameters for `va` (`None` when stage 1 is disabled), or its level 0 fault.
    #[inline]
    pub(crate) fn params(&self, va: Gva) -> Result<Option<&HalfParams>, Stage1Fault> {
        let fault = |cause, kind| Stage1Fault {
            va,
            kind,
            level: 0,
            cause,
            tables_touched: TablesTouched::default(),
        };
        if !self.regs.sctlr.m() {
            return Ok(None);
        }
        // Check order (pseudocode AArch64.S1Walk): TxSZ, VA range, EPD, TTB address size.
        let p = match &self.halves[Stage1Regs::ttbr_index(va) as usize] {
            Ok(p) => p,
            Err(cause) => return Err(fault(*cause, FaultKind::Translation)),
        };
        if !p.contains(va) {
            return Err(fault(FaultCause::VaOutsideRanges, FaultKind::Translation));
        }
        if p.walks_disabled {
            let cause = FaultCause::WalksDisabled {
                ttbr: p.upper as u8,
            };
            return Err(fault(cause, FaultKind::Translation));
        }
        if !p.oa_in_range(p.root) {
            return Err(fault(
                FaultCause::TableBaseOutOfRange { base: Ipa(p.root) },
                FaultKind::AddressSize,
            ));
        }
        Ok(Some(p))
    }

    /// Stage 1 disabled (SCTLR_EL1.M = 0): the IPA is the VA, which must fit the implemented
    /// physical address size, PAMax (pseudocode AArch64.S1DisabledOutput), else a level 0
    /// address size fault.
    pub(crate) fn flat(&self, va: Gva) -> Result<Translation, WalkError> {
        let pa_bits = u32::from(self.options.pa_bits.clamp(32, 52));
        if va.0 >> pa_bits != 0 {
            return Err(WalkError::Fault(Stage1Fault {
                va,
                kind: FaultKind::AddressSize,
                level: 0,
                cause: FaultCause::OutputAddressOutOfRange { output: Ipa(va.0) },
                tables_touched: TablesTouched::default(),
            }));
        }
        Ok(Translation {
            va,
            ipa: Ipa(va.0),
            level: 0,
            block_size: 1 << pa_bits,
            leaf_descriptor: None,
            tables_touched: TablesTouched::default(),
            sets_access_flag: false,
            sets_dirty: false,
        })
    }

    /// Walks from `state` down to a leaf. When `states` is given, records the state at each
    /// level so a neighbouring VA can resume there. Always inlined so that the single-VA path
    /// (`states` = `None`) compiles without the bookkeeping.
    #[inline(always)]
    pub(crate) fn walk_from(
        &self,
        va: Gva,
        p: &HalfParams,
        mut s: WalkState,
        mut states: Option<&mut WalkPath>,
        mut pending: Option<[u8; 8]>,
    ) -> Result<Translation, WalkError> {
        let fault = |kind, level, cause, tables| {
            WalkError::Fault(Stage1Fault {
                va,
                kind,
                level,
                cause,
                tables_touched: tables,
            })
        };
        loop {
            if let Some(states) = states.as_deref_mut() {
                states.record(p, &s);
            }
            let level = s.level;
            let desc_ipa = Ipa(s.table | (p.index(va.0, level) << 3));
            // `pending`: the descriptor at `s`'s level, already read by the fast walk.
            let raw = match pending.take() {
                Some(raw) => raw,
                None => self.memory.read_descriptor(desc_ipa).map_err(|e| {
                    WalkError::TableUnreadable {
                        va,
                        level,
                        descriptor: desc_ipa,
                        tables_touched: s.tables,
                        source: Box::new(e),
                    }
                })?,
            };
            s.tables.push(Ipa(desc_ipa.0 & p.page_mask));
            let desc = if p.big_endian {
                u64::from_be_bytes(raw)
            } else {
                u64::from_le_bytes(raw)
            };

            // Descriptor type (spec sheet §3.4).
            if desc & 1 == 0 {
                let cause = FaultCause::InvalidDescriptor { descriptor: desc };
                return Err(fault(FaultKind::Translation, level, cause, s.tables));
            }
            let is_table_or_page = desc & 0b10 != 0;
            if level < 3 && is_table_or_page {
                let next = p.layout.output_address(desc, p.page_shift);
                if !p.oa_in_range(next) {
                    let cause = FaultCause::TableAddressOutOfRange { table: Ipa(next) };
                    return Err(fault(FaultKind::AddressSize, level, cause, s.tables));
                }
                let next_page = Ipa(next & p.page_mask);
                if !self.options.allow_recursive_tables && s.tables.contains(next_page) {
                    return Err(WalkError::TableCycle {
                        va,
                        level,
                        table: next_page,
                        tables_touched: s.tables,
                    });
                }
                // APTable[1] (bit 62) removes write access below this table (§3.5).
                s.no_write |= desc & p.aptable_no_write != 0;
                s.table = next;
                s.level += 1;
                continue;
            }
            if level == 3 && !is_table_or_page {
                let cause = FaultCause::ReservedPageDescriptor { descriptor: desc };
                return Err(fault(FaultKind::Translation, level, cause, s.tables));
            }
            if level < 3 && !p.block_allowed(level) {
                let cause = FaultCause::BlockNotAllowed { descriptor: desc };
                return Err(fault(FaultKind::Translation, level, cause, s.tables));
            }
            return self.leaf(va, p, level, desc, desc_ipa, s);
        }
    }

    /// Checks a leaf in the order of spec sheet §3.10: address size, access flag, permission.
    #[inline(always)]
    fn leaf(
        &self,
        va: Gva,
        p: &HalfParams,
        level: FaultLevel,
        desc: u64,
        desc_ipa: Ipa,
        s: WalkState,
    ) -> Result<Translation, WalkError> {
        let fault = |kind, cause| {
            WalkError::Fault(Stage1Fault {
                va,
                kind,
                level,
                cause,
                tables_touched: s.tables,
            })
        };
        let shift = p.shifts[(level + 1) as usize & 7];
        let oa = p.layout.output_address(desc, shift);
        if !p.oa_in_range(oa) {
            let cause = FaultCause::OutputAddressOutOfRange { output: Ipa(oa) };
            return Err(fault(FaultKind::AddressSize, cause));
        }
        let af = desc & (1 << 10) != 0;
        if !af && !p.hw_af {
            return Err(fault(FaultKind::AccessFlag, FaultCause::AccessFlagClear));
        }
        // SPU writes are privileged writes with PAN treated as 0 (§3.5): only AP[2] and
        // APTable matter.
        if s.no_write {
            return Err(fault(FaultKind::Permission, FaultCause::TableRemovesWrite));
        }
        let read_only = desc & (1 << 7) != 0;
        let dbm = desc & (1 << 51) != 0;
        if read_only && !(dbm && p.hw_dirty) {
            let cause = FaultCause::ReadOnly { dbm_ignored: dbm };
            return Err(fault(FaultKind::Permission, cause));
        }
        let size = 1u64 << shift;
        Ok(Translation {
            va,
            ipa: Ipa(oa | (va.0 & (size - 1))),
            level,
            block_size: size,
            leaf_descriptor: Some(desc_ipa),
            tables_touched: s.tables,
            sets_access_flag: !af,
            sets_dirty: read_only,
        })
    }
}

#[cfg(test)]
mod tests;
