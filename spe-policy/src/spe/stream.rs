//! Walking a byte stream packet by packet, in architecture or perf mode (spec sheet §2.1,
//! §2.9). Where the two differ:
//!
//! * an unknown header: architecture mode skips it by its size-encoded length and yields
//!   [`Packet::Unknown`]; perf mode yields a bad byte and steps one byte ("Bad packet!");
//! * a packet cut short by the end of the stream: both yield bad bytes one at a time (perf's
//!   `ARM_SPE_NEED_MORE_BYTES` handling), so the tail is visible byte by byte;
//! * an extended header with second byte 0x00: perf's "alignment" quirk pads to a host
//!   alignment; architecture mode treats it as an unknown 2-byte packet;
//! * PAD runs: perf prints up to 16 consecutive 0x00 bytes as one `PAD` line. [`Packets`] yields
//!   single-byte PADs in architecture mode and perf's groups in perf mode.

use crate::spe::packet::{DecodeMode, Packet, ParseError, parse, parse_single_header};

/// One item of a packet stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamItem<'a> {
    /// A packet and its bytes (a PAD group in perf mode covers up to 16 bytes).
    Packet {
        /// Offset in the stream.
        offset: usize,
        /// The packet's bytes.
        bytes: &'a [u8],
        /// The decoded packet.
        packet: Packet,
    },
    /// One byte that does not start a packet (perf: " Bad packet!"), with why.
    Bad {
        /// Offset in the stream.
        offset: usize,
        /// The byte.
        byte: u8,
        /// Why it could not be parsed.
        error: ParseError,
    },
}

impl StreamItem<'_> {
    /// Offset of the item in the stream.
    pub fn offset(&self) -> usize {
        match self {
            StreamItem::Packet { offset, .. } | StreamItem::Bad { offset, .. } => *offset,
        }
    }

    /// Bytes the item covers.
    pub fn len(&self) -> usize {
        match self {
            StreamItem::Packet { bytes, .. } => bytes.len(),
            StreamItem::Bad { .. } => 1,
        }
    }

    /// Whether the item covers no bytes (never).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Iterator over the packets of a byte stream. Linear in the input; never allocates.
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    buf: &'a [u8],
    pos: usize,
    mode: DecodeMode,
}

impl<'a> Packets<'a> {
    /// Packets of `buf` in `mode`.
    pub fn new(buf: &'a [u8], mode: DecodeMode) -> Self {
        Packets { buf, pos: 0, mode }
    }

    /// The offset of the next item.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = StreamItem<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<StreamItem<'a>> {
        let offset = self.pos;
        let rest = self.buf.get(offset..)?;
        let &h = rest.first()?;
        // The fast path, inline: padding and whole single-byte-header packets (all but the
        // extended and unknown headers), which are nearly every packet of a real buffer. The
        // rest goes through `parse`, which decodes the same packets the same way.
        if h == 0 {
            let len = match self.mode {
                DecodeMode::Architecture => 1,
                // arm_spe_get_packet groups a PAD run up to 16 bytes on one line.
                DecodeMode::Perf => 1 + zeros_up_to_15(&rest[1..]),
            };
            self.pos += len;
            return Some(StreamItem::Packet {
                offset,
                bytes: &rest[..len],
                packet: Packet::Pad,
            });
        }
        if let Some((packet, len)) = parse_single_header(rest) {
            self.pos += len;
            return Some(StreamItem::Packet {
                offset,
                bytes: &rest[..len],
                packet,
            });
        }
        self.slow(rest, offset)
    }
}

/// How many 0x00 bytes start `buf`, at most 15: one 16-byte load where the slice allows.
#[inline(always)]
fn zeros_up_to_15(buf: &[u8]) -> usize {
    match buf.get(..16) {
        Some(b) => {
            let mut w = [0u8; 16];
            w.copy_from_slice(b);
            ((u128::from_le_bytes(w).trailing_zeros() / 8) as usize).min(15)
        }
        None => buf.iter().take(15).take_while(|b| **b == 0).count(),
    }
}

impl<'a> Packets<'a> {
    /// Everything the fast path leaves: extended and unknown headers, packets cut short, bad
    /// bytes, and perf's alignment quirk.
    #[inline(never)]
    fn slow(&mut self, rest: &'a [u8], offset: usize) -> Option<StreamItem<'a>> {
        match parse(rest, self.mode, offset) {
            Ok((packet, mut len)) => {
                if self.mode == DecodeMode::Perf && packet.is_padding() {
                    // arm_spe_get_packet groups a PAD run up to 16 bytes on one line (after its
                    // alignment "padding" too: both are ARM_SPE_PAD there).
                    while len < 16 && rest.get(len) == Some(&0) {
                        len += 1;
                    }
                }
                self.pos += len;
                Some(StreamItem::Packet {
                    offset,
                    bytes: &rest[..len],
                    packet,
                })
            }
            Err(error) => {
                self.pos += 1;
                Some(StreamItem::Bad {
                    offset,
                    byte: rest[0],
                    error,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_mode_groups_zero_runs_after_pad_and_after_the_alignment_quirk() {
        let bytes = [0x21, 0x00, 0, 0, 0, 0, 0x01];
        let items: Vec<StreamItem> = Packets::new(&bytes, DecodeMode::Perf).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].len(), 6);
        let arch: Vec<StreamItem> = Packets::new(&bytes, DecodeMode::Architecture).collect();
        assert_eq!(
            arch.len(),
            1 + 4 + 1,
            "unknown 2-byte packet, four PADs, END"
        );
        let pads = [0u8; 20];
        let grouped: Vec<usize> = Packets::new(&pads, DecodeMode::Perf)
            .map(|i| i.len())
            .collect();
        assert_eq!(grouped, vec![16, 4]);
    }
}
