//! 0x-prefixed hex numbers as the memory image and the command line write them.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// Parses `0x1f`, `0X1F` or `1f` (hex) as a u64. The message names what was wrong.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t)
        .replace('_', "");
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a hex number (expected e.g. \"0xffff800000000000\")"
        ));
    }
    u64::from_str_radix(&digits, 16).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => {
            format!("{text:?} does not fit in 64 bits")
        }
        _ => format!("{text:?} is not a hex number (expected e.g. \"0xffff800000000000\")"),
    })
}

/// Formats as 0x-prefixed lowercase hex (ARCHITECTURE.md §8).
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// A u64 read from a hex string or a JSON number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HexU64(pub u64);

impl<'de> serde::Deserialize<'de> for HexU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HexU64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hex string like \"0x40000000\" or a non-negative integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HexU64, E> {
                Ok(HexU64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HexU64, E> {
                u64::try_from(v)
                    .map(HexU64)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HexU64, E> {
                parse_u64(v).map(HexU64).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_numbers_parse_with_or_without_prefix_and_reject_garbage() {
        assert_eq!(
            parse_u64("0xFFFF_8000_0000_0000"),
            Ok(0xffff_8000_0000_0000)
        );
        assert_eq!(parse_u64("1000"), Ok(0x1000));
        assert!(parse_u64("0x").is_err());
        assert!(
            parse_u64("0xg")
                .expect_err("bad")
                .contains("not a hex number")
        );
        assert!(
            parse_u64("0x1_0000_0000_0000_0000")
                .expect_err("big")
                .contains("64 bits")
        );
    }
}
