//! Scenarios: what the host does to the VM while its vCPUs profile (`configs/scenarios/*.toml`).

use serde::{Deserialize, Serialize};

/// A host event at a point in virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledEvent {
    /// When, in milliseconds of virtual time.
    pub at_ms: f64,
    /// What.
    pub kind: HostEventKind,
    /// The fraction of the VM's RAM it touches (swap, KSM, THP, NUMA, compaction, balloon).
    #[serde(default = "one")]
    pub fraction: f64,
}

fn one() -> f64 {
    1.0
}

/// What the host does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostEventKind {
    /// Reclaim (swap out) a fraction of the RAM's pages, through the MMU notifier.
    SwapOut,
    /// KSM merges a fraction of the RAM's pages (read-only until unshared).
    KsmMerge,
    /// Pre-copy migration starts: dirty logging write-protects the RAM.
    DirtyLogStart,
    /// One dirty-log round: the dirty bitmap is read and the RAM write-protected again.
    DirtyLogRound,
    /// Dirty logging stops.
    DirtyLogStop,
    /// Post-copy switch-over: every page not sent before stays at the source.
    PostCopySwitchover,
    /// The guest remaps the first page of vCPU 0's buffer to a new page.
    GuestRemap,
    /// Transparent huge pages are split: a fraction of the pages is unmapped until re-faulted
    /// (cheap to fault back: no swap-in).
    ThpSplit,
    /// khugepaged collapses small pages into huge pages: a fraction of 2 MiB-aligned ranges is
    /// unmapped while it copies (cheap to fault back).
    ThpCollapse,
    /// NUMA balancing migrates a fraction of the pages to another node (cheap to fault back).
    NumaMigration,
    /// Memory compaction moves a fraction of the pages (cheap to fault back).
    Compaction,
    /// The guest's balloon driver gives a fraction of its free pages (never its buffers or page
    /// tables: the first 16 MiB are kept) back to the host.
    BalloonInflate,
    /// vCPU 0's first buffer page becomes impossible to bring back (the post-copy source or the
    /// backing file is gone).
    PageUnavailable,
    /// A hostile or broken guest maps a page of vCPU 0's buffer ahead of the SPU (60 KiB in)
    /// to an IPA outside its RAM (a device region) and re-arms the buffer.
    GuestMapOutsideRam,
    /// A broken guest clears the stage 1 entry of a page of vCPU 2's enabled buffer ahead of
    /// the SPU (60 KiB in): the SPU's walk takes a stage 1 Translation fault (EC 0x24), which
    /// every strategy hands to the guest, whose driver stops the session.
    GuestUnmapBuffer,
    /// A broken guest re-programs vCPU 1's buffer against the enable rules (spec sheet §1.11
    /// rule 3): PMBPTR 32 bytes below LIMIT, less than one largest record. CONSTRAINED
    /// UNPREDICTABLE; the model takes the permitted "nothing is written" and the guest's
    /// samples on that vCPU are lost to its own mistake.
    GuestBadLimit,
    /// A 16 MiB memslot is hot-plugged above RAM.
    MemslotHotplug,
    /// The hot-plugged memslot is removed (hot-unplug).
    MemslotUnplug,
    /// Every vCPU's guest stops profiling (perf disabled): PMBLIMITR = 0.
    GuestDisable,
    /// Every vCPU's guest starts profiling again.
    GuestEnable,
    /// The VMM moves the policy to a fresh one with the vCPUs paused, as at a live migration's
    /// switch-over or a snapshot and restore: `Policy::save` on the source (through JSON, as a
    /// VMM's snapshot carries it), `VmStop` there, and `Policy::restore` on the destination,
    /// which pins what the strategy needs before the vCPUs run again. The guest must see
    /// nothing of it.
    SnapshotRestore,
}

/// How the modelled SPU and the guest's buffer behave beyond the VM's facts (spec sheet
/// §1.11). The SPU's write order is the VM's (`[vm] write_order`): `unordered` may write any
/// byte of a record first (rule 2), so a fault can leave bytes before PMBPTR unwritten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpuModel {
    /// Whether a fault after a record's first byte sets PMBSR.DL (rule 5's prose, the default);
    /// `false` follows the J1.3 pseudocode comment ("DL is unchanged"), which leaves a torn
    /// record that a DL-trusting host cannot see.
    pub dl_on_mid_record_fault: Flag,
    /// The guest programs PMBLIMITR.FM = discard: the SPU takes samples and writes nothing.
    pub discard_mode: bool,
    /// How long a sampled operation stays in flight, on average (uniform from half to one and
    /// a half times this), in ns; 0: it completes before the next sample is due. A sample due
    /// while the previous one is in flight collides (rule 13): it is not taken, PMBSR.COLL is
    /// set, and Linux flags the AUX record COLLISION at the next buffer event.
    pub op_latency_ns: f64,
}

/// Per-task profiling (`perf record` of one task, `[tasks]`): the profiled task runs for a while,
/// the guest switches to another task, and back. Linux's driver disables the buffer at every
/// switch-out and re-enables it at the switch-in with the window moving on within the same AUX
/// buffer (`arm_spe_pmu_stop`/`start`, spec sheet §4.2). No sample is due while the profiled
/// task is away. Durations are guest time, drawn uniformly from each range per switch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskModel {
    /// How long the profiled task runs before it is switched out, ms: `[min, max]`.
    pub run_ms: [f64; 2],
    /// How long it is away, ms: `[min, max]`.
    pub away_ms: [f64; 2],
}

/// A boolean that defaults to true.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flag(pub bool);

impl Default for Flag {
    fn default() -> Self {
        Flag(true)
    }
}

/// A scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// The errata it is meant to reproduce (ids).
    #[serde(default)]
    pub reproduces: Vec<String>,
    /// Virtual time simulated, in milliseconds.
    pub duration_ms: f64,
    /// The random seed (record sizes, page choices).
    #[serde(default)]
    pub seed: u64,
    /// SPE records per millisecond per vCPU.
    #[serde(default = "default_rate")]
    pub records_per_ms: f64,
    /// Host events, in any order.
    #[serde(default)]
    pub events: Vec<ScheduledEvent>,
    /// The scenario shows a failure mode of the guest or of the configuration (a remap behind
    /// the host's back, a lock limit or cap too small, a non-default pin timing), not normal
    /// operation: the profile check does not count it.
    #[serde(default)]
    pub exceptional: bool,
    /// The SPU model (`[spu]`).
    #[serde(default)]
    pub spu: SpuModel,
    /// Per-task profiling with context switches (`[tasks]`); absent: the profiled workload
    /// runs all the time (per-CPU profiling).
    #[serde(default)]
    pub tasks: Option<TaskModel>,
    /// Keys of the `[spe]` policy this scenario changes (same schema, merged over the config
    /// `compare` is given and validated like it), e.g. a smaller cap.
    #[serde(default)]
    pub spe: Option<toml::Table>,
    /// What the host allows at run time beyond the VM's facts (`[host]`).
    #[serde(default)]
    pub host: HostModel,
    /// Keys of the VM this scenario runs (`[vm]`, the schema of `spe_policy::VmSpec`); unset
    /// keys take the VM `compare` is given (`--vm FILE`, or the defaults). `--vm` wins.
    #[serde(default)]
    pub vm: Option<toml::Table>,
}

/// The host as it is during the run, beyond what the VMM configured (`[host]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostModel {
    /// Bytes the host actually lets the VMM lock (other VMs hold the rest of RLIMIT_MEMLOCK
    /// or of the host's memory): pins beyond it fail at run time however the VM was
    /// configured. Absent: `vm.lock_limit`.
    pub lock_available: Option<spe_policy::config::ByteSize>,
    /// The VMM left pinned guest RAM mergeable (MADV_MERGEABLE; QEMU's mem-merge is on by
    /// default), against PA-07 and PB-10's mitigation: a KSM scan then unmaps the pinned pages
    /// it cannot merge, as measured on the real kernel. Default: the VMM keeps what it pins
    /// out of KSM (MADV_UNMERGEABLE, or `mem-merge=off`), and the scan leaves pinned pages be.
    pub pinned_ram_mergeable: bool,
}

/// Most events one scenario may schedule.
pub const MAX_EVENTS: usize = 10_000;
/// The longest session a scenario may simulate: 60 s of guest time.
pub const MAX_DURATION_MS: f64 = 60_000.0;

fn default_rate() -> f64 {
    // About 94 MB/s of 64-byte records per core: perf's default period of 4096 (spec §6).
    1000.0
}

/// Why a scenario file is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The TOML is wrong.
    #[error("scenario {name}: {source}")]
    Parse {
        /// The file.
        name: String,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("scenario {name}: {what}")]
    Invalid {
        /// The file.
        name: String,
        /// What is wrong, with the fix.
        what: String,
    },
}

impl Scenario {
    /// Parses and checks a scenario; `name` names the source in errors.
    pub fn from_toml(name: &str, text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            name: name.into(),
            source,
        })?;
        let invalid = |what: String| ScenarioError::Invalid {
            name: name.into(),
            what,
        };
        if !(s.duration_ms > 0.0 && s.duration_ms <= MAX_DURATION_MS) {
            return Err(invalid(format!(
                "duration_ms = {} must be in (0, {MAX_DURATION_MS}]; simulate at most 60 s",
                s.duration_ms
            )));
        }
        if s.events.len() > MAX_EVENTS {
            return Err(invalid(format!(
                "{} events: at most {MAX_EVENTS} per scenario; merge events or split the scenario",
                s.events.len()
            )));
        }
        if let Some(t) = &s.tasks {
            for (what, [lo, hi]) in [("tasks.run_ms", t.run_ms), ("tasks.away_ms", t.away_ms)] {
                if !(lo >= 0.01 && lo <= hi && hi <= 1000.0) {
                    return Err(invalid(format!(
                        "{what} = [{lo}, {hi}] must be a range within [0.01, 1000] ms (a scheduler slice is about 1-4 ms)"
                    )));
                }
            }
        }
        if !(s.records_per_ms > 0.0 && s.records_per_ms <= 10_000.0) {
            return Err(invalid(format!(
                "records_per_ms = {} must be in (0, 10000] (the worst case is about 6000)",
                s.records_per_ms
            )));
        }
        if !(0.0..=1e6).contains(&s.spu.op_latency_ns) {
            return Err(invalid(format!(
                "spu.op_latency_ns = {} must be in [0, 1000000] (a sampled operation takes nanoseconds to microseconds)",
                s.spu.op_latency_ns
            )));
        }
        for e in &s.events {
            if !(0.0..=1.0).contains(&e.fraction) || !(0.0..=s.duration_ms).contains(&e.at_ms) {
                return Err(invalid(format!(
                    "event {:?} at {} ms with fraction {}: at_ms must be within the run and fraction in [0, 1]",
                    e.kind, e.at_ms, e.fraction
                )));
            }
        }
        Ok(s)
    }
}
