//! What happens to a VM that a backing strategy must react to ([`Event`]), and what the strategy
//! asks the VMM to do about the event being handled ([`Outcome`]) (ARCHITECTURE.md §5).

use crate::addr::Gva;
use crate::arch::buffer_regs::{Pmbidr, Pmblimitr, Pmbptr, Pmbsr};
use crate::arch::walk::Stage1Regs;
use crate::host::{IpaRange, Memslot, VcpuId};

/// A vCPU's Profiling Buffer registers as the guest sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BufferRegs {
    /// PMBPTR_EL1.
    pub pmbptr: Pmbptr,
    /// PMBLIMITR_EL1.
    pub pmblimitr: Pmblimitr,
    /// PMBSR_EL1.
    pub pmbsr: Pmbsr,
}

impl BufferRegs {
    /// Whether the buffer is enabled (PMBLIMITR_EL1.E) in fill mode (discard mode writes
    /// nothing, spec sheet §1.2).
    pub fn writes_memory(&self) -> bool {
        self.pmblimitr.e() && self.pmblimitr.fm() == crate::arch::BufferMode::Fill
    }

    /// The VA range the SPU may write next, `PMBPTR..LIMIT`, or `None` when the buffer is
    /// disabled, in discard mode, or misprogrammed with LIMIT at or below PMBPTR.
    pub fn window(&self) -> Option<(Gva, u64)> {
        if !self.writes_memory() {
            return None;
        }
        let start = self.pmbptr.ptr();
        let limit = self.pmblimitr.limit_address().0;
        (limit > start).then(|| (Gva(start), limit - start))
    }
}

/// A Profiling Buffer register a guest access trapped on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferReg {
    /// PMBPTR_EL1.
    Pmbptr,
    /// PMBLIMITR_EL1.
    Pmblimitr,
    /// PMBSR_EL1.
    Pmbsr,
    /// PMBIDR_EL1 (read-only).
    Pmbidr,
}

/// Why the host wants to take a page away from the guest (an MMU-notifier invalidation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidationCause {
    /// Swap-out or reclaim.
    Swap,
    /// KSM merged the page with an identical one (it becomes read-only and shared).
    KsmMerge,
    /// A transparent huge page is split.
    ThpSplit,
    /// Small pages are collapsed into a transparent huge page.
    ThpCollapse,
    /// NUMA balancing migrates the page.
    NumaMigration,
    /// Memory compaction moves the page.
    Compaction,
}

/// How the VMM migrates the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrationMode {
    /// Pre-copy: dirty logging while the VM runs, then a short stop-and-copy.
    PreCopy,
    /// Post-copy: switch over early, demand the missing pages from the source.
    PostCopy,
    /// Stop the VM, copy everything, resume at the destination.
    StopAndCopy,
}

/// Something that happened to the VM that the strategy must react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The VM is about to run its first vCPU, with these memslots.
    VmStart {
        /// The guest RAM.
        memslots: &'a [Memslot],
    },
    /// A memslot was added (hot-plug).
    MemslotAdded(Memslot),
    /// A memslot is about to be removed (hot-unplug).
    MemslotRemoved(Memslot),
    /// A trapped guest write to a Profiling Buffer register: enable, disable or retarget.
    BufferWrite {
        /// The vCPU.
        vcpu: VcpuId,
        /// The register written.
        reg: BufferReg,
        /// The vCPU's buffer registers *after* the write.
        regs: BufferRegs,
        /// The vCPU's stage 1 registers (for walking the buffer).
        stage1: Stage1Regs,
    },
    /// A trapped guest read of a Profiling Buffer register; the strategy may emulate it.
    BufferRead {
        /// The vCPU.
        vcpu: VcpuId,
        /// The register read.
        reg: BufferReg,
        /// The hardware (or current) registers.
        regs: BufferRegs,
        /// The hardware PMBIDR_EL1.
        pmbidr: Pmbidr,
    },
    /// The SPU raised a buffer management interrupt (PMBSR_EL1.S = 1) the host sees first.
    BufferManagement {
        /// The vCPU.
        vcpu: VcpuId,
        /// The registers at the interrupt: PMBSR says what happened, PMBPTR is frozen.
        regs: BufferRegs,
        /// The vCPU's stage 1 registers.
        stage1: Stage1Regs,
    },
    /// The host wants to invalidate `range` at stage 2 (MMU notifier).
    HostInvalidation {
        /// The IPAs.
        range: IpaRange,
        /// Why.
        cause: InvalidationCause,
    },
    /// A balloon inflation: the guest gives `range` back to the host.
    BalloonInflate(IpaRange),
    /// Migration starts in `mode`.
    MigrationStart(MigrationMode),
    /// Dirty logging starts (pre-copy): pages are write-protected to track writes.
    DirtyLogStart,
    /// One dirty-log round: the dirty bitmap of `range` is read and cleared (pages are
    /// write-protected again).
    DirtyLogClear(IpaRange),
    /// Dirty logging stops.
    DirtyLogStop,
    /// A vCPU stopped (pause, migration stop-and-copy phase).
    VcpuStop(VcpuId),
    /// Post-copy switch-over is about to happen on the source.
    PostCopySwitchover,
    /// The guest changed the stage 1 mapping of VAs (seen only if the VMM traps TLB
    /// maintenance; otherwise the strategy never hears of it).
    GuestStage1Remap {
        /// The vCPU that invalidated.
        vcpu: VcpuId,
        /// The vCPU's stage 1 registers now.
        stage1: Stage1Regs,
    },
    /// The VM stops for good: every pin must go.
    VmStop,
}

/// Why a strategy refused what the host or guest asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The pages are pinned for the SPU; the host must not invalidate them.
    Pinned,
    /// Migration is refused while SPE may use guest memory.
    MigrationRefused,
    /// Migrate with stop-and-copy instead of the requested mode.
    UseStopAndCopy,
    /// Memory hot-unplug is blocked while pinned.
    HotUnplugBlocked,
}

/// Why SPE was disabled for a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisableReason {
    /// The buffer (or its tables) cannot be backed at stage 2.
    Unbackable,
}

/// What the VMM must do about the event being handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Go on: apply the trapped write, clear PMBSR.S, allow the invalidation.
    Resume,
    /// Clear PMBSR_EL1 (S and the syndrome), set PMBPTR_EL1 to `pmbptr`, and resume profiling.
    ResumeAt {
        /// The rewritten write pointer.
        pmbptr: Gva,
    },
    /// Answer a trapped read with this value.
    Emulated(u64),
    /// Deliver a buffer management event to the guest with this PMBSR and PMBPTR.
    Inject {
        /// The syndrome.
        pmbsr: Pmbsr,
        /// The write pointer.
        pmbptr: Gva,
    },
    /// Disable SPE for the vCPU.
    DisableSpe(DisableReason),
    /// Refuse what was asked.
    Refuse(Refusal),
}
