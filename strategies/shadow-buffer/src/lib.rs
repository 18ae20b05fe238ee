//! # shadow-buffer: the host owns the SPU buffer and copies records into the guest's
//!
//! While a vCPU runs, MDCR_EL2.E2PB = 0b00 makes EL2 the owner of the Profiling Buffer (spec
//! sheet §1.10): the SPU writes into a small host buffer the host allocated and pinned itself,
//! through the EL2 regime (no guest stage 1, no stage 2: §1.11b), and every guest access to
//! PMBPTR/PMBLIMITR/PMBSR/PMBIDR traps. Sampling of guest EL1/EL0 stays under the guest's own
//! PMSCR_EL1, PMSIRR_EL1 and filters, since the owning EL is above the current EL (§1.11b).
//!
//! The strategy emulates the guest's buffer registers exactly and copies complete records into
//! the guest's buffer in software, through the guest's stage 1 and the VMM's ordinary
//! guest-memory write path ([`HostBacking::write_guest`]):
//!
//! * the host buffer's window is set so the SPU stops where the guest's buffer would be full:
//!   a buffer-full event at the same record as on hardware (§1.11 rule 4), PMBPTR after the last
//!   complete record, DL = 0 (the host buffer never faults);
//! * a guest read of PMBPTR drains and copies first, so the guest always reads an exact pointer;
//! * a stage 1 fault on the guest's buffer is reported as the SPU would (EC 0x24, its FSC,
//!   PMBPTR at the faulting VA, DL = 1 when that is mid-record, §1.11 rule 5); memory the host
//!   cannot provide is a stage 2 fault (EC 0x25), as on hardware;
//! * two host halves: the SPU restarts on one while the other is copied.
//!
//! Nothing of guest memory is ever pinned. [`ShadowBuffer::spu_write`] is the SPU's side of the
//! host buffer, for a VMM that models the SPU (the simulator, tests); a KVM implementation has
//! the hardware write the host pages instead (docs/DESIGN.md lists what it needs).
#![deny(missing_docs)]

mod copy;
mod errata;
mod host_buffer;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::{BufferEvent, BufferEventKind, Pmblimitr, Pmbptr, Pmbsr};
use spe_policy::errata::{Erratum, Profile};
use spe_policy::event::{BufferReg, BufferRegs, Event, Outcome};
use spe_policy::guest_notice::StrategyId;
use spe_policy::saved::{STATE_VERSION, SavedBufferRegs, SavedStage1};
use spe_policy::{
    BackingStrategy, GuestMemoryRead, Gva, HostBacking, HostError, IpaRange, PolicyError,
    StrategyStats, VcpuId,
};

pub use errata::{ERRATA, PROFILE};
pub use host_buffer::SpuWrite;

use copy::{CopyEnd, copy_to_guest};
use host_buffer::HostBuffer;

const NAME: &str = "shadow-buffer";

/// Most pages of one vCPU's buffer window sent before post-copy switch-over (256 MiB of 4 KiB
/// pages): bounded host work whatever the guest programs.
pub const SEND_LIMIT: u64 = 1 << 16;

/// Configuration of shadow-buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShadowBufferConfig {
    /// Host memory per vCPU for the SPU, split in two halves (at least 4 largest records).
    pub host_buffer_bytes: u64,
    /// The SPU's largest record, 2^PMSIDR_EL1.MaxSize.
    pub max_record_bytes: u64,
    /// The implementation the copy's walks model (PAMax, features), as the SPU's walk would.
    pub walk: spe_policy::arch::walk::WalkOptions,
}

impl Default for ShadowBufferConfig {
    fn default() -> Self {
        ShadowBufferConfig {
            host_buffer_bytes: spe_policy::config::defaults::SHADOW_HOST_BUFFER,
            max_record_bytes: spe_policy::config::defaults::MAX_RECORD,
            walk: spe_policy::arch::walk::WalkOptions::default(),
        }
    }
}

/// Counters of the copy path, beyond [`StrategyStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Trapped guest accesses to PMB* registers (reads and writes).
    pub traps: u64,
    /// Host buffer-full events handled.
    pub host_buffer_fulls: u64,
    /// Copies into guest memory (one per copy point with data).
    pub copies: u64,
    /// Bytes copied into guest memory.
    pub bytes_copied: u64,
    /// Bytes the SPU wrote into the host buffer that the guest's hardware would never have
    /// written (after a fault, or before a register write that moved the buffer away).
    pub bytes_dropped: u64,
    /// Buffer enables whose registers break the enable rules (spec sheet §1.11 rule 3):
    /// CONSTRAINED UNPREDICTABLE; this model writes nothing, one of the permitted behaviours.
    pub unpredictable_enables: u64,
}

/// The SPU's side of one vCPU's host buffer (see [`ShadowBuffer::spu`]).
#[derive(Debug, Clone)]
pub struct Spu {
    vcpu: Arc<Mutex<VcpuShadow>>,
    max_record: usize,
}

impl Spu {
    /// Writes one complete record as the SPU would.
    pub fn write(&self, record: &[u8]) -> SpuWrite {
        let mut once = Some(record);
        self.write_each(|| once.take()).1
    }

    /// Writes records back to back as the SPU would, taking each from `next` until it gives
    /// none or a write is not [`SpuWrite::Written`]. Returns how many records were taken and
    /// the last outcome ([`SpuWrite::Written`] if `next` ran out first). Same as calling
    /// [`Spu::write`] for each, with one lock for the whole burst.
    pub fn write_each<'r>(&self, mut next: impl FnMut() -> Option<&'r [u8]>) -> (u64, SpuWrite) {
        let mut v = self.vcpu.lock();
        let mut taken = 0;
        while let Some(record) = next() {
            taken += 1;
            let out = if v.stopped {
                SpuWrite::NotProfiling
            } else {
                v.host.spu_write(record, self.max_record)
            };
            if out != SpuWrite::Written {
                return (taken, out);
            }
        }
        (taken, SpuWrite::Written)
    }
}

/// The guest's view of one vCPU's Profiling Buffer, and the host buffer behind it.
#[derive(Debug)]
struct VcpuShadow {
    pmbptr: Pmbptr,
    pmblimitr: Pmblimitr,
    pmbsr: Pmbsr,
    stage1: Option<Stage1Regs>,
    host: HostBuffer,
    /// The VM stopped: the host buffer is gone.
    stopped: bool,
    /// The lowest PMBPTR the guest programmed with the current LIMIT: where its AUX buffer
    /// starts (Linux re-arms from there when the ring wraps), so post-copy can send the whole
    /// buffer, not only the window ahead of PMBPTR. `(limit, lowest)`.
    buffer_start: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Shared {
    stats: StrategyStats,
    shadow: ShadowStats,
}

/// shadow-buffer's saved state ([`ShadowBuffer::save`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowBufferState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The host buffer per vCPU, bytes (the destination's must be the same).
    pub host_buffer_bytes: u64,
    /// Each vCPU, by number.
    pub vcpus: Vec<SavedShadowVcpu>,
}

/// One vCPU of [`ShadowBufferState`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedShadowVcpu {
    /// The vCPU.
    pub vcpu: u32,
    /// The guest's emulated PMBPTR, PMBLIMITR and PMBSR.
    pub regs: SavedBufferRegs,
    /// Its stage 1 registers at the last trapped access.
    pub stage1: Option<SavedStage1>,
    /// Records the SPU wrote into the host buffer, not yet copied to the guest's.
    pub pending: Vec<u8>,
    /// The SPU's window in the host half, bytes.
    pub window: u64,
    /// The SPU stands stopped at a host buffer-full.
    pub spu_stopped: bool,
    /// The VM was stopped.
    pub vm_stopped: bool,
    /// `(LIMIT, lowest PMBPTR)` of the guest's buffer, for post-copy.
    pub buffer_start: Option<(u64, u64)>,
}

/// The shadow-buffer strategy.
#[derive(Debug)]
pub struct ShadowBuffer {
    config: ShadowBufferConfig,
    vcpus: Mutex<HashMap<VcpuId, Arc<Mutex<VcpuShadow>>>>,
    shared: Mutex<Shared>,
}

fn err(action: &'static str) -> impl FnOnce(HostError) -> PolicyError {
    PolicyError::during(NAME, action)
}

impl VcpuShadow {
    fn regs(&self) -> BufferRegs {
        BufferRegs {
            pmbptr: self.pmbptr,
            pmblimitr: self.pmblimitr,
            pmbsr: self.pmbsr,
        }
    }

    /// Bytes from PMBPTR to the limit, when the SPU may write: enabled, fill mode, no event
    /// pending, and the enable rules of §1.11 rule 3 met (`None` otherwise).
    fn guest_window(&self, max_record: u64) -> Result<Option<u64>, ()> {
        let regs = self.regs();
        if self.pmbsr.s() || self.stage1.is_none() {
            return Ok(None);
        }
        let Some((start, len)) = regs.window() else {
            return Ok(None);
        };
        let limit = self.pmblimitr.limit_address().0;
        // Rule 3: PMBPTR <= LIMIT - 2^MaxSize and PMBPTR[63:56] == LIMIT[63:56]; nVM buffers
        // (FEAT_SPE_nVM) are not offered to the guest.
        if len < max_record || start.0 >> 56 != limit >> 56 || self.pmblimitr.nvm() {
            return Err(());
        }
        Ok(Some(len))
    }
}

impl ShadowBuffer {
    /// A shadow-buffer strategy with `config`; the host buffer is clamped to at least four
    /// largest records so the SPU always has room to restart.
    pub fn new(config: ShadowBufferConfig) -> Self {
        let max_record = config.max_record_bytes.clamp(16, 2048);
        ShadowBuffer {
            config: ShadowBufferConfig {
                host_buffer_bytes: config.host_buffer_bytes.max(4 * max_record),
                max_record_bytes: max_record,
                walk: config.walk,
            },
            vcpus: Mutex::new(HashMap::new()),
            shared: Mutex::new(Shared::default()),
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> ShadowBufferConfig {
        self.config
    }

    /// The copy-path counters.
    pub fn shadow_stats(&self) -> ShadowStats {
        self.shared.lock().shadow
    }

    fn max_record(&self) -> usize {
        self.config.max_record_bytes as usize
    }

    fn vcpu(&self, vcpu: VcpuId) -> Arc<Mutex<VcpuShadow>> {
        let mut map = self.vcpus.lock();
        let half = (self.config.host_buffer_bytes / 2) as usize;
        let entry = map.entry(vcpu).or_insert_with(|| {
            let mut shared = self.shared.lock();
            shared.stats.pinned_bytes += 2 * half as u64;
            shared.stats.peak_pinned_bytes = shared
                .stats
                .peak_pinned_bytes
                .max(shared.stats.pinned_bytes);
            shared.stats.pin_ops += 1;
            Arc::new(Mutex::new(VcpuShadow {
                pmbptr: Pmbptr::new(),
                pmblimitr: Pmblimitr::new(),
                pmbsr: Pmbsr::new(),
                stage1: None,
                host: HostBuffer::new(half),
                stopped: false,
                buffer_start: None,
            }))
        });
        Arc::clone(entry)
    }

    /// The state a migration or snapshot carries, exactly what the guest can observe: for
    /// each vCPU the emulated PMBPTR, PMBLIMITR and PMBSR, its stage 1, and the records the SPU
    /// wrote into the host buffer that are not yet copied (they reach the guest's buffer on
    /// the destination, at its next copy point, as they would have on the source).
    pub fn save(&self) -> ShadowBufferState {
        let map = self.vcpus.lock();
        let mut vcpus: Vec<SavedShadowVcpu> = map
            .iter()
            .map(|(id, v)| {
                let v = v.lock();
                let (pending, window, spu_stopped) = v.host.save();
                SavedShadowVcpu {
                    vcpu: id.0,
                    regs: SavedBufferRegs::from(v.regs()),
                    stage1: v.stage1.map(SavedStage1::from),
                    pending,
                    window: window as u64,
                    spu_stopped,
                    vm_stopped: v.stopped,
                    buffer_start: v.buffer_start,
                }
            })
            .collect();
        vcpus.sort_by_key(|v| v.vcpu);
        ShadowBufferState {
            version: STATE_VERSION,
            host_buffer_bytes: self.config.host_buffer_bytes,
            vcpus,
        }
    }

    /// shadow-buffer on a destination from `state`: each vCPU's host buffer is allocated again
    /// with its records in flight, and its emulated registers are the source's. The host
    /// buffer size must be the source's (the records in flight must fit).
    pub fn restore(
        config: ShadowBufferConfig,
        state: &ShadowBufferState,
    ) -> Result<Self, PolicyError> {
        let s = ShadowBuffer::new(config);
        let mismatch = |what: String| {
            err("restoring the host buffers on the migration destination")(HostError::Other(what))
        };
        if s.config.host_buffer_bytes != state.host_buffer_bytes {
            return Err(mismatch(format!(
                "the source's host buffer was {} bytes, this config's is {}; set [spe.shadow_buffer] host_buffer to the source's",
                state.host_buffer_bytes, s.config.host_buffer_bytes
            )));
        }
        let half = (s.config.host_buffer_bytes / 2) as usize;
        for saved in &state.vcpus {
            let window = usize::try_from(saved.window).unwrap_or(usize::MAX);
            let host = HostBuffer::restore(half, &saved.pending, window, saved.spu_stopped)
                .ok_or_else(|| {
                    mismatch(format!(
                        "vCPU {}'s {} bytes in flight do not fit a {half}-byte host half",
                        saved.vcpu,
                        saved.pending.len()
                    ))
                })?;
            let regs = BufferRegs::from(saved.regs);
            let v = s.vcpu(VcpuId(saved.vcpu));
            let mut v = v.lock();
            v.pmbptr = regs.pmbptr;
            v.pmblimitr = regs.pmblimitr;
            v.pmbsr = regs.pmbsr;
            v.stage1 = saved.stage1.map(Stage1Regs::from);
            v.host = host;
            v.stopped = saved.vm_stopped;
            v.buffer_start = saved.buffer_start;
        }
        Ok(s)
    }

    /// The SPU writes one complete `record` for `vcpu` into the host buffer (the hardware's
    /// side of the host-owned buffer, for a VMM that models the SPU).
    pub fn spu_write(&self, vcpu: VcpuId, record: &[u8]) -> SpuWrite {
        match self.spu(vcpu) {
            Some(spu) => spu.write(record),
            None => SpuWrite::NotProfiling,
        }
    }

    /// `vcpu`'s SPU port, once the guest has touched its buffer registers: a handle a model
    /// of the SPU keeps to write records without looking the vCPU up each time. After VM stop
    /// a port writes nothing (`NotProfiling`).
    pub fn spu(&self, vcpu: VcpuId) -> Option<Spu> {
        let v = self.vcpus.lock().get(&vcpu).cloned()?;
        Some(Spu {
            vcpu: v,
            max_record: self.max_record(),
        })
    }

    /// Copies what the SPU wrote since the last copy point into the guest's buffer, advancing
    /// the emulated PMBPTR. On a fault the emulated PMBSR/PMBPTR take the SPU's values and the
    /// event to inject is returned.
    fn drain<G, H>(
        &self,
        v: &mut VcpuShadow,
        guest: &G,
        host: &H,
    ) -> Result<Option<Outcome>, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let pending = v.host.pending();
        let Some(stage1) = v.stage1.filter(|_| !pending.is_empty()) else {
            return Ok(None);
        };
        let to = v.pmbptr.address();
        // The guest reads PMBIDR_EL1.F = 0 (see `on_read`): the copy does no hardware Access
        // flag or dirty update, as an SPU without them would not.
        let stage1 = Stage1Regs {
            hw_af: false,
            hw_dbm: false,
            ..stage1
        };
        let copied = copy_to_guest(pending, to, stage1, self.config.walk, guest, host)
            .map_err(err("copying records into the guest's buffer"))?;
        let total = pending.len();
        let mut shared = self.shared.lock();
        shared.stats.walks += copied.walks;
        shared.shadow.copies += 1;
        match copied.end {
            CopyEnd::Done => {
                shared.shadow.bytes_copied += total as u64;
                v.pmbptr = Pmbptr::from_bits(to.0.wrapping_add(total as u64));
                Ok(None)
            }
            CopyEnd::Fault { offset, pmbsr } => {
                shared.shadow.bytes_copied += offset as u64;
                shared.shadow.bytes_dropped += (total - offset) as u64;
                shared.stats.injected += 1;
                let at = to.0.wrapping_add(offset as u64);
                // §1.11 rule 5 (`DebugWriteFault`): S, EC and the FSC are set; DL is set when
                // the fault is mid-record and otherwise unchanged; COLL and EA are unchanged.
                let pmbsr = pmbsr
                    .with_dl(pmbsr.dl() || v.pmbsr.dl())
                    .with_ea(v.pmbsr.ea())
                    .with_coll(v.pmbsr.coll());
                v.pmbptr = Pmbptr::from_bits(at);
                v.pmbsr = pmbsr;
                v.host.park();
                Ok(Some(Outcome::Inject {
                    pmbsr,
                    pmbptr: v.pmbptr.address(),
                }))
            }
        }
    }

    /// Points the host buffer at what the guest's registers now allow: the SPU gets a window
    /// no larger than the room left in the guest's buffer, so it fills exactly where the
    /// guest's would.
    fn rearm(&self, v: &mut VcpuShadow) {
        match v.guest_window(self.config.max_record_bytes) {
            Ok(Some(len)) => v.host.reset(usize::try_from(len).unwrap_or(usize::MAX)),
            Ok(None) => v.host.park(),
            Err(()) => {
                self.shared.lock().shadow.unpredictable_enables += 1;
                v.host.park();
            }
        }
    }

    fn on_write<G, H>(
        &self,
        vcpu: VcpuId,
        reg: BufferReg,
        regs: BufferRegs,
        stage1: Stage1Regs,
        guest: &G,
        host: &H,
    ) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let v = self.vcpu(vcpu);
        let mut v = v.lock();
        // Records the SPU took before the write belong to the buffer as it was.
        let fault = self.drain(&mut v, guest, host)?;
        // The strategy's registers are authoritative: only the one written changes.
        match reg {
            BufferReg::Pmbptr => v.pmbptr = regs.pmbptr,
            BufferReg::Pmblimitr => v.pmblimitr = regs.pmblimitr,
            BufferReg::Pmbsr => v.pmbsr = regs.pmbsr,
            BufferReg::Pmbidr => {}
        }
        v.stage1 = Some(stage1);
        if let Some((start, _)) = v.regs().window() {
            let limit = v.pmblimitr.limit_address().0;
            let lowest = match v.buffer_start {
                Some((l, lo)) if l == limit => lo.min(start.0),
                _ => start.0,
            };
            v.buffer_start = Some((limit, lowest));
        }
        self.rearm(&mut v);
        Ok(match fault {
            // The fault happened before the write: the guest hears of it as it would have.
            Some(inject) if reg != BufferReg::Pmbsr => inject,
            _ => Outcome::Resume,
        })
    }

    fn on_read<G, H>(
        &self,
        vcpu: VcpuId,
        reg: BufferReg,
        hardware: BufferRegs,
        pmbidr: spe_policy::arch::Pmbidr,
        guest: &G,
        host: &H,
    ) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let v = self.vcpu(vcpu);
        let mut v = v.lock();
        // The host SPU's PMBSR.COLL (rule 13) is the guest's.
        if hardware.pmbsr.coll() {
            v.pmbsr.set_coll(true);
        }
        if matches!(reg, BufferReg::Pmbptr | BufferReg::Pmbsr) {
            // An exact pointer and status: copy what is in flight first. Where the SPU would
            // have faulted on those records, the guest reads the fault (S = 1) and its
            // interrupt is raised now: the read's outcome is the value, so the interrupt goes
            // through the host (counted once, in `drain`).
            match self.drain(&mut v, guest, host)? {
                None => self.rearm(&mut v),
                Some(Outcome::Inject { pmbsr, pmbptr }) => host
                    .inject(vcpu, pmbsr, Pmbptr::from_bits(pmbptr.0))
                    .map_err(err("raising the buffer interrupt a read discovered"))?,
                Some(_) => {}
            }
        }
        Ok(Outcome::Emulated(match reg {
            BufferReg::Pmbptr => v.pmbptr.into_bits(),
            BufferReg::Pmblimitr => v.pmblimitr.into_bits(),
            BufferReg::Pmbsr => v.pmbsr.into_bits(),
            // F = 0: hardware Access flag and dirty updates are not done for the guest's
            // buffer (the copy is software and does not do them; spec sheet §3.6). The guest
            // must keep its buffer's AF set and pages writable, as Linux's vmap does.
            BufferReg::Pmbidr => pmbidr.with_f(false).into_bits(),
        }))
    }

    /// Post-copy: the guest buffers' remaining windows (and the table pages that map them) go
    /// to the destination before switch-over, so copies after it do not wait for the network
    /// (SB-06's mitigation, like pin-buffer's PB-06). Walked now, not at enable: switch-over is
    /// rare and enables stay one trap. A window the walk cannot cover (a fault, more than
    /// [`SEND_LIMIT`] lookups) is sent as far as it goes.
    fn send_buffers_before_switchover<G, H>(&self, guest: &G, host: &H) -> Result<(), PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let vcpus: Vec<Arc<Mutex<VcpuShadow>>> = self.vcpus.lock().values().cloned().collect();
        let granule = host.granule();
        for v in vcpus {
            let (window, stage1, buffer_start) = {
                let v = v.lock();
                (v.regs().window(), v.stage1, v.buffer_start)
            };
            let (Some((start, len)), Some(stage1)) = (window, stage1) else {
                continue;
            };
            // From where the guest's buffer starts: after the ring wraps, the SPU writes there
            // again.
            let (start, len) = match buffer_start {
                Some((limit, lowest)) if limit == start.0 + len && lowest < start.0 => {
                    (Gva(lowest), limit - lowest)
                }
                _ => (start, len),
            };
            let walker =
                spe_policy::arch::walk::Walker::with_options(stage1, self.config.walk, guest);
            let limits = spe_policy::arch::walk::RangeLimits {
                max_steps: SEND_LIMIT,
            };
            let Ok(t) = walker.translate_range(start, len.min(SEND_LIMIT * 4096), limits) else {
                continue;
            };
            let mut pages: Vec<spe_policy::Ipa> = t.tables_touched.clone();
            for run in &t.runs {
                pages.extend(IpaRange::new(run.ipa, run.len).pages(granule));
            }
            pages.sort_unstable();
            pages.dedup();
            for range in spe_policy::pin_ledger::runs(&pages, granule) {
                match host.send_before_switchover(range) {
                    Ok(()) | Err(HostError::NotInMemslot(_)) => {}
                    Err(e) => return Err(err("sending guest buffer pages before switch-over")(e)),
                }
            }
        }
        Ok(())
    }

    /// The SPU stopped on the host buffer.
    fn on_host_event<G, H>(
        &self,
        vcpu: VcpuId,
        regs: BufferRegs,
        guest: &G,
        host: &H,
    ) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        let event = BufferEvent::decode(regs.pmbsr);
        if event.kind != BufferEventKind::BufferFull {
            // The host buffer is the host's own pinned memory: anything but buffer-full is a
            // host bug, not a guest event.
            return Err(err("handling an event on the host-owned buffer")(
                HostError::Other(format!(
                    "PMBSR {:#x} on the host buffer: only buffer-full is expected there",
                    regs.pmbsr.into_bits()
                )),
            ));
        }
        let v = self.vcpu(vcpu);
        let mut v = v.lock();
        self.shared.lock().shadow.host_buffer_fulls += 1;
        // §1.11 rule 13: a collision on the host-owned SPU is the guest's collision.
        if event.collision {
            v.pmbsr.set_coll(true);
        }
        if let Some(inject) = self.drain(&mut v, guest, host)? {
            return Ok(inject);
        }
        let ptr = v.pmbptr.ptr();
        let limit = v.pmblimitr.limit_address().0;
        if ptr > limit.saturating_sub(self.config.max_record_bytes) {
            // §1.11 rule 4 (`SPEBufferIsFull`), on the guest's buffer: the same record fills
            // it as on hardware. S, EC = 0 and BSC = buffer full are set; DL, EA and COLL are
            // left as they were.
            let full = BufferEvent::buffer_full().encode();
            v.pmbsr = full
                .with_dl(v.pmbsr.dl())
                .with_ea(v.pmbsr.ea())
                .with_coll(v.pmbsr.coll());
            v.host.park();
            self.shared.lock().stats.injected += 1;
            return Ok(Outcome::Inject {
                pmbsr: v.pmbsr,
                pmbptr: v.pmbptr.address(),
            });
        }
        let window = usize::try_from(limit - ptr).unwrap_or(usize::MAX);
        v.host.flip(window);
        Ok(Outcome::Resume)
    }
}

impl BackingStrategy for ShadowBuffer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn id(&self) -> StrategyId {
        StrategyId::ShadowBuffer
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn errata(&self) -> &'static [Erratum] {
        &ERRATA
    }

    fn stats(&self) -> StrategyStats {
        self.shared.lock().stats
    }

    fn on_event<G, H>(&self, event: &Event<'_>, guest: &G, host: &H) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        match *event {
            Event::BufferWrite {
                vcpu,
                reg,
                regs,
                stage1,
            } => {
                self.shared.lock().shadow.traps += 1;
                self.on_write(vcpu, reg, regs, stage1, guest, host)
            }
            Event::BufferRead {
                vcpu,
                reg,
                regs,
                pmbidr,
            } => {
                self.shared.lock().shadow.traps += 1;
                self.on_read(vcpu, reg, regs, pmbidr, guest, host)
            }
            Event::BufferManagement { vcpu, regs, .. } => {
                self.on_host_event(vcpu, regs, guest, host)
            }
            Event::VcpuStop(vcpu) => {
                // Everything in flight reaches guest memory before the vCPU's state is saved
                // or migrated.
                let Some(v) = self.vcpus.lock().get(&vcpu).cloned() else {
                    return Ok(Outcome::Resume);
                };
                let mut v = v.lock();
                match self.drain(&mut v, guest, host)? {
                    Some(inject) => Ok(inject),
                    None => {
                        self.rearm(&mut v);
                        Ok(Outcome::Resume)
                    }
                }
            }
            Event::VmStop => {
                let freed: u64 = self
                    .vcpus
                    .lock()
                    .drain()
                    .map(|(_, v)| {
                        let mut v = v.lock();
                        v.stopped = true;
                        let bytes = v.host.bytes();
                        // Ports still held elsewhere keep nothing of the buffer.
                        v.host = HostBuffer::new(0);
                        bytes
                    })
                    .sum();
                let mut shared = self.shared.lock();
                shared.stats.pinned_bytes = shared.stats.pinned_bytes.saturating_sub(freed);
                shared.stats.unpin_ops += u64::from(freed > 0);
                Ok(Outcome::Resume)
            }
            // Nothing of guest memory is pinned or exempt: the host may reclaim, merge, log and
            // migrate freely; the copy path faults pages back in as any host write does.
            Event::VmStart { .. }
            | Event::MemslotAdded(_)
            | Event::MemslotRemoved(_)
            | Event::HostInvalidation { .. }
            | Event::BalloonInflate(_)
            | Event::MigrationStart(_)
            | Event::DirtyLogStart
            | Event::DirtyLogClear(_)
            | Event::DirtyLogStop => Ok(Outcome::Resume),
            Event::PostCopySwitchover => {
                self.send_buffers_before_switchover(guest, host)?;
                Ok(Outcome::Resume)
            }
            Event::GuestStage1Remap { vcpu, stage1 } => {
                let Some(v) = self.vcpus.lock().get(&vcpu).cloned() else {
                    return Ok(Outcome::Resume);
                };
                let mut v = v.lock();
                // Records the SPU took before the remap belong to the stage 1 registers they
                // were taken under (a new TTBR comes with this event): copy them with those
                // first. Descriptors the guest rewrote in place are read as they are now,
                // which the architecture allows between the write and the TLB invalidation.
                let fault = self.drain(&mut v, guest, host)?;
                v.stage1 = Some(stage1);
                match fault {
                    Some(inject) => Ok(inject),
                    None => {
                        self.rearm(&mut v);
                        Ok(Outcome::Resume)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
