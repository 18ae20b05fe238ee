//! The VMM-facing configuration: one `[spe]` table a VMM embeds in its own config file
//! (ARCHITECTURE.md §7).
//!
//! The schema is plain serde structs, so any serde format works (JSON as well as TOML); TOML is
//! the loader shipped here ([`load_toml`], feature `toml`). Every default lives in [`defaults`].
//! [`SpeConfig::validate`] rejects contradictions with errors that name the key, the value, the
//! reason and the fix; the TOML loader adds the line and column.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::vm::VmSpec;

/// Every default, in one place. Strategies' own `Default`s use these too.
pub mod defaults {
    /// pin-buffer's per-vCPU cap: 16 MiB (four times perf's 4 MiB default AUX buffer).
    pub const PIN_BUFFER_CAP: u64 = 16 << 20;
    /// pin-buffer keeps pins across disable.
    pub const PIN_CACHE: bool = true;
    /// Largest SPE record: 64 bytes (Neoverse; 2^PMSIDR_EL1.MaxSize). The VM's own value is
    /// `vm.max_record` ([`crate::vm::VmSpec`]); this is the strategies' default.
    pub const MAX_RECORD: u64 = crate::vm::defaults::MAX_RECORD;
    /// Most bytes scanned in one recovery.
    pub const MAX_SCAN: u64 = 64 << 20;
    /// shadow-buffer's host buffer per vCPU (two halves of 32 KiB: one host interrupt per
    /// 32 KiB of SPE data).
    pub const SHADOW_HOST_BUFFER: u64 = 64 << 10;
    /// The largest host buffer per vCPU shadow-buffer accepts: host memory stays bounded.
    pub const SHADOW_HOST_BUFFER_MAX: u64 = 64 << 20;
}

/// A size in bytes, written as an integer or with a binary unit: `"4KiB"`, `"16MiB"`, `"1GiB"`
/// (`K`, `M`, `G`, `T` and `B` are accepted too; all units are powers of 1024). `KB`, `MB`,
/// `GB` and `TB` are refused as ambiguous: SI reads them as powers of 1000, JEDEC and most
/// VMM command lines as powers of 1024, and a buffer cap must not depend on which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // The parsing is parse-size's (units case-insensitive, `_` and spaces in numbers),
        // with its binary unit system; what it would accept and we do not: the SI spellings
        // (ambiguous) and fractions (a size here is a whole number of bytes).
        let t = s.trim();
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let not_a_size =
            || format!("{s:?} is not a size (write e.g. 4096, \"4KiB\", \"16MiB\", \"1GiB\")");
        // A whole number, then letters only (no fraction, sign or exponent: "1e6").
        if num.trim().is_empty()
            || num.contains(['.', '+', '-'])
            || !unit.trim().chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(not_a_size());
        }
        let u = unit.trim();
        if matches!(
            u.to_ascii_lowercase().as_str(),
            "kb" | "mb" | "gb" | "tb" | "pb" | "eb"
        ) {
            let binary = format!("{}iB", &u[..1].to_uppercase());
            return Err(format!(
                "{s:?} is ambiguous: {u} is a power of 1000 in SI and of 1024 elsewhere; write \"{}{binary}\" (binary) or the number of bytes",
                num.trim()
            ));
        }
        parse_size::Config::new()
            .with_binary()
            .parse_size(t)
            .map(ByteSize)
            .map_err(|e| match e {
                parse_size::Error::PosOverflow => format!("{s:?} does not fit in 64 bits"),
                parse_size::Error::InvalidDigit if !u.is_empty() => {
                    format!("{s:?} has an unknown unit {u:?} (use B, KiB, MiB, GiB or TiB)")
                }
                _ => not_a_size(),
            })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes as an integer, or a string like \"16MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is at least 0")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A limit that may be absent: `"unlimited"` or a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Limit {
    /// No limit.
    #[default]
    Unlimited,
    /// At most this many bytes.
    Bytes(ByteSize),
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Unlimited => s.serialize_str("unlimited"),
            Limit::Bytes(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"unlimited\" or a size: bytes as an integer, or a string like \"64MiB\"",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Limit, E> {
                Ok(Limit::Bytes(ByteSize(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Limit, E> {
                u64::try_from(v)
                    .map(|v| Limit::Bytes(ByteSize(v)))
                    .map_err(|_| {
                        E::custom(format!(
                            "{v} is negative; a limit is \"unlimited\" or a size of at least 0"
                        ))
                    })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Limit, E> {
                if v == "unlimited" {
                    return Ok(Limit::Unlimited);
                }
                v.parse().map(Limit::Bytes).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The backing strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// Pin all guest memory.
    PinAll,
    /// Pin the buffer and its stage 1 tables.
    #[default]
    PinBuffer,
    /// Pin nothing; repair on the fault.
    FaultTranslate,
    /// The host owns the SPU buffer and copies records into the guest's.
    ShadowBuffer,
}

impl StrategyName {
    /// The kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StrategyName::PinAll => "pin-all",
            StrategyName::PinBuffer => "pin-buffer",
            StrategyName::FaultTranslate => "fault-translate",
            StrategyName::ShadowBuffer => "shadow-buffer",
        }
    }
}

/// How the VMM migrates VMs that use SPE. Unset, it follows the strategy
/// ([`SpeConfig::migration`]): stop-and-copy for pin-all (which cannot track or demand-page
/// pinned memory), pre-copy for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationPolicy {
    /// Refuse migration while SPE may use guest memory.
    Refuse,
    /// Stop the VM and copy everything.
    StopAndCopy,
    /// Pre-copy with dirty logging.
    PreCopy,
    /// Post-copy: switch over early, demand pages.
    PostCopy,
}

impl MigrationPolicy {
    /// The kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            MigrationPolicy::Refuse => "refuse",
            MigrationPolicy::StopAndCopy => "stop-and-copy",
            MigrationPolicy::PreCopy => "pre-copy",
            MigrationPolicy::PostCopy => "post-copy",
        }
    }
}

/// What dirty logging does to buffer pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirtyLogHandling {
    /// Buffer pages stay writable and count as dirty until the vCPU stops.
    #[default]
    KeepBufferDirty,
    /// Write-protect them like any page (fault-translate then repairs the faults).
    WriteProtect,
}

/// Recovery after DL=1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryName {
    /// Parse and rewind to the last provable record.
    #[default]
    Rewind,
    /// Discard since the last safe point.
    Discard,
}

/// What the VMM's pin is (`HostBacking::pin`), measured on the real kernel (`spe-policy
/// stage2-check`): whether it keeps the stage 2 mapping or only keeps the page resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinKind {
    /// A long-term pin (`FOLL_LONGTERM`: io_uring registered buffers, VFIO, `pin_user_pages`):
    /// the page is neither moved nor collapsed, so its stage 2 mapping stays.
    #[default]
    LongTerm,
    /// `mlock`: resident only. THP collapse and compaction still move the page and zap its
    /// stage 2 mapping (PA-06, PB-09); file writeback write-protects it.
    Mlock,
}

impl PinKind {
    /// The kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PinKind::LongTerm => "long-term",
            PinKind::Mlock => "mlock",
        }
    }
}

/// Where the host does the work a buffer event needs (a stage 2 fault's service and the
/// recovery scan; shadow-buffer's copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// On the vCPU's thread before it re-enters the guest, as KVM services a guest's stage 2
    /// fault (`kvm_handle_guest_abort`): the vCPU stalls; no sample is due while it does.
    #[default]
    BeforeEntry,
    /// In the background while the guest runs: no stall, but the guest runs unprofiled while
    /// the SPU stays stopped (shadow-buffer: the SPU goes on in the other host half, and only
    /// waits when that fills first).
    Background,
}

impl ServiceMode {
    /// The kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceMode::BeforeEntry => "before-entry",
            ServiceMode::Background => "background",
        }
    }
}

/// What the recovery scanner may assume about record writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteOrderName {
    /// Byte after byte.
    Sequential,
    /// Any order within a record (the architecture's promise).
    #[default]
    Unordered,
}

/// When pin-all pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinAtName {
    /// At VM start.
    #[default]
    VmStart,
    /// At the first buffer enable.
    FirstEnable,
}

/// `[spe.pin_all]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinAllSection {
    /// When to pin.
    pub pin_at: PinAtName,
}

/// `[spe.pin_buffer]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinBufferSection {
    /// Most bytes one vCPU may pin (buffer and table pages).
    pub cap_per_vcpu: ByteSize,
    /// Keep pins across a disable.
    pub pin_cache: bool,
}

impl Default for PinBufferSection {
    fn default() -> Self {
        PinBufferSection {
            cap_per_vcpu: ByteSize(defaults::PIN_BUFFER_CAP),
            pin_cache: defaults::PIN_CACHE,
        }
    }
}

/// `[spe.shadow_buffer]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowBufferSection {
    /// Host memory per vCPU the SPU writes into (two halves; one host interrupt per half).
    pub host_buffer: ByteSize,
}

impl Default for ShadowBufferSection {
    fn default() -> Self {
        ShadowBufferSection {
            host_buffer: ByteSize(defaults::SHADOW_HOST_BUFFER),
        }
    }
}

/// A table that used to be part of `[spe]` and moved: reading it is an error that names the
/// new place ([`SpeConfig::validate`]), never a silent default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MovedTable;

impl<'de> Deserialize<'de> for MovedTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| MovedTable)
    }
}

impl Serialize for MovedTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

/// The `[spe]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeConfig {
    /// The backing strategy.
    pub strategy: StrategyName,
    /// How VMs are migrated; unset, the strategy's default ([`SpeConfig::migration`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationPolicy>,
    /// What dirty logging does to buffer pages.
    pub dirty_log: DirtyLogHandling,
    /// Recovery after DL=1.
    pub recovery: RecoveryName,
    /// Where the host services buffer events: before re-entering the guest, or in the
    /// background.
    pub service: ServiceMode,
    /// What the VMM's pins are (pin-all, pin-buffer): `long-term` keeps stage 2, `mlock` only
    /// residency.
    pub pin: PinKind,
    /// pin-all's settings.
    pub pin_all: PinAllSection,
    /// pin-buffer's settings.
    pub pin_buffer: PinBufferSection,
    /// shadow-buffer's settings.
    pub shadow_buffer: ShadowBufferSection,
    /// The old `[spe.guest]` table: the VM's facts are the `[vm]` table now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest: Option<MovedTable>,
    /// The old `[spe.host]` table: `vm.host_page_size` and `vm.lock_limit` now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<MovedTable>,
}

/// A config file: the `[spe]` table, among whatever else the VMM keeps there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The SPE table.
    #[serde(default)]
    pub spe: SpeConfig,
}

/// One problem with a config, naming the key, the value, why and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, dotted (`spe.pin_buffer.cap_per_vcpu`).
    pub key: String,
    /// The value as written (or the resolved value for a contradiction).
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
    /// How to fix it.
    pub fix: String,
    /// 1-based line and column in the source, when known.
    pub location: Option<(usize, usize)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((l, c)) = self.location {
            write!(f, "{l}:{c}: ")?;
        }
        write!(f, "{}", self.key)?;
        if !self.value.is_empty() {
            write!(f, " = {}", self.value)?;
        }
        write!(f, ": {}; {}", self.reason, self.fix)
    }
}

impl core::error::Error for ConfigError {}

/// Every problem found in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl core::error::Error for ConfigErrors {}

pub(crate) fn problem(
    key: &str,
    value: impl fmt::Display,
    reason: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
        fix: fix.into(),
        location: None,
    }
}

impl SpeConfig {
    /// The migration mode in effect: the one written, or the strategy's default
    /// (stop-and-copy for pin-all, pre-copy for the others).
    pub fn migration(&self) -> MigrationPolicy {
        self.migration.unwrap_or(match self.strategy {
            StrategyName::PinAll => MigrationPolicy::StopAndCopy,
            _ => MigrationPolicy::PreCopy,
        })
    }

    /// Checks the policy on its own: moved tables and contradictions between keys. Returns
    /// every problem found. The checks that need the VM's facts are
    /// [`SpeConfig::validate_for`].
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        if self.guest.is_some() {
            errs.push(problem(
                "spe.guest",
                "",
                "the VM's facts are no longer part of the [spe] policy",
                "move vcpus, ram, buffer_per_vcpu, max_record and write_order to a [vm] table (a scenario's, or `compare --vm FILE`); a VMM passes them as `VmSpec` at run time",
            ));
        }
        if self.host.is_some() {
            errs.push(problem(
                "spe.host",
                "",
                "the host's facts are no longer part of the [spe] policy",
                "page_size is now vm.host_page_size and lock_limit vm.lock_limit, in a [vm] table (a scenario's, or `compare --vm FILE`)",
            ));
        }
        let migration = self.migration();
        if self.strategy == StrategyName::PinBuffer
            && self.dirty_log == DirtyLogHandling::WriteProtect
        {
            errs.push(problem(
                "spe.dirty_log",
                "\"write-protect\"",
                "pin-buffer's pinned pages cannot be write-protected",
                "use dirty_log = \"keep-buffer-dirty\", or strategy = \"fault-translate\" or \"shadow-buffer\"",
            ));
        }
        if self.strategy == StrategyName::PinAll {
            if matches!(
                migration,
                MigrationPolicy::PreCopy | MigrationPolicy::PostCopy
            ) {
                errs.push(problem(
                    "spe.migration",
                    format!("\"{}\"", migration.as_str()),
                    "pin-all pins every page, so neither dirty logging nor demand paging can work",
                    "use migration = \"stop-and-copy\" (pin-all's default) or \"refuse\", or strategy = \"pin-buffer\", \"fault-translate\" or \"shadow-buffer\"",
                ));
            }
            if self.recovery == RecoveryName::Discard {
                errs.push(problem(
                    "spe.recovery",
                    "\"discard\"",
                    "pin-all never takes a stage 2 fault, so there is nothing to recover",
                    "remove the key, or choose strategy = \"fault-translate\"",
                ));
            }
        }
        let host = self.shadow_buffer.host_buffer.bytes();
        if self.strategy == StrategyName::ShadowBuffer && host > defaults::SHADOW_HOST_BUFFER_MAX {
            errs.push(problem(
                "spe.shadow_buffer.host_buffer",
                self.shadow_buffer.host_buffer,
                format!(
                    "more than {} of host memory per vCPU",
                    ByteSize(defaults::SHADOW_HOST_BUFFER_MAX)
                ),
                "use a power of two such as 64KiB (the default) or 1MiB",
            ));
        }
        let cap = self.pin_buffer.cap_per_vcpu.bytes();
        if self.strategy == StrategyName::PinBuffer && cap > PIN_BUFFER_CAP_MAX {
            errs.push(problem(
                "spe.pin_buffer.cap_per_vcpu",
                self.pin_buffer.cap_per_vcpu,
                format!(
                    "a guest could make the host pin more than {} per vCPU",
                    ByteSize(PIN_BUFFER_CAP_MAX)
                ),
                "size the cap for the guests' perf AUX buffers (4MiB for root by default); 16MiB is the default",
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Checks the policy against the VM it will run: the policy's own rules
    /// ([`SpeConfig::validate`]), the VM's ranges ([`VmSpec::validate`]), and what needs
    /// both (caps in host pages and records, lock limits against what the strategy pins).
    pub fn validate_for(&self, vm: &VmSpec) -> Result<(), ConfigErrors> {
        let mut errs = self.validate().err().map_or_else(Vec::new, |e| e.0);
        if let Err(e) = vm.validate() {
            errs.extend(e.0);
            return Err(ConfigErrors(errs));
        }
        let page = vm.host_page();
        let rec = vm.max_record.bytes();
        let cap = self.pin_buffer.cap_per_vcpu.bytes();
        if self.strategy == StrategyName::PinBuffer {
            let min = (2 * page).max(rec);
            if cap < min {
                errs.push(problem(
                    "spe.pin_buffer.cap_per_vcpu",
                    self.pin_buffer.cap_per_vcpu,
                    format!(
                        "smaller than {} (two host pages, the smallest buffer Linux accepts, and at least one largest record)",
                        ByteSize(min)
                    ),
                    "raise it to at least the guests' perf AUX buffer size (4MiB for root by default)",
                ));
            }
            if let Limit::Bytes(limit) = vm.lock_limit {
                let need = cap.saturating_mul(u64::from(vm.vcpus));
                if limit.bytes() < need {
                    errs.push(problem(
                        "vm.lock_limit",
                        limit,
                        format!(
                            "{} vCPUs x {} cap (spe.pin_buffer.cap_per_vcpu) may need {}",
                            vm.vcpus,
                            self.pin_buffer.cap_per_vcpu,
                            ByteSize(need)
                        ),
                        "raise RLIMIT_MEMLOCK or lower spe.pin_buffer.cap_per_vcpu",
                    ));
                }
            }
        }
        if self.strategy == StrategyName::PinAll {
            if let Limit::Bytes(limit) = vm.lock_limit {
                if limit.bytes() < vm.ram.bytes() {
                    errs.push(problem(
                        "vm.lock_limit",
                        limit,
                        format!("pin-all must lock all {} of guest RAM (vm.ram)", vm.ram),
                        "raise RLIMIT_MEMLOCK to the VM's RAM, or choose pin-buffer",
                    ));
                }
            }
        }
        if self.strategy == StrategyName::ShadowBuffer {
            let host = self.shadow_buffer.host_buffer.bytes();
            let min = (2 * page).max(4 * rec);
            if host < min || host % page != 0 {
                errs.push(problem(
                    "spe.shadow_buffer.host_buffer",
                    self.shadow_buffer.host_buffer,
                    format!(
                        "must be whole host pages ({}), from {} (two pages and four largest records) to {}",
                        vm.host_page_size,
                        ByteSize(min),
                        ByteSize(defaults::SHADOW_HOST_BUFFER_MAX)
                    ),
                    "use a power of two such as 64KiB (the default) or 1MiB",
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

impl SpeConfig {
    /// What is valid but suspicious about the policy on `vm`: guests whose AUX buffer is
    /// larger than pin-buffer's cap (every enable is refused, PB-01).
    pub fn warnings_for(&self, vm: &VmSpec) -> Vec<ConfigWarning> {
        let mut w = Vec::new();
        let cap = self.pin_buffer.cap_per_vcpu.bytes();
        if self.strategy == StrategyName::PinBuffer && vm.buffer_per_vcpu.bytes() > cap {
            w.push(ConfigWarning {
                key: "spe.pin_buffer.cap_per_vcpu".into(),
                message: format!(
                    "{} is smaller than the guests' {} AUX buffers (vm.buffer_per_vcpu): every enable of such a buffer is refused with BSC size-too-large (PB-01); raise the cap",
                    self.pin_buffer.cap_per_vcpu, vm.buffer_per_vcpu
                ),
                location: None,
            });
        }
        w
    }
}

/// The largest pin-buffer cap accepted: 1 GiB per vCPU (a guest controls what is pinned up to
/// the cap; an unbounded cap is no cap).
pub const PIN_BUFFER_CAP_MAX: u64 = 1 << 30;

mod load;

pub use load::{ConfigWarning, Loaded, did_you_mean, line_col, locate_key};
#[cfg(feature = "toml")]
pub use load::{explicit_keys, load_toml, to_toml};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_print_back_the_same() {
        for (text, bytes) in [
            ("4096", 4096u64),
            ("4KiB", 4096),
            ("4K", 4096),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("1_024B", 1024),
        ] {
            let b: ByteSize = text.parse().expect(text);
            assert_eq!(b.bytes(), bytes, "{text}");
            assert_eq!(b.to_string().parse::<ByteSize>(), Ok(b));
        }
        assert!(
            "4XB"
                .parse::<ByteSize>()
                .expect_err("unit")
                .contains("unknown unit")
        );
        assert!("lots".parse::<ByteSize>().is_err());
        assert!(
            "99999999999TiB"
                .parse::<ByteSize>()
                .expect_err("big")
                .contains("64 bits")
        );
    }

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(
            did_you_mean("cap_per_cpu", ["cap_per_vcpu", "pin_cache"]),
            Some("cap_per_vcpu")
        );
        assert_eq!(did_you_mean("zzz", ["cap_per_vcpu"]), None);
    }
}
