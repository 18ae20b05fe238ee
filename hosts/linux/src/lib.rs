//! # spe-host-linux: a real Linux host backing
//!
//! [`LinuxGuestRam`] implements [`HostBacking`] (and [`GuestMemoryRead`]) over real memory, the
//! way a VMM's memory manager would: guest RAM is a shared mapping of a file (a VMM's
//! file-backed memory backend), so the kernel can really page it out even on hosts without swap.
//!
//! | strategy request | system call |
//! |---|---|
//! | pin | `mlock` (a VMM with KVM would use `pin_user_pages` through the kernel; `mlock` is the userspace equivalent: resident and never reclaimed) |
//! | unpin | `munlock` |
//! | fault in | touch the page (a read, or a write for write-protected pages after `mprotect` back to read-write) |
//! | page state | `mincore` |
//! | host reclaim ("swap out") | `madvise(MADV_PAGEOUT)`: write back and evict; locked pages stay |
//! | dirty-log write protection | `mprotect(PROT_READ)` |
//!
//! Kernel errors become typed errors with the fix: `ENOMEM`/`EPERM`/`EAGAIN` from `mlock` is
//! [`HostError::LockLimit`] naming RLIMIT_MEMLOCK.
#![deny(missing_docs)]

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use parking_lot::{Mutex, RwLock};
use spe_policy::arch::{Pmbptr, Pmbsr};
use spe_policy::host::{FaultIn, HostBacking, HostError, HostGranule, PageState};
use spe_policy::{Granule, GuestMemoryRead, Ipa, IpaRange, VcpuId, WriteStopped};

/// Why the guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinuxHostError {
    /// The backing file could not be created or sized.
    #[error(
        "cannot create the guest RAM backing file in {dir}: {source}; point it at a writable directory with free space"
    )]
    File {
        /// Where.
        dir: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `mmap` failed.
    #[error(
        "mmap of {len:#x} bytes of guest RAM failed: {source}; lower the size or check the address-space limit (ulimit -v)"
    )]
    Map {
        /// Requested length.
        len: usize,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The length is not a whole number of host pages.
    #[error("guest RAM length {len:#x} is not a multiple of the host page size {page:#x}")]
    Length {
        /// Requested length.
        len: usize,
        /// The host page size.
        page: usize,
    },
}

#[derive(Debug, Default)]
struct Tracking {
    pinned: BTreeSet<u64>,
    write_protected: BTreeSet<u64>,
    exempt: BTreeSet<u64>,
    injected: Vec<(VcpuId, Pmbsr, Pmbptr)>,
    disabled: BTreeSet<VcpuId>,
    sent_before_switchover: u64,
}

/// Guest RAM in a file-backed shared mapping, as a [`HostBacking`].
#[derive(Debug)]
pub struct LinuxGuestRam {
    base: Ipa,
    len: usize,
    ptr: *mut u8,
    page: usize,
    _file: File,
    /// Guards the bytes: reads take it shared, writes exclusive, so no access races another.
    data: RwLock<()>,
    tracking: Mutex<Tracking>,
}

// SAFETY: `ptr` is a private mapping owned by this value for its whole life; every access to
// the bytes goes through `data` (a RwLock), and the bookkeeping through `tracking` (a Mutex).
unsafe impl Send for LinuxGuestRam {}
// SAFETY: as for Send: shared access is synchronised by `data` and `tracking`.
unsafe impl Sync for LinuxGuestRam {}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// The host's page size.
pub fn host_page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).unwrap_or(4096)
}

/// RLIMIT_MEMLOCK's soft limit in bytes, `None` if unlimited.
pub fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Maps an `mlock` failure to the host error a strategy understands.
pub fn mlock_error(err: &std::io::Error, requested: u64) -> HostError {
    match err.raw_os_error() {
        Some(libc::ENOMEM) | Some(libc::EPERM) | Some(libc::EAGAIN) => HostError::LockLimit {
            requested,
            limit: memlock_limit().unwrap_or(u64::MAX),
        },
        _ => HostError::Other(format!("mlock failed: {err}")),
    }
}

impl LinuxGuestRam {
    /// `len` bytes of guest RAM at IPA `base`, backed by a new file in `dir` (deleted when the
    /// value drops), all pages resident and writable.
    pub fn new(base: Ipa, len: usize, dir: &Path) -> Result<Self, LinuxHostError> {
        let page = host_page_size();
        if len == 0 || len % page != 0 {
            return Err(LinuxHostError::Length { len, page });
        }
        let file_err = |source| LinuxHostError::File {
            dir: dir.display().to_string(),
            source,
        };
        let file = tempfile::tempfile_in(dir).map_err(file_err)?;
        file.set_len(len as u64).map_err(file_err)?;
        // SAFETY: a fresh shared mapping of a file we own, of its full length; the kernel picks
        // the address, so no existing mapping is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(LinuxHostError::Map {
                len,
                source: errno(),
            });
        }
        let ram = LinuxGuestRam {
            base,
            len,
            ptr: ptr.cast(),
            page,
            _file: file,
            data: RwLock::new(()),
            tracking: Mutex::new(Tracking::default()),
        };
        // Touch every page: guest RAM starts resident, as after boot.
        for off in (0..len).step_by(page) {
            ram.touch(off, true);
        }
        Ok(ram)
    }

    /// The IPA range of the RAM.
    pub fn range(&self) -> IpaRange {
        IpaRange::new(self.base, self.len as u64)
    }

    /// The byte offset of `range` inside the mapping, page-aligned, or `None` if outside.
    fn offsets(&self, range: IpaRange) -> Option<(usize, usize)> {
        let start = range.start.0.checked_sub(self.base.0)?;
        let start = start - start % self.page as u64;
        let end = range.end().checked_sub(self.base.0)?;
        let end = end.div_ceil(self.page as u64) * self.page as u64;
        (end <= self.len as u64 && start < end).then_some((start as usize, (end - start) as usize))
    }

    fn touch(&self, off: usize, write: bool) {
        let _guard = self.data.write();
        // SAFETY: `off` is inside the mapping (callers pass page offsets < len); volatile so the
        // access really happens; the write lock excludes every other access.
        unsafe {
            let p = self.ptr.add(off);
            let v = std::ptr::read_volatile(p);
            if write {
                std::ptr::write_volatile(p, v);
            }
        }
    }

    /// Reads one byte of every page of `range` (plain page touching: the baseline a pin is
    /// compared with). Returns the sum of the bytes read, so the reads cannot be elided.
    pub fn touch_pages(&self, range: IpaRange) -> u64 {
        let Some((off, len)) = self.offsets(range) else {
            return 0;
        };
        let _guard = self.data.read();
        let mut sum = 0u64;
        for o in (off..off + len).step_by(self.page) {
            // SAFETY: `o` is inside the mapping; the read lock excludes writers.
            sum += u64::from(unsafe { std::ptr::read_volatile(self.ptr.add(o)) });
        }
        sum
    }

    /// How many pages of `range` are resident (`mincore`).
    pub fn resident_pages(&self, range: IpaRange) -> usize {
        let Some((off, len)) = self.offsets(range) else {
            return 0;
        };
        let mut vec = vec![0u8; len / self.page];
        // SAFETY: the address is page-aligned inside our mapping and `vec` has one byte per page.
        let r = unsafe { libc::mincore(self.ptr.add(off).cast(), len, vec.as_mut_ptr()) };
        if r != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 != 0).count()
    }

    /// Host reclaim of `range` (MMU notifier "swap-out"): `madvise(MADV_PAGEOUT)` writes the
    /// unpinned pages back and evicts them. The kernel refuses PAGEOUT on locked memory (EINVAL),
    /// so pinned pages are left out, as reclaim leaves them. Returns the pages no longer resident.
    pub fn page_out(&self, range: IpaRange) -> Result<usize, HostError> {
        self.offsets(range)
            .ok_or(HostError::NotInMemslot(range.start))?;
        let before = self.resident_pages(range);
        let unpinned: Vec<Ipa> = {
            let t = self.tracking.lock();
            range
                .pages(self.granule())
                .filter(|p| !t.pinned.contains(&p.0))
                .collect()
        };
        for run in spe_policy::pin_ledger::runs(&unpinned, self.granule()) {
            let Some((off, len)) = self.offsets(run) else {
                continue;
            };
            let guard = self.data.write();
            // Reclaim outside kswapd does not write dirty file pages back: do it first, as the
            // host's writeback would have, so the pages are clean and reclaimable.
            // SAFETY: a page-aligned range inside our mapping.
            let synced = unsafe { libc::msync(self.ptr.add(off).cast(), len, libc::MS_SYNC) };
            if synced != 0 {
                return Err(HostError::Other(format!("msync failed: {}", errno())));
            }
            // SAFETY: a page-aligned range inside our mapping; MADV_PAGEOUT only drops clean
            // copies of file pages, which the next access reads back: no memory is invalidated
            // under us.
            let r = unsafe { libc::madvise(self.ptr.add(off).cast(), len, libc::MADV_PAGEOUT) };
            drop(guard);
            if r != 0 {
                return Err(HostError::Other(format!(
                    "madvise(MADV_PAGEOUT) failed: {}",
                    errno()
                )));
            }
        }
        Ok(before.saturating_sub(self.resident_pages(range)))
    }

    /// Dirty-log write protection of `range` (`mprotect(PROT_READ)`), skipping pinned and
    /// exempt pages; `false` restores read-write.
    pub fn write_protect(&self, range: IpaRange, protect: bool) -> Result<(), HostError> {
        let mut t = self.tracking.lock();
        for page in range.pages(Granule::from_size(self.page as u64).unwrap_or(Granule::K4)) {
            if protect && (t.pinned.contains(&page.0) || t.exempt.contains(&page.0)) {
                continue;
            }
            self.protect_page(page, protect)?;
            if protect {
                t.write_protected.insert(page.0);
            } else {
                t.write_protected.remove(&page.0);
            }
        }
        Ok(())
    }

    fn protect_page(&self, page: Ipa, protect: bool) -> Result<(), HostError> {
        let (off, len) = self
            .offsets(IpaRange::new(page, self.page as u64))
            .ok_or(HostError::NotInMemslot(page))?;
        let prot = if protect {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let _guard = self.data.write();
        // SAFETY: a page-aligned page of our mapping; we never write a protected page ourselves
        // (fault_in and write_guest unprotect first).
        let r = unsafe { libc::mprotect(self.ptr.add(off).cast(), len, prot) };
        if r != 0 {
            return Err(HostError::Other(format!("mprotect failed: {}", errno())));
        }
        Ok(())
    }

    /// Buffer management events injected so far.
    pub fn injected(&self) -> usize {
        self.tracking.lock().injected.len()
    }

    /// Bytes pinned now.
    pub fn pinned_bytes(&self) -> u64 {
        self.tracking.lock().pinned.len() as u64 * self.page as u64
    }

    /// Writes bytes at `ipa` (fixture setup: tables and buffers).
    pub fn write_bytes(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        self.write_guest(ipa, bytes)
    }
}

impl Drop for LinuxGuestRam {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with exactly this address and length and is
        // not used after drop.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

impl GuestMemoryRead for LinuxGuestRam {
    type Error = spe_policy::UnbackedIpa;

    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), Self::Error> {
        let unbacked = spe_policy::UnbackedIpa {
            ipa,
            len: buf.len() as u64,
        };
        let off = ipa.0.checked_sub(self.base.0).ok_or(unbacked)?;
        let end = off.checked_add(buf.len() as u64).ok_or(unbacked)?;
        if end > self.len as u64 {
            return Err(unbacked);
        }
        let _guard = self.data.read();
        // SAFETY: `off..end` is inside the mapping (checked above); the read lock excludes
        // writers; `buf` does not overlap the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }
}

impl HostBacking for LinuxGuestRam {
    fn granule(&self) -> HostGranule {
        Granule::from_size(self.page as u64).unwrap_or(Granule::K4)
    }

    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        let (off, len) = self
            .offsets(range)
            .ok_or(HostError::NotInMemslot(range.start))?;
        let mut t = self.tracking.lock();
        let pages: Vec<u64> = range.pages(self.granule()).map(|p| p.0).collect();
        if let Some(p) = pages.iter().find(|p| t.pinned.contains(p)) {
            return Err(HostError::Other(format!(
                "IPA {:#x} pinned twice: the strategy must count references",
                p
            )));
        }
        for p in &pages {
            if t.write_protected.remove(p) {
                self.protect_page(Ipa(*p), false)?;
            }
        }
        // SAFETY: a page-aligned range inside our mapping.
        let r = unsafe { libc::mlock(self.ptr.add(off).cast(), len) };
        if r != 0 {
            return Err(mlock_error(&errno(), len as u64));
        }
        t.pinned.extend(pages);
        Ok(())
    }

    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        let (off, len) = self
            .offsets(range)
            .ok_or(HostError::NotInMemslot(range.start))?;
        let mut t = self.tracking.lock();
        let pages: Vec<u64> = range.pages(self.granule()).map(|p| p.0).collect();
        if let Some(p) = pages.iter().find(|p| !t.pinned.contains(p)) {
            return Err(HostError::NotPinned(Ipa(*p)));
        }
        // SAFETY: a page-aligned range inside our mapping.
        let r = unsafe { libc::munlock(self.ptr.add(off).cast(), len) };
        if r != 0 {
            return Err(HostError::Other(format!("munlock failed: {}", errno())));
        }
        for p in pages {
            t.pinned.remove(&p);
        }
        Ok(())
    }

    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        let page = ipa.page_base(self.granule());
        let (off, _) = self
            .offsets(IpaRange::new(page, self.page as u64))
            .ok_or(HostError::NotInMemslot(ipa))?;
        let protected = self.tracking.lock().write_protected.remove(&page.0);
        if protected {
            self.protect_page(page, false)?;
        }
        let resident = self.resident_pages(IpaRange::new(page, self.page as u64)) == 1;
        self.touch(off, true);
        Ok(if resident && !protected {
            FaultIn::AlreadyPresent
        } else {
            FaultIn::MadePresent
        })
    }

    fn page_state(&self, ipa: Ipa) -> PageState {
        let page = ipa.page_base(self.granule());
        let in_memslot = self.range().contains(ipa);
        let t = self.tracking.lock();
        PageState {
            present: in_memslot && self.resident_pages(IpaRange::new(page, self.page as u64)) == 1,
            write_protected: t.write_protected.contains(&page.0),
            pinned: t.pinned.contains(&page.0),
            dirty_log_exempt: t.exempt.contains(&page.0),
            in_memslot,
        }
    }

    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError> {
        let pages: Vec<Ipa> = range.pages(self.granule()).collect();
        {
            let mut t = self.tracking.lock();
            for p in &pages {
                if exempt {
                    t.exempt.insert(p.0);
                } else {
                    t.exempt.remove(&p.0);
                }
            }
        }
        if exempt {
            for p in pages {
                let was = self.tracking.lock().write_protected.remove(&p.0);
                if was {
                    self.protect_page(p, false)?;
                }
            }
        }
        Ok(())
    }

    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError> {
        self.tracking.lock().sent_before_switchover += range.len;
        Ok(())
    }

    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        self.write_guest_batch(&[(ipa, bytes)])
            .map_err(|stopped| stopped.error)
    }

    /// One tracking lock for the pages to unprotect, one write lock for the copies: however
    /// many pages the batch touches.
    fn write_guest_batch(&self, writes: &[(Ipa, &[u8])]) -> Result<(), WriteStopped> {
        let offset = |ipa: Ipa, len: usize| {
            ipa.0
                .checked_sub(self.base.0)
                .filter(|o| o.saturating_add(len as u64) <= self.len as u64)
        };
        // The writes before the first outside the mapping are done, as one by one.
        let inside = writes
            .iter()
            .position(|(ipa, bytes)| offset(*ipa, bytes.len()).is_none())
            .unwrap_or(writes.len());
        // Dirty logging write-protects pages (mprotect): the pages to make writable first,
        // with the write each belongs to.
        let protected: Vec<(usize, Ipa)> = {
            let mut t = self.tracking.lock();
            if t.write_protected.is_empty() {
                Vec::new()
            } else {
                let mut out = Vec::new();
                for (i, (ipa, bytes)) in writes[..inside].iter().enumerate() {
                    let range = IpaRange::new(*ipa, bytes.len() as u64);
                    for page in range.pages(self.granule()) {
                        if t.write_protected.remove(&page.0) {
                            out.push((i, page));
                        }
                    }
                }
                out
            }
        };
        let mut done = inside;
        let mut failed = None;
        for (k, (i, page)) in protected.iter().enumerate() {
            if let Err(e) = self.protect_page(*page, false) {
                // Still protected: this page and every later one stay tracked as such.
                let mut t = self.tracking.lock();
                for (_, p) in &protected[k..] {
                    t.write_protected.insert(p.0);
                }
                done = *i;
                failed = Some(e);
                break;
            }
        }
        {
            let _guard = self.data.write();
            for (ipa, bytes) in &writes[..done] {
                let off = offset(*ipa, bytes.len()).unwrap_or_default();
                // SAFETY: `off..off + len` is inside the mapping (checked above) and writable
                // (unprotected above); the write lock excludes every other access; `bytes`
                // does not overlap the mapping.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        self.ptr.add(off as usize),
                        bytes.len(),
                    );
                }
            }
        }
        match failed {
            Some(error) => Err(WriteStopped {
                written: done,
                error,
            }),
            None if inside < writes.len() => Err(WriteStopped {
                written: inside,
                error: HostError::NotInMemslot(writes[inside].0),
            }),
            None => Ok(()),
        }
    }

    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, pmbptr: Pmbptr) -> Result<(), HostError> {
        self.tracking.lock().injected.push((vcpu, pmbsr, pmbptr));
        Ok(())
    }

    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError> {
        self.tracking.lock().disabled.insert(vcpu);
        Ok(())
    }
}
