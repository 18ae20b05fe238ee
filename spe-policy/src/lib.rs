//! # spe-policy
//!
//! The core of a library that KVM/arm64 VMMs embed to decide how a guest's Arm SPE profiling
//! buffer is backed at stage 2. This crate holds what every strategy stands on and knows no
//! strategy itself:
//!
//! * [`addr`]: `Gva`, `Ipa`, `Pa` newtypes, so a VA can never be pinned by mistake;
//! * [`arch`]: the SPE buffer and sampling registers as bitfields, PMBSR code points and the
//!   pure decode of a syndrome ([`arch::BufferEvent`]), and the exact VMSAv8-64 stage 1 walker
//!   the SPU uses for buffer writes ([`arch::walk`]);
//! * [`guest_memory`]: the read trait a VMM implements over guest IPA space;
//! * [`spe`]: the SPE packet codec, perf-exact text, record assembly and the recovery scanner;
//! * [`strategy`], [`event`], [`host`], [`errata`], [`guest_notice`]: the strategy trait, the
//!   events and outcomes, the host backing trait, errata and profiles, and the descriptor the
//!   guest is told; [`pin_ledger`] and [`buffer_recovery`] are building blocks strategies share.
//!
//! The host backings live beside this crate, under `hosts/`: `spe-host-model` (a model of stage 2
//! for tests and the simulator) and `spe-host-linux` (real memory). A VMM that embeds this crate
//! carries none of them.
//!
//! Section references ("spec sheet §3.10") are to `arm-spe.md`, the project's digest of the Arm
//! ARM (DDI 0487 M.a.a) and Linux sources; see `docs/DESIGN.md`.
#![deny(missing_docs)]

pub mod addr;
pub mod arch;
pub mod buffer_recovery;
pub mod config;
pub mod device_tree;
pub mod errata;
pub mod event;
pub mod guest_memory;
pub mod guest_notice;
pub mod host;
pub mod pin_ledger;
pub mod saved;
pub mod spe;
pub mod strategy;
pub mod vm;

pub use addr::{Granule, Gva, Ipa, Pa};
pub use errata::{Erratum, GuestTold, Profile, Property};
pub use event::{BufferReg, BufferRegs, Event, Outcome};
pub use guest_memory::{GuestMemoryRead, GuestRam, UnbackedIpa};
pub use host::{HostBacking, HostError, IpaRange, Memslot, VcpuId, WriteStopped};
pub use strategy::{BackingStrategy, PolicyError, StrategyStats};
pub use vm::VmSpec;

/// The README's Rust examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
