//! Address newtypes and translation granules.
//!
//! The SPU names its buffer by guest virtual address ([`Gva`]); stage 1 turns that into an
//! intermediate physical address ([`Ipa`]); stage 2 (the host) turns that into a physical address
//! ([`Pa`]). Pinning works on IPAs only, so a VA can never be pinned by mistake: the types do not
//! convert into each other, and the only way from a [`Gva`] to an [`Ipa`] is a stage 1 walk.

use core::fmt;

macro_rules! address_newtype {
    ($(#[$doc:meta])* $name:ident, $short:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address value.
            #[inline]
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// This address rounded down to the start of its `granule` page.
            #[inline]
            pub const fn page_base(self, granule: Granule) -> Self {
                Self(self.0 & !granule.offset_mask())
            }

            /// The offset of this address inside its `granule` page.
            #[inline]
            pub const fn page_offset(self, granule: Granule) -> u64 {
                self.0 & granule.offset_mask()
            }

            /// Whether this address is the first byte of a `granule` page.
            #[inline]
            pub const fn is_page_aligned(self, granule: Granule) -> bool {
                self.page_offset(granule) == 0
            }

            /// `self + bytes`, or `None` if that wraps past 2^64.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($short, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_newtype!(
    /// A guest virtual address, as held by PMBPTR_EL1/PMBLIMITR_EL1 (spec sheet §1.3).
    Gva,
    "Gva"
);
address_newtype!(
    /// A guest intermediate physical address: the output of guest stage 1, the input of stage 2.
    Ipa,
    "Ipa"
);
address_newtype!(
    /// A host physical address: the output of stage 2.
    Pa,
    "Pa"
);

/// A translation granule (spec sheet §3.3): the page size of a stage 1 regime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4KB pages, 9 bits of index per level.
    K4,
    /// 16KB pages, 11 bits of index per level.
    K16,
    /// 64KB pages, 13 bits of index per level.
    K64,
}

impl Granule {
    /// All granules, smallest first.
    pub const ALL: [Granule; 3] = [Granule::K4, Granule::K16, Granule::K64];

    /// log2 of the page size (12, 14 or 16).
    #[inline]
    pub const fn shift(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// The page size in bytes.
    #[inline]
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Mask of the in-page offset bits.
    #[inline]
    pub const fn offset_mask(self) -> u64 {
        self.size() - 1
    }

    /// Index bits resolved per level below the initial lookup: granule shift minus 3 (8-byte
    /// descriptors), i.e. 9/11/13 (spec sheet §3.3).
    #[inline]
    pub const fn stride(self) -> u32 {
        self.shift() - 3
    }

    /// The granule with this page size in bytes, if any.
    pub const fn from_size(bytes: u64) -> Option<Granule> {
        match bytes {
            0x1000 => Some(Granule::K4),
            0x4000 => Some(Granule::K16),
            0x1_0000 => Some(Granule::K64),
            _ => None,
        }
    }
}

impl fmt::Display for Granule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granule::K4 => "4KB",
            Granule::K16 => "16KB",
            Granule::K64 => "64KB",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_base_and_offset_split_an_address_at_the_granule() {
        let va = Gva(0xffff_8000_1234_5678);
        assert_eq!(va.page_base(Granule::K4), Gva(0xffff_8000_1234_5000));
        assert_eq!(va.page_offset(Granule::K4), 0x678);
        assert_eq!(va.page_base(Granule::K16), Gva(0xffff_8000_1234_4000));
        assert_eq!(va.page_base(Granule::K64), Gva(0xffff_8000_1234_0000));
        assert_eq!(va.page_offset(Granule::K64), 0x5678);
    }

    #[test]
    fn addresses_print_as_lowercase_hex_with_their_kind_in_debug() {
        assert_eq!(format!("{:?}", Ipa(0x4000_0000)), "Ipa(0x40000000)");
        assert_eq!(format!("{}", Gva(0xABC)), "0xabc");
    }

    #[test]
    fn granule_strides_match_the_spec_table() {
        assert_eq!(Granule::K4.stride(), 9);
        assert_eq!(Granule::K16.stride(), 11);
        assert_eq!(Granule::K64.stride(), 13);
        assert_eq!(Granule::from_size(0x4000), Some(Granule::K16));
        assert_eq!(Granule::from_size(0x2000), None);
    }

    #[test]
    fn checked_add_refuses_to_wrap() {
        assert_eq!(Gva(u64::MAX).checked_add(1), None);
        assert_eq!(Ipa(1).checked_add(1), Some(Ipa(2)));
    }
}
