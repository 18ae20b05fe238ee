//! # spe-policies
//!
//! The facade a VMM depends on: [`Policy`], one enum over the backing strategies (one cargo
//! feature each, all on by default), dispatching statically with two hand-written matches in
//! smoltcp's style (`enum_dispatch` cannot see a trait from another crate), and
//! [`all_errata`].
#![deny(missing_docs)]

use spe_policy::errata::{Erratum, Profile};
use spe_policy::event::{Event, Outcome};
use spe_policy::guest_notice::StrategyId;
use spe_policy::{BackingStrategy, GuestMemoryRead, HostBacking, PolicyError, StrategyStats};

#[cfg(feature = "fault-translate")]
pub use spe_strategy_fault_translate::{FaultTranslate, FaultTranslateConfig};
#[cfg(feature = "pin-all")]
pub use spe_strategy_pin_all::{PinAll, PinAllConfig, PinAllMigration, PinAt};
#[cfg(feature = "pin-buffer")]
pub use spe_strategy_pin_buffer::{PinBuffer, PinBufferConfig};

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
}

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
}

/// Every compiled-in strategy's name and errata, in a fixed order.
pub fn all_errata() -> Vec<(&'static str, &'static [Erratum])> {
    Policy::all_defaults()
        .iter()
        .map(|p| (p.name(), p.errata()))
        .collect()
}
