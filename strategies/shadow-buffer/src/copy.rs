//! Copying complete records from the host buffer into the guest's buffer in software, the way
//! the SPU would have written them: through the guest's stage 1 (the walker, with the SPU's
//! access rules of spec sheet §3.5) and the VMM's ordinary guest-memory write path (which may
//! wait for swap-in or a post-copy fetch, and marks pages dirty for migration).

use spe_policy::arch::walk::{RangeLimits, Stage1Regs, WalkError, WalkOptions, Walker};
use spe_policy::arch::{BufferEvent, FaultStatusCode, Pmbsr, Stage};
use spe_policy::spe::{DecodeMode, Fill, Record, Records};
use spe_policy::{GuestMemoryRead, Gva, HostBacking, HostError, Ipa, WriteStopped};

/// How a copy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyEnd {
    /// Every byte reached the guest's buffer.
    Done,
    /// The write of the byte at `offset` faulted as the SPU's would have: the bytes before it
    /// are in the guest's buffer, the rest are dropped (the SPU would have stopped there).
    Fault {
        /// Offset into the copied bytes.
        offset: usize,
        /// PMBSR_EL1 as the SPU would have set it (S = 1, EC, FSC, DL).
        pmbsr: Pmbsr,
    },
}

/// What a copy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Copied {
    /// How it ended.
    pub(crate) end: CopyEnd,
    /// Stage 1 walks done.
    pub(crate) walks: u64,
}

/// Whether `offset` is the first byte after a complete record of `bytes` (or 0): the place a
/// fault leaves DL = 0 (spec sheet §1.11 rule 5). `bytes` starts at a record boundary and holds
/// complete records only, padding included; boundaries are found with the record codec.
fn is_record_boundary(bytes: &[u8], offset: usize) -> bool {
    if offset == 0 || offset == bytes.len() {
        return true;
    }
    let mut records = Records::new(bytes, DecodeMode::Architecture);
    let mut r = Record::default();
    loop {
        match records.next_into(&mut r) {
            Fill::Record if r.offset == offset => return true,
            Fill::Record if r.offset > offset => return false,
            Fill::Record => {}
            // Trailing padding after the last record is the record's alignment padding.
            Fill::IncompleteTail { .. } | Fill::Done => return false,
        }
    }
}

fn fault(stage: Stage, fsc: FaultStatusCode, bytes: &[u8], offset: usize) -> CopyEnd {
    let dl = !is_record_boundary(bytes, offset);
    CopyEnd::Fault {
        offset,
        pmbsr: BufferEvent::fault(stage, fsc, dl).encode(),
    }
}

/// A stage 2 fault as the SPU reports one on an IPA with no memory behind it: EC 0x25, a
/// translation fault at the last level (the host maps guest RAM with pages).
const STAGE2_NO_MEMORY: FaultStatusCode = FaultStatusCode::Translation(3);

/// The translations one copy has used: a leaf's VA block and the IPA block it maps, so a copy
/// walks once per block, not once per page. They live for one copy only: the host does not
/// see the guest's TLB maintenance unless it traps it, so a translation kept longer could
/// outlive a remap the hardware's TLB would have dropped.
#[derive(Debug, Default)]
struct Tlb {
    /// `(VA block base, IPA block base, block size)`, most recent last.
    entries: Vec<(u64, u64, u64)>,
}

impl Tlb {
    /// At most this many entries (4 MiB of 4 KiB pages): bounded whatever the guest maps.
    const CAPACITY: usize = 1024;

    fn lookup(&self, va: u64) -> Option<(u64, u64)> {
        self.entries
            .iter()
            .rev()
            .find(|(base, _, size)| va.wrapping_sub(*base) < *size)
            .map(|(base, ipa, size)| (ipa + (va - base), size - (va - base)))
    }

    fn insert(&mut self, va: u64, ipa: u64, size: u64) {
        if self.entries.len() == Self::CAPACITY {
            self.entries.clear();
        }
        let base = va & !(size - 1);
        self.entries.push((base, ipa - (va - base), size));
    }
}

/// Copies `bytes` (complete records) to the guest VA `to`, walking once per leaf block, and
/// hands the host every write of the copy in one [`HostBacking::write_guest_batch`] call (one
/// lock round, not one per page).
pub(crate) fn copy_to_guest<G, H>(
    bytes: &[u8],
    to: Gva,
    stage1: Stage1Regs,
    walk: WalkOptions,
    guest: &G,
    host: &H,
) -> Result<Copied, HostError>
where
    G: GuestMemoryRead + ?Sized,
    H: HostBacking + ?Sized,
{
    // Recursive mappings are legal (the SPU would just follow them); the walker's cycle guard
    // is for the host's own safety elsewhere.
    let options = WalkOptions {
        allow_recursive_tables: true,
        ..walk
    };
    let walker = Walker::with_options(stage1, options, guest);
    // The writes of the copy, in VA order, and where the walk stopped if it faulted: the
    // writes before the fault are done, as the SPU's would be.
    let mut writes: Vec<(Ipa, &[u8])> = Vec::with_capacity(bytes.len() / 4096 + 2);
    let mut walked = 0usize;
    let mut walk_fault = None;
    let mut walks = 0;
    // One range walk shares the upper levels between neighbouring pages (a walk cache), and
    // merges pages contiguous in IPA into one write. A table it cannot read ends it with an
    // error that does not say where: the page-by-page walk below finds the place.
    if let Ok(rt) = walker.translate_range(to, bytes.len() as u64, RangeLimits::default()) {
        walks = rt.steps;
        for run in &rt.runs {
            let n = usize::try_from(run.len)
                .unwrap_or(usize::MAX)
                .min(bytes.len() - walked);
            writes.push((run.ipa, &bytes[walked..walked + n]));
            walked += n;
        }
        walk_fault = rt.fault.map(|f| (Stage::One, f.fsc()));
        return finish(bytes, &writes, walked, walk_fault, walks, host);
    }
    let mut tlb = Tlb::default();
    while walked < bytes.len() {
        let va = Gva(to.0.wrapping_add(walked as u64));
        let (ipa, in_block) = match tlb.lookup(va.0) {
            Some(hit) => hit,
            None => {
                walks += 1;
                let t = match walker.translate(va) {
                    Ok(t) => t,
                    Err(WalkError::Fault(f)) => {
                        walk_fault = Some((Stage::One, f.fsc()));
                        break;
                    }
                    // A table outside guest RAM: the SPU's walk takes a stage 2 fault.
                    Err(WalkError::TableUnreadable { .. }) => {
                        walk_fault = Some((Stage::Two, STAGE2_NO_MEMORY));
                        break;
                    }
                    Err(e) => {
                        return Err(HostError::Other(format!("walking the guest buffer: {e}")));
                    }
                };
                tlb.insert(va.0, t.ipa.0, t.block_size);
                // The leaf maps `block_size` bytes: copy up to its end at once.
                (t.ipa.0, t.block_size - (va.0 & (t.block_size - 1)))
            }
        };
        let n = usize::try_from(in_block)
            .unwrap_or(usize::MAX)
            .min(bytes.len() - walked);
        writes.push((Ipa(ipa), &bytes[walked..walked + n]));
        walked += n;
    }
    finish(bytes, &writes, walked, walk_fault, walks, host)
}

/// The writes of a copy in one batch, then the fault the walk or the host met, if any.
fn finish<H: HostBacking + ?Sized>(
    bytes: &[u8],
    writes: &[(Ipa, &[u8])],
    walked: usize,
    walk_fault: Option<(Stage, FaultStatusCode)>,
    walks: u64,
    host: &H,
) -> Result<Copied, HostError> {
    let end = match host.write_guest_batch(writes) {
        Ok(()) => match walk_fault {
            None => CopyEnd::Done,
            Some((stage, fsc)) => fault(stage, fsc, bytes, walked),
        },
        Err(WriteStopped {
            written,
            error: HostError::NotInMemslot(_) | HostError::Unavailable { .. },
        }) => {
            let at: usize = writes[..written].iter().map(|(_, b)| b.len()).sum();
            fault(Stage::Two, STAGE2_NO_MEMORY, bytes, at)
        }
        Err(stopped) => return Err(stopped.error),
    };
    Ok(Copied { end, walks })
}
