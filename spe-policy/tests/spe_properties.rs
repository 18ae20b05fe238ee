//! Property tests of the SPE codec and the recovery scanner.

use proptest::prelude::*;
use spe_policy::spe::recovery::recover_with;
use spe_policy::spe::{
    AddressKind, CounterKind, DecodeMode, DiscardReason, OpClass, Packet, Packets, PayloadSize,
    RecoveryInput, StreamItem, Verdict, WriteOrder, parse, recover,
};

fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        Just(Packet::Pad),
        Just(Packet::End),
        any::<u64>().prop_map(Packet::Timestamp),
        (0u8..4, any::<u64>()).prop_map(|(sz, v)| {
            let size = PayloadSize::from_sz(sz);
            let bits = if sz == 3 {
                v
            } else {
                v & ((1u64 << (8 << sz)) - 1)
            };
            Packet::Events { size, bits }
        }),
        (0u8..2, any::<u16>()).prop_map(|(sz, v)| Packet::DataSource {
            size: PayloadSize::from_sz(sz),
            value: if sz == 0 {
                u64::from(v & 0xff)
            } else {
                u64::from(v)
            },
        }),
        (0u8..4, any::<u32>()).prop_map(|(index, value)| Packet::Context { index, value }),
        (0u8..4, any::<u8>()).prop_map(|(c, payload)| Packet::OpType {
            class: OpClass::from_bits(c),
            payload
        }),
        (0u8..32, any::<bool>(), any::<u64>()).prop_map(|(i, ext, payload)| Packet::Address {
            kind: AddressKind::from_index(i),
            extended: ext || i >= 8,
            payload,
        }),
        (0u8..32, any::<bool>(), any::<u16>()).prop_map(|(i, ext, value)| Packet::Counter {
            kind: CounterKind::from_index(i),
            extended: ext || i >= 8,
            value,
        }),
    ]
}

/// A record body (no terminator, no Timestamp/End inside) of the given packets.
fn body_packet() -> impl Strategy<Value = Packet> {
    any_packet().prop_filter("not a terminator", |p| !p.ends_record())
}

/// Records of at most `max` bytes each, ending with TS or END, some with padding between.
fn records(max: usize) -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    prop::collection::vec(
        (
            prop::collection::vec(body_packet(), 1..8),
            any::<bool>(),
            any::<u64>(),
            0usize..4,
        ),
        1..12,
    )
    .prop_map(move |recs| {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (body, ts, stamp, pad_between) in recs {
            let start = bytes.len();
            let mut buf = [0u8; 16];
            for p in body {
                if bytes.len() - start + p.len() + 9 > max {
                    break;
                }
                let n = p.emit(&mut buf).expect("fits");
                bytes.extend_from_slice(&buf[..n]);
            }
            let end = if ts {
                Packet::Timestamp(stamp)
            } else {
                Packet::End
            };
            let n = end.emit(&mut buf).expect("fits");
            bytes.extend_from_slice(&buf[..n]);
            ends.push(bytes.len());
            bytes.extend(std::iter::repeat_n(0u8, pad_between));
        }
        (bytes, ends)
    })
}

const MAX_RECORD: usize = 64;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_packet_emits_and_parses_back_to_itself(p in any_packet()) {
        let mut buf = [0u8; 16];
        let n = p.emit(&mut buf).expect("fits in 16 bytes");
        prop_assert_eq!(n, p.len());
        let (q, m) = parse(&buf[..n], DecodeMode::Architecture, 0).expect("parses");
        prop_assert_eq!(q, p);
        prop_assert_eq!(m, n);
    }

    #[test]
    fn the_packet_iterators_fast_path_yields_exactly_what_parse_decodes(
        chunks in prop::collection::vec(
            prop_oneof![
                // Runs of padding, shorter and longer than perf's 16-byte group.
                (0usize..40).prop_map(|n| vec![0u8; n]),
                prop::sample::select(vec![0x01u8, 0x71, 0x20, 0x21, 0xb0, 0x98, 0x42])
                    .prop_map(|h| vec![h]),
                prop::collection::vec(any::<u8>(), 1..12),
            ],
            0..64,
        ),
    ) {
        let bytes: Vec<u8> = chunks.concat();
        // The reference: parse() packet by packet, a bad byte stepping one byte, and perf
        // mode's PAD grouping up to 16 bytes (arm_spe_get_packet).
        for mode in [DecodeMode::Architecture, DecodeMode::Perf] {
            let mut reference = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                match parse(&bytes[at..], mode, at) {
                    Ok((packet, mut len)) => {
                        if mode == DecodeMode::Perf && packet.is_padding() {
                            while len < 16 && bytes.get(at + len) == Some(&0) {
                                len += 1;
                            }
                        }
                        reference.push((at, len, Some(packet)));
                        at += len;
                    }
                    Err(_) => {
                        reference.push((at, 1, None));
                        at += 1;
                    }
                }
            }
            let items: Vec<_> = Packets::new(&bytes, mode)
                .map(|i| match i {
                    StreamItem::Packet { offset, bytes, packet } => (offset, bytes.len(), Some(packet)),
                    StreamItem::Bad { offset, .. } => (offset, 1, None),
                })
                .collect();
            prop_assert_eq!(items, reference);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_every_decoded_packet_re_encodes_to_its_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        for mode in [DecodeMode::Architecture, DecodeMode::Perf] {
            let mut covered = 0;
            let mut items = 0;
            for item in Packets::new(&bytes, mode) {
                prop_assert_eq!(item.offset(), covered, "items tile the stream");
                covered += item.len();
                items += 1;
                if let (DecodeMode::Architecture, StreamItem::Packet { bytes: raw, packet, .. }) = (mode, item) {
                    let mut buf = [0u8; 16];
                    let n = packet.emit(&mut buf).expect("fits");
                    prop_assert_eq!(&buf[..n], raw);
                }
            }
            prop_assert_eq!(covered, bytes.len());
            // Linear: every item consumes at least one byte.
            prop_assert!(items <= bytes.len());
            let _ = recover(&RecoveryInput {
                bytes: &bytes,
                data_loss: true,
                max_record_bytes: MAX_RECORD,
                write_order: WriteOrder::Unordered,
            });
        }
    }

    #[test]
    fn truncating_records_anywhere_rewinds_to_the_end_of_the_last_whole_record(
        (bytes, ends) in records(MAX_RECORD),
    ) {
        for cut in 0..=bytes.len() {
            let input = RecoveryInput {
                bytes: &bytes[..cut],
                data_loss: true,
                max_record_bytes: MAX_RECORD,
                write_order: WriteOrder::Sequential,
            };
            let r = recover(&input);
            let last = ends.iter().copied().filter(|e| *e <= cut).max().unwrap_or(0);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            prop_assert_eq!(r.verdict, Verdict::Rewind, "cut {}", cut);
            prop_assert_eq!(r.resume_offset, last, "cut {}", cut);
            prop_assert_eq!(r.complete_records, whole);
            prop_assert_eq!(r.lost_bytes, cut - last);

            // Unordered writes: only records ending MaxSize or more before PMBPTR are proven.
            let r = recover(&RecoveryInput { write_order: WriteOrder::Unordered, ..input });
            let proven = ends
                .iter()
                .copied()
                .filter(|e| *e + MAX_RECORD <= cut)
                .max()
                .unwrap_or(0);
            prop_assert_eq!(r.resume_offset, proven, "cut {}", cut);
            prop_assert!(r.resume_offset <= last);
        }
    }

    #[test]
    fn whole_records_without_data_loss_are_kept_intact(
        (bytes, ends) in records(MAX_RECORD),
    ) {
        let r = recover(&RecoveryInput {
            bytes: &bytes,
            data_loss: false,
            max_record_bytes: MAX_RECORD,
            write_order: WriteOrder::Unordered,
        });
        prop_assert_eq!(r.verdict, Verdict::Intact);
        prop_assert_eq!(r.resume_offset, bytes.len());
        prop_assert_eq!(r.complete_records, ends.len());
    }

    #[test]
    fn a_hole_of_stale_bytes_in_the_partial_record_forces_a_discard(
        (bytes, ends) in records(MAX_RECORD),
        stale in prop::collection::vec(0xf0u8..=0xff, 10..20),
    ) {
        // The SPU wrote the end of the last record first; its start still holds stale bytes.
        let start = ends.len().checked_sub(2).map_or(0, |i| ends[i]);
        let start = start + bytes[start..].iter().take_while(|b| **b == 0).count();
        let mut region = bytes[..start].to_vec();
        region.extend_from_slice(&stale);
        region.extend_from_slice(&[0x49, 0x00]);
        let r = recover(&RecoveryInput {
            bytes: &region,
            data_loss: true,
            max_record_bytes: MAX_RECORD,
            write_order: WriteOrder::Sequential,
        });
        prop_assert!(
            matches!(r.verdict, Verdict::Discard(DiscardReason::UndefinedBytes { .. })),
            "{:?}", r
        );
        prop_assert_eq!(r.resume_offset, 0);
    }
}

#[test]
fn a_record_longer_than_max_size_forces_a_discard() {
    let mut bytes = vec![0x49, 0x00];
    bytes.extend(std::iter::repeat_n(0u8, 70));
    bytes.push(0x01);
    let r = recover(&RecoveryInput {
        bytes: &bytes,
        data_loss: false,
        max_record_bytes: 64,
        write_order: WriteOrder::Sequential,
    });
    assert_eq!(
        r.verdict,
        Verdict::Discard(DiscardReason::RecordTooLong { offset: 0, len: 73 })
    );
}

#[test]
fn padding_inside_a_partial_record_is_part_of_the_prefix() {
    // A 64-byte quipper-style record, then the next one cut after PC + PAD + CONTEXT.
    let bin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quipper_arm_spe_decoder_test.bin"
    ))
    .expect("bin");
    let region = &bin[..64 + 9 + 5 + 3];
    let r = recover(&RecoveryInput {
        bytes: region,
        data_loss: true,
        max_record_bytes: 64,
        write_order: WriteOrder::Sequential,
    });
    assert_eq!(
        (r.verdict, r.resume_offset, r.complete_records),
        (Verdict::Rewind, 64, 1)
    );
    assert_eq!(r.lost_bytes, 17);
}

#[test]
fn data_loss_at_a_record_boundary_under_unordered_writes_still_distrusts_the_last_record() {
    let bin = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quipper_arm_spe_decoder_test.bin"
    ))
    .expect("bin");
    let r = recover(&RecoveryInput {
        bytes: &bin,
        data_loss: true,
        max_record_bytes: 64,
        write_order: WriteOrder::Unordered,
    });
    assert_eq!((r.resume_offset, r.complete_records), (64, 1));
    let r = recover(&RecoveryInput {
        bytes: &bin,
        data_loss: false,
        max_record_bytes: 64,
        write_order: WriteOrder::Unordered,
    });
    assert_eq!(r.verdict, Verdict::Intact);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Two-pass framing (from a few bytes on, here) gives exactly the sequential answer: on
    /// valid records, on records with bytes flipped anywhere, with any cut, any MaxSize, any DL
    /// and write order.
    #[test]
    fn two_pass_framing_answers_exactly_as_one_pass(
        (mut bytes, _ends) in records(MAX_RECORD),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        max in prop::sample::select(vec![16usize, 32, 64, 128, 2048]),
        data_loss in any::<bool>(),
        unordered in any::<bool>(),
        split in 2usize..64,
    ) {
        for (at, value) in flips {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
        }
        let cut = cut.index(bytes.len() + 1);
        let input = RecoveryInput {
            bytes: &bytes[..cut],
            data_loss,
            max_record_bytes: max,
            write_order: if unordered { WriteOrder::Unordered } else { WriteOrder::Sequential },
        };
        prop_assert_eq!(recover_with(&input, split), recover_with(&input, usize::MAX));
    }
}
