//! `HostBacking` and `GuestMemoryRead` over a real KVM VM ([`KvmBacking`]): the strategies run
//! unchanged against the real kernel's stage 2.
//!
//! What userspace can and cannot do here, and so what each call means:
//! * `pin`: a long-term pin (io_uring registered buffer, `FOLL_LONGTERM`) or `mlock`, as the
//!   config's `pin` says: the kernel's own pins, measured by `stage2-check`.
//! * `fault_in`: the host page is made resident (`MADV_POPULATE_WRITE`). KVM maps it at stage 2
//!   at the vCPU's next access; from userspace no ioctl maps an x86 guest page ahead of that
//!   (`KVM_PRE_FAULT_MEMORY` is for private memory on TDP MMUs), so "present" below is the
//!   host page's residency (`mincore`), not the stage 2 mapping.
//! * `page_state`: resident (`mincore`), pinned (this backing's own ledger), exempt and
//!   write-protected by dirty logging (as this backing asked for them).
//! * `write_guest`: a host write into the memslot's memory; `inject`, `disable_spe`: recorded
//!   (the stand-in vCPU has no SPU to tell).

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;
use spe_policy::arch::{Pmbptr, Pmbsr};
use spe_policy::config::PinKind;
use spe_policy::host::{FaultIn, HostBacking, HostError, HostGranule, PageState};
use spe_policy::{Granule, GuestMemoryRead, Ipa, IpaRange, UnbackedIpa, VcpuId};

use crate::{KvmError, KvmVm, PAGE};

/// A real KVM VM as a host backing for the strategies.
#[derive(Debug)]
pub struct KvmBacking {
    vm: Mutex<KvmVm>,
    /// The VM's RAM size, fixed at creation: bounds checks need no lock.
    ram: u64,
    pin: PinKind,
    /// Taken before `vm` whenever both are held.
    state: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Pinned ranges, `ipa -> len`, exactly as pinned.
    pins: BTreeMap<u64, u64>,
    /// Pages exempt from dirty-log write protection.
    exempt: BTreeSet<u64>,
    injected: Vec<(VcpuId, Pmbsr, Pmbptr)>,
    disabled: Vec<VcpuId>,
    sent_before_switchover: u64,
}

/// The locked-memory limit (RLIMIT_MEMLOCK), bytes.
fn memlock_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: fills our own rlimit structure.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return 0;
    }
    r.rlim_cur
}

/// A failed pin of `requested` bytes as the strategies see it: ENOMEM from mlock or from an
/// io_uring registration is the locked-memory limit (with the limit named); the rest keeps
/// the call, the errno and the fix in its message.
fn pin_error(e: KvmError, requested: u64) -> HostError {
    match e {
        KvmError::Call { err, .. } if err.raw_os_error() == Some(libc::ENOMEM) => {
            HostError::LockLimit {
                requested,
                limit: memlock_limit(),
            }
        }
        other => HostError::Other(other.to_string()),
    }
}

fn host_error(e: KvmError) -> HostError {
    HostError::Other(e.to_string())
}

impl KvmBacking {
    /// The VM `vm`, pinned with `pin`.
    pub fn new(vm: KvmVm, pin: PinKind) -> Self {
        KvmBacking {
            ram: vm.ram(),
            vm: Mutex::new(vm),
            pin,
            state: Mutex::new(Ledger::default()),
        }
    }

    /// One pre-copy dirty-log round as the VMM's migration thread runs it (manual protect:
    /// `KVM_GET_DIRTY_LOG`, then `KVM_CLEAR_DIRTY_LOG` of every page but those a strategy made
    /// exempt with `set_dirty_log_exempt`, which stay writable and reported dirty): returns the
    /// dirty page numbers, to send again.
    pub fn dirty_log_round(&self) -> Result<Vec<u64>, HostError> {
        let st = self.state.lock();
        let mut vm = self.vm.lock();
        let dirty = vm.take_dirty_pages().map_err(host_error)?;
        vm.clear_dirty_log_keeping(st.exempt.iter().map(|p| p / PAGE))
            .map_err(host_error)?;
        Ok(dirty)
    }

    /// The VM, for host events and write passes (the strategies' calls take the same lock).
    pub fn vm(&self) -> parking_lot::MutexGuard<'_, KvmVm> {
        self.vm.lock()
    }

    /// Bytes pinned through this backing now.
    pub fn pinned_bytes(&self) -> u64 {
        self.state.lock().pins.values().sum()
    }

    /// Buffer management events the strategies injected.
    pub fn injected(&self) -> Vec<(VcpuId, Pmbsr, Pmbptr)> {
        self.state.lock().injected.clone()
    }

    fn check(&self, range: IpaRange) -> Result<(), HostError> {
        if range.start.0 >= self.ram || range.end() > self.ram {
            return Err(HostError::NotInMemslot(range.start));
        }
        Ok(())
    }
}

impl GuestMemoryRead for KvmBacking {
    type Error = UnbackedIpa;

    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), UnbackedIpa> {
        self.vm.lock().read(ipa.0, buf).map_err(|_| UnbackedIpa {
            ipa,
            len: buf.len() as u64,
        })
    }
}

impl HostBacking for KvmBacking {
    fn granule(&self) -> HostGranule {
        Granule::K4
    }

    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        self.check(range)?;
        let mut st = self.state.lock();
        if st.pins.contains_key(&range.start.0) {
            return Err(HostError::Other(format!(
                "IPA {} pinned twice: the strategy must count references",
                range.start
            )));
        }
        let mut vm = self.vm.lock();
        match self.pin {
            PinKind::LongTerm => vm.pin_long_term(range.start.0, range.len),
            PinKind::Mlock => vm.mlock(range.start.0, range.len),
        }
        .map_err(|e| pin_error(e, range.len))?;
        st.pins.insert(range.start.0, range.len);
        Ok(())
    }

    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        let mut st = self.state.lock();
        match st.pins.get(&range.start.0) {
            Some(len) if *len == range.len => {}
            Some(len) => {
                return Err(HostError::Other(format!(
                    "unpin of IPA {} for {:#x} bytes, but {len:#x} were pinned there: a KVM backing unpins ranges exactly as pinned",
                    range.start, range.len
                )));
            }
            None => return Err(HostError::NotPinned(range.start)),
        }
        let mut vm = self.vm.lock();
        match self.pin {
            PinKind::LongTerm => vm.unpin_long_term(range.start.0, range.len),
            PinKind::Mlock => vm.munlock(range.start.0, range.len),
        }
        .map_err(host_error)?;
        st.pins.remove(&range.start.0);
        Ok(())
    }

    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        self.check(IpaRange::new(ipa, 1))?;
        let vm = self.vm.lock();
        let page = ipa.0 & !(PAGE - 1);
        if vm.resident(page).map_err(host_error)? {
            return Ok(FaultIn::AlreadyPresent);
        }
        vm.populate(page, PAGE).map_err(host_error)?;
        Ok(FaultIn::MadePresent)
    }

    fn page_state(&self, ipa: Ipa) -> PageState {
        if ipa.0 >= self.ram {
            return PageState::default();
        }
        let page = ipa.0 & !(PAGE - 1);
        // The ledger before the VM, as `pin` and `unpin` take them: never the other order.
        let st = self.state.lock();
        let vm = self.vm.lock();
        let pinned = st
            .pins
            .range(..=page)
            .next_back()
            .is_some_and(|(start, len)| page < start + len);
        let exempt = st.exempt.contains(&page);
        PageState {
            present: vm.resident(page).unwrap_or(false),
            write_protected: vm.dirty_logging() && !exempt,
            pinned,
            dirty_log_exempt: exempt,
            in_memslot: true,
        }
    }

    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError> {
        self.check(range)?;
        let mut st = self.state.lock();
        for p in range.pages(Granule::K4) {
            if exempt {
                st.exempt.insert(p.0);
            } else {
                st.exempt.remove(&p.0);
            }
        }
        Ok(())
    }

    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError> {
        self.check(range)?;
        self.state.lock().sent_before_switchover += range.len;
        Ok(())
    }

    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        self.check(IpaRange::new(ipa, bytes.len() as u64))?;
        self.vm.lock().write(ipa.0, bytes).map_err(host_error)
    }

    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, pmbptr: Pmbptr) -> Result<(), HostError> {
        self.state.lock().injected.push((vcpu, pmbsr, pmbptr));
        Ok(())
    }

    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError> {
        self.state.lock().disabled.push(vcpu);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enomem_pin_is_the_locked_memory_limit_naming_the_limit_and_other_errors_keep_the_call() {
        let enomem = KvmError::Call {
            call: "io_uring_register(IORING_REGISTER_BUFFERS)",
            err: std::io::Error::from_raw_os_error(libc::ENOMEM),
            fix: "raise RLIMIT_MEMLOCK",
        };
        assert_eq!(
            pin_error(enomem, 4096),
            HostError::LockLimit {
                requested: 4096,
                limit: memlock_limit(),
            }
        );
        let efault = KvmError::Call {
            call: "io_uring_register(IORING_REGISTER_BUFFERS)",
            err: std::io::Error::from_raw_os_error(libc::EFAULT),
            fix: "EFAULT: the range is a file mapping",
        };
        let HostError::Other(msg) = pin_error(efault, 4096) else {
            panic!("EFAULT is not a lock limit");
        };
        assert!(
            msg.contains("IORING_REGISTER_BUFFERS") && msg.contains("file mapping"),
            "{msg}"
        );
    }
}
