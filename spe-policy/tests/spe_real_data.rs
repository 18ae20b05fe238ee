//! The codec against real SPE bytes with independent expected decodings (`tests/data/`, copied
//! from the project's shared data; see its README for sources): every packet's bytes and
//! current-perf text, and quipper's record-level values.

use std::path::PathBuf;

use spe_policy::spe::{
    DecodeMode, Describe, Packets, RecordItem, Records, StreamItem, dump_line,
    text::DUMP_TEXT_COLUMN,
};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

struct Expected {
    offset: usize,
    bytes: Vec<u8>,
    text: String,
}

fn expected(stem: &str) -> Vec<Expected> {
    let tsv =
        std::fs::read_to_string(data_dir().join(format!("{stem}.expected.tsv"))).expect("tsv");
    tsv.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let n = cols.len();
            Expected {
                offset: usize::from_str_radix(cols[0], 16).expect("offset"),
                bytes: cols[n - 3]
                    .split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).expect("byte"))
                    .collect(),
                text: cols[n - 1].to_string(),
            }
        })
        .collect()
}

const STEMS: [&str; 5] = [
    "kunpeng_branch_2021_a",
    "kunpeng_branch_2021_b",
    "lkml_2025_leo_yan_examples",
    "quipper_arm_spe_decoder_test",
    "spe_parser_unit_vectors",
];

#[test]
fn every_real_packet_decodes_to_perfs_bytes_and_text() {
    let mut checked = 0;
    for stem in STEMS {
        let bin = std::fs::read(data_dir().join(format!("{stem}.bin"))).expect("bin");
        let want = expected(stem);
        let got: Vec<StreamItem> = Packets::new(&bin, DecodeMode::Perf).collect();
        assert_eq!(got.len(), want.len(), "{stem}: packet count");
        for (g, w) in got.iter().zip(&want) {
            let StreamItem::Packet {
                offset,
                bytes,
                packet,
            } = g
            else {
                panic!("{stem}: bad byte at {:#x}", g.offset());
            };
            assert_eq!(*offset, w.offset, "{stem}: offset");
            assert_eq!(*bytes, &w.bytes[..], "{stem} at {offset:#x}: bytes");
            assert_eq!(
                Describe(packet).to_string(),
                w.text,
                "{stem} at {offset:#x}"
            );
            // The dump line carries the same text at column 62.
            let mut line = String::new();
            dump_line(*offset, bytes, Some(packet), &mut line).expect("fmt");
            assert_eq!(&line[DUMP_TEXT_COLUMN..], w.text);
            checked += 1;
        }
        // Architecture mode agrees on every byte boundary of real data (no unknown headers),
        // apart from perf's grouping of PAD runs.
        let arch_bytes: usize = Packets::new(&bin, DecodeMode::Architecture)
            .map(|i| i.len())
            .sum();
        assert_eq!(arch_bytes, bin.len());
    }
    assert!(checked >= 200, "only {checked} packets checked");
}

#[test]
fn the_published_perf_dumps_match_our_dump_lines_exactly() {
    // The verbatim `perf script -D` lines, offsets included (column 2 of the TSV is the offset
    // perf printed). Lines whose op-type wording changed since that perf are skipped.
    for stem in ["kunpeng_branch_2021_a", "kunpeng_branch_2021_b"] {
        let dump = std::fs::read_to_string(data_dir().join(format!("{stem}.perf-dump.txt")))
            .expect("dump");
        let tsv =
            std::fs::read_to_string(data_dir().join(format!("{stem}.expected.tsv"))).expect("tsv");
        let bin = std::fs::read(data_dir().join(format!("{stem}.bin"))).expect("bin");
        let packets: Vec<StreamItem> = Packets::new(&bin, DecodeMode::Perf).collect();
        let rows: Vec<Vec<&str>> = tsv
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').collect())
            .collect();
        let mut matched = 0;
        for (item, row) in packets.iter().zip(&rows) {
            let StreamItem::Packet { bytes, packet, .. } = item else {
                panic!("bad byte")
            };
            let (source_offset, published, current) = (row[1], row[3], row[4]);
            if published != current {
                continue;
            }
            let mut line = String::new();
            let offset = usize::from_str_radix(source_offset, 16).expect("offset");
            dump_line(offset, bytes, Some(packet), &mut line).expect("fmt");
            assert!(
                dump.lines().any(|l| l == line),
                "{stem}: perf never printed {line:?}"
            );
            matched += 1;
        }
        assert!(matched >= 40, "{stem}: only {matched} lines compared");
    }
}

#[test]
fn quipper_records_assemble_with_its_expected_fields() {
    let bin = std::fs::read(data_dir().join("quipper_arm_spe_decoder_test.bin")).expect("bin");
    let records: Vec<RecordItem> = Records::new(&bin, DecodeMode::Architecture).collect();
    assert_eq!(records.len(), 2);
    let RecordItem::Record(a) = records[0] else {
        panic!("first record incomplete")
    };
    let RecordItem::Record(b) = records[1] else {
        panic!("second record incomplete")
    };
    assert_eq!((a.offset, a.len, b.offset, b.len), (0, 64, 64, 64));
    assert_eq!(a.pc_address(), Some(0xffff_ba66_eda1_c2d0));
    assert_eq!((a.pc_el(), a.pc_ns()), (Some(2), Some(true)));
    assert_eq!(a.data_va_address(), Some(0xffff_0e37_0309_6b28));
    assert_eq!(a.timestamp, Some(44_731_163_950));
    assert_eq!(a.context, Some((1, 0x5f80)));
    assert_eq!(
        (a.total_latency, a.issue_latency, a.translation_latency),
        (Some(12), Some(4), Some(1))
    );
    assert_eq!(a.data_source, Some(0));
    assert_eq!(a.events, 0b10110, "retired, L1D access, TLB access");
    assert_eq!(
        a.op.map(|(c, p)| (c.bits(), p)),
        Some((1, 0)),
        "load, GP register"
    );
    assert_eq!(b.pc_address(), Some(0xffff_ba66_edef_b0e0));
    assert_eq!(b.branch_target_address(), Some(0xffff_ba66_edef_b0e4));
    assert_eq!(b.timestamp, Some(44_731_164_045));
    assert_eq!(b.context, Some((1, 0xe)));
    assert_eq!((b.total_latency, b.issue_latency), (Some(17), Some(16)));
    assert_eq!(b.events, 0b100_0010, "retired, not taken");
    assert_eq!(
        b.op.map(|(c, p)| (c.bits(), p)),
        Some((2, 1)),
        "conditional branch"
    );
    assert_eq!(a.pad_bytes + b.pad_bytes, 5 + 9 + 2 + 5 + 16);
}

#[test]
fn quipper_invalid_input_yields_no_record() {
    let bytes = [0xab, 0xcd, 0xef, 0xff, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44];
    let items: Vec<RecordItem> = Records::new(&bytes, DecodeMode::Architecture).collect();
    assert!(
        items
            .iter()
            .all(|i| matches!(i, RecordItem::IncompleteTail { .. }))
    );
    assert_eq!(items.len(), 1);
}

#[test]
fn kunpeng_streams_are_44_byte_records_ending_in_timestamps() {
    for stem in ["kunpeng_branch_2021_a", "kunpeng_branch_2021_b"] {
        let bin = std::fs::read(data_dir().join(format!("{stem}.bin"))).expect("bin");
        let mut n = 0;
        for item in Records::new(&bin, DecodeMode::Architecture) {
            let RecordItem::Record(r) = item else {
                panic!("{stem}: incomplete record")
            };
            assert_eq!(r.len, 44);
            assert!(r.timestamp.is_some() && r.pc.is_some() && r.branch_target.is_some());
            n += 1;
        }
        assert_eq!(n * 44, bin.len());
    }
}
