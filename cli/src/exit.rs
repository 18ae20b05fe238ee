//! The exit codes of every subcommand, in one place (README's table).

use spe_policy_sim::ReadError;

/// Success (for `translate`, faults are results too; for `decode`, garbage still decodes).
pub const OK: i32 = 0;
/// Invalid input: a config, scenario, image or option value that is wrong, or a run that
/// failed.
pub const INVALID: i32 = 1;
/// Usage: clap's own code for an unknown flag, a missing argument or a bad value (clap exits
/// with it itself; named here for the table).
#[allow(dead_code)]
pub const USAGE: i32 = 2;
/// An input that cannot be read or an output that cannot be written.
pub const IO: i32 = 3;
/// The environment cannot do it (e.g. no usable /dev/kvm).
#[allow(dead_code)]
pub const ENVIRONMENT: i32 = 4;

/// The code for a failed read: unreadable is I/O, too large or not text is invalid input.
pub fn for_read_error(e: &ReadError) -> i32 {
    match e {
        ReadError::Unreadable { .. } => IO,
        ReadError::TooLarge { .. } | ReadError::NotText { .. } => INVALID,
    }
}
