//! The guest memory image: stage 1 registers plus the guest pages that hold the tables
//! (ARCHITECTURE.md §8). Other tools produce these; every error names the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::{Sctlr, Tcr, Ttbr};
use spe_policy::{GuestRam, Ipa};

use crate::hexnum::HexU64;

#[derive(Deserialize)]
struct ImageFile {
    regs: RegsFile,
    memory: Vec<PageFile>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct RegsFile {
    tcr_el1: HexU64,
    ttbr0_el1: HexU64,
    ttbr1_el1: HexU64,
    sctlr_el1: HexU64,
    #[serde(default)]
    hw_af: bool,
    #[serde(default)]
    hw_dbm: bool,
    /// ID_AA64MMFR0_EL1: its PARange field [3:0] is the PE's PA size (PAMax); absent,
    /// 0b0101 (48 bits, no FEAT_LPA).
    #[serde(default)]
    id_aa64mmfr0_el1: Option<HexU64>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct PageFile {
    ipa: HexU64,
    bytes: String,
}

/// A loaded image: registers, guest memory, and warnings about keys it ignored.
#[derive(Debug)]
pub struct Image {
    /// The stage 1 registers.
    pub regs: Stage1Regs,
    /// The guest pages.
    pub ram: GuestRam,
    /// Keys the image has that this tool does not use.
    pub ignored_keys: Vec<String>,
    /// PAMax in bits, from `regs.id_aa64mmfr0_el1` (48 when absent).
    pub pa_bits: u8,
}

/// ID_AA64MMFR0_EL1.PARange [3:0] as a PA size in bits (Arm ARM D24.2: 0b0000 32 .. 0b0110
/// 52; the rest are reserved).
fn pa_range_bits(mmfr0: u64) -> Result<u8, String> {
    let pa = (mmfr0 & 0xf) as usize;
    spe_policy::vm::PA_SIZES.get(pa).copied().ok_or_else(|| {
        format!(
            "invalid image field `regs.id_aa64mmfr0_el1`: PARange (bits [3:0]) = {pa:#06b} is reserved; 0b0000 (32 bits) to 0b0110 (52 bits) are defined"
        )
    })
}

/// Reads and validates an image file of at most `limit` bytes. The error is one line naming
/// the file and the field, with its exit code.
pub fn load(path: &Path, limit: u64) -> Result<Image, (i32, String)> {
    let bytes = spe_policy_sim::read_limited(path, limit, "guest memory image").map_err(|e| {
        (
            crate::exit::for_read_error(&e),
            format!("{e} (raise --max-input to read more)"),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        (
            crate::exit::INVALID,
            format!("{}: not UTF-8 text; an image is JSON", path.display()),
        )
    })?;
    parse(&text).map_err(|e| (crate::exit::INVALID, format!("{}: {e}", path.display())))
}

/// Parses image JSON text.
pub fn parse(text: &str) -> Result<Image, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let file: ImageFile = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("invalid image: {inner}")
        } else {
            format!("invalid image field `{path}`: {inner}")
        }
    })?;
    de.end()
        .map_err(|e| format!("invalid image: {e}: remove what follows the JSON document"))?;
    let mut regions = Vec::with_capacity(file.memory.len());
    for (i, page) in file.memory.iter().enumerate() {
        let field = format!("memory[{i}]");
        let digits = page.bytes.trim();
        let digits = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"))
            .unwrap_or(digits);
        let bytes =
            hex::decode(digits).map_err(|e| format!("invalid image field `{field}.bytes`: {e}"))?;
        if bytes.is_empty() || bytes.len() % 0x1000 != 0 {
            return Err(format!(
                "invalid image field `{field}.bytes`: {} bytes; give whole granule pages (a multiple of 4096 bytes)",
                bytes.len()
            ));
        }
        if page.ipa.0 % 0x1000 != 0 {
            return Err(format!(
                "invalid image field `{field}.ipa`: {:#x} is not 4KB aligned",
                page.ipa.0
            ));
        }
        regions.push((Ipa(page.ipa.0), bytes));
    }
    // Sorted and merged once: O(n log n) whatever order the pages are listed in.
    let ram = GuestRam::from_regions(regions)
        .map_err(|(i, e)| format!("invalid image field `memory[{i}]`: {e}"))?;
    let pa_bits = match file.regs.id_aa64mmfr0_el1 {
        Some(v) => pa_range_bits(v.0)?,
        None => spe_policy::vm::defaults::PA_BITS,
    };
    let mut ignored_keys: Vec<String> = file.extra.keys().cloned().collect();
    ignored_keys.extend(file.regs.extra.keys().map(|k| format!("regs.{k}")));
    let r = &file.regs;
    Ok(Image {
        regs: Stage1Regs {
            tcr: Tcr::from_bits(r.tcr_el1.0),
            ttbr0: Ttbr::from_bits(r.ttbr0_el1.0),
            ttbr1: Ttbr::from_bits(r.ttbr1_el1.0),
            sctlr: Sctlr::from_bits(r.sctlr_el1.0),
            hw_af: r.hw_af,
            hw_dbm: r.hw_dbm,
        },
        ram,
        ignored_keys,
        pa_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_hex() -> String {
        "00".repeat(4096)
    }

    #[test]
    fn errors_name_the_field_that_is_wrong() {
        let bad_hex = r#"{"regs":{"tcr_el1":"0xzz","ttbr0_el1":"0x0","ttbr1_el1":"0x0","sctlr_el1":"0x1"},"memory":[]}"#;
        let e = parse(bad_hex).expect_err("bad hex");
        assert!(e.contains("`regs.tcr_el1`") && e.contains("0xzz"), "{e}");

        let missing =
            r#"{"regs":{"tcr_el1":"0x0","ttbr0_el1":"0x0","sctlr_el1":"0x1"},"memory":[]}"#;
        let e = parse(missing).expect_err("missing");
        assert!(e.contains("ttbr1_el1"), "{e}");

        let short = format!(
            r#"{{"regs":{{"tcr_el1":"0x0","ttbr0_el1":"0x0","ttbr1_el1":"0x0","sctlr_el1":"0x1"}},"memory":[{{"ipa":"0x1000","bytes":"{}"}}]}}"#,
            "00".repeat(100)
        );
        let e = parse(&short).expect_err("short page");
        assert!(
            e.contains("`memory[0].bytes`") && e.contains("100 bytes"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_pages_and_unknown_keys_are_reported() {
        let two = format!(
            r#"{{"regs":{{"tcr_el1":"0x0","ttbr0_el1":"0x0","ttbr1_el1":"0x0","sctlr_el1":"0x1","mair_el1":"0xff"}},"memory":[{{"ipa":"0x1000","bytes":"{p}"}},{{"ipa":"0x1000","bytes":"{p}"}}]}}"#,
            p = page_hex()
        );
        let e = parse(&two).expect_err("overlap");
        assert!(e.contains("memory[1]") && e.contains("overlaps"), "{e}");
        let one = two.replacen(r#",{"ipa":"0x1000""#, r#",{"ipa":"0x2000""#, 1);
        let img = parse(&one).expect("loads");
        assert_eq!(img.ignored_keys, vec!["regs.mair_el1".to_string()]);
        assert_eq!(img.ram.len(), 0x2000);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: std::env::var("SPE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128),
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn any_text_is_an_image_or_a_one_line_error(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Err(e) = parse(&text) {
                proptest::prop_assert!(!e.is_empty() && !e.contains('\n'), "{e}");
            }
        }

        #[test]
        fn pages_in_any_order_load_the_same_memory(
            pages in proptest::collection::btree_set(0u64..64, 1..24),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut list: Vec<u64> = pages.into_iter().collect();
            let doc = |list: &[u64]| {
                let memory: Vec<String> = list
                    .iter()
                    .map(|p| format!(r#"{{"ipa":"{:#x}","bytes":"{}"}}"#, 0x4000_0000 + p * 0x1000, format!("{:02x}", p).repeat(4096)))
                    .collect();
                format!(
                    r#"{{"regs":{{"tcr_el1":"0x0","ttbr0_el1":"0x0","ttbr1_el1":"0x0","sctlr_el1":"0x1"}},"memory":[{}]}}"#,
                    memory.join(",")
                )
            };
            let sorted = parse(&doc(&list)).expect("sorted");
            // A deterministic shuffle.
            let mut x = seed | 1;
            for i in (1..list.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                list.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let shuffled = parse(&doc(&list)).expect("shuffled");
            proptest::prop_assert_eq!(sorted.ram, shuffled.ram);
        }
    }
}
