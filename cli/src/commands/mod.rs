//! One module per subcommand.

pub mod compare;
pub mod config;
pub mod decode;
pub mod errata;
pub mod stage2_check;
pub mod translate;
