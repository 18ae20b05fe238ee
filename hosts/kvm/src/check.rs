//! The model checked against the kernel: the same host event on the same buffer through
//! `hosts/model` (`Stage2Model`) and through a real KVM VM, for each kind of pin, and the
//! buffer pages each says an SPU write would now fault on.
//!
//! The model has one kind of pin (it never lets a pinned page go); the kernel has two that a
//! VMM can take: `mlock` (resident only) and a long-term pin (io_uring, `FOLL_LONGTERM`).
//! Where the two sides differ the row names the kernel behaviour that explains it; a
//! difference without an explanation is a model bug.

use serde::Serialize;
use spe_host_model::{Absence, Stage2Model};
use spe_policy::{Granule, HostBacking, Ipa, IpaRange, Memslot};

use crate::{KvmError, KvmVm, PAGE};

const RAM: u64 = 16 << 20;
const BUFFER_IPA: u64 = 4 << 20;
const BUFFER: u64 = 4 << 20;
/// Pages the discard event drops.
const DISCARD_PAGES: u64 = 64;

/// A host event applied to the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostEvent {
    /// `MADV_DONTNEED` of 64 buffer pages (a balloon, a VMM's discard).
    Discard,
    /// A dirty-log round that clears (write-protects) every page, the buffer's too.
    DirtyLogRound,
    /// A dirty-log round that clears every page but the buffer's.
    DirtyLogRoundBufferExempt,
    /// khugepaged collapsing the buffer into huge pages (`MADV_COLLAPSE`).
    ThpCollapse,
}

/// How the buffer is pinned before the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinKind {
    /// Not pinned.
    None,
    /// `mlock`: resident, not a stage 2 pin.
    Mlock,
    /// A long-term pin (io_uring fixed buffer).
    LongTerm,
}

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The host event.
    pub event: HostEvent,
    /// The strategies whose SPU buffer is backed this way: pinned by pin-all and pin-buffer
    /// (with the pin kind of the row), unpinned under fault-translate. (shadow-buffer's SPU
    /// writes a host buffer the host owns, so no row is about it.)
    pub strategy: &'static str,
    /// How the buffer was pinned.
    pub pin: PinKind,
    /// Buffer pages the model says are no longer writable at stage 2.
    pub model_pages: u64,
    /// 4 KiB stage 2 mappings the event zapped (drop of the VM's `pages_4k`).
    pub kvm_pages_zapped: u64,
    /// Stage 2 faults the next write pass over the buffer took (`pf_fixed`).
    pub kvm_faults: u64,
    /// The kernel refused the event itself (`EINVAL`, `EAGAIN`, ...), if it did.
    pub kvm_refused: Option<String>,
    /// Whether model and kernel agree on how many buffer pages the SPU would fault on:
    /// the kernel's figure is the larger of zapped and faulted (a write-protect zaps nothing
    /// but faults every page; a collapse zaps every page but refaults in huge mappings).
    pub agree: bool,
    /// The kernel behaviour behind a difference, or why they agree.
    pub explanation: &'static str,
}

/// Every event, every pin kind.
pub const EVENTS: [HostEvent; 4] = [
    HostEvent::Discard,
    HostEvent::DirtyLogRound,
    HostEvent::DirtyLogRoundBufferExempt,
    HostEvent::ThpCollapse,
];
/// Every pin kind.
pub const PINS: [PinKind; 3] = [PinKind::None, PinKind::Mlock, PinKind::LongTerm];

fn buffer() -> IpaRange {
    IpaRange::new(Ipa(BUFFER_IPA), BUFFER)
}

fn discarded() -> IpaRange {
    IpaRange::new(Ipa(BUFFER_IPA), DISCARD_PAGES * PAGE)
}

/// What the model says: buffer pages not writable after the event.
pub fn model_pages(event: HostEvent, pin: PinKind) -> u64 {
    let slot = Memslot {
        slot: 0,
        range: IpaRange::new(Ipa(0), RAM),
    };
    let model = Stage2Model::new(Granule::K4, &[slot]);
    // The model has one pin; a failure here would be a model bug, so it shows as all pages.
    if pin != PinKind::None && model.pin(buffer()).is_err() {
        return BUFFER / PAGE;
    }
    match event {
        HostEvent::Discard => {
            model.unmap(discarded(), Absence::Swapped);
        }
        HostEvent::DirtyLogRound => model.dirty_log_protect(None),
        HostEvent::DirtyLogRoundBufferExempt => {
            if model.set_dirty_log_exempt(buffer(), true).is_err() {
                return BUFFER / PAGE;
            }
            model.dirty_log_protect(None);
        }
        HostEvent::ThpCollapse if pin == PinKind::Mlock => {
            // The model's mlock (`[spe] pin = "mlock"`): a collapse moves locked pages anyway.
            model.unmap_moving_mlocked(buffer(), Absence::NeverTouched);
        }
        HostEvent::ThpCollapse => {
            model.unmap(buffer(), Absence::Swapped);
        }
    }
    buffer()
        .pages(Granule::K4)
        .filter(|p| !model.page_state(*p).writable())
        .count() as u64
}

fn explanation(event: HostEvent, pin: PinKind, agree: bool) -> &'static str {
    match (event, pin, agree) {
        (HostEvent::Discard, PinKind::Mlock, _) => {
            "the kernel refuses MADV_DONTNEED on a locked range (EINVAL), as the model refuses to unmap a pinned page"
        }
        (HostEvent::Discard, PinKind::LongTerm, false) => {
            "MADV_DONTNEED is the VMM's own act: a long-term pin keeps the old pages referenced, but the mappings go and the next writes fault in new pages; a VMM must never discard a pinned range"
        }
        (HostEvent::DirtyLogRound, PinKind::Mlock | PinKind::LongTerm, false) => {
            "dirty logging write-protects pinned pages too: a pin does not exempt a page from the log; a strategy that pins must also exempt the range (set_dirty_log_exempt), which the model folds into its pin"
        }
        (HostEvent::ThpCollapse, PinKind::Mlock, true) => {
            "mlock is not a stage 2 pin: a THP collapse copies locked pages into a huge page and zaps every mapping, and the model (pin = mlock) does the same (PA-06, PB-09)"
        }
        (HostEvent::ThpCollapse, PinKind::LongTerm, _) => {
            "the kernel refuses to collapse long-term pinned pages (EAGAIN): the pin holds stage 2"
        }
        (HostEvent::DirtyLogRoundBufferExempt, _, true) => {
            "an exempt buffer is never write-protected and stays reported dirty"
        }
        (_, _, true) => "model and kernel agree",
        (_, _, false) => "UNEXPLAINED: the model and the kernel differ; fix the model",
    }
}

/// The symbolic name of the errnos these calls return.
fn errno_name(errno: i32) -> String {
    match errno {
        libc::EINVAL => "EINVAL".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EPERM => "EPERM".into(),
        libc::EBUSY => "EBUSY".into(),
        n => format!("errno {n}"),
    }
}

/// Runs one cell on the real kernel: a fresh VM, the pin, the event, one write pass.
pub fn run_one(event: HostEvent, pin: PinKind) -> Result<Row, KvmError> {
    let mut vm = KvmVm::new(RAM)?;
    if matches!(
        event,
        HostEvent::DirtyLogRound | HostEvent::DirtyLogRoundBufferExempt
    ) {
        vm.enable_manual_dirty_protect()?;
        vm.set_dirty_logging(true)?;
    }
    for _ in 0..2 {
        vm.write_pass(BUFFER_IPA, BUFFER)?;
    }
    match pin {
        PinKind::None => {}
        PinKind::Mlock => vm.mlock(BUFFER_IPA, BUFFER)?,
        PinKind::LongTerm => vm.pin_long_term(BUFFER_IPA, BUFFER)?,
    }
    vm.write_pass(BUFFER_IPA, BUFFER)?;
    let mapped = vm.vm_stat("pages_4k")?;
    let applied = match event {
        HostEvent::Discard => vm.discard(BUFFER_IPA, DISCARD_PAGES * PAGE),
        HostEvent::DirtyLogRound => vm
            .take_dirty_pages()
            .and_then(|_| vm.clear_dirty_log_except(0, 0)),
        HostEvent::DirtyLogRoundBufferExempt => vm
            .take_dirty_pages()
            .and_then(|_| vm.clear_dirty_log_except(BUFFER_IPA, BUFFER)),
        HostEvent::ThpCollapse => vm.collapse(BUFFER_IPA, BUFFER),
    };
    let kvm_refused = match applied {
        Ok(()) => None,
        Err(KvmError::Call { err, .. }) if err.raw_os_error().is_some() => {
            Some(errno_name(err.raw_os_error().unwrap_or(0)))
        }
        Err(e) => return Err(e),
    };
    let kvm_pages_zapped = mapped.saturating_sub(vm.vm_stat("pages_4k")?);
    let before = vm.vcpu_stat("pf_fixed")?;
    vm.write_pass(BUFFER_IPA, BUFFER)?;
    let kvm_faults = vm.vcpu_stat("pf_fixed")? - before;
    match pin {
        PinKind::None => {}
        PinKind::Mlock => vm.munlock(BUFFER_IPA, BUFFER)?,
        PinKind::LongTerm => vm.unpin_long_term(BUFFER_IPA, BUFFER)?,
    }
    let model_pages = model_pages(event, pin);
    let agree = model_pages == kvm_pages_zapped.max(kvm_faults);
    Ok(Row {
        event,
        strategy: match pin {
            PinKind::None => "fault-translate",
            PinKind::Mlock | PinKind::LongTerm => "pin-all, pin-buffer",
        },
        pin,
        model_pages,
        kvm_pages_zapped,
        kvm_faults,
        kvm_refused,
        agree,
        explanation: explanation(event, pin, agree),
    })
}

/// The whole matrix, events by pin kinds.
pub fn run() -> Result<Vec<Row>, KvmError> {
    let mut rows = Vec::new();
    for event in EVENTS {
        for pin in PINS {
            rows.push(run_one(event, pin)?);
        }
    }
    Ok(rows)
}
