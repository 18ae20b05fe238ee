//! The guest notice in a device tree: a reader that never panics on a hostile blob, and
//! round trips through rust-vmm's writer.
#![cfg(feature = "fdt")]

use proptest::prelude::*;
use spe_policy::device_tree::{dtb_with_notice, read_dtb};
use spe_policy::guest_notice::{GuestNotice, StrategyId};

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SPE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_notice_round_trips_through_a_device_tree(code in 1u16..=4, errata in any::<u32>(), cap in any::<u32>()) {
        let n = GuestNotice::new(StrategyId::from_code(code).expect("code"), errata, cap);
        let blob = dtb_with_notice(&n).expect("dtb");
        prop_assert_eq!(read_dtb(&blob), Ok(Some(n)));
    }

    #[test]
    fn a_damaged_device_tree_is_an_error_or_a_notice_never_a_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut blob = dtb_with_notice(&GuestNotice::new(StrategyId::PinBuffer, 0b11, 4096)).expect("dtb");
        for (at, byte) in flips {
            let i = at.index(blob.len());
            blob[i] = byte;
        }
        let _ = read_dtb(&blob);
        let n = cut.index(blob.len());
        let _ = read_dtb(&blob[..n]);
    }

    #[test]
    fn arbitrary_bytes_are_not_a_device_tree(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_dtb(&bytes);
    }
}

/// Runs `dtc` with `args` on `input`; `None` when dtc is not installed (CI installs it).
fn dtc(args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut child = std::process::Command::new("dtc")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input).ok()?;
    let out = child.wait_with_output().ok()?;
    assert!(
        out.status.success(),
        "dtc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

#[test]
fn dtc_reads_the_notice_we_write_and_we_read_the_notice_dtc_compiles_from_our_dts() {
    let n = GuestNotice::new(StrategyId::ShadowBuffer, 0x41, 0);
    let blob = dtb_with_notice(&n).expect("dtb");
    let Some(source) = dtc(&["-I", "dtb", "-O", "dts"], &blob) else {
        eprintln!(
            "SKIPPED (not passed): dtc is not installed (apt-get install device-tree-compiler)"
        );
        return;
    };
    let source = String::from_utf8(source).expect("dts");
    assert!(
        source.contains("compatible = \"spe-policy,stage2-backing-v1\";"),
        "{source}"
    );
    assert!(
        source.contains("notice = <0x53504550 0x10004 0x41 0x00>;"),
        "{source}"
    );
    // Our DTS node, pasted under an SPE PMU node of a whole tree, compiled by dtc.
    let tree = format!(
        "/dts-v1/;\n/ {{\n    spe-pmu {{\n        compatible = \"{}\";\n{}    }};\n}};\n",
        spe_policy::device_tree::SPE_PMU_COMPATIBLE,
        spe_policy::device_tree::dts(&n)
            .lines()
            .map(|l| format!("        {l}\n"))
            .collect::<String>()
    );
    let compiled = dtc(&["-I", "dts", "-O", "dtb"], tree.as_bytes()).expect("dtc");
    assert_eq!(read_dtb(&compiled), Ok(Some(n)));
}
