//! Errata and profiles: what each strategy gives up, stated as data (ARCHITECTURE.md §6).
//!
//! Every erratum has a stable id, its trigger, what the guest and the host see, the mitigation,
//! whether the guest is told (a bit of the [`crate::guest_notice::GuestNotice`] bitmap), and the
//! simulator scenario that reproduces it. The generated errata documents come from these values.

use core::fmt;

use serde::Serialize;

/// One of the three things a backing can be ("cheap, fast, reliable: pick two").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Property {
    /// Pins little host memory: overcommit, swap, KSM, THP and migration keep working.
    Cheap,
    /// No per-enable or per-fault cost on the profiling path.
    Fast,
    /// No profiling data lost and no guest-visible fault in the absence of guest misbehaviour.
    Reliable,
}

impl Property {
    /// Lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Property::Cheap => "cheap",
            Property::Fast => "fast",
            Property::Reliable => "reliable",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy's profile: which properties it has, and why it lacks the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Profile {
    /// The properties it keeps (two for the classic strategies).
    pub keeps: &'static [Property],
    /// The properties it gives up.
    pub gives_up: &'static [Property],
    /// One sentence on why.
    pub why: &'static str,
}

impl Profile {
    /// Whether the profile claims `p`.
    pub fn has(&self, p: Property) -> bool {
        self.keeps.contains(&p)
    }
}

/// Whether and how the guest learns of an erratum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestTold {
    /// Not guest-visible, or not told.
    No,
    /// Bit `n` of the guest notice's errata bitmap.
    NoticeBit(u8),
}

/// One erratum of a backing strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Erratum {
    /// Stable id, e.g. `PB-03`; never reused.
    pub id: &'static str,
    /// One-line title.
    pub title: &'static str,
    /// What triggers it.
    pub trigger: &'static str,
    /// What the guest sees (its perf session, its driver).
    pub guest_visible: &'static str,
    /// What the host sees (memory, latency, migration).
    pub host_visible: &'static str,
    /// How to avoid or reduce it.
    pub mitigation: &'static str,
    /// Whether the guest is told.
    pub guest_told: GuestTold,
    /// The simulator scenario (file stem in `configs/scenarios/`) that reproduces it; that
    /// file lists the id in its `reproduces`.
    pub scenario: &'static str,
}
