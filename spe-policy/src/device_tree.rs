//! The guest notice in the device tree: the binding, a writer (feature `fdt`, with rust-vmm's
//! `vm-fdt`), DTS text, and a reader a guest (or a test) runs on a flattened device tree.
//!
//! # Binding
//!
//! A child node of the SPE PMU node (the one with `compatible =
//! "arm,statistical-profiling-extension-v1"` that the Linux driver binds to):
//!
//! ```dts
//! spe-pmu {
//!     compatible = "arm,statistical-profiling-extension-v1";
//!     interrupts = <1 5 4>;
//!     spe-policy {
//!         compatible = "spe-policy,stage2-backing-v1";
//!         notice = <0x53504550 0x00010002 0x0000000d 0x00001000>;
//!     };
//! };
//! ```
//!
//! `notice` holds the four cells of [`GuestNotice::cells`], big-endian as every device-tree
//! cell: the magic `"SPEP"`, `version << 16 | strategy code`, the errata bitmap (bits in
//! [`crate::guest_notice::bits`]), and the per-vCPU buffer cap in 4 KiB pages (0: none). A reader
//! takes the first node whose `compatible` list holds [`COMPATIBLE`], ignores errata bits it
//! does not know, and accepts a longer `notice` from a later version (version 1's cells come
//! first).

use crate::guest_notice::{GuestNotice, NoticeError};

/// The `compatible` string of the notice node.
pub const COMPATIBLE: &str = "spe-policy,stage2-backing-v1";
/// The notice node's name.
pub const NODE_NAME: &str = "spe-policy";
/// The SPE PMU node's `compatible` (Linux's `arm_spe_pmu` binds to it).
pub const SPE_PMU_COMPATIBLE: &str = "arm,statistical-profiling-extension-v1";

/// The notice node as DTS source, indented for a place under the SPE PMU node.
pub fn dts(notice: &GuestNotice) -> String {
    let cells: Vec<String> = notice
        .cells()
        .iter()
        .map(|c| format!("{c:#010x}"))
        .collect();
    format!(
        "{NODE_NAME} {{\n    compatible = \"{COMPATIBLE}\";\n    notice = <{}>;\n}};\n",
        cells.join(" ")
    )
}

/// Writes the notice node (call between the SPE PMU node's `begin_node` and `end_node`).
#[cfg(feature = "fdt")]
pub fn write_node(fdt: &mut vm_fdt::FdtWriter, notice: &GuestNotice) -> Result<(), vm_fdt::Error> {
    let node = fdt.begin_node(NODE_NAME)?;
    fdt.property_string("compatible", COMPATIBLE)?;
    fdt.property_array_u32("notice", &notice.cells())?;
    fdt.end_node(node)
}

/// A whole device tree with an SPE PMU node holding the notice (what `spe-policy notice
/// --format dtb` prints; a VMM writes the node into its own tree with [`write_node`]).
#[cfg(feature = "fdt")]
pub fn dtb_with_notice(notice: &GuestNotice) -> Result<Vec<u8>, vm_fdt::Error> {
    let mut fdt = vm_fdt::FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    let pmu = fdt.begin_node("spe-pmu")?;
    fdt.property_string("compatible", SPE_PMU_COMPATIBLE)?;
    // A PPI, level triggered (GIC binding: <type number flags>): INTID 21, the SBSA's SPE.
    fdt.property_array_u32("interrupts", &[1, 5, 4])?;
    write_node(&mut fdt, notice)?;
    fdt.end_node(pmu)?;
    fdt.end_node(root)?;
    fdt.finish()
}

/// Why a device tree could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtbError {
    /// Not a flattened device tree (magic, version or sizes wrong).
    #[error("not a device tree blob: {0}")]
    Header(&'static str),
    /// The structure block is malformed at an offset.
    #[error("device tree structure is malformed at offset {offset:#x}: {what}")]
    Structure {
        /// Offset into the structure block.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The notice node's `notice` property does not decode.
    #[error("the {COMPATIBLE} node's notice: {0}")]
    Notice(NoticeError),
}

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// The deepest node nesting a reader follows (real trees are a few levels deep).
const MAX_DEPTH: usize = 64;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn c_str(b: &[u8], at: usize) -> Option<&[u8]> {
    let tail = b.get(at..)?;
    let end = tail.iter().position(|c| *c == 0)?;
    Some(&tail[..end])
}

/// Finds the notice in a flattened device tree: the first node whose `compatible` holds
/// [`COMPATIBLE`], its `notice` cells decoded. `Ok(None)`: no such node. Bounded in time and
/// memory by the blob's size; malformed blobs are errors, never panics.
pub fn read_dtb(blob: &[u8]) -> Result<Option<GuestNotice>, DtbError> {
    let header = |i: usize| be32(blob, 4 * i).ok_or(DtbError::Header("shorter than its header"));
    if header(0)? != FDT_MAGIC {
        return Err(DtbError::Header("the magic is not 0xd00dfeed"));
    }
    let total = header(1)? as usize;
    let (off_struct, off_strings) = (header(2)? as usize, header(3)? as usize);
    if total > blob.len() || header(5)? < 16 {
        return Err(DtbError::Header("totalsize or version out of range"));
    }
    let size_strings = header(8)? as usize;
    let size_struct = header(9)? as usize;
    let structure = blob
        .get(off_struct..off_struct.saturating_add(size_struct))
        .ok_or(DtbError::Header("the structure block is outside the blob"))?;
    let strings = blob
        .get(off_strings..off_strings.saturating_add(size_strings))
        .ok_or(DtbError::Header("the strings block is outside the blob"))?;
    let bad = |offset: usize, what: &'static str| DtbError::Structure { offset, what };
    // Per open node: (compatible matches, notice cells seen).
    let mut stack: Vec<(bool, Option<&[u8]>)> = Vec::new();
    let mut at = 0usize;
    loop {
        let token = be32(structure, at).ok_or(bad(at, "truncated token"))?;
        at += 4;
        match token {
            FDT_BEGIN_NODE => {
                let name = c_str(structure, at).ok_or(bad(at, "unterminated node name"))?;
                at = (at + name.len() + 1).div_ceil(4) * 4;
                if stack.len() == MAX_DEPTH {
                    return Err(bad(at, "nodes nested deeper than 64"));
                }
                stack.push((false, None));
            }
            FDT_END_NODE => {
                let (matches, notice) = stack.pop().ok_or(bad(at, "unbalanced end of node"))?;
                if matches {
                    let cells = notice.ok_or(bad(at, "the notice node has no notice"))?;
                    // The property is big-endian cells; `GuestNotice::decode` reads LE bytes.
                    let le: Vec<u8> = cells
                        .chunks(4)
                        .flat_map(|c| {
                            let mut w = [0u8; 4];
                            w[..c.len()].copy_from_slice(c);
                            u32::from_be_bytes(w).to_le_bytes()
                        })
                        .collect();
                    return GuestNotice::decode(&le).map(Some).map_err(DtbError::Notice);
                }
            }
            FDT_PROP => {
                let len = be32(structure, at).ok_or(bad(at, "truncated property"))? as usize;
                let name_off = be32(structure, at + 4).ok_or(bad(at, "truncated property"))?;
                at += 8;
                let value = structure
                    .get(at..at.saturating_add(len))
                    .ok_or(bad(at, "a property runs past the block"))?;
                at = at.saturating_add(len).div_ceil(4) * 4;
                let name = c_str(strings, name_off as usize).ok_or(bad(at, "bad property name"))?;
                let node = stack
                    .last_mut()
                    .ok_or(bad(at, "a property outside any node"))?;
                match name {
                    b"compatible" => {
                        node.0 |= value.split(|c| *c == 0).any(|s| s == COMPATIBLE.as_bytes());
                    }
                    b"notice" => node.1 = Some(value),
                    _ => {}
                }
            }
            FDT_NOP => {}
            FDT_END => return Ok(None),
            _ => return Err(bad(at - 4, "unknown token")),
        }
    }
}

#[cfg(all(test, feature = "fdt"))]
mod tests {
    use super::*;
    use crate::guest_notice::StrategyId;

    #[test]
    fn a_notice_written_into_a_device_tree_reads_back_the_same() {
        for (s, errata, cap) in [
            (StrategyId::PinAll, 0, 0),
            (StrategyId::PinBuffer, 0b1011, 4096),
            (StrategyId::ShadowBuffer, u32::MAX, 1),
        ] {
            let n = GuestNotice::new(s, errata, cap);
            let blob = dtb_with_notice(&n).expect("dtb");
            assert_eq!(read_dtb(&blob), Ok(Some(n)));
        }
    }

    #[test]
    fn a_tree_without_the_node_has_no_notice_and_garbage_is_an_error() {
        let mut fdt = vm_fdt::FdtWriter::new().expect("fdt");
        let root = fdt.begin_node("").expect("root");
        fdt.property_string("compatible", "linux,dummy-virt")
            .expect("p");
        fdt.end_node(root).expect("end");
        let blob = fdt.finish().expect("finish");
        assert_eq!(read_dtb(&blob), Ok(None));
        assert!(matches!(read_dtb(&[0u8; 8]), Err(DtbError::Header(_))));
        let mut cut = dtb_with_notice(&GuestNotice::new(StrategyId::PinAll, 1, 2)).expect("dtb");
        cut.truncate(cut.len() / 2);
        assert!(read_dtb(&cut).is_err());
    }

    #[test]
    fn the_dts_names_the_binding_and_the_cells() {
        let n = GuestNotice::new(StrategyId::PinBuffer, 0b101, 4096);
        let text = dts(&n);
        assert!(
            text.contains(COMPATIBLE) && text.contains("0x53504550"),
            "{text}"
        );
    }
}
