//! Walking a whole VA range (a profiling buffer): the distinct IPA runs and table pages,
//! sharing the upper levels between neighbouring pages the way a hardware walk cache does.

use std::collections::HashSet;

use crate::addr::{Granule, Gva, Ipa};
use crate::arch::pmbsr::FaultLevel;
use crate::arch::walk::regime::level_shift;
use crate::arch::walk::{
    MAX_WALK_DEPTH, Stage1Fault, Stage1Regs, TablesTouched, WalkError, WalkPath, WalkState, Walker,
};
use crate::guest_memory::GuestMemoryRead;

/// Bounds on the work of a range walk, so a guest-controlled range (PMBPTR..PMBLIMITR) cannot
/// make the host walk or allocate without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RangeLimits {
    /// Most leaf lookups: one per page, or one per block.
    pub max_steps: u64,
}

impl Default for RangeLimits {
    /// 2^20 lookups: 4GiB of 4KB pages.
    fn default() -> Self {
        RangeLimits { max_steps: 1 << 20 }
    }
}

/// A run of VAs mapped to contiguous IPAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MappedRun {
    /// First VA.
    pub va: Gva,
    /// IPA of the first VA.
    pub ipa: Ipa,
    /// Length in bytes.
    pub len: u64,
}

/// The translation of a VA range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeTranslation {
    /// Runs of mapped VAs in VA order, merged where both VA and IPA are contiguous. They cover
    /// the range up to the first fault.
    pub runs: Vec<MappedRun>,
    /// Distinct table pages, in the order first read.
    pub tables_touched: Vec<Ipa>,
    /// The first fault in the range, if any; nothing after it was walked.
    pub fault: Option<Stage1Fault>,
    /// Leaf lookups performed.
    pub steps: u64,
}

impl RangeTranslation {
    /// Bytes of the range that translated.
    pub fn mapped_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// The distinct IPA pages (of `granule`) the mapped part of the range lands in, in VA
    /// order; a page shared by two runs appears once.
    pub fn ipa_pages(&self, granule: Granule) -> Vec<Ipa> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for run in &self.runs {
            let end = run.ipa.0 + run.len;
            let mut page = run.ipa.page_base(granule).0;
            while page < end {
                if seen.insert(page) {
                    out.push(Ipa(page));
                }
                page += granule.size();
            }
        }
        out
    }
}

impl<M: GuestMemoryRead> Walker<M> {
    /// Translates every byte of `start..start + len` for SPU writes, stopping at the first
    /// fault. Memory errors and table loops end the walk with an error; so does a range that
    /// needs more than `limits.max_steps` leaf lookups. A range that would wrap past 2^64 ends
    /// at the top of the address space.
    pub fn translate_range(
        &self,
        start: Gva,
        len: u64,
        limits: RangeLimits,
    ) -> Result<RangeTranslation, WalkError> {
        // One allocation each for the common case (a buffer of up to 64 scattered pages and
        // its handful of tables), not one per doubling; bounded whatever `len` says.
        let pages = (len >> 12).clamp(1, 64) as usize;
        let mut out = RangeTranslation {
            runs: Vec::with_capacity(pages),
            tables_touched: Vec::with_capacity(8),
            fault: None,
            steps: 0,
        };
        let end = start.0.saturating_add(len);
        // Distinct table pages: a linear scan while there are few (a buffer of a few MiB
        // touches a handful), a set once there are many; no allocation for a small range.
        let mut seen: Option<HashSet<Ipa>> = None;
        // The walk states of the previous VA (the table at each level and how it was reached),
        // for resuming below the levels a neighbouring VA shares: a software walk cache.
        // Kept as a path and the table pages of the last walk.
        let mut path = WalkPath::default();
        let mut path_tables = TablesTouched::default();
        let mut prev: Option<(u64, u8)> = None;
        let mut last_params: Option<&super::regime::HalfParams> = None;
        let mut va = start.0;
        while va < end {
            count_step(&mut out.steps, limits, start, len)?;
            // The common step: the next page of the same last-level table as the previous VA
            // (same half, same upper indices, so the same parameters and checks held): resume
            // at that table with one descriptor read, no parameter or resume-level search.
            let leaf_state = last_params.and_then(|p| {
                let i = path.deepest()?;
                path.state(p, i, &path_tables)
            });
            let neighbour = match (prev, last_params, leaf_state) {
                (Some((prev_va, _)), Some(p), Some(st))
                    if st.level == 3
                        && (va ^ prev_va) >> (level_shift(p.granule, 3) + p.granule.stride())
                            == 0 =>
                {
                    Some((p, st))
                }
                _ => None,
            };
            let result = if let Some((p, st)) = neighbour {
                prev = Some((va, Stage1Regs::ttbr_index(Gva(va))));
                // Every page up to the end of this last-level table (or of the range) is a
                // neighbour too: one tight loop over them, a descriptor read each.
                let table_span = level_shift(p.granule, 3) + p.granule.stride();
                let stop = ((va >> table_span) + 1)
                    .checked_shl(table_span)
                    .filter(|&t| t != 0)
                    .map_or(end, |t| t.min(end));
                let page = !p.page_mask + 1;
                let read = loop {
                    match self.plain_neighbour(Gva(va), p, &st) {
                        Ok(ipa) => {
                            // A plain page: no translation to build, only the run to extend.
                            let next = (va & p.page_mask).saturating_add(page).min(end);
                            push_run(&mut out.runs, Gva(va), ipa, next - va);
                            va = next;
                            if va >= stop {
                                break None;
                            }
                            count_step(&mut out.steps, limits, start, len)?;
                        }
                        // Only the leaf table was read, and it is the previous page's.
                        Err(read) => break Some(read),
                    }
                };
                match read {
                    None => continue,
                    Some(read) => self.walk_from(Gva(va), p, st, None, read),
                }
            } else {
                match self.params(Gva(va)) {
                    Err(fault) => Err(WalkError::Fault(fault)),
                    Ok(None) => self.flat(Gva(va)),
                    Ok(Some(p)) => {
                        let half = Stage1Regs::ttbr_index(Gva(va));
                        // The table at level L is shared when the indices of every level above L
                        // agree: the VA bits from level_shift(L) + stride up.
                        let mut resume = 0;
                        if let Some((prev_va, prev_half)) = prev.filter(|(_, h)| *h == half) {
                            for i in 1..MAX_WALK_DEPTH {
                                let level = p.start_level + i as FaultLevel;
                                if path.has(i)
                                    && (va ^ prev_va)
                                        >> (level_shift(p.granule, level) + p.granule.stride())
                                        == 0
                                {
                                    resume = i;
                                } else {
                                    break;
                                }
                            }
                            debug_assert_eq!(prev_half, half);
                        }
                        let from = match path.state(p, resume, &path_tables) {
                            Some(st) if prev.is_some_and(|(_, h)| h == half) => st,
                            _ => WalkState::root(p),
                        };
                        // Levels below the resume point are walked again: forget their old states.
                        path.truncate(resume);
                        let r = self.walk_plain(Gva(va), p, from, Some(&mut path));
                        prev = Some((va, half));
                        path_tables = match &r {
                            Ok(t) => t.tables_touched,
                            Err(WalkError::Fault(f)) => f.tables_touched,
                            // Any other error ends the range walk below, with nothing returned.
                            Err(_) => TablesTouched::default(),
                        };
                        last_params = Some(p);
                        for page in path_tables.as_slice().iter().skip(resume) {
                            if out.tables_touched.last() == Some(page) {
                                continue;
                            }
                            let new = match &mut seen {
                                Some(set) => set.insert(*page),
                                None if out.tables_touched.len() < 32 => {
                                    !out.tables_touched.contains(page)
                                }
                                None => {
                                    let mut set: HashSet<Ipa> =
                                        out.tables_touched.iter().copied().collect();
                                    let new = set.insert(*page);
                                    seen = Some(set);
                                    new
                                }
                            };
                            if new {
                                out.tables_touched.push(*page);
                            }
                        }
                        r
                    }
                }
            };
            match result {
                Ok(t) => {
                    let block_end = (va & !(t.block_size - 1)).saturating_add(t.block_size);
                    let next = block_end.min(end);
                    push_run(&mut out.runs, Gva(va), t.ipa, next - va);
                    va = next;
                }
                Err(WalkError::Fault(f)) => {
                    out.fault = Some(f);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Counts one leaf lookup of the range walk of `start..start + len`, or refuses it past the
/// limit.
#[inline(always)]
fn count_step(steps: &mut u64, limits: RangeLimits, start: Gva, len: u64) -> Result<(), WalkError> {
    if *steps >= limits.max_steps {
        return Err(WalkError::RangeTooLarge {
            start,
            len,
            max_steps: limits.max_steps,
        });
    }
    *steps += 1;
    Ok(())
}

/// Adds `len` bytes at `va` -> `ipa` to `runs`, extending the last run when both continue it.
#[inline(always)]
fn push_run(runs: &mut Vec<MappedRun>, va: Gva, ipa: Ipa, len: u64) {
    match runs.last_mut() {
        Some(run) if run.va.0 + run.len == va.0 && run.ipa.0.wrapping_add(run.len) == ipa.0 => {
            run.len += len;
        }
        _ => runs.push(MappedRun { va, ipa, len }),
    }
}
