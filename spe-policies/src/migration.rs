//! State that migrates: [`Policy::save`] on the source, [`Policy::restore`] on the destination.
//!
//! The saved state is a versioned serde value (any format the VMM uses: its snapshot JSON, a
//! VMState blob). The guest-visible part is exact: shadow-buffer's emulated PMBPTR, PMBLIMITR
//! and PMBSR and the records not yet copied; pin-buffer's enabled windows; fault-translate's
//! record boundaries; pin-all's pinned RAM. Restoring pins, on the destination and before its
//! first vCPU runs, what the strategy needs there. Call `save` with the vCPUs paused; send
//! `VmStop` to the source policy afterwards to release its pins.

use spe_policy::config::{ConfigErrors, SpeConfig};
use spe_policy::saved::STATE_VERSION;
use spe_policy::{GuestMemoryRead, HostBacking, PolicyError, VmSpec};

use crate::{Policy, StrategyConfig};

/// One strategy's saved state, tagged with its name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum PolicyState {
    /// pin-all.
    #[cfg(feature = "pin-all")]
    PinAll(spe_strategy_pin_all::PinAllState),
    /// pin-buffer.
    #[cfg(feature = "pin-buffer")]
    PinBuffer(spe_strategy_pin_buffer::PinBufferState),
    /// fault-translate.
    #[cfg(feature = "fault-translate")]
    FaultTranslate(spe_strategy_fault_translate::FaultTranslateState),
    /// shadow-buffer.
    #[cfg(feature = "shadow-buffer")]
    ShadowBuffer(spe_strategy_shadow_buffer::ShadowBufferState),
}

impl PolicyState {
    /// The layout version it was written with.
    pub fn version(&self) -> u32 {
        match self {
            #[cfg(feature = "pin-all")]
            PolicyState::PinAll(s) => s.version,
            #[cfg(feature = "pin-buffer")]
            PolicyState::PinBuffer(s) => s.version,
            #[cfg(feature = "fault-translate")]
            PolicyState::FaultTranslate(s) => s.version,
            #[cfg(feature = "shadow-buffer")]
            PolicyState::ShadowBuffer(s) => s.version,
        }
    }

    /// The strategy it belongs to.
    pub fn strategy(&self) -> &'static str {
        match self {
            #[cfg(feature = "pin-all")]
            PolicyState::PinAll(_) => "pin-all",
            #[cfg(feature = "pin-buffer")]
            PolicyState::PinBuffer(_) => "pin-buffer",
            #[cfg(feature = "fault-translate")]
            PolicyState::FaultTranslate(_) => "fault-translate",
            #[cfg(feature = "shadow-buffer")]
            PolicyState::ShadowBuffer(_) => "shadow-buffer",
        }
    }
}

/// Why a saved state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The destination's config is invalid for its VM.
    #[error("the destination's config: {0}")]
    Config(ConfigErrors),
    /// The state is another strategy's.
    #[error(
        "the saved state is {saved}'s but the destination's config chooses {config}; migrate between hosts with the same [spe] strategy"
    )]
    OtherStrategy {
        /// The state's strategy.
        saved: &'static str,
        /// The config's.
        config: &'static str,
    },
    /// A layout version this build does not read.
    #[error(
        "the saved state has layout version {0}, this build reads {STATE_VERSION}; restore it with a matching spe-policy"
    )]
    Version(u32),
    /// The destination host refused what the strategy needs (a pin, a host buffer).
    #[error(transparent)]
    Host(#[from] PolicyError),
}

impl Policy {
    /// The state a migration or snapshot carries (see the module's docs).
    pub fn save(&self) -> PolicyState {
        match self {
            #[cfg(feature = "pin-all")]
            Policy::PinAll(s) => PolicyState::PinAll(s.save()),
            #[cfg(feature = "pin-buffer")]
            Policy::PinBuffer(s) => PolicyState::PinBuffer(s.save()),
            #[cfg(feature = "fault-translate")]
            Policy::FaultTranslate(s) => PolicyState::FaultTranslate(s.save()),
            #[cfg(feature = "shadow-buffer")]
            Policy::ShadowBuffer(s) => PolicyState::ShadowBuffer(s.save()),
        }
    }

    /// The policy `config` names for `vm`, carrying on from `state`: what it needs is pinned on
    /// `host` (walking `guest`'s stage 1 where a buffer is enabled) before this returns.
    // With one strategy compiled in, the mismatch arm cannot match.
    #[allow(unreachable_patterns)]
    #[cfg_attr(not(feature = "pin-buffer"), allow(unused_variables))]
    pub fn restore<G, H>(
        config: &SpeConfig,
        vm: &VmSpec,
        state: &PolicyState,
        guest: &G,
        host: &H,
    ) -> Result<Policy, RestoreError>
    where
        G: GuestMemoryRead + ?Sized,
        H: HostBacking + ?Sized,
    {
        if state.version() != STATE_VERSION {
            return Err(RestoreError::Version(state.version()));
        }
        let strategy = StrategyConfig::validated(config, vm).map_err(RestoreError::Config)?;
        Ok(match (strategy, state) {
            #[cfg(feature = "pin-all")]
            (StrategyConfig::PinAll(c), PolicyState::PinAll(s)) => {
                Policy::PinAll(crate::PinAll::restore(c, s, host)?)
            }
            #[cfg(feature = "pin-buffer")]
            (StrategyConfig::PinBuffer(c), PolicyState::PinBuffer(s)) => {
                Policy::PinBuffer(crate::PinBuffer::restore(c, s, guest, host)?)
            }
            #[cfg(feature = "fault-translate")]
            (StrategyConfig::FaultTranslate(c), PolicyState::FaultTranslate(s)) => {
                Policy::FaultTranslate(crate::FaultTranslate::restore(c, s))
            }
            #[cfg(feature = "shadow-buffer")]
            (StrategyConfig::ShadowBuffer(c), PolicyState::ShadowBuffer(s)) => {
                Policy::ShadowBuffer(crate::ShadowBuffer::restore(c, s)?)
            }
            _ => {
                return Err(RestoreError::OtherStrategy {
                    saved: state.strategy(),
                    config: config.strategy.as_str(),
                });
            }
        })
    }
}
