//! The architecture model: registers, PMBSR code points, and the stage 1 walk the SPU performs.

pub mod buffer_regs;
pub mod pmbsr;
pub mod sampling_regs;
pub mod translation_regs;
pub mod walk;

pub use buffer_regs::{BufferMode, Pmbidr, Pmblimitr, Pmbptr, Pmbsr};
pub use pmbsr::{
    BufferEvent, BufferEventKind, BufferStatusCode, FaultLevel, FaultStatusCode, PmbsrEc, Stage,
};
pub use sampling_regs::{Pmscr, Pmsidr};
pub use translation_regs::{Sctlr, Tcr, Ttbr};
