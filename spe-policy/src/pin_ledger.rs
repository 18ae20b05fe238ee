//! Reference-counted pins: a page is pinned at the host once, however many vCPUs or buffers
//! hold it, and unpinned when the last holder lets go. Strategies keep one ledger per VM behind
//! their lock; the ledger never lets a pin leak or an unpin happen twice.

use std::collections::HashMap;

use crate::addr::{Granule, Ipa};
use crate::host::{HostBacking, HostError, IpaRange};

/// Pin counts per host page.
#[derive(Debug, Clone)]
pub struct PinLedger {
    granule: Granule,
    refs: HashMap<Ipa, u32>,
    /// Host pin calls made.
    pub pin_ops: u64,
    /// Host unpin calls made.
    pub unpin_ops: u64,
    peak_pages: u64,
}

impl PinLedger {
    /// An empty ledger for host pages of `granule`.
    pub fn new(granule: Granule) -> Self {
        PinLedger {
            granule,
            refs: HashMap::new(),
            pin_ops: 0,
            unpin_ops: 0,
            peak_pages: 0,
        }
    }

    /// The host page size.
    pub fn granule(&self) -> Granule {
        self.granule
    }

    /// Pages pinned at the host now.
    pub fn pinned_pages(&self) -> u64 {
        self.refs.len() as u64
    }

    /// Bytes pinned at the host now.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_pages() * self.granule.size()
    }

    /// The most bytes pinned at once.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_pages * self.granule.size()
    }

    /// The references held on the page containing `ipa`.
    pub fn refs(&self, ipa: Ipa) -> u32 {
        self.refs
            .get(&ipa.page_base(self.granule))
            .copied()
            .unwrap_or(0)
    }

    /// Takes one reference on each page of `pages` (page-aligned IPAs, any order), pinning at
    /// the host the pages that had none, in contiguous runs. On a host error, the references
    /// taken by this call are dropped again and the error is returned.
    pub fn acquire<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        pages: &[Ipa],
    ) -> Result<(), HostError> {
        let mut fresh: Vec<Ipa> = Vec::new();
        for p in pages {
            let page = p.page_base(self.granule);
            let r = self.refs.entry(page).or_insert(0);
            if *r == 0 {
                fresh.push(page);
            }
            *r += 1;
        }
        fresh.sort_unstable();
        fresh.dedup();
        let mut pinned: Vec<IpaRange> = Vec::new();
        for run in runs(&fresh, self.granule) {
            match host.pin(run) {
                Ok(()) => {
                    self.pin_ops += 1;
                    pinned.push(run);
                }
                Err(e) => {
                    // Roll back: unpin what this call pinned, drop its references.
                    for r in pinned {
                        if host.unpin(r).is_ok() {
                            self.unpin_ops += 1;
                        }
                    }
                    for p in pages {
                        let page = p.page_base(self.granule);
                        if let Some(r) = self.refs.get_mut(&page) {
                            *r -= 1;
                            if *r == 0 {
                                self.refs.remove(&page);
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        self.peak_pages = self.peak_pages.max(self.refs.len() as u64);
        Ok(())
    }

    /// Drops one reference on each page of `pages`, unpinning at the host those that reach
    /// zero. Pages without a reference are ignored (never unpinned twice).
    pub fn release<H: HostBacking + ?Sized>(
        &mut self,
        host: &H,
        pages: &[Ipa],
    ) -> Result<(), HostError> {
        let mut last: Vec<Ipa> = Vec::new();
        for p in pages {
            let page = p.page_base(self.granule);
            if let Some(r) = self.refs.get_mut(&page) {
                *r -= 1;
                if *r == 0 {
                    self.refs.remove(&page);
                    last.push(page);
                }
            }
        }
        last.sort_unstable();
        last.dedup();
        let mut first_err = None;
        for run in runs(&last, self.granule) {
            match host.unpin(run) {
                Ok(()) => self.unpin_ops += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Unpins every page, whatever its count (VM stop).
    pub fn release_all<H: HostBacking + ?Sized>(&mut self, host: &H) -> Result<(), HostError> {
        let mut all: Vec<Ipa> = self.refs.drain().map(|(p, _)| p).collect();
        all.sort_unstable();
        let mut first_err = None;
        for run in runs(&all, self.granule) {
            match host.unpin(run) {
                Ok(()) => self.unpin_ops += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Sorted, distinct page addresses as contiguous ranges.
pub fn runs(pages: &[Ipa], granule: Granule) -> impl Iterator<Item = IpaRange> + '_ {
    let size = granule.size();
    let mut i = 0;
    core::iter::from_fn(move || {
        let start = *pages.get(i)?;
        let mut len = size;
        i += 1;
        while pages.get(i).is_some_and(|p| p.0 == start.0 + len) {
            len += size;
            i += 1;
        }
        Some(IpaRange::new(start, len))
    })
}
