//! The C ABI of spe-policy, for VMMs written in C (QEMU, kvmtool): load and check an `[spe]`
//! config, build the `Policy` for a VM, hand it the VMM's events, and back it with the VMM's
//! stage 2 through a table of C callbacks. The header, `include/spe_policy.h`, is generated
//! from this file by cbindgen (a test keeps the committed one fresh).
//!
//! Rules every function keeps:
//! - it never unwinds into C: a panic is caught and returned as [`SpeStatus::Panic`], with its
//!   message in the caller's error buffer;
//! - a null pointer where one is required, or an enum value out of range (enums cross the
//!   boundary as `uint32_t`: C may pass any value), is [`SpeStatus::BadArgument`], never a
//!   crash;
//! - an error message goes into `err` / `err_len` (the caller's buffer, always NUL-terminated
//!   when `err_len > 0`, truncated to fit); `err` may be null.
//!
//! The host callbacks are called only from the thread that called [`spe_policy_on_event`], and
//! only during that call.

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use spe_policies::Policy;
use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::{Pmbidr, Pmbptr, Pmbsr};
use spe_policy::config::{ByteSize, Limit, SpeConfig, WriteOrderName};
use spe_policy::event::{
    BufferReg, BufferRegs, DisableReason, Event, InvalidationCause, MigrationMode, Outcome, Refusal,
};
use spe_policy::host::{FaultIn, HostBacking, HostError, HostGranule, PageState};
use spe_policy::saved::{SavedBufferRegs, SavedStage1};
use spe_policy::{
    BackingStrategy, Granule, GuestMemoryRead, Ipa, IpaRange, Memslot, UnbackedIpa, VcpuId, VmSpec,
};

/// What a call returned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeStatus {
    /// It worked.
    Ok = 0,
    /// The config (or the VM) is invalid: the message names the key, the value and the fix.
    Invalid = 1,
    /// A host callback failed in a way the strategy cannot turn into a guest-visible outcome.
    Host = 2,
    /// A bug in spe-policy: a panic, caught at the boundary.
    Panic = 3,
    /// A required pointer was null, or an enum value out of range.
    BadArgument = 4,
}

/// The format of a config text.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeFormat {
    /// TOML with an `[spe]` table.
    Toml = 0,
    /// JSON with an `"spe"` object.
    Json = 1,
}

/// The VM's facts, from the VMM (the `[vm]` table of the simulator). Start from
/// [`spe_vm_default`] and set what the VMM knows.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpeVm {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM, bytes.
    pub ram_bytes: u64,
    /// The guest's perf AUX buffer per vCPU, bytes (checked against pin-buffer's cap).
    pub buffer_per_vcpu: u64,
    /// The guest's stage 1 granule, bytes (4096, 16384 or 65536).
    pub guest_granule: u64,
    /// The host's page size, bytes.
    pub host_page_size: u64,
    /// PAMax, bits.
    pub pa_bits: u8,
    /// The SPU's largest record, bytes (2^PMSIDR_EL1.MaxSize).
    pub max_record: u64,
    /// The SPU writes a record's bytes in order (otherwise the architecture's "any order").
    pub sequential_writes: bool,
    /// RLIMIT_MEMLOCK in bytes; 0 for unlimited.
    pub lock_limit: u64,
}

/// The stage 1 registers of the vCPU (raw values).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SpeStage1 {
    /// TCR_EL1.
    pub tcr: u64,
    /// TTBR0_EL1.
    pub ttbr0: u64,
    /// TTBR1_EL1.
    pub ttbr1: u64,
    /// SCTLR_EL1.
    pub sctlr: u64,
    /// The PE updates the Access flag in hardware (FEAT_HAFDBS and TCR_EL1.HA).
    pub hw_af: bool,
    /// The PE updates dirty state in hardware (TCR_EL1.HD).
    pub hw_dbm: bool,
}

/// The Profiling Buffer registers (raw values).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SpeBufferRegs {
    /// PMBPTR_EL1.
    pub pmbptr: u64,
    /// PMBLIMITR_EL1.
    pub pmblimitr: u64,
    /// PMBSR_EL1.
    pub pmbsr: u64,
}

/// A memslot: guest RAM at `ipa`, `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SpeMemslot {
    /// The VMM's slot number.
    pub slot: u32,
    /// First IPA.
    pub ipa: u64,
    /// Bytes.
    pub len: u64,
}

/// Which Profiling Buffer register a trapped access is to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeBufferReg {
    /// PMBPTR_EL1.
    Pmbptr = 0,
    /// PMBLIMITR_EL1.
    Pmblimitr = 1,
    /// PMBSR_EL1.
    Pmbsr = 2,
    /// PMBIDR_EL1.
    Pmbidr = 3,
}

/// Why the host invalidates stage 2 (the MMU notifier's reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeInvalidationCause {
    /// Reclaim to swap.
    Swap = 0,
    /// KSM merging.
    KsmMerge = 1,
    /// A transparent huge page split.
    ThpSplit = 2,
    /// A THP collapse (khugepaged, MADV_COLLAPSE).
    ThpCollapse = 3,
    /// NUMA balancing moved the page.
    NumaMigration = 4,
    /// Compaction moved the page.
    Compaction = 5,
}

/// How the VM is migrated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeMigrationMode {
    /// Dirty-log rounds, then stop-and-copy.
    PreCopy = 0,
    /// Switch over first, fetch on demand.
    PostCopy = 1,
    /// Stop the VM and copy everything.
    StopAndCopy = 2,
}

/// What happened in the VM.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeEventKind {
    /// The VM starts: `memslots`, `n_memslots`.
    VmStart = 0,
    /// A memslot was added: `memslot`.
    MemslotAdded = 1,
    /// A memslot is to be removed: `memslot` (the outcome may refuse it).
    MemslotRemoved = 2,
    /// A trapped write of `reg`: `vcpu`, `reg`, `regs` (after the write), `stage1`.
    BufferWrite = 3,
    /// A trapped read of `reg`: `vcpu`, `reg`, `regs`, `pmbidr` (the outcome may emulate it).
    BufferRead = 4,
    /// A buffer management interrupt: `vcpu`, `regs`, `stage1`.
    BufferManagement = 5,
    /// The host is about to invalidate stage 2 of `ipa`, `len`: `cause`.
    HostInvalidation = 6,
    /// The balloon takes `ipa`, `len`.
    BalloonInflate = 7,
    /// A migration starts: `migration`.
    MigrationStart = 8,
    /// Dirty logging starts.
    DirtyLogStart = 9,
    /// A dirty-log round clears `ipa`, `len`.
    DirtyLogClear = 10,
    /// Dirty logging stops.
    DirtyLogStop = 11,
    /// `vcpu` stops (before stop-and-copy).
    VcpuStop = 12,
    /// Post-copy switch-over.
    PostCopySwitchover = 13,
    /// The guest changed the stage 1 of `vcpu`'s buffer (trapped TLB maintenance): `stage1`.
    GuestStage1Remap = 14,
    /// The VM stops: every pin is released.
    VmStop = 15,
}

/// One event; fill the fields its kind names (see [`SpeEventKind`]) and zero the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpeEvent {
    /// Which event: an [`SpeEventKind`].
    pub kind: u32,
    /// The vCPU.
    pub vcpu: u32,
    /// The register accessed: an [`SpeBufferReg`].
    pub reg: u32,
    /// The Profiling Buffer registers.
    pub regs: SpeBufferRegs,
    /// The vCPU's stage 1 registers.
    pub stage1: SpeStage1,
    /// PMBIDR_EL1 as the hardware reports it.
    pub pmbidr: u64,
    /// VmStart: the memslots.
    pub memslots: *const SpeMemslot,
    /// VmStart: how many.
    pub n_memslots: usize,
    /// MemslotAdded / MemslotRemoved.
    pub memslot: SpeMemslot,
    /// First IPA of a range.
    pub ipa: u64,
    /// Bytes of a range.
    pub len: u64,
    /// HostInvalidation's cause: an [`SpeInvalidationCause`].
    pub cause: u32,
    /// MigrationStart's mode: an [`SpeMigrationMode`].
    pub migration: u32,
}

/// What the VMM must do next.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpeOutcomeKind {
    /// Resume the vCPU (or go ahead with the host operation).
    Resume = 0,
    /// Set PMBPTR_EL1 to `pmbptr`, clear PMBSR_EL1.S and resume.
    ResumeAt = 1,
    /// Complete the trapped read with `value`.
    Emulated = 2,
    /// Inject a buffer management event: PMBSR_EL1 = `pmbsr`, PMBPTR_EL1 = `pmbptr`.
    Inject = 3,
    /// Disable SPE for the vCPU (`reason`: 0 its buffer cannot be backed).
    DisableSpe = 4,
    /// Refuse the host operation (`reason`: 0 pinned, 1 migration refused, 2 use
    /// stop-and-copy, 3 hot-unplug blocked).
    Refuse = 5,
}

/// The policy's answer to an event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeOutcome {
    /// What to do.
    pub kind: SpeOutcomeKind,
    /// ResumeAt and Inject: PMBPTR_EL1.
    pub pmbptr: u64,
    /// Inject: PMBSR_EL1.
    pub pmbsr: u64,
    /// Emulated: the register value.
    pub value: u64,
    /// DisableSpe and Refuse: why.
    pub reason: u32,
}

/// A host page's stage 2 state, as the `page_state` callback reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SpePageState {
    /// Mapped at stage 2.
    pub present: bool,
    /// Write-protected (dirty logging, KSM).
    pub write_protected: bool,
    /// Pinned by anyone.
    pub pinned: bool,
    /// Exempt from dirty-log write protection.
    pub dirty_log_exempt: bool,
    /// Inside a memslot.
    pub in_memslot: bool,
}

/// A callback's result: 0 for success, else one of these.
pub const SPE_HOST_OK: i32 = 0;
/// The IPA is in no memslot.
pub const SPE_HOST_NOT_IN_MEMSLOT: i32 = 1;
/// The pin would exceed the locked-memory limit.
pub const SPE_HOST_LOCK_LIMIT: i32 = 2;
/// The page cannot be made present (post-copy source gone, file truncated).
pub const SPE_HOST_UNAVAILABLE: i32 = 3;
/// An unpin of a page that is not pinned.
pub const SPE_HOST_NOT_PINNED: i32 = 4;

/// The VMM's stage 2 and guest memory, as C callbacks. Every callback gets `ctx` first. A
/// null callback fails with a host error naming it when a strategy needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SpeHostCallbacks {
    /// The VMM's own state, passed back to every callback.
    pub ctx: *mut c_void,
    /// The host page size stage 2 is managed in, bytes (4096, 16384 or 65536).
    pub host_page_size: u64,
    /// Reads `len` guest bytes at `ipa` into `buf` (stage 1 tables, for the walker).
    pub read_guest: Option<extern "C" fn(*mut c_void, u64, *mut u8, usize) -> i32>,
    /// Pins `ipa`, `len` at stage 2.
    pub pin: Option<extern "C" fn(*mut c_void, u64, u64) -> i32>,
    /// Unpins `ipa`, `len`.
    pub unpin: Option<extern "C" fn(*mut c_void, u64, u64) -> i32>,
    /// Makes the page of `ipa` present; sets `*made_present` when it was not.
    pub fault_in: Option<extern "C" fn(*mut c_void, u64, *mut bool) -> i32>,
    /// Fills the stage 2 state of the page of `ipa`.
    pub page_state: Option<extern "C" fn(*mut c_void, u64, *mut SpePageState)>,
    /// Exempts `ipa`, `len` from dirty-log write protection (or returns it to it).
    pub set_dirty_log_exempt: Option<extern "C" fn(*mut c_void, u64, u64, bool) -> i32>,
    /// Sends `ipa`, `len` before post-copy switch-over.
    pub send_before_switchover: Option<extern "C" fn(*mut c_void, u64, u64) -> i32>,
    /// Writes `len` bytes at `ipa` through the VMM's ordinary path.
    pub write_guest: Option<extern "C" fn(*mut c_void, u64, *const u8, usize) -> i32>,
    /// Injects a buffer management event into `vcpu`.
    pub inject: Option<extern "C" fn(*mut c_void, u32, u64, u64) -> i32>,
    /// Disables SPE for `vcpu`.
    pub disable_spe: Option<extern "C" fn(*mut c_void, u32) -> i32>,
}

/// A policy for one VM: opaque to C.
#[derive(Debug)]
pub struct SpePolicy {
    policy: Policy,
}

/// The library's version, a static NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn spe_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Fills `vm` with the default VM (4 vCPUs, 8 GiB, 4 KiB pages, 48-bit PA, 64-byte records).
///
/// # Safety
/// `vm` is null or points to writable memory for one `SpeVm`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_vm_default(vm: *mut SpeVm) -> SpeStatus {
    if vm.is_null() {
        return SpeStatus::BadArgument;
    }
    let d = VmSpec::default();
    let c = SpeVm {
        vcpus: d.vcpus,
        ram_bytes: d.ram.bytes(),
        buffer_per_vcpu: d.buffer_per_vcpu.bytes(),
        guest_granule: d.guest_granule.bytes(),
        host_page_size: d.host_page_size.bytes(),
        pa_bits: d.pa_bits,
        max_record: d.max_record.bytes(),
        sequential_writes: d.write_order == WriteOrderName::Sequential,
        lock_limit: match d.lock_limit {
            Limit::Unlimited => 0,
            Limit::Bytes(b) => b.bytes(),
        },
    };
    // SAFETY: `vm` is non-null and, by the contract above, writable for one SpeVm.
    unsafe { vm.write(c) };
    SpeStatus::Ok
}

/// Checks a config text (`len` bytes, UTF-8; `format` an [`SpeFormat`]) against the default VM:
/// [`SpeStatus::Ok`], or [`SpeStatus::Invalid`] with every problem in `err`.
///
/// # Safety
/// `text` points to `len` readable bytes; `err` is null or writable for `err_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_config_check(
    text: *const c_char,
    len: usize,
    format: u32,
    err: *mut c_char,
    err_len: usize,
) -> SpeStatus {
    boundary(err, err_len, || {
        // SAFETY: by the contract above.
        let text = unsafe { text_arg(text, len) }?;
        let config = load(text, format)?;
        Policy::from_config(&config, &VmSpec::default())
            .map(|_| ())
            .map_err(|e| (SpeStatus::Invalid, e.to_string()))
    })
}

/// Builds the policy a config text names for the VM `vm` (null: the default VM) and stores it
/// in `*out`; free it with [`spe_policy_free`].
///
/// # Safety
/// `text` points to `len` readable bytes; `vm` is null or points to one `SpeVm`; `out` is
/// writable for one pointer; `err` is null or writable for `err_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_new(
    text: *const c_char,
    len: usize,
    format: u32,
    vm: *const SpeVm,
    out: *mut *mut SpePolicy,
    err: *mut c_char,
    err_len: usize,
) -> SpeStatus {
    boundary(err, err_len, || {
        if out.is_null() {
            return Err((SpeStatus::BadArgument, "out is null".into()));
        }
        // SAFETY: by the contract above.
        let (config, vm) = unsafe { config_and_vm(text, len, format, vm) }?;
        vm.validate()
            .map_err(|e| (SpeStatus::Invalid, e.to_string()))?;
        let policy =
            Policy::from_config(&config, &vm).map_err(|e| (SpeStatus::Invalid, e.to_string()))?;
        // SAFETY: `out` is non-null and writable for one pointer (contract above).
        unsafe { hand_out(out, policy) };
        Ok(())
    })
}

/// Frees a policy from [`spe_policy_new`] (null: nothing). Send `VmStop` first: freeing does
/// not call the host, so pins still held stay held.
///
/// # Safety
/// `policy` is null or came from `spe_policy_new` and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_free(policy: *mut SpePolicy) {
    if !policy.is_null() {
        // SAFETY: it came from Box::into_raw in spe_policy_new and is freed once.
        let b = unsafe { Box::from_raw(policy) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
    }
}

/// The strategy's name (`pin-all`, `pin-buffer`, `fault-translate`, `shadow-buffer`), a static
/// NUL-terminated string; null for a null policy.
///
/// # Safety
/// `policy` is null or a live policy.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_strategy(policy: *const SpePolicy) -> *const c_char {
    // SAFETY: null or live, by the contract above.
    match unsafe { policy.as_ref() } {
        None => std::ptr::null(),
        Some(p) => match p.policy.name() {
            "pin-all" => c"pin-all".as_ptr(),
            "pin-buffer" => c"pin-buffer".as_ptr(),
            "fault-translate" => c"fault-translate".as_ptr(),
            "shadow-buffer" => c"shadow-buffer".as_ptr(),
            _ => c"unknown".as_ptr(),
        },
    }
}

/// The guest notice's four device-tree cells (magic, version << 16 | strategy, errata bits,
/// buffer cap in 4 KiB pages) into `cells[0..4]`.
///
/// # Safety
/// `policy` is null or live; `cells` is null or writable for four `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_guest_notice(
    policy: *const SpePolicy,
    cells: *mut u32,
) -> SpeStatus {
    // SAFETY: null or live, by the contract above.
    let Some(p) = (unsafe { policy.as_ref() }) else {
        return SpeStatus::BadArgument;
    };
    if cells.is_null() {
        return SpeStatus::BadArgument;
    }
    match catch_unwind(AssertUnwindSafe(|| p.policy.guest_notice().cells())) {
        Ok(c) => {
            // SAFETY: `cells` is non-null and writable for four u32 (contract above).
            unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), cells, 4) };
            SpeStatus::Ok
        }
        Err(_) => SpeStatus::Panic,
    }
}

/// Bytes the policy holds pinned now (0 after `VmStop`).
///
/// # Safety
/// `policy` is null or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_pinned_bytes(policy: *const SpePolicy) -> u64 {
    // SAFETY: null or live, by the contract above.
    unsafe { policy.as_ref() }
        .and_then(|p| catch_unwind(AssertUnwindSafe(|| p.policy.stats().pinned_bytes)).ok())
        .unwrap_or(0)
}

/// The policy's state for a migration or snapshot, as JSON (`Policy::save`): call it with the
/// vCPUs paused, then send `VmStop` to this policy. Writes at most `len` bytes into `buf` (no
/// NUL) and the JSON's length into `*needed`; when `len` is too small nothing is written and
/// [`SpeStatus::BadArgument`] says so: call again with a buffer of `*needed` bytes.
///
/// # Safety
/// `policy` is live; `buf` is null or writable for `len` bytes; `needed` is writable for one
/// `size_t`; `err` is null or writable for `err_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_save(
    policy: *const SpePolicy,
    buf: *mut u8,
    len: usize,
    needed: *mut usize,
    err: *mut c_char,
    err_len: usize,
) -> SpeStatus {
    boundary(err, err_len, || {
        // SAFETY: null or live, by the contract above.
        let Some(p) = (unsafe { policy.as_ref() }) else {
            return Err((SpeStatus::BadArgument, "policy is null".into()));
        };
        if needed.is_null() {
            return Err((SpeStatus::BadArgument, "needed is null".into()));
        }
        let json = serde_json::to_vec(&p.policy.save()).map_err(|e| {
            (
                SpeStatus::Panic,
                format!("the state does not serialize: {e}"),
            )
        })?;
        // SAFETY: `needed` is non-null and writable (contract above).
        unsafe { needed.write(json.len()) };
        if buf.is_null() || len < json.len() {
            return Err((
                SpeStatus::BadArgument,
                format!(
                    "the state is {} bytes; call again with a buffer that large",
                    json.len()
                ),
            ));
        }
        // SAFETY: `buf` is non-null and writable for `len >= json.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(json.as_ptr(), buf, json.len()) };
        Ok(())
    })
}

/// Builds the policy a config names for `vm` (null: the default VM), carrying on from a state
/// [`spe_policy_save`] wrote on the source: what the strategy needs is pinned through `host`
/// before this returns, so call it before the destination's vCPUs run. Free the policy with
/// [`spe_policy_free`].
///
/// # Safety
/// As [`spe_policy_new`], and `state` points to `state_len` readable bytes and `host` to
/// callbacks that are sound to call with their `ctx` for the duration of the call.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn spe_policy_restore(
    text: *const c_char,
    len: usize,
    format: u32,
    vm: *const SpeVm,
    state: *const u8,
    state_len: usize,
    host: *const SpeHostCallbacks,
    out: *mut *mut SpePolicy,
    err: *mut c_char,
    err_len: usize,
) -> SpeStatus {
    boundary(err, err_len, || {
        if out.is_null() || state.is_null() {
            return Err((SpeStatus::BadArgument, "out or state is null".into()));
        }
        // SAFETY: null or valid, by the contract above.
        let Some(host) = (unsafe { host.as_ref() }) else {
            return Err((SpeStatus::BadArgument, "host is null".into()));
        };
        // SAFETY: by the contract above.
        let (config, vm) = unsafe { config_and_vm(text, len, format, vm) }?;
        // SAFETY: non-null and `state_len` bytes long (contract above).
        let bytes = unsafe { std::slice::from_raw_parts(state, state_len) };
        let saved: spe_policies::PolicyState = serde_json::from_slice(bytes)
            .map_err(|e| (SpeStatus::Invalid, format!("the saved state: {e}")))?;
        let c = CHost(host);
        let policy = Policy::restore(&config, &vm, &saved, &c, &c).map_err(|e| match e {
            spe_policies::RestoreError::Host(_) => (SpeStatus::Host, e.to_string()),
            _ => (SpeStatus::Invalid, e.to_string()),
        })?;
        // SAFETY: `out` is non-null and writable for one pointer (contract above).
        unsafe { hand_out(out, policy) };
        Ok(())
    })
}

/// Hands the policy one event, with the VMM's host behind `host`; the answer goes to `*out`.
/// [`SpeStatus::Host`]: a host callback failed in a way no guest-visible outcome covers (the
/// message says which call and why).
///
/// # Safety
/// `policy` is live; `host` points to callbacks that are sound to call with their `ctx` for the
/// duration of the call; `event` points to one `SpeEvent` (and, for `VmStart`, `memslots` to
/// `n_memslots` of them); `out` is writable for one `SpeOutcome`; `err` is null or writable for
/// `err_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn spe_policy_on_event(
    policy: *const SpePolicy,
    host: *const SpeHostCallbacks,
    event: *const SpeEvent,
    out: *mut SpeOutcome,
    err: *mut c_char,
    err_len: usize,
) -> SpeStatus {
    boundary(err, err_len, || {
        // SAFETY: each is null or valid, by the contract above.
        let (policy, host, event) = unsafe { (policy.as_ref(), host.as_ref(), event.as_ref()) };
        let (Some(p), Some(host), Some(ev)) = (policy, host, event) else {
            return Err((
                SpeStatus::BadArgument,
                "policy, host or event is null".into(),
            ));
        };
        if out.is_null() {
            return Err((SpeStatus::BadArgument, "out is null".into()));
        }
        let event_kind = kind(ev.kind).ok_or_else(|| bad("event kind", ev.kind))?;
        let slots: Vec<Memslot> = if event_kind == SpeEventKind::VmStart {
            if ev.memslots.is_null() && ev.n_memslots > 0 {
                return Err((SpeStatus::BadArgument, "memslots is null".into()));
            }
            if ev.n_memslots == 0 {
                Vec::new()
            } else {
                // SAFETY: non-null and, by the contract above, `n_memslots` long.
                unsafe { std::slice::from_raw_parts(ev.memslots, ev.n_memslots) }
                    .iter()
                    .map(memslot)
                    .collect()
            }
        } else {
            Vec::new()
        };
        let event = to_event(ev, event_kind, &slots)?;
        let c = CHost(host);
        let outcome = p
            .policy
            .on_event(&event, &c, &c)
            .map_err(|e| (SpeStatus::Host, e.to_string()))?;
        // SAFETY: `out` is non-null and writable for one SpeOutcome (contract above).
        unsafe { out.write(to_outcome(outcome)) };
        Ok(())
    })
}

/// Runs `f` with panics caught; writes its error (or the panic's message) into `err`.
fn boundary(
    err: *mut c_char,
    err_len: usize,
    f: impl FnOnce() -> Result<(), (SpeStatus, String)>,
) -> SpeStatus {
    let (status, msg) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return SpeStatus::Ok,
        Ok(Err(e)) => e,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            (
                SpeStatus::Panic,
                format!("spe-policy bug: {what} (please report it)"),
            )
        }
    };
    write_err(err, err_len, &msg);
    status
}

/// Copies `msg` into the caller's buffer, truncated and NUL-terminated.
fn write_err(err: *mut c_char, err_len: usize, msg: &str) {
    if err.is_null() || err_len == 0 {
        return;
    }
    let n = msg.len().min(err_len - 1);
    // SAFETY: `err` is non-null and writable for `err_len` bytes (every public function's
    // contract); `n + 1 <= err_len`; `msg` does not overlap it.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr().cast::<c_char>(), err, n);
        err.add(n).write(0);
    }
}

/// The config a text names and the VM `vm` describes (null: the default VM).
///
/// # Safety
/// As [`text_arg`], and `vm` is null or points to one `SpeVm`.
unsafe fn config_and_vm(
    text: *const c_char,
    len: usize,
    format: u32,
    vm: *const SpeVm,
) -> Result<(SpeConfig, VmSpec), (SpeStatus, String)> {
    // SAFETY: by the contract above.
    let config = load(unsafe { text_arg(text, len) }?, format)?;
    let vm = if vm.is_null() {
        VmSpec::default()
    } else {
        // SAFETY: non-null, and by the contract above it points to one SpeVm.
        vm_spec(unsafe { &*vm })
    };
    Ok((config, vm))
}

/// Gives C the policy: boxed, freed by `spe_policy_free`.
///
/// # Safety
/// `out` is non-null and writable for one pointer.
unsafe fn hand_out(out: *mut *mut SpePolicy, policy: Policy) {
    let boxed = Box::into_raw(Box::new(SpePolicy { policy }));
    // SAFETY: by the contract above.
    unsafe { out.write(boxed) };
}

/// The config text as a `&str`.
///
/// # Safety
/// `text` is null or points to `len` readable bytes that outlive the returned slice's use.
unsafe fn text_arg<'a>(text: *const c_char, len: usize) -> Result<&'a str, (SpeStatus, String)> {
    if text.is_null() {
        return Err((SpeStatus::BadArgument, "text is null".into()));
    }
    // SAFETY: non-null and `len` bytes long, by the contract above.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|e| {
        (
            SpeStatus::Invalid,
            format!("the config is not UTF-8 at byte {}", e.valid_up_to()),
        )
    })
}

fn load(text: &str, format: u32) -> Result<SpeConfig, (SpeStatus, String)> {
    let loaded = match format {
        f if f == SpeFormat::Toml as u32 => SpeConfig::from_toml_str(text),
        f if f == SpeFormat::Json as u32 => SpeConfig::from_json_str(text),
        f => return Err(bad("format", f)),
    };
    loaded
        .map(|l| l.config)
        .map_err(|e| (SpeStatus::Invalid, e.to_string()))
}

fn vm_spec(v: &SpeVm) -> VmSpec {
    VmSpec {
        vcpus: v.vcpus,
        ram: ByteSize(v.ram_bytes),
        buffer_per_vcpu: ByteSize(v.buffer_per_vcpu),
        guest_granule: ByteSize(v.guest_granule),
        host_page_size: ByteSize(v.host_page_size),
        pa_bits: v.pa_bits,
        max_record: ByteSize(v.max_record),
        write_order: if v.sequential_writes {
            WriteOrderName::Sequential
        } else {
            WriteOrderName::Unordered
        },
        lock_limit: match v.lock_limit {
            0 => Limit::Unlimited,
            n => Limit::Bytes(ByteSize(n)),
        },
    }
}

fn memslot(m: &SpeMemslot) -> Memslot {
    Memslot {
        slot: m.slot,
        range: IpaRange::new(Ipa(m.ipa), m.len),
    }
}

// The raw C values are the saved layouts' (`spe_policy::saved`), which know the registers.
fn stage1(s: &SpeStage1) -> Stage1Regs {
    SavedStage1 {
        tcr: s.tcr,
        ttbr0: s.ttbr0,
        ttbr1: s.ttbr1,
        sctlr: s.sctlr,
        hw_af: s.hw_af,
        hw_dbm: s.hw_dbm,
    }
    .into()
}

fn regs(r: &SpeBufferRegs) -> BufferRegs {
    SavedBufferRegs {
        pmbptr: r.pmbptr,
        pmblimitr: r.pmblimitr,
        pmbsr: r.pmbsr,
    }
    .into()
}

/// An enum value C passed that is none of the enum's.
fn bad(what: &str, value: u32) -> (SpeStatus, String) {
    (
        SpeStatus::BadArgument,
        format!("{what} {value} is out of range (see spe_policy.h)"),
    )
}

fn kind(k: u32) -> Option<SpeEventKind> {
    use SpeEventKind::*;
    [
        VmStart,
        MemslotAdded,
        MemslotRemoved,
        BufferWrite,
        BufferRead,
        BufferManagement,
        HostInvalidation,
        BalloonInflate,
        MigrationStart,
        DirtyLogStart,
        DirtyLogClear,
        DirtyLogStop,
        VcpuStop,
        PostCopySwitchover,
        GuestStage1Remap,
        VmStop,
    ]
    .into_iter()
    .find(|v| *v as u32 == k)
}

fn to_event<'a>(
    e: &SpeEvent,
    kind: SpeEventKind,
    slots: &'a [Memslot],
) -> Result<Event<'a>, (SpeStatus, String)> {
    let vcpu = VcpuId(e.vcpu);
    let range = IpaRange::new(Ipa(e.ipa), e.len);
    let reg = || {
        [
            BufferReg::Pmbptr,
            BufferReg::Pmblimitr,
            BufferReg::Pmbsr,
            BufferReg::Pmbidr,
        ]
        .get(e.reg as usize)
        .copied()
        .ok_or_else(|| bad("register", e.reg))
    };
    Ok(match kind {
        SpeEventKind::VmStart => Event::VmStart { memslots: slots },
        SpeEventKind::MemslotAdded => Event::MemslotAdded(memslot(&e.memslot)),
        SpeEventKind::MemslotRemoved => Event::MemslotRemoved(memslot(&e.memslot)),
        SpeEventKind::BufferWrite => Event::BufferWrite {
            vcpu,
            reg: reg()?,
            regs: regs(&e.regs),
            stage1: stage1(&e.stage1),
        },
        SpeEventKind::BufferRead => Event::BufferRead {
            vcpu,
            reg: reg()?,
            regs: regs(&e.regs),
            pmbidr: Pmbidr::from_bits(e.pmbidr),
        },
        SpeEventKind::BufferManagement => Event::BufferManagement {
            vcpu,
            regs: regs(&e.regs),
            stage1: stage1(&e.stage1),
        },
        SpeEventKind::HostInvalidation => Event::HostInvalidation {
            range,
            cause: [
                InvalidationCause::Swap,
                InvalidationCause::KsmMerge,
                InvalidationCause::ThpSplit,
                InvalidationCause::ThpCollapse,
                InvalidationCause::NumaMigration,
                InvalidationCause::Compaction,
            ]
            .get(e.cause as usize)
            .copied()
            .ok_or_else(|| bad("invalidation cause", e.cause))?,
        },
        SpeEventKind::BalloonInflate => Event::BalloonInflate(range),
        SpeEventKind::MigrationStart => Event::MigrationStart(
            [
                MigrationMode::PreCopy,
                MigrationMode::PostCopy,
                MigrationMode::StopAndCopy,
            ]
            .get(e.migration as usize)
            .copied()
            .ok_or_else(|| bad("migration mode", e.migration))?,
        ),
        SpeEventKind::DirtyLogStart => Event::DirtyLogStart,
        SpeEventKind::DirtyLogClear => Event::DirtyLogClear(range),
        SpeEventKind::DirtyLogStop => Event::DirtyLogStop,
        SpeEventKind::VcpuStop => Event::VcpuStop(vcpu),
        SpeEventKind::PostCopySwitchover => Event::PostCopySwitchover,
        SpeEventKind::GuestStage1Remap => Event::GuestStage1Remap {
            vcpu,
            stage1: stage1(&e.stage1),
        },
        SpeEventKind::VmStop => Event::VmStop,
    })
}

fn to_outcome(o: Outcome) -> SpeOutcome {
    let mut out = SpeOutcome {
        kind: SpeOutcomeKind::Resume,
        pmbptr: 0,
        pmbsr: 0,
        value: 0,
        reason: 0,
    };
    match o {
        Outcome::Resume => {}
        Outcome::ResumeAt { pmbptr } => {
            out.kind = SpeOutcomeKind::ResumeAt;
            out.pmbptr = pmbptr.0;
        }
        Outcome::Emulated(v) => {
            out.kind = SpeOutcomeKind::Emulated;
            out.value = v;
        }
        Outcome::Inject { pmbsr, pmbptr } => {
            out.kind = SpeOutcomeKind::Inject;
            out.pmbsr = pmbsr.into_bits();
            out.pmbptr = pmbptr.0;
        }
        Outcome::DisableSpe(r) => {
            out.kind = SpeOutcomeKind::DisableSpe;
            out.reason = match r {
                DisableReason::Unbackable => 0,
            };
        }
        Outcome::Refuse(r) => {
            out.kind = SpeOutcomeKind::Refuse;
            out.reason = match r {
                Refusal::Pinned => 0,
                Refusal::MigrationRefused => 1,
                Refusal::UseStopAndCopy => 2,
                Refusal::HotUnplugBlocked => 3,
            };
        }
    }
    out
}

/// The C callbacks as the library's host backing and guest memory.
struct CHost<'a>(&'a SpeHostCallbacks);

impl std::fmt::Debug for CHost<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CHost").finish_non_exhaustive()
    }
}

// SAFETY: the callbacks are only called from the thread that called spe_policy_on_event,
// during that call (the module's contract); the strategies call the host synchronously, so no
// callback is ever called from another thread. `Sync` is what the trait bound asks for.
unsafe impl Sync for CHost<'_> {}

fn missing(name: &str) -> HostError {
    HostError::Other(format!(
        "the VMM's SpeHostCallbacks has no `{name}` callback, which this strategy needs"
    ))
}

fn host_result(code: i32, ipa: u64, len: u64, call: &str) -> Result<(), HostError> {
    match code {
        SPE_HOST_OK => Ok(()),
        SPE_HOST_NOT_IN_MEMSLOT => Err(HostError::NotInMemslot(Ipa(ipa))),
        SPE_HOST_LOCK_LIMIT => Err(HostError::LockLimit {
            requested: len,
            limit: 0,
        }),
        SPE_HOST_UNAVAILABLE => Err(HostError::Unavailable {
            ipa: Ipa(ipa),
            reason: format!("the VMM's {call} callback says it cannot be made present"),
        }),
        SPE_HOST_NOT_PINNED => Err(HostError::NotPinned(Ipa(ipa))),
        other => Err(HostError::Other(format!(
            "the VMM's {call} callback failed with {other} for IPA {ipa:#x}, {len:#x} bytes"
        ))),
    }
}

impl GuestMemoryRead for CHost<'_> {
    type Error = UnbackedIpa;

    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), UnbackedIpa> {
        let unbacked = UnbackedIpa {
            ipa,
            len: buf.len() as u64,
        };
        let f = self.0.read_guest.ok_or(unbacked)?;
        match f(self.0.ctx, ipa.0, buf.as_mut_ptr(), buf.len()) {
            SPE_HOST_OK => Ok(()),
            _ => Err(unbacked),
        }
    }
}

impl HostBacking for CHost<'_> {
    fn granule(&self) -> HostGranule {
        Granule::from_size(self.0.host_page_size).unwrap_or(Granule::K4)
    }

    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        let f = self.0.pin.ok_or_else(|| missing("pin"))?;
        host_result(
            f(self.0.ctx, range.start.0, range.len),
            range.start.0,
            range.len,
            "pin",
        )
    }

    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        let f = self.0.unpin.ok_or_else(|| missing("unpin"))?;
        host_result(
            f(self.0.ctx, range.start.0, range.len),
            range.start.0,
            range.len,
            "unpin",
        )
    }

    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        let f = self.0.fault_in.ok_or_else(|| missing("fault_in"))?;
        let mut made = false;
        host_result(f(self.0.ctx, ipa.0, &mut made), ipa.0, 0, "fault_in")?;
        Ok(if made {
            FaultIn::MadePresent
        } else {
            FaultIn::AlreadyPresent
        })
    }

    fn page_state(&self, ipa: Ipa) -> PageState {
        let Some(f) = self.0.page_state else {
            return PageState::default();
        };
        let mut s = SpePageState::default();
        f(self.0.ctx, ipa.0, &mut s);
        PageState {
            present: s.present,
            write_protected: s.write_protected,
            pinned: s.pinned,
            dirty_log_exempt: s.dirty_log_exempt,
            in_memslot: s.in_memslot,
        }
    }

    fn set_dirty_log_exempt(&self, range: IpaRange, exempt: bool) -> Result<(), HostError> {
        let f = self
            .0
            .set_dirty_log_exempt
            .ok_or_else(|| missing("set_dirty_log_exempt"))?;
        host_result(
            f(self.0.ctx, range.start.0, range.len, exempt),
            range.start.0,
            range.len,
            "set_dirty_log_exempt",
        )
    }

    fn send_before_switchover(&self, range: IpaRange) -> Result<(), HostError> {
        let f = self
            .0
            .send_before_switchover
            .ok_or_else(|| missing("send_before_switchover"))?;
        host_result(
            f(self.0.ctx, range.start.0, range.len),
            range.start.0,
            range.len,
            "send_before_switchover",
        )
    }

    fn write_guest(&self, ipa: Ipa, bytes: &[u8]) -> Result<(), HostError> {
        let f = self.0.write_guest.ok_or_else(|| missing("write_guest"))?;
        host_result(
            f(self.0.ctx, ipa.0, bytes.as_ptr(), bytes.len()),
            ipa.0,
            bytes.len() as u64,
            "write_guest",
        )
    }

    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, pmbptr: Pmbptr) -> Result<(), HostError> {
        let f = self.0.inject.ok_or_else(|| missing("inject"))?;
        host_result(
            f(self.0.ctx, vcpu.0, pmbsr.into_bits(), pmbptr.into_bits()),
            0,
            0,
            "inject",
        )
    }

    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError> {
        let f = self.0.disable_spe.ok_or_else(|| missing("disable_spe"))?;
        host_result(f(self.0.ctx, vcpu.0), 0, 0, "disable_spe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_becomes_a_status_and_a_message_never_an_unwind() {
        let mut err = [0 as c_char; 128];
        let s = boundary(err.as_mut_ptr(), err.len(), || panic!("boom"));
        assert_eq!(s, SpeStatus::Panic);
        // SAFETY: write_err NUL-terminated it inside the buffer.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        assert!(msg.to_string_lossy().contains("boom"), "{msg:?}");
    }

    #[test]
    fn error_messages_are_truncated_to_the_callers_buffer_and_nul_terminated() {
        let mut err = [b'x' as c_char; 8];
        write_err(err.as_mut_ptr(), err.len(), "a long message");
        assert_eq!(err[7], 0);
        // SAFETY: NUL-terminated at index 7.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        assert_eq!(msg.to_bytes(), b"a long ");
        write_err(std::ptr::null_mut(), 10, "ignored");
    }

    #[test]
    fn null_pointers_and_made_up_enum_values_are_bad_arguments() {
        let text = "[spe]\nstrategy = \"pin-all\"\n";
        // SAFETY: every pointer is null or valid for the call.
        unsafe {
            let s = spe_policy_new(
                text.as_ptr().cast(),
                text.len(),
                0,
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
            assert_eq!(s, SpeStatus::BadArgument);
            let s = spe_config_check(text.as_ptr().cast(), text.len(), 7, std::ptr::null_mut(), 0);
            assert_eq!(s, SpeStatus::BadArgument, "format 7");
            let s = spe_policy_on_event(
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
            assert_eq!(s, SpeStatus::BadArgument);
            assert!(spe_policy_strategy(std::ptr::null()).is_null());
            assert_eq!(spe_policy_pinned_bytes(std::ptr::null()), 0);
            spe_policy_free(std::ptr::null_mut());
        }
    }

    #[test]
    fn a_config_that_is_not_utf8_is_invalid_with_the_byte_it_breaks_at() {
        let bytes = b"[spe]\nstrategy = \"\xff\"\n";
        let mut err = [0 as c_char; 128];
        // SAFETY: valid pointers and lengths.
        let s = unsafe {
            spe_config_check(bytes.as_ptr().cast(), bytes.len(), 0, err.as_mut_ptr(), 128)
        };
        assert_eq!(s, SpeStatus::Invalid);
        // SAFETY: NUL-terminated by write_err.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        assert!(msg.to_string_lossy().contains("byte 18"), "{msg:?}");
    }
}
