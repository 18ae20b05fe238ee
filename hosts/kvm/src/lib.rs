//! A real KVM stage 2 for spe-policy.
//!
//! The SPU is arm64 and stays modelled, but the part of the problem that is KVM's generic MMU —
//! memslots, the stage 2 mappings (shadow paging under `kvm_pvm`), MMU-notifier zaps, dirty
//! logging — is the real kernel here. A vCPU storing to the buffer's IPAs takes a stage 2 fault
//! exactly where an SPU writing the same IPAs would have stopped, so [`KvmVm::write_pass`] is
//! the SPU stand-in: one store per 64-byte record over a range, then a port-I/O exit.
//!
//! The guest runs in 64-bit user mode (CPL3): at CPL0 `kvm_pvm` emulates every instruction and
//! never takes a stage 2 fault. The kernel's own counters ([`Stats`], from `KVM_GET_STATS_FD`)
//! say how many faults a pass took and how many mappings a host event zapped.
//!
//! What is here: the VM over anonymous, file-backed (`MAP_SHARED`) or guest_memfd memory, the
//! writer vCPU, the counters, host events (`MADV_DONTNEED`, `msync`, `MADV_PAGEOUT`, THP
//! collapse, KSM, guest_memfd hole punch, memslot delete and re-add), pins of two kinds
//! (`mlock`, resident only, and a long-term io_uring pin), dirty logging (classic,
//! manual-protect and the dirty ring), post-copy over userfaultfd ([`post_copy`]), the
//! [`backing::KvmBacking`] that gives the strategies this VM as their `HostBacking`, and
//! [`check`], the host model against this kernel.

pub mod backing;
pub mod check;
mod guest;
pub mod ksm;
pub mod post_copy;
mod stats;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

pub use stats::Stats;

/// The host page size the crate assumes (x86_64).
pub const PAGE: u64 = 4096;
/// The bytes one SPE record takes in the stand-in's writes (one store per record).
pub const RECORD: u64 = 64;
/// The port the guest writes to when a pass ends.
const DONE_PORT: u16 = 0x10;

/// Why a KVM operation failed: the call, the errno and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` cannot be opened.
    #[error("/dev/kvm: {0}; run as root or join the kvm group, and load kvm (or kvm_pvm)")]
    Unavailable(std::io::Error),
    /// An ioctl or system call failed.
    #[error("{call}: {err}; {fix}")]
    Call {
        /// The call and its argument.
        call: &'static str,
        /// What the kernel said.
        err: std::io::Error,
        /// What to do about it.
        fix: &'static str,
    },
    /// The guest stopped for a reason other than the end of a pass.
    #[error("the writer vCPU exited with {0} instead of its end-of-pass port write")]
    UnexpectedExit(String),
    /// A layout argument is out of range.
    #[error("{what} = {value:#x}: {fix}")]
    Layout {
        /// The argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The range it must be in.
        fix: &'static str,
    },
}

impl KvmError {
    /// The failure of the libc call just made, with the errno it left.
    pub(crate) fn last_os(call: &'static str, fix: &'static str) -> Self {
        Self::call(call, std::io::Error::last_os_error(), fix)
    }

    pub(crate) fn call(
        call: &'static str,
        err: impl Into<std::io::Error>,
        fix: &'static str,
    ) -> Self {
        KvmError::Call {
            call,
            err: err.into(),
            fix,
        }
    }
}

/// Whether KVM can be used here (`/dev/kvm` opens and a VM can be created), and if not, why.
pub fn usable() -> Result<(), KvmError> {
    let kvm = Kvm::new().map_err(|e| KvmError::Unavailable(e.into()))?;
    kvm.create_vm().map(drop).map_err(|e| {
        KvmError::call(
            "KVM_CREATE_VM",
            e,
            "the device opens but refuses VMs: is virtualization enabled (nested, BIOS)?",
        )
    })
}

/// Anonymous host memory backing the guest RAM, 2 MiB aligned so IPA and host huge pages
/// line up (a THP collapse of a 2 MiB-aligned guest range is one host huge page); unmapped on
/// drop.
#[derive(Debug)]
struct HostMemory {
    /// Where the mapping starts (what munmap takes).
    base: *mut u8,
    /// The mapping's length, with the alignment slack.
    mapped: usize,
    /// IPA 0's host address.
    addr: *mut u8,
    len: usize,
}

const HUGE: usize = 2 << 20;
/// `GUEST_MEMFD_FLAG_MMAP` and `GUEST_MEMFD_FLAG_INIT_SHARED` (Linux 6.18 uAPI; not yet in
/// kvm-bindings 0.14).
const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

impl HostMemory {
    fn new(len: usize) -> Result<Self, KvmError> {
        let mapped = len + HUGE;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(KvmError::last_os(
                "mmap(guest RAM)",
                "lower the RAM size or raise the address-space limit",
            ));
        }
        let base: *mut u8 = base.cast();
        let slack = (HUGE - (base as usize % HUGE)) % HUGE;
        // SAFETY: slack < HUGE, so the aligned start and `len` bytes after it are inside the
        // mapping of len + HUGE bytes.
        let addr = unsafe { base.add(slack) };
        // 4 KiB host pages, so one zapped page is one mapping (THP would make it 512); a test
        // that wants huge pages asks for them on its range. Failure only means THP stays as
        // configured; the counters still relate.
        // SAFETY: advice on the mapping made above.
        unsafe { libc::madvise(addr.cast(), len, libc::MADV_NOHUGEPAGE) };
        Ok(HostMemory {
            base,
            mapped,
            addr,
            len,
        })
    }
}

impl HostMemory {
    /// A file of `len` bytes mapped shared (a VMM's file memory backend): its pages are the
    /// page cache's, written back by `msync`.
    fn of_file(file: &std::fs::File, len: usize) -> Result<Self, KvmError> {
        file.set_len(len as u64).map_err(|e| {
            KvmError::call(
                "ftruncate(guest RAM file)",
                e,
                "the directory must be writable",
            )
        })?;
        Self::shared(
            file.as_raw_fd(),
            len,
            "mmap(guest RAM file)",
            "the file must be on a disk (not tmpfs)",
        )
    }

    fn shared(
        fd: i32,
        len: usize,
        call: &'static str,
        fix: &'static str,
    ) -> Result<Self, KvmError> {
        // SAFETY: a new shared mapping of our own fd; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(KvmError::last_os(call, fix));
        }
        Ok(HostMemory {
            base: base.cast(),
            mapped: len,
            addr: base.cast(),
            len,
        })
    }

    /// The whole of a guest_memfd, mapped shared (`GUEST_MEMFD_FLAG_MMAP`): the VMM's view of
    /// the memory KVM maps the guest from.
    fn of_guest_memfd(fd: &OwnedFd, len: usize) -> Result<Self, KvmError> {
        Self::shared(
            fd.as_raw_fd(),
            len,
            "mmap(guest_memfd)",
            "the guest_memfd must be created with GUEST_MEMFD_FLAG_MMAP | INIT_SHARED",
        )
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the VM holding it is dropped first
        // (field order in `KvmVm`).
        unsafe { libc::munmap(self.base.cast(), self.mapped) };
    }
}

/// `struct kvm_dirty_gfn`: 16 bytes (`flags`, `slot`, `offset`).
const DIRTY_GFN_BYTES: u64 = 16;
const DIRTY_GFN_F_DIRTY: u32 = 1;
const DIRTY_GFN_F_RESET: u32 = 2;
/// `_IO(KVMIO, 0xc7)`.
const KVM_RESET_DIRTY_RINGS: libc::c_ulong = 0xaec7;

/// A vCPU's dirty ring, mapped from its fd.
#[derive(Debug)]
struct DirtyRing {
    gfns: *mut kvm_bindings::kvm_dirty_gfn,
    entries: u32,
    /// The next entry to collect.
    next: u32,
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new_with_dirty_ring, unmapped once.
        unsafe {
            libc::munmap(
                self.gfns.cast(),
                (u64::from(self.entries) * DIRTY_GFN_BYTES) as usize,
            )
        };
    }
}

/// What backs the guest RAM.
#[derive(Debug)]
enum Backing {
    /// Private anonymous memory.
    Anonymous,
    /// A file mapped shared (kept open for the mapping's life).
    File { _file: std::fs::File },
    /// A guest_memfd mapped shared.
    GuestMemfd(OwnedFd),
}

/// One long-term pinned range: an io_uring whose registered fixed buffer is the range.
struct LongTermPin {
    ipa: u64,
    len: u64,
    ring: io_uring::IoUring,
}

impl std::fmt::Debug for LongTermPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LongTermPin({:#x}+{:#x})", self.ipa, self.len)
    }
}

/// A KVM VM with one memslot over anonymous memory and one vCPU that writes like the SPU.
#[derive(Debug)]
pub struct KvmVm {
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: Kvm,
    /// Long-term pins: one io_uring per pinned range, its registered buffer the range.
    long_term: Vec<LongTermPin>,
    // Dropped after the VM and vCPU (fields drop in order), so KVM never maps freed memory.
    memory: HostMemory,
    /// What the memory is (and the file or guest_memfd behind it, closed after the mapping).
    backing: Backing,
    /// The vCPU's dirty ring, when the VM was made with one.
    ring: Option<DirtyRing>,
    vcpu_stats: Stats,
    vm_stats: Stats,
    dirty_logging: bool,
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        // Closing an io_uring releases its buffers later, in a kernel work item; unregistering
        // releases them now, so the pins end when the VM does (measured: VmPin stayed up
        // after a plain drop). An error here has no one to report to; the close still frees.
        for pin in self.long_term.drain(..) {
            let _ = pin.ring.submitter().unregister_buffers();
        }
    }
}

// SAFETY: the raw pointer is to a mapping the VM owns for its whole life; every access goes
// through `&self`/`&mut self` methods that take the VM's own borrow rules.
unsafe impl Send for KvmVm {}

impl KvmVm {
    /// A VM with `ram` bytes of guest RAM at IPA 0 (a multiple of 2 MiB, 4 MiB to 1 GiB).
    pub fn new(ram: u64) -> Result<Self, KvmError> {
        Self::build(ram, |_| {
            Ok((HostMemory::new(ram as usize)?, Backing::Anonymous))
        })
    }

    /// A VM like [`KvmVm::new`] whose guest RAM is `file` mapped shared (a VMM's file memory
    /// backend, `MAP_SHARED`): its pages are the page cache's, written back by [`KvmVm::msync`].
    pub fn new_file_backed(ram: u64, file: std::fs::File) -> Result<Self, KvmError> {
        Self::build(ram, |_| {
            Ok((
                HostMemory::of_file(&file, ram as usize)?,
                Backing::File { _file: file },
            ))
        })
    }

    /// [`KvmVm::new_file_backed`] over a new file at `path` (created or truncated; the caller
    /// removes it). Use a disk file system: on tmpfs the pages are shmem, never written back.
    pub fn new_file_backed_at(ram: u64, path: &std::path::Path) -> Result<Self, KvmError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                KvmError::call(
                    "open(the file memory backend)",
                    e,
                    "pass a writable directory on a disk file system",
                )
            })?;
        Self::new_file_backed(ram, file)
    }

    /// A VM like [`KvmVm::new`] whose memslot is a guest_memfd (`KVM_CREATE_GUEST_MEMFD` with
    /// `GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED`, the memory the KVM SPE RFC v7
    /// pins), mapped shared by the VMM.
    pub fn new_guest_memfd(ram: u64) -> Result<Self, KvmError> {
        Self::build(ram, |vm| {
            let gmem = vm
                .create_guest_memfd(kvm_bindings::kvm_create_guest_memfd {
                    size: ram,
                    flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
                    reserved: [0; 6],
                })
                .map_err(|e| {
                    KvmError::call(
                        "KVM_CREATE_GUEST_MEMFD(MMAP | INIT_SHARED)",
                        e,
                        "needs Linux 6.18 (KVM_CAP_GUEST_MEMFD_FLAGS with MMAP and INIT_SHARED)",
                    )
                })?;
            // SAFETY: a new fd nothing else owns.
            let gmem = unsafe { OwnedFd::from_raw_fd(gmem) };
            let memory = HostMemory::of_guest_memfd(&gmem, ram as usize)?;
            Ok((memory, Backing::GuestMemfd(gmem)))
        })
    }

    /// A VM like [`KvmVm::new`] with KVM's dirty ring (`KVM_CAP_DIRTY_LOG_RING`, `entries`
    /// per vCPU, a power of two) instead of the dirty bitmap: with dirty logging on, the pages
    /// the vCPU writes are pushed to its ring ([`KvmVm::harvest_dirty_ring`]).
    pub fn new_with_dirty_ring(ram: u64, entries: u32) -> Result<Self, KvmError> {
        let mut vm = Self::build(ram, |vm| {
            let cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_DIRTY_LOG_RING,
                args: [u64::from(entries) * DIRTY_GFN_BYTES, 0, 0, 0],
                ..Default::default()
            };
            vm.enable_cap(&cap).map_err(|e| {
                KvmError::call(
                    "KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING)",
                    e,
                    "a power-of-two ring no larger than the host allows (KVM_CHECK_EXTENSION)",
                )
            })?;
            Ok((HostMemory::new(ram as usize)?, Backing::Anonymous))
        })?;
        let bytes = u64::from(entries) * DIRTY_GFN_BYTES;
        // SAFETY: maps the vCPU's dirty ring, `bytes` long at the uAPI's page offset; shared
        // with KVM, unmapped in Drop.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vm.vcpu.as_raw_fd(),
                i64::from(kvm_bindings::KVM_DIRTY_LOG_PAGE_OFFSET) * PAGE as i64,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(KvmError::last_os(
                "mmap(vcpu dirty ring)",
                "the dirty ring must be enabled before the vCPU is created",
            ));
        }
        vm.ring = Some(DirtyRing {
            gfns: ring.cast(),
            entries,
            next: 0,
        });
        Ok(vm)
    }

    /// The dirty ring's entries since the last harvest, as guest page numbers, each marked
    /// collected; then `KVM_RESET_DIRTY_RINGS`, which write-protects every collected page
    /// again (the ring has no "collect but keep writable": an exempt page cannot be skipped
    /// without stalling the ring behind it).
    pub fn harvest_dirty_ring(&mut self) -> Result<Vec<u64>, KvmError> {
        let Some(ring) = &mut self.ring else {
            return Err(KvmError::Layout {
                what: "harvest_dirty_ring on a VM without a dirty ring",
                value: 0,
                fix: "make the VM with KvmVm::new_with_dirty_ring",
            });
        };
        let mut pages = Vec::new();
        for _ in 0..ring.entries {
            let i = (ring.next % ring.entries) as usize;
            // SAFETY: `i` < entries: inside the ring mapping.
            let gfn = unsafe { ring.gfns.add(i) };
            // SAFETY: that entry's flags word (4-byte aligned), shared with KVM: accessed only
            // atomically, the uAPI's acquire/release protocol.
            let flags = unsafe {
                &*(std::ptr::addr_of!((*gfn).flags) as *const std::sync::atomic::AtomicU32)
            };
            if flags.load(std::sync::atomic::Ordering::Acquire) & DIRTY_GFN_F_DIRTY == 0 {
                break;
            }
            // SAFETY: the entry is ours to read once its DIRTY flag was seen (acquire above);
            // KVM does not touch it until it is marked collected.
            pages.push(unsafe { std::ptr::addr_of!((*gfn).offset).read_volatile() });
            flags.store(DIRTY_GFN_F_RESET, std::sync::atomic::Ordering::Release);
            ring.next = ring.next.wrapping_add(1);
        }
        // SAFETY: a plain ioctl on our VM fd, no argument.
        let r = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_RESET_DIRTY_RINGS) };
        if r < 0 {
            return Err(KvmError::last_os(
                "KVM_RESET_DIRTY_RINGS",
                "the VM must have a dirty ring",
            ));
        }
        Ok(pages)
    }

    /// The VM, its memslot over the memory `make` provides, and the writer vCPU.
    fn build(
        ram: u64,
        make: impl FnOnce(&VmFd) -> Result<(HostMemory, Backing), KvmError>,
    ) -> Result<Self, KvmError> {
        if !(4 << 20..=1 << 30).contains(&ram) || ram % (2 << 20) != 0 {
            return Err(KvmError::Layout {
                what: "ram",
                value: ram,
                fix: "a multiple of 2 MiB from 4 MiB to 1 GiB (the guest's identity map)",
            });
        }
        let kvm = Kvm::new().map_err(|e| KvmError::Unavailable(e.into()))?;
        let vm = kvm.create_vm().map_err(|e| {
            KvmError::call(
                "KVM_CREATE_VM",
                e,
                "check dmesg: the KVM module refused a VM",
            )
        })?;
        let (memory, backing) = make(&vm)?;
        guest::write_image(&memory, ram);
        match &backing {
            Backing::GuestMemfd(gmem) => {
                let region = kvm_bindings::kvm_userspace_memory_region2 {
                    slot: 0,
                    flags: kvm_bindings::KVM_MEM_GUEST_MEMFD,
                    guest_phys_addr: 0,
                    memory_size: ram,
                    userspace_addr: memory.addr as u64,
                    guest_memfd_offset: 0,
                    guest_memfd: gmem.as_raw_fd() as u32,
                    pad1: 0,
                    pad2: [0; 14],
                };
                // SAFETY: the mapping and the guest_memfd are owned by the returned value,
                // which outlives the VM (drop order), and are never remapped while the slot
                // exists.
                unsafe { vm.set_user_memory_region2(region) }.map_err(|e| {
                    KvmError::call(
                        "KVM_SET_USER_MEMORY_REGION2(slot 0, guest_memfd)",
                        e,
                        "the host refused a guest_memfd memslot",
                    )
                })?;
            }
            Backing::Anonymous | Backing::File { .. } => {
                let region = kvm_userspace_memory_region {
                    slot: 0,
                    flags: 0,
                    guest_phys_addr: 0,
                    memory_size: ram,
                    userspace_addr: memory.addr as u64,
                };
                // SAFETY: the region is the mapping owned by the returned value, which
                // outlives the VM (drop order) and is never remapped while the slot exists.
                unsafe { vm.set_user_memory_region(region) }.map_err(|e| {
                    KvmError::call(
                        "KVM_SET_USER_MEMORY_REGION(slot 0)",
                        e,
                        "the host refused the memslot",
                    )
                })?;
            }
        }
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| KvmError::call("KVM_CREATE_VCPU(0)", e, "the host refused a vCPU"))?;
        guest::set_up_vcpu(&kvm, &vcpu)?;
        let vcpu_stats = Stats::open(vcpu.as_raw_fd(), "KVM_GET_STATS_FD(vcpu)")?;
        let vm_stats = Stats::open(vm.as_raw_fd(), "KVM_GET_STATS_FD(vm)")?;
        Ok(KvmVm {
            vcpu,
            vm,
            _kvm: kvm,
            memory,
            vcpu_stats,
            vm_stats,
            dirty_logging: false,
            long_term: Vec::new(),
            backing,
            ring: None,
        })
    }

    /// `msync(MS_SYNC)` of `[ipa, ipa + len)` of a file-backed VM: the dirty pages are written
    /// back, and writeback write-protects them (their stage 2 mappings too).
    pub fn msync(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        if !matches!(self.backing, Backing::File { .. }) {
            return Err(KvmError::Layout {
                what: "msync on a VM without a file backend",
                value: ipa,
                fix: "make the VM with KvmVm::new_file_backed",
            });
        }
        self.on_host_range(
            ipa,
            len,
            "msync(MS_SYNC)",
            "the range must be mapped",
            // SAFETY: a page-aligned range of our own shared file mapping.
            |addr, len| unsafe { libc::msync(addr, len, libc::MS_SYNC) },
        )
    }

    /// `fallocate(PUNCH_HOLE)` of `[ipa, ipa + len)` in the guest_memfd: the pages are freed
    /// and their stage 2 mappings zapped (the guest_memfd's invalidation, not an MMU notifier).
    pub fn punch_hole(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        let Backing::GuestMemfd(fd) = &self.backing else {
            return Err(KvmError::Layout {
                what: "punch_hole on a VM without guest_memfd",
                value: ipa,
                fix: "make the VM with KvmVm::new_guest_memfd",
            });
        };
        self.host_range(ipa, len)?;
        // SAFETY: a plain system call on our own fd, inside its size (checked above).
        let r = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                ipa as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(KvmError::last_os(
                "fallocate(guest_memfd, PUNCH_HOLE)",
                "the range must be page-aligned and inside the guest_memfd",
            ));
        }
        Ok(())
    }

    /// The guest RAM size.
    pub fn ram(&self) -> u64 {
        self.memory.len as u64
    }

    /// The lowest IPA a buffer may start at (below it: the guest's page tables and code).
    pub fn first_buffer_ipa(&self) -> u64 {
        guest::FIRST_FREE
    }

    /// Which pages of `[ipa, ipa + len)` take a stage 2 fault, page by page: one write pass
    /// per page (a port-I/O exit each, about 28 us here) and the `pf_fixed` delta of each.
    /// This is where an SPU writing the range would stop, page after page, as a strategy
    /// repairs each stop. The passes install the mappings as they go (the range is mapped
    /// afterwards), and KVM may map up to 8 present neighbours at a fault (prefetch), so only
    /// pages whose host memory was gone or write-protected are sure to show, each once.
    pub fn faulted_pages(&mut self, ipa: u64, len: u64) -> Result<Vec<u64>, KvmError> {
        let mut faulted = Vec::new();
        let mut page = ipa & !(PAGE - 1);
        while page < ipa.saturating_add(len) {
            let before = self.vcpu_stat("pf_fixed")?;
            self.write_pass(page, PAGE)?;
            if self.vcpu_stat("pf_fixed")? > before {
                faulted.push(page);
            }
            page += PAGE;
        }
        Ok(faulted)
    }

    /// Runs the writer over `[ipa, ipa + len)`: one 8-byte store per 64-byte record, in
    /// address order, then the end-of-pass exit. The vCPU is parked again when it returns.
    pub fn write_pass(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        let end = ipa.saturating_add(len);
        if ipa < guest::FIRST_FREE || end > self.ram() || len == 0 || ipa % RECORD != 0 {
            return Err(KvmError::Layout {
                what: "buffer ipa",
                value: ipa,
                fix: "a record-aligned, non-empty range above first_buffer_ipa() and inside RAM",
            });
        }
        guest::start_pass(&self.vcpu, ipa, len / RECORD)?;
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(DONE_PORT, _)) => return Ok(()),
                Ok(other) => return Err(KvmError::UnexpectedExit(format!("{other:?}"))),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(KvmError::call("KVM_RUN", e, "see dmesg")),
            }
        }
    }

    /// The vCPU's counter `name` (`pf_fixed`: stage 2 faults that installed a mapping;
    /// `pf_taken`, `exits`, ...).
    pub fn vcpu_stat(&self, name: &str) -> Result<u64, KvmError> {
        self.vcpu_stats.read(name)
    }

    /// The VM's counter `name` (`pages_4k`: 4 KiB stage 2 mappings present now).
    pub fn vm_stat(&self, name: &str) -> Result<u64, KvmError> {
        self.vm_stats.read(name)
    }

    fn host_range(&self, ipa: u64, len: u64) -> Result<*mut libc::c_void, KvmError> {
        let end = ipa.saturating_add(len);
        if ipa % PAGE != 0 || len % PAGE != 0 || end > self.ram() {
            return Err(KvmError::Layout {
                what: "host range ipa",
                value: ipa,
                fix: "page-aligned and inside RAM",
            });
        }
        // SAFETY: in bounds of the mapping (checked above).
        Ok(unsafe { self.memory.addr.add(ipa as usize) }.cast())
    }

    /// Copies guest memory at `ipa` into `buf` (the VMM's view of its RAM; the vCPU is parked
    /// between passes, so nothing writes it meanwhile).
    pub fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), KvmError> {
        let at = self.bytes_at(ipa, buf.len(), 0, "read ipa", "inside RAM")?;
        // SAFETY: `at..at + len` is inside the mapping (bytes_at); `buf` is ours.
        unsafe { std::ptr::copy_nonoverlapping(at, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// The host address of `[ipa, ipa + len)` if it lies inside RAM and at or above `floor`.
    fn bytes_at(
        &self,
        ipa: u64,
        len: usize,
        floor: u64,
        what: &'static str,
        fix: &'static str,
    ) -> Result<*mut u8, KvmError> {
        let end = ipa.checked_add(len as u64);
        if end.is_none_or(|e| e > self.ram()) || ipa < floor {
            return Err(KvmError::Layout {
                what,
                value: ipa,
                fix,
            });
        }
        // SAFETY: in bounds of the mapping (checked above).
        Ok(unsafe { self.memory.addr.add(ipa as usize) })
    }

    /// Writes `bytes` into guest memory at `ipa` through the VMM's ordinary path (a host
    /// write: the kernel faults the page in, marks it dirty, and KVM maps it at stage 2 at
    /// the vCPU's next access).
    pub fn write(&self, ipa: u64, bytes: &[u8]) -> Result<(), KvmError> {
        let at = self.bytes_at(
            ipa,
            bytes.len(),
            guest::FIRST_FREE,
            "write ipa",
            "inside RAM, above first_buffer_ipa() (the guest's code and tables live below)",
        )?;
        // SAFETY: `at..at + len` is inside the mapping and above the guest's image
        // (bytes_at); the vCPU is parked; `bytes` does not overlap the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
        Ok(())
    }

    /// Whether dirty logging is on for the memslot.
    pub fn dirty_logging(&self) -> bool {
        self.dirty_logging
    }

    /// Makes the host pages of `[ipa, ipa + len)` resident and writable now
    /// (`MADV_POPULATE_WRITE`): KVM maps them at stage 2 at the vCPU's next access.
    pub fn populate(&self, ipa: u64, len: u64) -> Result<(), KvmError> {
        self.on_host_range(
            ipa,
            len,
            "madvise(MADV_POPULATE_WRITE)",
            "needs Linux 5.14 or later",
            // SAFETY: a page-aligned range inside our own anonymous mapping; populating does
            // not change its contents.
            |addr, len| unsafe { libc::madvise(addr, len, libc::MADV_POPULATE_WRITE) },
        )
    }

    /// Whether the host page of `ipa` is resident (`mincore`): what userspace can know. Its
    /// stage 2 mapping is KVM's and not visible from here.
    pub fn resident(&self, ipa: u64) -> Result<bool, KvmError> {
        let page = ipa & !(PAGE - 1);
        let addr = self.host_range(page, PAGE)?;
        let mut vec = [0u8; 1];
        // SAFETY: one page of our own mapping, one result byte.
        if unsafe { libc::mincore(addr, PAGE as usize, vec.as_mut_ptr()) } != 0 {
            return Err(KvmError::last_os("mincore", "the range must be mapped"));
        }
        Ok(vec[0] & 1 != 0)
    }

    /// The host address of `[ipa, ipa + len)` (page-aligned, inside RAM).
    pub(crate) fn host_address(&self, ipa: u64, len: u64) -> Result<*mut u8, KvmError> {
        self.host_range(ipa, len).map(|p| p.cast())
    }

    /// Runs a memory-management call on the host pages behind `[ipa, ipa + len)`; a non-zero
    /// return becomes an error naming the call, the errno and `fix`.
    fn on_host_range(
        &self,
        ipa: u64,
        len: u64,
        call: &'static str,
        fix: &'static str,
        f: impl FnOnce(*mut libc::c_void, usize) -> libc::c_int,
    ) -> Result<(), KvmError> {
        let addr = self.host_range(ipa, len)?;
        if f(addr, len as usize) != 0 {
            return Err(KvmError::last_os(call, fix));
        }
        Ok(())
    }

    /// The host drops the pages behind `[ipa, ipa + len)` (`MADV_DONTNEED`, as a balloon or
    /// a VMM's discard does): the MMU notifier zaps their stage 2 mappings.
    pub fn discard(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        if ipa < guest::FIRST_FREE {
            return Err(KvmError::Layout {
                what: "discard ipa",
                value: ipa,
                fix: "above first_buffer_ipa(): the guest's code and tables live below",
            });
        }
        self.on_host_range(
            ipa,
            len,
            "madvise(MADV_DONTNEED)",
            "EINVAL: the range is mlocked; unlock it first",
            // SAFETY: a page-aligned range inside our own anonymous mapping; the guest sees
            // zeros afterwards, which the writer does not read.
            |addr, len| unsafe { libc::madvise(addr, len, libc::MADV_DONTNEED) },
        )
    }

    /// Turns classic dirty logging on or off for the memslot (`KVM_MEM_LOG_DIRTY_PAGES`).
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), KvmError> {
        self.set_slot(
            self.ram(),
            on,
            "KVM_SET_USER_MEMORY_REGION(dirty log)",
            "the host refused dirty logging",
        )?;
        self.dirty_logging = on;
        Ok(())
    }

    /// `KVM_SET_USER_MEMORY_REGION` of slot 0 over the VM's own mapping, `size` bytes (0
    /// removes it), with dirty logging as `logging` says.
    fn set_slot(
        &self,
        size: u64,
        logging: bool,
        call: &'static str,
        fix: &'static str,
    ) -> Result<(), KvmError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if logging { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: self.memory.addr as u64,
        };
        // SAFETY: the mapping made at creation (or the slot's removal), which outlives the VM
        // and is never remapped while the slot exists.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| KvmError::call(call, e, fix))
    }

    /// Removes the memslot (size 0: KVM zaps every stage 2 mapping of it) and adds it back
    /// over the same memory, as a VMM does to resize or replace a memslot.
    pub fn readd_memslot(&mut self) -> Result<(), KvmError> {
        if !matches!(self.backing, Backing::Anonymous | Backing::File { .. }) {
            return Err(KvmError::Layout {
                what: "readd_memslot on a guest_memfd VM",
                value: 0,
                fix: "a guest_memfd memslot is re-added with KVM_SET_USER_MEMORY_REGION2",
            });
        }
        for size in [0, self.ram()] {
            self.set_slot(
                size,
                self.dirty_logging,
                "KVM_SET_USER_MEMORY_REGION(remove / re-add)",
                "the host refused the memslot change",
            )?;
        }
        Ok(())
    }

    /// `KVM_GET_DIRTY_LOG`: the pages written since the last call, as page numbers. Without
    /// manual protection the call write-protects them again, so the next writes fault.
    pub fn take_dirty_pages(&mut self) -> Result<Vec<u64>, KvmError> {
        if !self.dirty_logging {
            return Err(KvmError::Layout {
                what: "dirty logging",
                value: 0,
                fix: "call set_dirty_logging(true) first",
            });
        }
        let bitmap = self
            .vm
            .get_dirty_log(0, self.memory.len)
            .map_err(|e| KvmError::call("KVM_GET_DIRTY_LOG(slot 0)", e, "enable dirty logging"))?;
        let mut pages = Vec::new();
        for (word, bits) in bitmap.iter().enumerate() {
            let mut b = *bits;
            while b != 0 {
                let bit = u64::from(b.trailing_zeros());
                pages.push(word as u64 * 64 + bit);
                b &= b - 1;
            }
        }
        Ok(pages)
    }

    /// Turns on `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` (manual protect, initially set): a GET no
    /// longer write-protects, [`KvmVm::clear_dirty_log_except`] does, page by page. Call before
    /// [`KvmVm::set_dirty_logging`].
    pub fn enable_manual_dirty_protect(&mut self) -> Result<(), KvmError> {
        let mut cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            ..Default::default()
        };
        cap.args[0] = u64::from(
            kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                | kvm_bindings::KVM_DIRTY_LOG_INITIALLY_SET,
        );
        self.vm.enable_cap(&cap).map_err(|e| {
            KvmError::call(
                "KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
                e,
                "needs Linux 5.8 or later",
            )
        })
    }

    /// `KVM_CLEAR_DIRTY_LOG` of every page of the memslot except `[ipa, ipa + len)`: the
    /// cleared pages are write-protected again (their next write faults), the exempt ones stay
    /// mapped writable and stay reported dirty — the "keep the buffer dirty until the vCPU
    /// stops" of pre-copy with SPE enabled.
    pub fn clear_dirty_log_except(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        let pages = self.ram() / PAGE;
        self.clear_dirty_log_keeping(ipa / PAGE..ipa.saturating_add(len).div_ceil(PAGE).min(pages))
    }

    /// `KVM_CLEAR_DIRTY_LOG` of every page but the page numbers `keep` (those stay writable
    /// and reported dirty); numbers outside RAM are ignored.
    pub fn clear_dirty_log_keeping(
        &mut self,
        keep: impl IntoIterator<Item = u64>,
    ) -> Result<(), KvmError> {
        let pages = self.ram() / PAGE;
        let mut bitmap = vec![u64::MAX; pages.div_ceil(64) as usize];
        for p in keep.into_iter().filter(|p| *p < pages) {
            bitmap[(p / 64) as usize] &= !(1u64 << (p % 64));
        }
        let mut clear = kvm_bindings::kvm_clear_dirty_log {
            slot: 0,
            num_pages: pages as u32,
            first_page: 0,
            ..Default::default()
        };
        clear.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
        // _IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log): 24 bytes.
        const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = 0xc018_aec0;
        // SAFETY: `clear` points at a bitmap of num_pages bits that lives across the call.
        let r = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_CLEAR_DIRTY_LOG as _, &clear) };
        if r != 0 {
            return Err(KvmError::last_os(
                "KVM_CLEAR_DIRTY_LOG(slot 0)",
                "enable manual dirty protect and dirty logging first",
            ));
        }
        Ok(())
    }

    /// `mlock` of the host pages behind `[ipa, ipa + len)`: resident, but not a stage 2 pin
    /// (writeback, THP collapse, compaction and KSM still move or protect the pages).
    pub fn mlock(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        self.on_host_range(
            ipa,
            len,
            "mlock",
            "raise RLIMIT_MEMLOCK (ulimit -l) or run as root",
            // SAFETY: locks pages of our own mapping; unlocked by munlock or at munmap.
            |addr, len| unsafe { libc::mlock(addr, len) },
        )
    }

    /// `MADV_PAGEOUT` of `[ipa, ipa + len)`: the host reclaims the pages now (written back
    /// first if they are file pages), and the MMU notifier zaps their stage 2 mappings.
    pub fn pageout(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        self.on_host_range(
            ipa,
            len,
            "madvise(MADV_PAGEOUT)",
            "needs Linux 5.4 or later; locked pages are not paged out",
            // SAFETY: advice on a range of our own mapping; contents survive (written back).
            |addr, len| unsafe { libc::madvise(addr, len, libc::MADV_PAGEOUT) },
        )
    }

    /// `MADV_MERGEABLE` on `[ipa, ipa + len)`: KSM may merge identical pages of the range
    /// (when `/sys/kernel/mm/ksm/run` is 1), write-protecting them and zapping their stage 2
    /// mappings.
    pub fn mergeable(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        self.on_host_range(
            ipa,
            len,
            "madvise(MADV_MERGEABLE)",
            "needs a kernel with CONFIG_KSM",
            // SAFETY: advice on a range of our own anonymous mapping.
            |addr, len| unsafe { libc::madvise(addr, len, libc::MADV_MERGEABLE) },
        )
    }

    /// `munlock` of `[ipa, ipa + len)`.
    pub fn munlock(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        self.on_host_range(
            ipa,
            len,
            "munlock",
            "the range must be mapped",
            // SAFETY: unlocks pages of our own mapping.
            |addr, len| unsafe { libc::munlock(addr, len) },
        )
    }

    /// khugepaged's work done now (`MADV_HUGEPAGE` then `MADV_COLLAPSE`): the 4 KiB pages of a
    /// 2 MiB-aligned range are copied into huge pages and their stage 2 mappings zapped.
    pub fn collapse(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        if ipa % HUGE as u64 != 0 || len % HUGE as u64 != 0 {
            return Err(KvmError::Layout {
                what: "collapse ipa",
                value: ipa,
                fix: "a 2 MiB-aligned range of whole 2 MiB pages",
            });
        }
        self.on_host_range(
            ipa,
            len,
            "madvise(MADV_COLLAPSE)",
            "needs Linux 6.1 with THP built in; EAGAIN: a long-term pin holds a page",
            // SAFETY: advice on our own mapping; a collapse preserves the contents.
            |addr, len| unsafe {
                match libc::madvise(addr, len, libc::MADV_HUGEPAGE) {
                    0 => libc::madvise(addr, len, libc::MADV_COLLAPSE),
                    e => e,
                }
            },
        )
    }

    /// A long-term pin of `[ipa, ipa + len)` (at most 1 GiB): the range is registered as an
    /// io_uring fixed buffer (`IORING_REGISTER_BUFFERS`), which takes a `FOLL_LONGTERM` pin of
    /// every page, the kind of pin a stage 2 pin needs: compaction and THP collapse may not
    /// move the pages. File mappings refuse it (EFAULT); this VM's RAM is anonymous.
    pub fn pin_long_term(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        if len == 0 || len > 1 << 30 {
            return Err(KvmError::Layout {
                what: "long-term pin length",
                value: len,
                fix: "1 byte to 1 GiB per range (the io_uring fixed-buffer limit)",
            });
        }
        let addr = self.host_range(ipa, len)?;
        let ring = io_uring::IoUring::new(1).map_err(|e| {
            KvmError::call(
                "io_uring_setup",
                e,
                "needs io_uring enabled (kernel.io_uring_disabled = 0)",
            )
        })?;
        let iov = libc::iovec {
            iov_base: addr,
            iov_len: len as usize,
        };
        // SAFETY: the iovec is inside our mapping, which outlives the ring (the ring is kept in
        // `long_term` and dropped before `memory`, or by `unpin_long_term`).
        unsafe { ring.submitter().register_buffers(&[iov]) }.map_err(|e| {
            KvmError::call(
                "io_uring_register(IORING_REGISTER_BUFFERS)",
                e,
                "ENOMEM: raise RLIMIT_MEMLOCK; EFAULT: the range is a file mapping",
            )
        })?;
        self.long_term.push(LongTermPin { ipa, len, ring });
        Ok(())
    }

    /// Releases the long-term pin made for exactly `[ipa, ipa + len)`.
    pub fn unpin_long_term(&mut self, ipa: u64, len: u64) -> Result<(), KvmError> {
        let Some(i) = self
            .long_term
            .iter()
            .position(|p| (p.ipa, p.len) == (ipa, len))
        else {
            return Err(KvmError::Layout {
                what: "unpin ipa",
                value: ipa,
                fix: "unpin exactly a range that pin_long_term pinned",
            });
        };
        let LongTermPin { ring, .. } = self.long_term.swap_remove(i);
        // Dropping the ring would release the pages too; unregistering says so if it fails.
        ring.submitter().unregister_buffers().map_err(|e| {
            KvmError::call(
                "io_uring_register(IORING_UNREGISTER_BUFFERS)",
                e,
                "see dmesg",
            )
        })
    }

    /// The ranges long-term pinned now (tests check none is left when a VM stops).
    pub fn long_term_pins(&self) -> usize {
        self.long_term.len()
    }
}
