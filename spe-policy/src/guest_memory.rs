//! The guest memory trait the VMM implements, and an in-memory implementation.
//!
//! Consumer-side, in the style of vm-memory's `Bytes`: the walker and the strategies only ever
//! *read* guest IPA space, and each VMM already has its own way of doing that. The trait is small
//! enough to implement in an afternoon; [`GuestRam`] is a ready implementation over owned bytes
//! (tests, the simulator, `spe-policy translate`), and the `vm-memory` feature adds
//! `VmMemory` over any `vm_memory::Bytes<GuestAddress>`.

use core::fmt;

use crate::addr::Ipa;

/// Read access to guest IPA space, implemented by the VMM.
pub trait GuestMemoryRead {
    /// Why a read failed (typically: the IPA is not backed by any memslot).
    type Error: core::error::Error + Send + Sync + 'static;

    /// Fills `buf` with the guest bytes at `ipa..ipa + buf.len()`.
    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Reads one 8-byte translation table descriptor at `ipa` (8-byte aligned), in memory byte
    /// order; the walker applies SCTLR_EL1.EE. A hardware walker's fetch is a single-copy-atomic
    /// 64-bit load: implementations over shared memory should override this with one.
    fn read_descriptor(&self, ipa: Ipa) -> Result<[u8; 8], Self::Error> {
        let mut bytes = [0u8; 8];
        self.read(ipa, &mut bytes)?;
        Ok(bytes)
    }
}

impl<M: GuestMemoryRead + ?Sized> GuestMemoryRead for &M {
    type Error = M::Error;

    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(ipa, buf)
    }

    fn read_descriptor(&self, ipa: Ipa) -> Result<[u8; 8], Self::Error> {
        (**self).read_descriptor(ipa)
    }
}

/// A read of guest memory that no region backs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "guest IPA range {ipa}..+{len:#x} is not backed by guest memory (absent from the memory map)"
)]
pub struct UnbackedIpa {
    /// The first IPA of the read.
    pub ipa: Ipa,
    /// The length of the read in bytes.
    pub len: u64,
}

/// Why a region could not be added to a [`GuestRam`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestRamError {
    /// The new region overlaps one already present.
    #[error(
        "guest memory region {new}..+{new_len:#x} overlaps region {existing}..+{existing_len:#x}; give each IPA once"
    )]
    Overlap {
        /// Start of the rejected region.
        new: Ipa,
        /// Its length.
        new_len: u64,
        /// Start of the region it overlaps.
        existing: Ipa,
        /// That region's length.
        existing_len: u64,
    },
    /// The region's end wraps past 2^64.
    #[error(
        "guest memory region at {ipa} with length {len:#x} wraps past the top of the address space"
    )]
    Wraps {
        /// Start of the rejected region.
        ipa: Ipa,
        /// Its length.
        len: u64,
    },
}

/// Guest RAM held in host memory: a sorted set of non-overlapping regions.
///
/// Adjacent regions are merged, so a run of pages costs one binary search per read.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GuestRam {
    regions: Vec<(Ipa, Vec<u8>)>,
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.regions.iter().map(|(base, bytes)| (base, bytes.len())))
            .finish()
    }
}

impl GuestRam {
    /// Empty guest memory: every read fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Guest memory with one zero-filled region.
    pub fn with_zeroed(base: Ipa, len: usize) -> Result<Self, GuestRamError> {
        let mut ram = Self::new();
        ram.insert(base, vec![0; len])?;
        Ok(ram)
    }

    /// Guest memory from many regions in any order, sorted and merged once (O(n log n), where
    /// inserting them one by one highest first copies the merged region each time). On an
    /// overlap or a wrap the error names the index of the region (in `regions`' order) that
    /// was refused.
    pub fn from_regions(regions: Vec<(Ipa, Vec<u8>)>) -> Result<Self, (usize, GuestRamError)> {
        let mut order: Vec<(Ipa, usize, Vec<u8>)> = regions
            .into_iter()
            .enumerate()
            .map(|(i, (base, bytes))| (base, i, bytes))
            .collect();
        order.sort_by_key(|(base, i, _)| (base.0, *i));
        let mut merged: Vec<(Ipa, Vec<u8>)> = Vec::new();
        for (base, i, bytes) in order {
            let len = bytes.len() as u64;
            base.0
                .checked_add(len)
                .ok_or((i, GuestRamError::Wraps { ipa: base, len }))?;
            if let Some((last, last_bytes)) = merged.last_mut() {
                let last_end = last.0 + last_bytes.len() as u64;
                if base.0 < last_end {
                    return Err((
                        i,
                        GuestRamError::Overlap {
                            new: base,
                            new_len: len,
                            existing: *last,
                            existing_len: last_bytes.len() as u64,
                        },
                    ));
                }
                if base.0 == last_end {
                    last_bytes.extend_from_slice(&bytes);
                    continue;
                }
            }
            merged.push((base, bytes));
        }
        Ok(GuestRam { regions: merged })
    }

    /// Adds a region at `base`. Fails on overlap with an existing region.
    pub fn insert(&mut self, base: Ipa, bytes: Vec<u8>) -> Result<(), GuestRamError> {
        let len = bytes.len() as u64;
        let end = base
            .0
            .checked_add(len)
            .ok_or(GuestRamError::Wraps { ipa: base, len })?;
        let pos = self.regions.partition_point(|(b, _)| b.0 < base.0);
        let overlaps = |(b, r): &(Ipa, Vec<u8>)| b.0 < end && base.0 < b.0 + r.len() as u64;
        for neighbour in [pos.checked_sub(1), Some(pos)].into_iter().flatten() {
            if let Some(existing) = self.regions.get(neighbour).filter(|r| overlaps(r)) {
                return Err(GuestRamError::Overlap {
                    new: base,
                    new_len: len,
                    existing: existing.0,
                    existing_len: existing.1.len() as u64,
                });
            }
        }
        self.regions.insert(pos, (base, bytes));
        // Merge with the next and the previous region where they touch.
        if pos + 1 < self.regions.len()
            && self.regions[pos].0.0 + self.regions[pos].1.len() as u64 == self.regions[pos + 1].0.0
        {
            let (_, next) = self.regions.remove(pos + 1);
            self.regions[pos].1.extend_from_slice(&next);
        }
        if pos > 0 && self.regions[pos - 1].0.0 + self.regions[pos - 1].1.len() as u64 == base.0 {
            let (_, this) = self.regions.remove(pos);
            self.regions[pos - 1].1.extend_from_slice(&this);
        }
        Ok(())
    }

    /// The regions, base first, giving their memory back (to reuse it for another guest).
    pub fn into_regions(self) -> Vec<(Ipa, Vec<u8>)> {
        self.regions
    }

    /// Total bytes of guest memory held.
    pub fn len(&self) -> u64 {
        self.regions.iter().map(|(_, r)| r.len() as u64).sum()
    }

    /// Whether no memory is held.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions as `(base, length)`, in IPA order.
    pub fn regions(&self) -> impl Iterator<Item = (Ipa, u64)> + '_ {
        self.regions.iter().map(|(b, r)| (*b, r.len() as u64))
    }

    fn locate(&self, ipa: Ipa, len: usize) -> Option<(usize, usize)> {
        let idx = self
            .regions
            .partition_point(|(b, _)| b.0 <= ipa.0)
            .checked_sub(1)?;
        let (base, bytes) = &self.regions[idx];
        let off = usize::try_from(ipa.0 - base.0).ok()?;
        (off.checked_add(len)? <= bytes.len()).then_some((idx, off))
    }

    /// The bytes at `ipa..ipa + len`, if one region holds all of them.
    pub fn slice(&self, ipa: Ipa, len: usize) -> Option<&[u8]> {
        let (idx, off) = self.locate(ipa, len)?;
        Some(&self.regions[idx].1[off..off + len])
    }

    /// The bytes at `ipa..ipa + len` for writing, if one region holds all of them.
    pub fn slice_mut(&mut self, ipa: Ipa, len: usize) -> Option<&mut [u8]> {
        let (idx, off) = self.locate(ipa, len)?;
        Some(&mut self.regions[idx].1[off..off + len])
    }

    /// Writes `bytes` at `ipa`; fails if any byte is not backed.
    pub fn write(&mut self, ipa: Ipa, bytes: &[u8]) -> Result<(), UnbackedIpa> {
        let dst = self.slice_mut(ipa, bytes.len()).ok_or(UnbackedIpa {
            ipa,
            len: bytes.len() as u64,
        })?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    /// Writes a 64-bit descriptor at `ipa`, big-endian if `big_endian` (SCTLR_EL1.EE).
    pub fn write_u64(&mut self, ipa: Ipa, value: u64, big_endian: bool) -> Result<(), UnbackedIpa> {
        let bytes = if big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        };
        self.write(ipa, &bytes)
    }
}

impl GuestMemoryRead for GuestRam {
    type Error = UnbackedIpa;

    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), UnbackedIpa> {
        let src = self.slice(ipa, buf.len()).ok_or(UnbackedIpa {
            ipa,
            len: buf.len() as u64,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    #[inline]
    fn read_descriptor(&self, ipa: Ipa) -> Result<[u8; 8], UnbackedIpa> {
        // Fast path for the common single-region case: one compare instead of a search.
        if let [(base, bytes)] = self.regions.as_slice() {
            if let Some(off) = ipa.0.checked_sub(base.0) {
                if let Some(d) = usize::try_from(off)
                    .ok()
                    .and_then(|o| bytes.get(o..o.checked_add(8)?))
                {
                    let mut out = [0u8; 8];
                    out.copy_from_slice(d);
                    return Ok(out);
                }
            }
            return Err(UnbackedIpa { ipa, len: 8 });
        }
        let mut out = [0u8; 8];
        self.read(ipa, &mut out)?;
        Ok(out)
    }
}

/// Adapter from any vm-memory `Bytes<GuestAddress>` (e.g. `GuestMemoryMmap`) to
/// [`GuestMemoryRead`]. A newtype, so the blanket impls of either crate never collide.
#[cfg(feature = "vm-memory")]
#[derive(Debug)]
pub struct VmMemory<'a, M: ?Sized>(pub &'a M);

#[cfg(feature = "vm-memory")]
impl<M> GuestMemoryRead for VmMemory<'_, M>
where
    M: vm_memory::Bytes<vm_memory::GuestAddress> + ?Sized,
    M::E: core::error::Error + Send + Sync + 'static,
{
    type Error = M::E;

    fn read(&self, ipa: Ipa, buf: &mut [u8]) -> Result<(), M::E> {
        self.0.read_slice(buf, vm_memory::GuestAddress(ipa.0))
    }

    fn read_descriptor(&self, ipa: Ipa) -> Result<[u8; 8], M::E> {
        // A single-copy-atomic load, as the hardware walker's descriptor fetch (ARM-D8.15.4).
        let value: u64 = self.0.load(
            vm_memory::GuestAddress(ipa.0),
            core::sync::atomic::Ordering::Acquire,
        )?;
        Ok(value.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_listed_highest_first_merge_into_one_region_in_one_pass() {
        // Issue 18: inserting 8,000 pages highest first re-copied the merged region each time
        // (122 s); built in one pass they are one region.
        let pages: Vec<(Ipa, Vec<u8>)> = (0..8000u64)
            .rev()
            .map(|i| (Ipa(0x4000_0000 + i * 4096), vec![i as u8; 4096]))
            .collect();
        let ram = GuestRam::from_regions(pages).expect("no overlap");
        assert_eq!(
            ram.regions().collect::<Vec<_>>(),
            vec![(Ipa(0x4000_0000), 8000 * 4096)]
        );
        assert_eq!(
            ram.slice(Ipa(0x4000_0000 + 7999 * 4096), 1),
            Some(&[(7999 % 256) as u8][..])
        );
        let overlap = GuestRam::from_regions(vec![
            (Ipa(0x2000), vec![0; 4096]),
            (Ipa(0x1000), vec![0; 8192]),
        ])
        .expect_err("overlap");
        assert_eq!(
            overlap.0, 0,
            "the region listed second in IPA order is refused"
        );
    }

    #[test]
    fn reads_outside_every_region_fail_with_the_ipa() {
        let ram = GuestRam::with_zeroed(Ipa(0x1000), 0x1000).expect("region");
        let mut b = [0u8; 4];
        assert_eq!(
            ram.read(Ipa(0x1ffe), &mut b),
            Err(UnbackedIpa {
                ipa: Ipa(0x1ffe),
                len: 4
            })
        );
        assert!(ram.read(Ipa(0xfff), &mut b).is_err());
        assert!(ram.read(Ipa(0x1ffc), &mut b).is_ok());
    }

    #[test]
    fn adjacent_regions_merge_so_a_read_can_cross_them() {
        let mut ram = GuestRam::new();
        ram.insert(Ipa(0x2000), vec![2; 0x1000]).expect("insert");
        ram.insert(Ipa(0x1000), vec![1; 0x1000]).expect("insert");
        ram.insert(Ipa(0x3000), vec![3; 0x1000]).expect("insert");
        assert_eq!(ram.regions().count(), 1);
        let mut b = [0u8; 2];
        ram.read(Ipa(0x2fff), &mut b).expect("read across");
        assert_eq!(b, [2, 3]);
        assert_eq!(ram.len(), 0x3000);
    }

    #[test]
    fn overlapping_regions_are_refused_with_both_ranges_named() {
        let mut ram = GuestRam::with_zeroed(Ipa(0x1000), 0x2000).expect("region");
        let err = ram
            .insert(Ipa(0x2000), vec![0; 0x1000])
            .expect_err("overlap");
        assert!(err.to_string().contains("0x2000"), "{err}");
        assert!(ram.insert(Ipa(u64::MAX), vec![0; 2]).is_err());
    }

    #[test]
    fn descriptors_are_read_in_memory_byte_order_in_both_region_layouts() {
        let mut ram = GuestRam::with_zeroed(Ipa(0), 0x1000).expect("region");
        ram.write_u64(Ipa(8), 0x1122_3344_5566_7788, true)
            .expect("write");
        assert_eq!(
            ram.read_descriptor(Ipa(8)).expect("read"),
            [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        ram.insert(Ipa(0x10_0000), vec![0; 0x1000])
            .expect("second region");
        assert_eq!(
            ram.read_descriptor(Ipa(8)).expect("read"),
            [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert!(ram.read_descriptor(Ipa(0xffc)).is_err());
    }

    #[cfg(feature = "vm-memory")]
    #[test]
    fn vm_memory_adapter_reads_descriptors_and_reports_unmapped_ipas() {
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0x4000_0000), 0x10000)]).expect("mmap");
        mem.write_obj(0xdead_beef_u64.to_le(), GuestAddress(0x4000_0008))
            .expect("write");
        let view = VmMemory(&mem);
        let d = view.read_descriptor(Ipa(0x4000_0008)).expect("read");
        assert_eq!(u64::from_ne_bytes(d), 0xdead_beef_u64.to_le());
        assert_eq!(u64::from_le_bytes(d), 0xdead_beef);
        assert!(view.read_descriptor(Ipa(0x1000)).is_err());
        let mut b = [0u8; 4];
        view.read(Ipa(0x4000_0008), &mut b).expect("read");
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
    }
}
