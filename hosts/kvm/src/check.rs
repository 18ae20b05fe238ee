//! The model checked against the kernel: the same host event on the same buffer through
//! `hosts/model` (`Stage2Model`) and through a real KVM VM, for each kind of pin, and the
//! buffer pages each says an SPU write would now fault on.
//!
//! The model has one kind of pin (it never lets a pinned page go, except where a host event is
//! known to move mlocked pages anyway); the kernel has two that a VMM can take: `mlock`
//! (resident only) and a long-term pin (io_uring, `FOLL_LONGTERM`). Where the two sides differ
//! the row names the kernel behaviour that explains it; a difference without an explanation
//! is a model bug.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use spe_host_model::{Absence, Stage2Model};
use spe_policy::{Granule, HostBacking, Ipa, IpaRange, Memslot};

use crate::ksm::KsmDaemon;
use crate::post_copy::PostCopy;
use crate::{KvmError, KvmVm, PAGE};

const RAM: u64 = 16 << 20;
const BUFFER_IPA: u64 = 4 << 20;
const BUFFER: u64 = 4 << 20;
/// Pages the discard, pageout and punch-hole events take.
const SOME_PAGES: u64 = 64;
/// Where the punched hole starts in the buffer (not at its start: a hole is anywhere).
const HOLE_OFFSET: u64 = 16 * PAGE;
/// Dirty ring entries: room for a whole buffer pass.
const RING_ENTRIES: u32 = 4096;

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
    /// Writeback of a file memory backend (`msync(MS_SYNC)` of the dirty buffer).
    MsyncWriteback,
    /// Reclaim of 64 pages of a file memory backend (`msync`, then `MADV_PAGEOUT`).
    FilePageout,
    /// `fallocate(PUNCH_HOLE)` of 64 buffer pages of a guest_memfd memslot.
    PunchHole,
    /// A dirty-ring harvest and `KVM_RESET_DIRTY_RINGS` (the ring instead of the bitmap).
    DirtyRingHarvest,
    /// The memslot deleted and added again over the same memory.
    MemslotReadd,
    /// Post-copy switch-over (userfaultfd MISSING mode): a quarter of the buffer sent before,
    /// the rest demanded at fault; pinned buffers are sent whole first, as the strategies do.
    PostCopy,
    /// A KSM scan of the buffer's identical pages (opt-in: host-wide daemon).
    KsmMerge,
}

/// What the memslot's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Memory {
    /// Anonymous private memory (the default of every VMM).
    Anonymous,
    /// A regular file mapped shared (a file memory backend).
    File,
    /// guest_memfd, mapped shared (`MMAP | INIT_SHARED`).
    GuestMemfd,
}

impl HostEvent {
    /// The memory the event needs.
    pub const fn memory(self) -> Memory {
        match self {
            HostEvent::MsyncWriteback | HostEvent::FilePageout => Memory::File,
            HostEvent::PunchHole => Memory::GuestMemfd,
            _ => Memory::Anonymous,
        }
    }
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
    /// The memslot's memory.
    pub memory: Memory,
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
    /// Post-copy only: pages the pass demanded from the source through userfaultfd.
    pub kvm_demanded: Option<u64>,
    /// The kernel refused the pin (errno), if it did; the event then hits unpinned pages.
    pub kvm_pin_refused: Option<String>,
    /// The kernel refused the event itself (`EINVAL`, `EAGAIN`, ...), if it did.
    pub kvm_refused: Option<String>,
    /// Whether model and kernel agree on how many buffer pages the SPU would fault on:
    /// the kernel's figure is the larger of zapped and faulted (a write-protect zaps nothing
    /// on some MMUs but faults every page; a collapse zaps every page but refaults in huge
    /// mappings), for post-copy the pages demanded from the source, and for a memslot re-add
    /// the buffer's share of the slot-wide zap.
    pub agree: bool,
    /// The kernel behaviour behind a difference, or why they agree.
    pub explanation: &'static str,
}

/// The events every run covers (KSM is opt-in: [`Options::ksm`]).
pub const EVENTS: [HostEvent; 10] = [
    HostEvent::Discard,
    HostEvent::DirtyLogRound,
    HostEvent::DirtyLogRoundBufferExempt,
    HostEvent::ThpCollapse,
    HostEvent::MsyncWriteback,
    HostEvent::FilePageout,
    HostEvent::PunchHole,
    HostEvent::DirtyRingHarvest,
    HostEvent::MemslotReadd,
    HostEvent::PostCopy,
];
/// Every pin kind.
pub const PINS: [PinKind; 3] = [PinKind::None, PinKind::Mlock, PinKind::LongTerm];

/// What the matrix runs beyond [`EVENTS`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Adds the KSM rows: turns on the host-wide KSM daemon for them (root; its knobs are
    /// restored after).
    pub ksm: bool,
    /// A directory on a disk file system for the file memory backend (on tmpfs the pages
    /// would be shmem, which writeback never touches).
    pub file_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ksm: false,
            file_dir: std::env::temp_dir(),
        }
    }
}

fn buffer() -> IpaRange {
    IpaRange::new(Ipa(BUFFER_IPA), BUFFER)
}

fn some_pages() -> IpaRange {
    IpaRange::new(Ipa(BUFFER_IPA), SOME_PAGES * PAGE)
}

fn hole() -> IpaRange {
    IpaRange::new(Ipa(BUFFER_IPA + HOLE_OFFSET), SOME_PAGES * PAGE)
}

/// The buffer pages sent before a post-copy switch-over: all of a pinned buffer (the
/// strategies send what they pin first), a quarter of an unpinned one.
fn sent_before_switchover(pin: PinKind) -> IpaRange {
    match pin {
        PinKind::None => IpaRange::new(Ipa(BUFFER_IPA), BUFFER / 4),
        PinKind::Mlock | PinKind::LongTerm => buffer(),
    }
}

/// What the model says: buffer pages not writable after the event.
pub fn model_pages(event: HostEvent, pin: PinKind) -> u64 {
    let slot = Memslot {
        slot: 0,
        range: IpaRange::new(Ipa(0), RAM),
    };
    let model = Stage2Model::new(Granule::K4, &[slot]);
    let all = BUFFER / PAGE;
    if event == HostEvent::PostCopy
        && model
            .send_before_switchover(sent_before_switchover(pin))
            .is_err()
    {
        return all;
    }
    // The model has one pin; a failure here would be a model bug, so it shows as all pages.
    if pin != PinKind::None && model.pin(buffer()).is_err() {
        return all;
    }
    match event {
        HostEvent::Discard => {
            model.unmap(some_pages(), Absence::Swapped);
        }
        HostEvent::DirtyLogRound | HostEvent::DirtyRingHarvest => model.dirty_log_protect(None),
        HostEvent::DirtyLogRoundBufferExempt => {
            if model.set_dirty_log_exempt(buffer(), true).is_err() {
                return all;
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
        HostEvent::MsyncWriteback => {
            model.writeback(buffer());
        }
        HostEvent::FilePageout => {
            model.writeback(some_pages());
            model.unmap(some_pages(), Absence::Swapped);
        }
        HostEvent::PunchHole => {
            model.punch_hole(hole());
        }
        HostEvent::MemslotReadd => {
            model.readd_memslot(0);
        }
        HostEvent::PostCopy => model.post_copy_switchover(buffer()),
        HostEvent::KsmMerge if pin == PinKind::Mlock => {
            model.ksm_merge_mlocked_too(buffer());
        }
        HostEvent::KsmMerge => {
            model.ksm_merge(buffer());
        }
    }
    buffer()
        .pages(Granule::K4)
        .filter(|p| !model.page_state(*p).writable())
        .count() as u64
}

fn explanation(event: HostEvent, pin: PinKind, agree: bool, pin_refused: bool) -> &'static str {
    use HostEvent as E;
    use PinKind as P;
    match (event, pin, agree) {
        (E::MsyncWriteback | E::FilePageout, P::LongTerm, true) if pin_refused => {
            "the kernel refuses a long-term pin of a regular file's pages (EFAULT: their writeback cannot wait for a pin), so pin = long-term over a file memory backend fails at the first pin with a typed HostError, before the SPU writes; the event then hits unpinned pages, and the model's writeback, which write-protects pinned pages too, predicts the same count"
        }
        (E::MsyncWriteback | E::FilePageout, P::LongTerm, false) if pin_refused => {
            "the kernel refuses a long-term pin of a regular file's pages (EFAULT: their writeback cannot wait for a pin), so pin = long-term over a file memory backend fails at the first pin with a typed HostError, before the SPU writes; the event then hits unpinned pages, which the model, pinned, does not predict"
        }
        (E::Discard, P::Mlock, _) => {
            "the kernel refuses MADV_DONTNEED on a locked range (EINVAL), as the model refuses to unmap a pinned page"
        }
        (E::Discard, P::LongTerm, false) => {
            "MADV_DONTNEED is the VMM's own act: a long-term pin keeps the old pages referenced, but the mappings go and the next writes fault in new pages; a VMM must never discard a pinned range"
        }
        (E::DirtyLogRound, P::Mlock | P::LongTerm, false) => {
            "dirty logging write-protects pinned pages too: a pin does not exempt a page from the log; a strategy that pins must also exempt the range (set_dirty_log_exempt), which the model folds into its pin"
        }
        (E::DirtyRingHarvest, P::Mlock | P::LongTerm, false) => {
            "a dirty-ring reset write-protects every harvested page, pinned or not, and the ring has no per-page exemption (an unharvested entry stalls the ring): a strategy that pins needs the bitmap with manual protect to exempt the buffer; the model folds that exemption into its pin"
        }
        (E::ThpCollapse, P::Mlock, true) => {
            "mlock is not a stage 2 pin: a THP collapse copies locked pages into a huge page and zaps every mapping, and the model (pin = mlock) does the same (PA-06, PB-09)"
        }
        (E::ThpCollapse, P::LongTerm, _) => {
            "the kernel refuses to collapse long-term pinned pages (EAGAIN): the pin holds stage 2"
        }
        (E::DirtyLogRoundBufferExempt, _, true) => {
            "an exempt buffer is never write-protected and stays reported dirty"
        }
        (E::MsyncWriteback, P::None | P::Mlock, true) => {
            "writeback write-protects every dirty page it cleans, mlocked or not (PA-06, PB-09), and the model's writeback does the same"
        }
        (E::FilePageout, P::Mlock, true) => {
            "MADV_PAGEOUT of a locked range is refused (EINVAL), but the msync before it write-protected the pages, mlocked or not; the model's writeback does the same"
        }
        (E::FilePageout, P::None, true) => {
            "the paged-out pages are written back and dropped, as the model's reclaim"
        }
        (E::PunchHole, _, true) => {
            "a hole punch frees the pages whatever holds them (truncation ignores mlock and long-term pins): the VMM's own act; the model's punch_hole does the same"
        }
        (E::MemslotReadd, _, true) => {
            "deleting the memslot drops its whole stage 2, pinned or not (zapped counts the slot's every mapping: the buffer's and the guest's own); the pins stay (they hold host memory, not mappings), so the SPU faults on every buffer page it reaches unmapped, cheaply; the model's readd_memslot does the same. The pass takes about one fault per 8 pages because KVM maps up to 8 present neighbours at each fault (prefetch)"
        }
        (E::PostCopy, _, true) => {
            "every page not sent before switch-over is demanded once through userfaultfd, the model's post-copy-pending pages; sent (and pinned) pages still take one minor stage 2 fault each, because the destination's stage 2 starts empty: a strategy maps them before the vCPU runs"
        }
        (E::KsmMerge, P::None | P::Mlock, true) => {
            "KSM write-protects and merges identical pages, mlocked or not (PA-06, PB-09); the model does the same"
        }
        (E::KsmMerge, P::LongTerm, true) => {
            "KSM cannot merge a page with a long-term pin (its extra reference), but its attempt write-protects the page under an MMU-notifier invalidation first, so the stage 2 mapping goes anyway (PA-07, PB-10): the pages fault back cheaply (KVM's prefetch maps 8 per fault). The model's ksm_merge does the same; the first of the identical pages stays in KSM's unstable tree, never write-protected (one page less)"
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
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        n => format!("errno {n}"),
    }
}

/// A refusal by the kernel (an errno) as `Some(name)`; any other error stops the run.
fn refusal(r: Result<(), KvmError>) -> Result<Option<String>, KvmError> {
    match r {
        Ok(()) => Ok(None),
        Err(KvmError::Call { err, .. }) if err.raw_os_error().is_some() => {
            Ok(Some(errno_name(err.raw_os_error().unwrap_or(0))))
        }
        Err(e) => Err(e),
    }
}

/// A VM over the event's memory; the file behind a file memory backend is removed on drop.
struct Subject {
    vm: KvmVm,
    file: Option<PathBuf>,
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn subject(event: HostEvent, opts: &Options) -> Result<Subject, KvmError> {
    if event == HostEvent::DirtyRingHarvest {
        return Ok(Subject {
            vm: KvmVm::new_with_dirty_ring(RAM, RING_ENTRIES)?,
            file: None,
        });
    }
    match event.memory() {
        Memory::Anonymous => Ok(Subject {
            vm: KvmVm::new(RAM)?,
            file: None,
        }),
        Memory::GuestMemfd => Ok(Subject {
            vm: KvmVm::new_guest_memfd(RAM)?,
            file: None,
        }),
        Memory::File => {
            let path = opts
                .file_dir
                .join(format!("spe-stage2-check-{}.ram", std::process::id()));
            let vm = KvmVm::new_file_backed_at(RAM, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
            Ok(Subject {
                vm,
                file: Some(path),
            })
        }
    }
}

/// The kernel's side of one cell: (zapped, faults, demanded, pin refused, event refused).
type KernelSide = (u64, u64, Option<u64>, Option<String>, Option<String>);

fn kernel_side(event: HostEvent, pin: PinKind, opts: &Options) -> Result<KernelSide, KvmError> {
    let mut s = subject(event, opts)?;
    let vm = &mut s.vm;
    match event {
        HostEvent::DirtyLogRound | HostEvent::DirtyLogRoundBufferExempt => {
            vm.enable_manual_dirty_protect()?;
            vm.set_dirty_logging(true)?;
        }
        HostEvent::DirtyRingHarvest => vm.set_dirty_logging(true)?,
        HostEvent::KsmMerge => {
            // Identical pages (not zero: KSM treats zero pages apart); the passes keep them so.
            let page = vec![0x5a_u8; PAGE as usize];
            for i in 0..BUFFER / PAGE {
                vm.write(BUFFER_IPA + i * PAGE, &page)?;
            }
        }
        _ => {}
    }
    for _ in 0..2 {
        vm.write_pass(BUFFER_IPA, BUFFER)?;
    }
    // Post-copy: the destination switches over before the pin (it cannot pin pages it has
    // not received); its mappings go with the switch-over, counted from here.
    let mut mapped = vm.vm_stat("pages_4k")?;
    let post_copy = match event {
        HostEvent::PostCopy => {
            let sent = sent_before_switchover(pin);
            let sent: Vec<u64> = sent.pages(Granule::K4).map(|p| p.0).collect();
            Some(PostCopy::switch_over(vm, BUFFER_IPA, BUFFER, &sent, 0xab)?)
        }
        _ => None,
    };
    let pin_refused = refusal(match pin {
        PinKind::None => Ok(()),
        PinKind::Mlock => vm.mlock(BUFFER_IPA, BUFFER),
        PinKind::LongTerm => vm.pin_long_term(BUFFER_IPA, BUFFER),
    })?;
    let pinned = pin != PinKind::None && pin_refused.is_none();
    let mut kvm_refused = None;
    if post_copy.is_none() {
        vm.write_pass(BUFFER_IPA, BUFFER)?;
        mapped = vm.vm_stat("pages_4k")?;
        let applied = match event {
            HostEvent::Discard => vm.discard(BUFFER_IPA, SOME_PAGES * PAGE),
            HostEvent::DirtyLogRound => vm
                .take_dirty_pages()
                .and_then(|_| vm.clear_dirty_log_except(0, 0)),
            HostEvent::DirtyLogRoundBufferExempt => vm
                .take_dirty_pages()
                .and_then(|_| vm.clear_dirty_log_except(BUFFER_IPA, BUFFER)),
            HostEvent::ThpCollapse => vm.collapse(BUFFER_IPA, BUFFER),
            HostEvent::MsyncWriteback => vm.msync(BUFFER_IPA, BUFFER),
            HostEvent::FilePageout => vm
                .msync(BUFFER_IPA, SOME_PAGES * PAGE)
                .and_then(|()| vm.pageout(BUFFER_IPA, SOME_PAGES * PAGE)),
            HostEvent::PunchHole => vm.punch_hole(BUFFER_IPA + HOLE_OFFSET, SOME_PAGES * PAGE),
            HostEvent::DirtyRingHarvest => vm.harvest_dirty_ring().map(|_| ()),
            HostEvent::MemslotReadd => vm.readd_memslot(),
            HostEvent::KsmMerge => {
                let ksm = KsmDaemon::start()?;
                vm.mergeable(BUFFER_IPA, BUFFER)
                    .and_then(|()| ksm.settle(Duration::from_secs(20)).map(|_| ()))
            }
            HostEvent::PostCopy => Ok(()),
        };
        kvm_refused = refusal(applied)?;
    }
    let zapped = mapped.saturating_sub(vm.vm_stat("pages_4k")?);
    let before = vm.vcpu_stat("pf_fixed")?;
    vm.write_pass(BUFFER_IPA, BUFFER)?;
    let faults = vm.vcpu_stat("pf_fixed")? - before;
    let demanded = match post_copy {
        Some(pc) => Some(pc.finish()?.len() as u64),
        None => None,
    };
    unpin(vm, pin, pinned)?;
    Ok((zapped, faults, demanded, pin_refused, kvm_refused))
}

fn unpin(vm: &mut KvmVm, pin: PinKind, pinned: bool) -> Result<(), KvmError> {
    match pin {
        _ if !pinned => Ok(()),
        PinKind::None => Ok(()),
        PinKind::Mlock => vm.munlock(BUFFER_IPA, BUFFER),
        PinKind::LongTerm => vm.unpin_long_term(BUFFER_IPA, BUFFER),
    }
}

/// Runs one cell on the real kernel: a fresh VM, the pin, the event, one write pass.
pub fn run_one(event: HostEvent, pin: PinKind, opts: &Options) -> Result<Row, KvmError> {
    let (kvm_pages_zapped, kvm_faults, kvm_demanded, kvm_pin_refused, kvm_refused) =
        kernel_side(event, pin, opts)?;
    let model_pages = model_pages(event, pin);
    let kernel = match (event, kvm_demanded) {
        (_, Some(demanded)) => demanded,
        // The whole slot's mappings go: the buffer's share of them.
        (HostEvent::MemslotReadd, None) => kvm_pages_zapped.min(BUFFER / PAGE),
        (_, None) => kvm_pages_zapped.max(kvm_faults),
    };
    // KSM keeps the first of a run of identical pages in its unstable tree without
    // write-protecting it while it cannot merge the rest (pinned): one page either way.
    let agree = match event {
        HostEvent::KsmMerge => model_pages.abs_diff(kernel) <= 1,
        _ => model_pages == kernel,
    };
    Ok(Row {
        event,
        memory: event.memory(),
        strategy: match pin {
            PinKind::None => "fault-translate",
            PinKind::Mlock | PinKind::LongTerm => "pin-all, pin-buffer",
        },
        pin,
        model_pages,
        kvm_pages_zapped,
        kvm_faults,
        kvm_demanded,
        explanation: explanation(event, pin, agree, kvm_pin_refused.is_some()),
        kvm_pin_refused,
        kvm_refused,
        agree,
    })
}

/// The whole matrix, events by pin kinds (with the KSM rows if `opts.ksm`).
pub fn run(opts: &Options) -> Result<Vec<Row>, KvmError> {
    let mut rows = Vec::new();
    let ksm = opts.ksm.then_some(HostEvent::KsmMerge);
    for event in EVENTS.into_iter().chain(ksm) {
        for pin in PINS {
            rows.push(run_one(event, pin, opts)?);
        }
    }
    Ok(rows)
}
