//! Prints a guest memory image (the `spe-policy translate` input format, ARCHITECTURE.md §8)
//! of a Linux-like arm64 guest with a 64KiB SPE AUX buffer vmap'd into the vmalloc area:
//! 4KB granule, 48-bit VAs, 16 physically scattered buffer pages behind one contiguous kernel VA
//! range, and a read-only page just after the buffer.
//!
//! `cargo run -p spe-policy --example vmap_image > configs/images/linux-4k-vmap-buffer.json`

use std::fmt::Write as _;

use spe_policy::arch::walk::builder::{LEAF_READ_ONLY, LEAF_RW, TableBuilder};
use spe_policy::{Granule, GuestRam, Gva, Ipa};

/// Where the guest keeps its kernel page tables (swapper_pg_dir and friends).
const TABLES: Ipa = Ipa(0x4120_0000);
/// The buffer's kernel VA (vmalloc area).
const BUFFER_VA: Gva = Gva(0xffff_8000_8200_0000);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut b = TableBuilder::new(GuestRam::new(), Granule::K4, 16, TABLES, 0x1_0000, false)?;
    // Scattered AUX pages, as perf core allocates them.
    let pages: Vec<Ipa> = (0..16u64)
        .map(|i| Ipa(0x4800_0000 + ((i * 11) % 16) * 0x3000))
        .collect();
    b.map_pages(BUFFER_VA, pages.iter().copied(), LEAF_RW | (0b11 << 8))?;
    b.map(
        Gva(BUFFER_VA.0 + 16 * 0x1000),
        Ipa(0x4900_0000),
        3,
        LEAF_RW | LEAF_READ_ONLY,
    )?;
    let root = b.root();
    let ram = b.into_ram();

    // TCR_EL1 as Linux programs it: T0SZ=T1SZ=16, 4KB in both halves, WBWA inner shareable
    // walks, 48-bit IPS, A1, TBI0, HA and HD.
    let tcr: u64 = 16
        | (0b01 << 8)
        | (0b01 << 10)
        | (0b11 << 12)
        | (16 << 16)
        | (1 << 22)
        | (0b01 << 24)
        | (0b01 << 26)
        | (0b11 << 28)
        | (0b10 << 30)
        | (0b101 << 32)
        | (1 << 37)
        | (1 << 39)
        | (1 << 40);
    let sctlr: u64 = 0x0000_0000_3050_d83d; // M, C, I, ... EE=0: a little-endian kernel
    let mut out = String::new();
    writeln!(out, "{{")?;
    writeln!(
        out,
        "  \"regs\": {{\"tcr_el1\": \"{tcr:#x}\", \"ttbr0_el1\": \"0x0\", \"ttbr1_el1\": \"{:#x}\", \"sctlr_el1\": \"{sctlr:#x}\", \"hw_af\": true, \"hw_dbm\": true}},",
        root.0
    )?;
    writeln!(out, "  \"memory\": [")?;
    let regions: Vec<(Ipa, u64)> = ram.regions().collect();
    let mut first = true;
    for (base, len) in regions {
        for page in (0..len).step_by(0x1000) {
            let ipa = Ipa(base.0 + page);
            let bytes = ram.slice(ipa, 0x1000).ok_or("page vanished")?;
            if bytes.iter().all(|b| *b == 0) {
                continue; // unused pool pages stay absent
            }
            if !first {
                writeln!(out, ",")?;
            }
            first = false;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write!(
                out,
                "    {{\"ipa\": \"{:#x}\", \"bytes\": \"{hex}\"}}",
                ipa.0
            )?;
        }
    }
    writeln!(out, "\n  ]")?;
    writeln!(out, "}}")?;
    print!("{out}");
    Ok(())
}
