//! Differential tests of the register layouts shared with `aarch64-cpu` (tock-registers field
//! definitions written independently from the Arm ARM).

use aarch64_cpu::registers::{SCTLR_EL1, TCR_EL1, TTBR0_EL1};
use spe_policy::arch::{Sctlr, Tcr, Ttbr};
use tock_registers_fields::{FieldCheck, check};

mod tock_registers_fields {
    /// (name, shift, mask) of an oracle field.
    pub type Field = (&'static str, usize, u64);
    /// An oracle field and our getter for the same field.
    pub type FieldCheck = (Field, fn(u64) -> u64);

    /// Sets each oracle field to all ones in an otherwise zero value and checks that our getter
    /// reads all ones and no other of our fields changes the value.
    pub fn check(fields: &[FieldCheck]) {
        for ((name, shift, mask), ours) in fields {
            let raw = mask << shift;
            assert_eq!(
                ours(raw),
                *mask,
                "{name}: our field reads a different value"
            );
            assert_eq!(
                ours(!raw),
                0,
                "{name}: our field reads bits outside the oracle's"
            );
        }
    }
}

macro_rules! field {
    ($reg:ident :: $f:ident) => {
        (stringify!($f), $reg::$f.shift, $reg::$f.mask)
    };
}

#[test]
fn tcr_el1_fields_sit_where_aarch64_cpu_puts_them() {
    let fields: [FieldCheck; 21] = [
        (field!(TCR_EL1::T0SZ), |r| Tcr::from_bits(r).t0sz().into()),
        (field!(TCR_EL1::EPD0), |r| Tcr::from_bits(r).epd0().into()),
        (field!(TCR_EL1::IRGN0), |r| Tcr::from_bits(r).irgn0().into()),
        (field!(TCR_EL1::ORGN0), |r| Tcr::from_bits(r).orgn0().into()),
        (field!(TCR_EL1::SH0), |r| Tcr::from_bits(r).sh0().into()),
        (field!(TCR_EL1::TG0), |r| Tcr::from_bits(r).tg0().into()),
        (field!(TCR_EL1::T1SZ), |r| Tcr::from_bits(r).t1sz().into()),
        (field!(TCR_EL1::A1), |r| Tcr::from_bits(r).a1().into()),
        (field!(TCR_EL1::EPD1), |r| Tcr::from_bits(r).epd1().into()),
        (field!(TCR_EL1::IRGN1), |r| Tcr::from_bits(r).irgn1().into()),
        (field!(TCR_EL1::ORGN1), |r| Tcr::from_bits(r).orgn1().into()),
        (field!(TCR_EL1::SH1), |r| Tcr::from_bits(r).sh1().into()),
        (field!(TCR_EL1::TG1), |r| Tcr::from_bits(r).tg1().into()),
        (field!(TCR_EL1::IPS), |r| Tcr::from_bits(r).ips().into()),
        (field!(TCR_EL1::AS), |r| Tcr::from_bits(r).asid16().into()),
        (field!(TCR_EL1::TBI0), |r| Tcr::from_bits(r).tbi0().into()),
        (field!(TCR_EL1::TBI1), |r| Tcr::from_bits(r).tbi1().into()),
        (field!(TCR_EL1::HA), |r| Tcr::from_bits(r).ha().into()),
        (field!(TCR_EL1::HD), |r| Tcr::from_bits(r).hd().into()),
        (field!(TCR_EL1::TBID0), |r| Tcr::from_bits(r).tbid0().into()),
        (field!(TCR_EL1::TBID1), |r| Tcr::from_bits(r).tbid1().into()),
    ];
    check(&fields);
}

#[test]
fn tcr_granule_encodings_match_aarch64_cpu_values() {
    use aarch64_cpu::registers::TCR_EL1::{TG0, TG1};
    use spe_policy::Granule;
    assert_eq!(
        u64::from(Tcr::tg0_bits(Granule::K4)),
        TG0::Value::KiB_4 as u64
    );
    assert_eq!(
        u64::from(Tcr::tg0_bits(Granule::K16)),
        TG0::Value::KiB_16 as u64
    );
    assert_eq!(
        u64::from(Tcr::tg0_bits(Granule::K64)),
        TG0::Value::KiB_64 as u64
    );
    assert_eq!(
        u64::from(Tcr::tg1_bits(Granule::K4)),
        TG1::Value::KiB_4 as u64
    );
    assert_eq!(
        u64::from(Tcr::tg1_bits(Granule::K16)),
        TG1::Value::KiB_16 as u64
    );
    assert_eq!(
        u64::from(Tcr::tg1_bits(Granule::K64)),
        TG1::Value::KiB_64 as u64
    );
}

#[test]
fn sctlr_el1_fields_sit_where_aarch64_cpu_puts_them() {
    let fields: [FieldCheck; 9] = [
        (field!(SCTLR_EL1::M), |r| Sctlr::from_bits(r).m().into()),
        (field!(SCTLR_EL1::A), |r| Sctlr::from_bits(r).a().into()),
        (field!(SCTLR_EL1::C), |r| Sctlr::from_bits(r).c().into()),
        (field!(SCTLR_EL1::SA), |r| Sctlr::from_bits(r).sa().into()),
        (field!(SCTLR_EL1::SA0), |r| Sctlr::from_bits(r).sa0().into()),
        (field!(SCTLR_EL1::I), |r| Sctlr::from_bits(r).i().into()),
        (field!(SCTLR_EL1::WXN), |r| Sctlr::from_bits(r).wxn().into()),
        (field!(SCTLR_EL1::E0E), |r| Sctlr::from_bits(r).e0e().into()),
        (field!(SCTLR_EL1::EE), |r| Sctlr::from_bits(r).ee().into()),
    ];
    check(&fields);
}

#[test]
fn ttbr_fields_sit_where_aarch64_cpu_puts_them() {
    let fields: [FieldCheck; 3] = [
        (field!(TTBR0_EL1::CnP), |r| Ttbr::from_bits(r).cnp().into()),
        (field!(TTBR0_EL1::BADDR), |r| Ttbr::from_bits(r).baddr()),
        (field!(TTBR0_EL1::ASID), |r| {
            Ttbr::from_bits(r).asid().into()
        }),
    ];
    check(&fields);
}
