//! The SPE sample record format: packet codec, perf-compatible text, record assembly, and the
//! recovery scanner (spec sheet §2).

pub mod packet;
pub mod record;
pub mod recovery;
pub mod stream;
pub mod text;

pub use packet::{
    AddressKind, CounterKind, DecodeMode, HeaderClass, OpClass, Packet, PacketView, ParseError,
    PayloadSize, parse,
};
pub use record::{Fill, Record, RecordItem, Records};
pub use recovery::{DiscardReason, Recovery, RecoveryInput, Verdict, WriteOrder, recover};
pub use stream::{Packets, StreamItem};
pub use text::{Describe, dump_line};
