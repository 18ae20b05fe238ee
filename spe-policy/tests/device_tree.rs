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
