//! # spe-policies
//!
//! The facade a VMM depends on: [`Policy`], one enum over the backing strategies (one cargo
//! feature each, all on by default), dispatching statically with two hand-written matches in
//! smoltcp's style (`enum_dispatch` cannot see a trait from another crate), and
//! [`all_errata`].
#![deny(missing_docs)]

use spe_policy::arch::walk::WalkOptions;
use spe_policy::buffer_recovery::{RecoveryMode, RecoverySettings};
use spe_policy::config::{
    ConfigError, ConfigErrors, DirtyLogHandling, MigrationPolicy, PinAtName, RecoveryName,
    SpeConfig, StrategyName, WriteOrderName,
};
use spe_policy::errata::{Erratum, Profile};
use spe_policy::event::{Event, Outcome};
use spe_policy::guest_notice::StrategyId;
use spe_policy::spe::WriteOrder;
use spe_policy::{
    BackingStrategy, GuestMemoryRead, HostBacking, PolicyError, StrategyStats, VmSpec,
};

#[cfg(feature = "fault-translate")]
pub use spe_strategy_fault_translate::{FaultTranslate, FaultTranslateConfig};
#[cfg(feature = "pin-all")]
pub use spe_strategy_pin_all::{PinAll, PinAllConfig, PinAllMigration, PinAt};
#[cfg(feature = "pin-buffer")]
pub use spe_strategy_pin_buffer::{PinBuffer, PinBufferConfig};
#[cfg(feature = "shadow-buffer")]
pub use spe_strategy_shadow_buffer::{
    ShadowBuffer, ShadowBufferConfig, ShadowStats, Spu, SpuWrite,
};

/// Which strategy, with its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StrategyConfig {
    /// Pin all guest memory.
    #[cfg(feature = "pin-all")]
    PinAll(PinAllConfig),
    /// Pin the buffer and its stage 1 tables.
    #[cfg(feature = "pin-buffer")]
    PinBuffer(PinBufferConfig),
    /// Pin nothing; translate and repair on the fault.
    #[cfg(feature = "fault-translate")]
    FaultTranslate(FaultTranslateConfig),
    /// The host owns the SPU buffer and copies records into the guest's.
    #[cfg(feature = "shadow-buffer")]
    ShadowBuffer(ShadowBufferConfig),
}

/// The active backing strategy.
#[derive(Debug)]
pub enum Policy {
    /// pin-all.
    #[cfg(feature = "pin-all")]
    PinAll(PinAll),
    /// pin-buffer.
    #[cfg(feature = "pin-buffer")]
    PinBuffer(PinBuffer),
    /// fault-translate.
    #[cfg(feature = "fault-translate")]
    FaultTranslate(FaultTranslate),
    /// shadow-buffer.
    #[cfg(feature = "shadow-buffer")]
    ShadowBuffer(ShadowBuffer),
}

pub mod errata_doc;
pub mod migration;

pub use migration::{PolicyState, RestoreError};

/// Delegates a `BackingStrategy` method to the active variant.
macro_rules! dispatch {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "pin-all")]
            Policy::PinAll($s) => $body,
            #[cfg(feature = "pin-buffer")]
            Policy::PinBuffer($s) => $body,
            #[cfg(feature = "fault-translate")]
            Policy::FaultTranslate($s) => $body,
            #[cfg(feature = "shadow-buffer")]
            Policy::ShadowBuffer($s) => $body,
        }
    };
}

impl Policy {
    /// Builds the strategy a configuration names.
    pub fn new(config: StrategyConfig) -> Self {
        match config {
            #[cfg(feature = "pin-all")]
            StrategyConfig::PinAll(c) => Policy::PinAll(PinAll::new(c)),
            #[cfg(feature = "pin-buffer")]
            StrategyConfig::PinBuffer(c) => Policy::PinBuffer(PinBuffer::new(c)),
            #[cfg(feature = "fault-translate")]
            StrategyConfig::FaultTranslate(c) => Policy::FaultTranslate(FaultTranslate::new(c)),
            #[cfg(feature = "shadow-buffer")]
            StrategyConfig::ShadowBuffer(c) => Policy::ShadowBuffer(ShadowBuffer::new(c)),
        }
    }

    /// Every compiled-in strategy with its default configuration, in a fixed order.
    pub fn all_defaults() -> Vec<Policy> {
        vec![
            #[cfg(feature = "pin-all")]
            Policy::PinAll(PinAll::new(PinAllConfig::default())),
            #[cfg(feature = "pin-buffer")]
            Policy::PinBuffer(PinBuffer::new(PinBufferConfig::default())),
            #[cfg(feature = "fault-translate")]
            Policy::FaultTranslate(FaultTranslate::new(FaultTranslateConfig::default())),
            #[cfg(feature = "shadow-buffer")]
            Policy::ShadowBuffer(ShadowBuffer::new(ShadowBufferConfig::default())),
        ]
    }
}

impl BackingStrategy for Policy {
    fn name(&self) -> &'static str {
        dispatch!(self, s => s.name())
    }

    fn id(&self) -> StrategyId {
        dispatch!(self, s => s.id())
    }

    fn profile(&self) -> Profile {
        dispatch!(self, s => s.profile())
    }

    fn errata(&self) -> &'static [Erratum] {
        dispatch!(self, s => s.errata())
    }

    fn on_event<G, H>(&self, event: &Event<'_>, guest: &G, host: &H) -> Result<Outcome, PolicyError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        dispatch!(self, s => s.on_event(event, guest, host))
    }

    fn stats(&self) -> StrategyStats {
        dispatch!(self, s => s.stats())
    }

    fn buffer_cap_bytes(&self) -> Option<u64> {
        dispatch!(self, s => s.buffer_cap_bytes())
    }

    fn guest_notice(&self) -> spe_policy::guest_notice::GuestNotice {
        dispatch!(self, s => s.guest_notice())
    }
}

impl StrategyConfig {
    /// [`StrategyConfig::from_spe`] after validating the policy against the VM: what
    /// [`Policy::from_config`] and [`Policy::restore`] build from.
    pub fn validated(c: &SpeConfig, vm: &VmSpec) -> Result<Self, ConfigErrors> {
        c.validate_for(vm)?;
        StrategyConfig::from_spe(c, vm)
    }

    /// The strategy configuration an `[spe]` table describes for the VM `vm` (validate both
    /// first; see [`Policy::from_config`]).
    pub fn from_spe(c: &SpeConfig, vm: &VmSpec) -> Result<Self, ConfigErrors> {
        let recovery = RecoverySettings {
            mode: match c.recovery {
                RecoveryName::Rewind => RecoveryMode::Rewind,
                RecoveryName::Discard => RecoveryMode::Discard,
            },
            max_record_bytes: usize::try_from(vm.max_record.bytes()).unwrap_or(usize::MAX),
            write_order: match vm.write_order {
                WriteOrderName::Sequential => WriteOrder::Sequential,
                WriteOrderName::Unordered => WriteOrder::Unordered,
            },
            ..RecoverySettings::default()
        };
        // The SPU's walk on this VM's implementation: its PAMax (vm.pa_bits).
        // Recursive mappings are legal and the SPU follows them; a walk reads at most five
        // descriptors, so following them cannot loop (shadow-buffer's copy always did).
        let walk = WalkOptions {
            pa_bits: vm.pa_bits,
            allow_recursive_tables: true,
            ..WalkOptions::default()
        };
        // Unused when only pin-all is compiled in.
        let _ = (&recovery, &walk);
        match c.strategy {
            #[cfg(feature = "pin-all")]
            StrategyName::PinAll => Ok(StrategyConfig::PinAll(PinAllConfig {
                pin_at: match c.pin_all.pin_at {
                    PinAtName::VmStart => PinAt::VmStart,
                    PinAtName::FirstEnable => PinAt::FirstEnable,
                },
                migration: match c.migration() {
                    MigrationPolicy::StopAndCopy => PinAllMigration::StopAndCopy,
                    _ => PinAllMigration::Refuse,
                },
                pin: c.pin,
            })),
            #[cfg(feature = "pin-buffer")]
            StrategyName::PinBuffer => Ok(StrategyConfig::PinBuffer(PinBufferConfig {
                cap_bytes_per_vcpu: c.pin_buffer.cap_per_vcpu.bytes(),
                pin_cache: c.pin_buffer.pin_cache,
                recovery,
                walk,
                pin: c.pin,
            })),
            #[cfg(feature = "fault-translate")]
            StrategyName::FaultTranslate => {
                Ok(StrategyConfig::FaultTranslate(FaultTranslateConfig {
                    recovery,
                    exempt_learned_pages: c.dirty_log == DirtyLogHandling::KeepBufferDirty,
                    walk,
                }))
            }
            #[cfg(feature = "shadow-buffer")]
            StrategyName::ShadowBuffer => Ok(StrategyConfig::ShadowBuffer(ShadowBufferConfig {
                host_buffer_bytes: c.shadow_buffer.host_buffer.bytes(),
                max_record_bytes: vm.max_record.bytes(),
                walk,
            })),
            #[allow(unreachable_patterns)]
            other => Err(ConfigErrors(vec![ConfigError {
                key: "spe.strategy".into(),
                value: format!("\"{}\"", other.as_str()),
                reason: "this build of spe-policies does not include that strategy".into(),
                fix: format!(
                    "enable the `{}` cargo feature of spe-policies",
                    other.as_str()
                ),
                location: None,
            }])),
        }
    }
}

impl Policy {
    /// Validates an `[spe]` policy against the VM it will run (the VM's facts come from the
    /// VMM at run time: its vCPUs, RAM, page sizes, the SPU's record size) and builds the
    /// strategy it names.
    pub fn from_config(c: &SpeConfig, vm: &VmSpec) -> Result<Self, ConfigErrors> {
        StrategyConfig::validated(c, vm).map(Policy::new)
    }
}

/// Every compiled-in strategy's name and errata, in a fixed order.
pub fn all_errata() -> Vec<(&'static str, &'static [Erratum])> {
    Policy::all_defaults()
        .iter()
        .map(|p| (p.name(), p.errata()))
        .collect()
}
