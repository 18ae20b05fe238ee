//! Building guest stage 1 tables in a [`GuestRam`]: for tests, the simulator's guest (a
//! vmap'd AUX buffer is scattered pages behind one VA range) and tools that produce memory
//! images. 48-bit output layout; any granule; either endianness.

use crate::addr::{Granule, Gva, Ipa};
use crate::arch::pmbsr::FaultLevel;
use crate::arch::walk::regime::level_shift;
use crate::guest_memory::{GuestRam, GuestRamError, UnbackedIpa};

/// Leaf attributes for a privileged read-write, accessed page (AP = 00, AF = 1).
pub const LEAF_RW: u64 = 1 << 10;
/// AP`[2]`: read-only.
pub const LEAF_READ_ONLY: u64 = 1 << 7;
/// AF: accessed.
pub const LEAF_AF: u64 = 1 << 10;
/// DBM: dirty bit modifier.
pub const LEAF_DBM: u64 = 1 << 51;
/// Contiguous hint.
pub const LEAF_CONTIGUOUS: u64 = 1 << 52;
/// APTable = 0b10 in a table descriptor: no write access below.
pub const TABLE_NO_WRITE: u64 = 1 << 62;

/// Why a mapping could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The table pool is exhausted.
    #[error("table pool at {pool} is full ({tables} tables); give the builder a larger pool")]
    PoolFull {
        /// The pool's base.
        pool: Ipa,
        /// Tables allocated.
        tables: u64,
    },
    /// The requested leaf level is above the start level or below 3.
    #[error("cannot map at level {level}: levels {start}..=3 exist for this TxSZ and granule")]
    BadLevel {
        /// The requested level.
        level: FaultLevel,
        /// The start level.
        start: FaultLevel,
    },
    /// A leaf already covers part of the requested mapping.
    #[error("VA {va} is already covered by a level {level} block; map it before or elsewhere")]
    BlockInTheWay {
        /// The VA.
        va: Gva,
        /// The block's level.
        level: FaultLevel,
    },
    /// Address not aligned to the leaf size.
    #[error("VA {va} or IPA {ipa} is not aligned to the {size:#x}-byte leaf at level {level}")]
    Misaligned {
        /// The VA.
        va: Gva,
        /// The IPA.
        ipa: Ipa,
        /// The leaf level.
        level: FaultLevel,
        /// The leaf size.
        size: u64,
    },
    /// The pool region could not be added to guest memory.
    #[error(transparent)]
    Memory(#[from] GuestRamError),
    /// A write fell outside guest memory.
    #[error(transparent)]
    Unbacked(#[from] UnbackedIpa),
}

/// Builds one half's stage 1 tables (one TTBR) into guest memory.
#[derive(Clone, Debug)]
pub struct TableBuilder {
    granule: Granule,
    ia_bits: u32,
    start_level: FaultLevel,
    big_endian: bool,
    pool: Ipa,
    pool_len: u64,
    used: u64,
    ram: GuestRam,
}

impl TableBuilder {
    /// A builder for a half with `txsz` and `granule`, allocating tables from
    /// `pool..pool + pool_len` (added to `ram` zero-filled). The root is the first table.
    pub fn new(
        mut ram: GuestRam,
        granule: Granule,
        txsz: u8,
        pool: Ipa,
        pool_len: u64,
        big_endian: bool,
    ) -> Result<Self, BuildError> {
        let ia_bits = 64 - u32::from(txsz.clamp(12, 48));
        let levels = (ia_bits - granule.shift()).div_ceil(granule.stride());
        ram.insert(pool, vec![0; pool_len as usize])?;
        let mut b = TableBuilder {
            granule,
            ia_bits,
            start_level: 4 - levels as FaultLevel,
            big_endian,
            pool,
            pool_len,
            used: 0,
            ram,
        };
        b.alloc()?;
        Ok(b)
    }

    /// The root table's IPA (for TTBRn_EL1.BADDR).
    pub fn root(&self) -> Ipa {
        self.pool
    }

    /// The start level.
    pub fn start_level(&self) -> FaultLevel {
        self.start_level
    }

    /// The guest memory built so far.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Mutable guest memory, e.g. to add data pages.
    pub fn ram_mut(&mut self) -> &mut GuestRam {
        &mut self.ram
    }

    /// The guest memory, consuming the builder.
    pub fn into_ram(self) -> GuestRam {
        self.ram
    }

    fn alloc(&mut self) -> Result<u64, BuildError> {
        let size = self.granule.size();
        if self.used + size > self.pool_len {
            return Err(BuildError::PoolFull {
                pool: self.pool,
                tables: self.used / size,
            });
        }
        let at = self.pool.0 + self.used;
        self.used += size;
        Ok(at)
    }

    fn read(&self, ipa: u64) -> Result<u64, BuildError> {
        let bytes = self.ram.slice(Ipa(ipa), 8).ok_or(UnbackedIpa {
            ipa: Ipa(ipa),
            len: 8,
        })?;
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        Ok(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    /// Writes a raw descriptor at `ipa` in the builder's byte order.
    pub fn write_descriptor(&mut self, ipa: Ipa, desc: u64) -> Result<(), BuildError> {
        Ok(self.ram.write_u64(ipa, desc, self.big_endian)?)
    }

    fn index(&self, va: u64, level: FaultLevel) -> u64 {
        let shift = level_shift(self.granule, level);
        let bits = if level == self.start_level {
            self.ia_bits - shift
        } else {
            self.granule.stride()
        };
        (va >> shift) & ((1 << bits) - 1)
    }

    /// The IPA of the descriptor that translates `va` at `level`, creating the tables above it
    /// with `table_attrs` on each new table descriptor.
    pub fn descriptor_ipa(
        &mut self,
        va: Gva,
        level: FaultLevel,
        table_attrs: u64,
    ) -> Result<Ipa, BuildError> {
        if level < self.start_level || level > 3 {
            return Err(BuildError::BadLevel {
                level,
                start: self.start_level,
            });
        }
        let mut table = self.pool.0;
        for l in self.start_level..level {
            let at = table + (self.index(va.0, l) << 3);
            let desc = self.read(at)?;
            table = match desc & 0b11 {
                0b11 => desc & 0x0000_ffff_ffff_ffff & !self.granule.offset_mask(),
                0b01 => return Err(BuildError::BlockInTheWay { va, level: l }),
                _ => {
                    let next = self.alloc()?;
                    self.write_descriptor(Ipa(at), next | 0b11 | table_attrs)?;
                    next
                }
            };
        }
        Ok(Ipa(table + (self.index(va.0, level) << 3)))
    }

    /// Maps `va` to `ipa` with a leaf at `level` (3: page, else block) carrying `attrs`
    /// (e.g. [`LEAF_RW`]).
    pub fn map(
        &mut self,
        va: Gva,
        ipa: Ipa,
        level: FaultLevel,
        attrs: u64,
    ) -> Result<Ipa, BuildError> {
        let size = 1u64 << level_shift(self.granule, level.clamp(-1, 3));
        if (va.0 | ipa.0) & (size - 1) != 0 {
            return Err(BuildError::Misaligned {
                va,
                ipa,
                level,
                size,
            });
        }
        let at = self.descriptor_ipa(va, level, 0)?;
        let kind = if level == 3 { 0b11 } else { 0b01 };
        self.write_descriptor(at, ipa.0 | kind | attrs)?;
        Ok(at)
    }

    /// Maps `pages` pages at `va` to the given IPA pages, one leaf each (a vmap'd buffer).
    pub fn map_pages(
        &mut self,
        va: Gva,
        ipas: impl IntoIterator<Item = Ipa>,
        attrs: u64,
    ) -> Result<(), BuildError> {
        let mut at = va.0;
        for ipa in ipas {
            self.map(Gva(at), ipa, 3, attrs)?;
            at += self.granule.size();
        }
        Ok(())
    }
}
