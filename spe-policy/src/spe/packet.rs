//! SPE packets: header classification, the decoded form ([`Packet`]) and the encoder
//! (spec sheet §2.1-§2.7; ARM-D18).
//!
//! The raw-view / decoded-form split follows smoltcp's `wire` modules: [`parse`] reads one packet
//! from a byte slice without allocating, [`Packet::emit`] writes it back to the same bytes.

use core::fmt;

/// How unknown headers are treated (spec sheet §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DecodeMode {
    /// The architecture's rule (D18.1.3): software ignores an unknown packet, using the size
    /// encoded in its header.
    #[default]
    Architecture,
    /// Linux perf's `arm_spe_get_packet`: an unknown header is a bad packet; `perf report -D`
    /// prints "Bad packet!" and steps one byte. Also perf's extended-header "alignment" quirk.
    Perf,
}

/// Address packet index (spec sheet §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKind {
    /// 0: instruction virtual address (PC).
    Pc,
    /// 1: branch target virtual address.
    BranchTarget,
    /// 2: data access virtual address.
    DataVirtual,
    /// 3: data access physical address.
    DataPhysical,
    /// 4: previous branch target (FEAT_SPE_PBT).
    PrevBranchTarget,
    /// 5..31: IMPLEMENTATION DEFINED.
    ImplementationDefined(u8),
}

impl AddressKind {
    /// From a 5-bit index.
    pub const fn from_index(index: u8) -> Self {
        match index {
            0 => AddressKind::Pc,
            1 => AddressKind::BranchTarget,
            2 => AddressKind::DataVirtual,
            3 => AddressKind::DataPhysical,
            4 => AddressKind::PrevBranchTarget,
            other => AddressKind::ImplementationDefined(other & 0x1f),
        }
    }

    /// The 5-bit index.
    pub const fn index(self) -> u8 {
        match self {
            AddressKind::Pc => 0,
            AddressKind::BranchTarget => 1,
            AddressKind::DataVirtual => 2,
            AddressKind::DataPhysical => 3,
            AddressKind::PrevBranchTarget => 4,
            AddressKind::ImplementationDefined(i) => i & 0x1f,
        }
    }
}

/// Counter packet index (spec sheet §2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CounterKind {
    /// 0: total latency.
    TotalLatency,
    /// 1: issue latency.
    IssueLatency,
    /// 2: translation latency.
    TranslationLatency,
    /// 3..31: alternate clock issue latency (4) or IMPLEMENTATION DEFINED.
    Other(u8),
}

impl CounterKind {
    /// From a 5-bit index.
    pub const fn from_index(index: u8) -> Self {
        match index {
            0 => CounterKind::TotalLatency,
            1 => CounterKind::IssueLatency,
            2 => CounterKind::TranslationLatency,
            other => CounterKind::Other(other & 0x1f),
        }
    }

    /// The 5-bit index.
    pub const fn index(self) -> u8 {
        match self {
            CounterKind::TotalLatency => 0,
            CounterKind::IssueLatency => 1,
            CounterKind::TranslationLatency => 2,
            CounterKind::Other(i) => i & 0x1f,
        }
    }
}

/// Operation Type packet class, header bits `[1:0]` (spec sheet §2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// 0: other, SVE or SME data processing.
    Other,
    /// 1: load, store or atomic.
    LoadStore,
    /// 2: branch or exception return.
    Branch,
    /// 3: reserved.
    Reserved,
}

impl OpClass {
    /// From header bits `[1:0]`.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => OpClass::Other,
            1 => OpClass::LoadStore,
            2 => OpClass::Branch,
            _ => OpClass::Reserved,
        }
    }

    /// Header bits `[1:0]`.
    pub const fn bits(self) -> u8 {
        match self {
            OpClass::Other => 0,
            OpClass::LoadStore => 1,
            OpClass::Branch => 2,
            OpClass::Reserved => 3,
        }
    }
}

/// A payload width: 1, 2, 4 or 8 bytes, from header bits `[5:4]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PayloadSize(u8);

impl PayloadSize {
    /// From the 2-bit `sz` field.
    pub const fn from_sz(sz: u8) -> Self {
        PayloadSize(sz & 0b11)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        1 << self.0
    }

    /// The 2-bit `sz` field.
    pub const fn sz(self) -> u8 {
        self.0
    }
}

/// One decoded SPE packet. Every variant emits back to exactly the bytes it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Packet {
    /// 0x00: padding, one byte.
    Pad,
    /// 0x01: end of a record without a timestamp.
    End,
    /// 0x71: timestamp; ends a record.
    Timestamp(u64),
    /// 0x42/0x52/0x62/0x72: events, 1/2/4/8-byte payload.
    Events {
        /// Payload width.
        size: PayloadSize,
        /// The event bits (spec sheet §2.6).
        bits: u64,
    },
    /// 0x43/0x53 (perf also accepts 0x63/0x73): IMPLEMENTATION DEFINED data source.
    DataSource {
        /// Payload width.
        size: PayloadSize,
        /// The raw value.
        value: u64,
    },
    /// 0x64/0x65: CONTEXTIDR_EL1 (index 0) or CONTEXTIDR_EL2 (index 1); 0x66/0x67 are reserved
    /// indexes perf still prints.
    Context {
        /// Header bits `[1:0]`.
        index: u8,
        /// The context ID.
        value: u32,
    },
    /// 0x48-0x4B: operation type.
    OpType {
        /// Class from the header.
        class: OpClass,
        /// The 1-byte subclass payload.
        payload: u8,
    },
    /// 0xB0-0xB7, or extended 0x20-0x23 + 0xB0-0xB7: an address.
    Address {
        /// Which address.
        kind: AddressKind,
        /// Encoded with a 2-byte extended header.
        extended: bool,
        /// The raw 8-byte payload (byte 7 holds NS/EL or the tag).
        payload: u64,
    },
    /// 0x98-0x9F, or extended 0x20-0x23 + 0x98-0x9F: a counter.
    Counter {
        /// Which counter.
        kind: CounterKind,
        /// Encoded with a 2-byte extended header.
        extended: bool,
        /// The 16-bit value.
        value: u16,
    },
    /// perf's extended-header "alignment" quirk (byte 1 = 0x00), perf mode only: padding up to
    /// a host alignment (spec sheet §2.2).
    PerfAlignment {
        /// Header byte 0.
        header: u8,
        /// Bytes covered, including the header.
        len: u8,
    },
    /// A header the architecture reserves or leaves IMPLEMENTATION DEFINED, skipped by its
    /// size-encoded length (architecture mode only).
    Unknown {
        /// Header bytes (byte 1 only for an extended header).
        header: [u8; 2],
        /// 1 or 2.
        header_len: u8,
        /// Payload width in bytes (0, 1, 2, 4, 8).
        payload_len: u8,
        /// The payload, little-endian.
        payload: u64,
    },
}

/// Why no packet could be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// The slice ends inside the packet (perf's `ARM_SPE_NEED_MORE_BYTES`): `needed` bytes in
    /// all.
    Truncated {
        /// Bytes the packet needs.
        needed: usize,
    },
    /// perf mode: the header is not one perf knows (`ARM_SPE_BAD_PACKET`).
    BadHeader,
    /// The slice is empty.
    Empty,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated { needed } => write!(f, "packet needs {needed} bytes"),
            ParseError::BadHeader => f.write_str("unknown packet header"),
            ParseError::Empty => f.write_str("no bytes"),
        }
    }
}

#[inline]
fn le(bytes: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(v)
}

/// Reads `len` payload bytes after `hdr_len` header bytes.
#[inline]
fn payload(buf: &[u8], hdr_len: usize, len: usize) -> Result<u64, ParseError> {
    let needed = hdr_len + len;
    match buf.get(hdr_len..needed) {
        Some(p) => Ok(le(p)),
        None => Err(ParseError::Truncated { needed }),
    }
}

/// What a first header byte says, before any payload is read (spec sheet §2.2, in perf's
/// matching order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderClass {
    /// 0x00.
    Pad,
    /// 0x01.
    End,
    /// 0x71.
    Timestamp,
    /// `(h & 0xcf) == 0x42`.
    Events,
    /// `(h & 0xcf) == 0x43`.
    DataSource,
    /// `(h & 0xfc) == 0x64`.
    Context,
    /// `(h & 0xfc) == 0x48`.
    OpType,
    /// `(h & 0xfc) == 0x20`: byte 1 decides.
    Extended,
    /// `(h & 0xf8) == 0xb0`.
    Address,
    /// `(h & 0xf8) == 0x98`.
    Counter,
    /// Anything else.
    Unknown,
}

const fn classify(h: u8) -> HeaderClass {
    if h == 0x00 {
        HeaderClass::Pad
    } else if h == 0x01 {
        HeaderClass::End
    } else if h == 0x71 {
        HeaderClass::Timestamp
    } else if h & 0xcf == 0x42 {
        HeaderClass::Events
    } else if h & 0xcf == 0x43 {
        HeaderClass::DataSource
    } else if h & 0xfc == 0x64 {
        HeaderClass::Context
    } else if h & 0xfc == 0x48 {
        HeaderClass::OpType
    } else if h & 0xfc == 0x20 {
        HeaderClass::Extended
    } else if h & 0xf8 == 0xb0 {
        HeaderClass::Address
    } else if h & 0xf8 == 0x98 {
        HeaderClass::Counter
    } else {
        HeaderClass::Unknown
    }
}

/// Payload bytes a single header byte announces: 1 << sz when bit 6 or 7 is set, else none
/// (ARM-D18.1). Context/OpType/Address/Counter headers agree with their fixed sizes.
const fn payload_len(h: u8) -> u8 {
    if h & 0xc0 != 0 {
        1 << ((h >> 4) & 3)
    } else {
        0
    }
}

const fn header_tables() -> ([HeaderClass; 256], [u8; 256]) {
    let mut class = [HeaderClass::Unknown; 256];
    let mut len = [0u8; 256];
    let mut h = 0;
    while h < 256 {
        class[h] = classify(h as u8);
        len[h] = 1 + payload_len(h as u8);
        h += 1;
    }
    (class, len)
}

const TABLES: ([HeaderClass; 256], [u8; 256]) = header_tables();
/// [`HEADER_CLASS`] as a constant, for building other tables at compile time.
pub const HEADER_CLASS_CONST: [HeaderClass; 256] = TABLES.0;
/// [`PACKET_LEN`] as a constant, for building other tables at compile time.
pub const PACKET_LEN_CONST: [u8; 256] = TABLES.1;
/// Header class of every first byte.
pub static HEADER_CLASS: [HeaderClass; 256] = TABLES.0;
/// Total packet length of every single-byte header (header plus payload); meaningless for
/// [`HeaderClass::Extended`], whose second byte decides.
pub static PACKET_LEN: [u8; 256] = TABLES.1;

/// Masks for 0..=8 payload bytes.
const PAYLOAD_MASK: [u64; 9] = [
    0,
    0xff,
    0xffff,
    0xff_ffff,
    0xffff_ffff,
    0xff_ffff_ffff,
    0xffff_ffff_ffff,
    0xff_ffff_ffff_ffff,
    u64::MAX,
];

/// The payload of `n` bytes at `buf[at..]`: one unaligned 8-byte load when the slice allows.
#[inline(always)]
pub(crate) fn read_payload(buf: &[u8], at: usize, n: usize) -> u64 {
    if let Some(word) = buf.get(at..at + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        u64::from_le_bytes(w) & PAYLOAD_MASK[n.min(8)]
    } else {
        le(&buf[at..at + n])
    }
}

/// A packet's length from its header's size field, bits `[5:4]` (spec sheet §2.2): the header
/// plus 1, 2, 4 or 8 payload bytes. Arithmetic, so the scanner's chain from one header to the
/// next is one load and a few ALU operations instead of two dependent loads.
#[inline(always)]
pub(crate) const fn size_encoded_len(h: u8) -> u8 {
    1 + (1 << ((h >> 4) & 3))
}

/// How many 0x00 (padding) bytes start `buf`, eight at a time.
#[inline]
pub fn zero_run(buf: &[u8]) -> usize {
    let mut n = 0;
    while let Some(word) = buf.get(n..n + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let v = u64::from_le_bytes(w);
        if v != 0 {
            return n + (v.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + buf[n..].iter().take_while(|b| **b == 0).count()
}

/// The packet a single-byte header and its payload `v` make, or `None` for the extended and
/// unknown classes.
#[inline(always)]
pub(crate) fn single_header_packet(class: HeaderClass, h: u8, v: u64) -> Option<Packet> {
    let size = PayloadSize::from_sz(h >> 4);
    Some(match class {
        HeaderClass::Pad => Packet::Pad,
        HeaderClass::End => Packet::End,
        HeaderClass::Timestamp => Packet::Timestamp(v),
        HeaderClass::Events => Packet::Events { size, bits: v },
        HeaderClass::DataSource => Packet::DataSource { size, value: v },
        HeaderClass::Context => Packet::Context {
            index: h & 3,
            value: v as u32,
        },
        HeaderClass::OpType => Packet::OpType {
            class: OpClass::from_bits(h),
            payload: v as u8,
        },
        HeaderClass::Address => Packet::Address {
            kind: AddressKind::from_index(h & 7),
            extended: false,
            payload: v,
        },
        HeaderClass::Counter => Packet::Counter {
            kind: CounterKind::from_index(h & 7),
            extended: false,
            value: v as u16,
        },
        HeaderClass::Extended | HeaderClass::Unknown => return None,
    })
}

/// A whole packet with a single-byte header (every class but extended and unknown) at the start
/// of `buf`, or `None` for any other header or a packet cut short: the common case, shared by
/// [`parse`] and the packet iterator's inline fast path.
#[inline(always)]
pub(crate) fn parse_single_header(buf: &[u8]) -> Option<(Packet, usize)> {
    let &h = buf.first()?;
    let class = HEADER_CLASS[h as usize];
    let len = PACKET_LEN[h as usize] as usize;
    if matches!(class, HeaderClass::Extended | HeaderClass::Unknown) || buf.len() < len {
        return None;
    }
    let v = read_payload(buf, 1, len - 1);
    single_header_packet(class, h, v).map(|p| (p, len))
}

/// Parses one packet at the start of `buf`; returns it and its length in bytes.
///
/// Never panics and never allocates. `offset` is the packet's offset in the stream; only perf's
/// alignment quirk uses it (perf computes it from the host buffer address, which is page
/// aligned, so the stream offset stands in for it).
pub fn parse(buf: &[u8], mode: DecodeMode, offset: usize) -> Result<(Packet, usize), ParseError> {
    let Some(&h) = buf.first() else {
        return Err(ParseError::Empty);
    };
    if h == 0x00 {
        // Padding is the most common byte of real buffers (spec sheet §2.8).
        return Ok((Packet::Pad, 1));
    }
    if let Some(whole) = parse_single_header(buf) {
        return Ok(whole);
    }
    let class = HEADER_CLASS[h as usize];
    if class != HeaderClass::Extended && class != HeaderClass::Unknown {
        // A single-byte header whose packet the slice cuts short.
        return Err(ParseError::Truncated {
            needed: PACKET_LEN[h as usize] as usize,
        });
    }
    let (h1, hdr_len, index_hi) = if h & 0xfc == 0x20 {
        let Some(&h1) = buf.get(1) else {
            return match mode {
                // perf: "if (len == 1) return ARM_SPE_BAD_PACKET".
                DecodeMode::Perf => Err(ParseError::BadHeader),
                DecodeMode::Architecture => Err(ParseError::Truncated { needed: 2 }),
            };
        };
        if h1 == 0x00 && mode == DecodeMode::Perf {
            let align = 1usize << ((h & 0xf) + 1);
            if buf.len() < align {
                return Err(ParseError::Truncated { needed: align });
            }
            let len = align - (offset & (align - 1));
            return Ok((
                Packet::PerfAlignment {
                    header: h,
                    len: len as u8,
                },
                len,
            ));
        }
        (h1, 2, (h & 3) << 3)
    } else {
        (h, 1, 0)
    };
    let extended = hdr_len == 2;
    if h1 & 0xf8 == 0xb0 {
        let p = payload(buf, hdr_len, 8)?;
        let kind = AddressKind::from_index(index_hi | (h1 & 7));
        return Ok((
            Packet::Address {
                kind,
                extended,
                payload: p,
            },
            hdr_len + 8,
        ));
    }
    if h1 & 0xf8 == 0x98 {
        let value = payload(buf, hdr_len, 2)? as u16;
        let kind = CounterKind::from_index(index_hi | (h1 & 7));
        return Ok((
            Packet::Counter {
                kind,
                extended,
                value,
            },
            hdr_len + 2,
        ));
    }
    match mode {
        DecodeMode::Perf => Err(ParseError::BadHeader),
        DecodeMode::Architecture => {
            // D18.1: headers with bit 6 or 7 set carry 1 << sz payload bytes; 0x00-0x3F none.
            let payload_len = if h1 & 0xc0 != 0 {
                1usize << ((h1 >> 4) & 3)
            } else {
                0
            };
            let p = payload(buf, hdr_len, payload_len)?;
            let header = if extended { [h, h1] } else { [h, 0] };
            Ok((
                Packet::Unknown {
                    header,
                    header_len: hdr_len as u8,
                    payload_len: payload_len as u8,
                    payload: p,
                },
                hdr_len + payload_len,
            ))
        }
    }
}

/// A raw, checked view of one packet's bytes (smoltcp's `Packet<T: AsRef<[u8]>>`): field
/// accessors over the wire format, without decoding. [`PacketView::repr`] gives the decoded
/// [`Packet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketView<'a> {
    bytes: &'a [u8],
    header_len: usize,
    packet: Packet,
}

impl<'a> PacketView<'a> {
    /// Checks that `buf` starts with a whole packet in `mode` and views it (the view covers only
    /// that packet's bytes).
    pub fn new_checked(buf: &'a [u8], mode: DecodeMode) -> Result<Self, ParseError> {
        let (packet, len) = parse(buf, mode, 0)?;
        let header_len = match packet {
            Packet::Address { extended: true, .. } | Packet::Counter { extended: true, .. } => 2,
            Packet::Unknown { header_len, .. } => header_len as usize,
            Packet::PerfAlignment { .. } => len.min(2),
            _ => 1,
        };
        Ok(PacketView {
            bytes: &buf[..len],
            header_len,
            packet,
        })
    }

    /// The packet's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The first header byte.
    pub fn header(&self) -> u8 {
        self.bytes[0]
    }

    /// The header class of the first byte.
    pub fn header_class(&self) -> HeaderClass {
        HEADER_CLASS[self.header() as usize]
    }

    /// Header length: 1, or 2 for an extended header.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The payload bytes (little-endian).
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// The decoded form.
    pub fn repr(&self) -> Packet {
        self.packet
    }
}

impl Packet {
    /// The encoded length in bytes.
    pub const fn len(&self) -> usize {
        match *self {
            Packet::Pad | Packet::End => 1,
            Packet::Timestamp(_) => 9,
            Packet::Events { size, .. } | Packet::DataSource { size, .. } => 1 + size.bytes(),
            Packet::Context { .. } => 5,
            Packet::OpType { .. } => 2,
            Packet::Address { extended, .. } => 9 + extended as usize,
            Packet::Counter { extended, .. } => 3 + extended as usize,
            Packet::PerfAlignment { len, .. } => len as usize,
            Packet::Unknown {
                header_len,
                payload_len,
                ..
            } => header_len as usize + payload_len as usize,
        }
    }

    /// Whether the packet has no bytes (never: every packet has a header).
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether this packet ends a record (Timestamp or End, spec sheet §2.1).
    pub const fn ends_record(&self) -> bool {
        matches!(self, Packet::Timestamp(_) | Packet::End)
    }

    /// Whether this is padding.
    pub const fn is_padding(&self) -> bool {
        matches!(self, Packet::Pad | Packet::PerfAlignment { .. })
    }

    /// Writes the packet into `out`; returns the bytes written, or `None` if `out` is too short.
    pub fn emit(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.len();
        let out = out.get_mut(..len)?;
        let put = |out: &mut [u8], at: usize, v: u64, n: usize| {
            out[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
        };
        match *self {
            Packet::Pad => out[0] = 0x00,
            Packet::End => out[0] = 0x01,
            Packet::Timestamp(ts) => {
                out[0] = 0x71;
                put(out, 1, ts, 8);
            }
            Packet::Events { size, bits } => {
                out[0] = 0x42 | size.sz() << 4;
                put(out, 1, bits, size.bytes());
            }
            Packet::DataSource { size, value } => {
                out[0] = 0x43 | size.sz() << 4;
                put(out, 1, value, size.bytes());
            }
            Packet::Context { index, value } => {
                out[0] = 0x64 | (index & 3);
                put(out, 1, value.into(), 4);
            }
            Packet::OpType { class, payload } => {
                out[0] = 0x48 | class.bits();
                out[1] = payload;
            }
            Packet::Address {
                kind,
                extended,
                payload,
            } => {
                let at = emit_indexed(out, 0xb0, kind.index(), extended);
                put(out, at, payload, 8);
            }
            Packet::Counter {
                kind,
                extended,
                value,
            } => {
                let at = emit_indexed(out, 0x98, kind.index(), extended);
                put(out, at, value.into(), 2);
            }
            Packet::PerfAlignment { header, .. } => {
                out.fill(0);
                out[0] = header;
            }
            Packet::Unknown {
                header,
                header_len,
                payload_len,
                payload,
            } => {
                let h = header_len as usize;
                out[..h].copy_from_slice(&header[..h]);
                put(out, h, payload, payload_len as usize);
            }
        }
        Some(len)
    }
}

/// Writes a short (`base | idx`) or extended (`0x20 | idx[4:3]`, `base | idx[2:0]`) header.
fn emit_indexed(out: &mut [u8], base: u8, index: u8, extended: bool) -> usize {
    if extended {
        out[0] = 0x20 | ((index >> 3) & 3);
        out[1] = base | (index & 7);
        2
    } else {
        out[0] = base | (index & 7);
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8], mode: DecodeMode) -> (Packet, usize) {
        parse(bytes, mode, 0).expect("parses")
    }

    #[test]
    fn every_known_header_class_parses_to_its_length() {
        let cases: &[(&[u8], usize)] = &[
            (&[0x00], 1),
            (&[0x01], 1),
            (&[0x71, 1, 2, 3, 4, 5, 6, 7, 8], 9),
            (&[0x42, 0x16], 2),
            (&[0x52, 0x16, 0x00], 3),
            (&[0x62, 1, 0, 0, 0], 5),
            (&[0x72, 1, 0, 0, 0, 0, 0, 0, 0x80], 9),
            (&[0x43, 0], 2),
            (&[0x53, 0, 1], 3),
            (&[0x64, 1, 2, 3, 4], 5),
            (&[0x65, 1, 2, 3, 4], 5),
            (&[0x4a, 0x01], 2),
            (&[0xb4, 1, 2, 3, 4, 5, 6, 7, 0xc0], 9),
            (&[0x21, 0xb3, 1, 2, 3, 4, 5, 6, 7, 8], 10),
            (&[0x9a, 1, 0], 3),
            (&[0x23, 0x9f, 1, 0], 4),
        ];
        for (bytes, len) in cases {
            for mode in [DecodeMode::Architecture, DecodeMode::Perf] {
                let (p, n) = one(bytes, mode);
                assert_eq!(n, *len, "{bytes:02x?}");
                assert_eq!(p.len(), *len);
                let mut out = [0u8; 16];
                assert_eq!(p.emit(&mut out), Some(*len));
                assert_eq!(&out[..*len], *bytes, "{p:?} re-encodes");
            }
        }
    }

    #[test]
    fn extended_headers_carry_index_bits_4_and_3() {
        let (p, _) = one(
            &[0x23, 0xb4, 0, 0, 0, 0, 0, 0, 0, 0],
            DecodeMode::Architecture,
        );
        assert_eq!(
            p,
            Packet::Address {
                kind: AddressKind::ImplementationDefined(0b11100),
                extended: true,
                payload: 0
            }
        );
        let (p, _) = one(&[0x20, 0x98, 5, 0], DecodeMode::Perf);
        assert!(matches!(
            p,
            Packet::Counter {
                kind: CounterKind::TotalLatency,
                extended: true,
                value: 5
            }
        ));
    }

    #[test]
    fn unknown_headers_are_skipped_by_size_in_architecture_mode_and_bad_in_perf_mode() {
        // 0x02: single byte, no payload. 0x7a: 8-byte payload. 0x20 0x42: extended, 1 byte.
        for (bytes, len) in [
            (&[0x02][..], 1),
            (&[0x7a, 0, 0, 0, 0, 0, 0, 0, 0][..], 9),
            (&[0x20, 0x42, 7][..], 3),
            (&[0x20, 0x00][..], 2),
        ] {
            let (p, n) = one(bytes, DecodeMode::Architecture);
            assert!(matches!(p, Packet::Unknown { .. }), "{bytes:02x?}");
            assert_eq!(n, len);
            let mut out = [0u8; 16];
            p.emit(&mut out);
            assert_eq!(&out[..len], bytes);
            if bytes != [0x20, 0x00] {
                assert_eq!(
                    parse(bytes, DecodeMode::Perf, 0),
                    Err(ParseError::BadHeader)
                );
            }
        }
    }

    #[test]
    fn a_packet_cut_short_reports_how_many_bytes_it_needs() {
        assert_eq!(
            parse(&[0x71, 1, 2], DecodeMode::Architecture, 0),
            Err(ParseError::Truncated { needed: 9 })
        );
        assert_eq!(
            parse(&[0x20, 0xb0, 1], DecodeMode::Perf, 0),
            Err(ParseError::Truncated { needed: 10 })
        );
        assert_eq!(
            parse(&[0x20], DecodeMode::Perf, 0),
            Err(ParseError::BadHeader)
        );
        assert_eq!(parse(&[], DecodeMode::Perf, 0), Err(ParseError::Empty));
    }

    #[test]
    fn a_packet_view_exposes_header_and_payload_bytes() {
        let buf = [0x21, 0xb3, 1, 2, 3, 4, 5, 6, 7, 8, 0xff];
        let v = PacketView::new_checked(&buf, DecodeMode::Architecture).expect("view");
        assert_eq!((v.header(), v.header_len(), v.bytes().len()), (0x21, 2, 10));
        assert_eq!(v.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(v.header_class(), HeaderClass::Extended);
        assert!(matches!(v.repr(), Packet::Address { extended: true, .. }));
        assert_eq!(
            PacketView::new_checked(&buf[..5], DecodeMode::Perf),
            Err(ParseError::Truncated { needed: 10 })
        );
    }

    #[test]
    fn perf_alignment_quirk_pads_to_the_host_alignment_in_perf_mode_only() {
        // 0x21 0x00: align = 1 << 2 = 4; at offset 1 it covers 3 bytes.
        let buf = [0x21, 0x00, 0, 0, 0x01];
        let (p, n) = parse(&buf, DecodeMode::Perf, 1).expect("quirk");
        assert_eq!(n, 3);
        assert!(p.is_padding());
    }
}
