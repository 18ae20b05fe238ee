//! The SPU stand-in's guest: an identity map of 2 MiB pages, user-accessible, and a six
//! instruction loop that runs natively in 64-bit user mode (CPL3).
//!
//! The register set-up is the one measured to run natively under `kvm_pvm` (and on hardware
//! KVM): CS 0x33 and data segments 0x2b at DPL 3, the U bit at every table level, RFLAGS IOPL 3
//! so `out` exits to the VMM, CR0 PE|MP|ET|NE|WP|AM|PG, CR4 PAE|FSGSBASE, EFER SCE|LME|LMA.
//! The guest never takes an exception, so it has no IDT.

use kvm_bindings::{kvm_msr_entry, kvm_segment};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::{HostMemory, KvmError};

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const CODE: u64 = 0x4000;
/// Everything below is the guest's tables and code; buffers start here.
pub const FIRST_FREE: u64 = 0x1_0000;

/// Present, writable, user.
const PTE_PWU: u64 = 0x7;
/// Page size (a 2 MiB block in a PD entry).
const PTE_PS: u64 = 0x80;

/// `loop: mov [rdi], rax; add rdi, 64; dec rcx; jnz loop; out 0x10, al; out 0x11, al; jmp -4`.
/// The host sets RIP, RDI (first record) and RCX (records) before each pass; the trailing
/// `out 0x11` loop only runs if a pass is resumed without being set up, and exits again.
const WRITER: [u8; 40] = {
    let mut c = [0x90u8; 40];
    let code: [u8; 18] = [
        0x48, 0x89, 0x07, // mov [rdi], rax
        0x48, 0x83, 0xc7, 0x40, // add rdi, 64
        0x48, 0xff, 0xc9, // dec rcx
        0x75, 0xf4, // jnz loop (-12)
        0xe6, 0x10, // out 0x10, al: the pass is done
        0xe6, 0x11, // out 0x11, al: resumed without set-up
        0xeb, 0xfc, // jmp back to out 0x11
    ];
    let mut i = 0;
    while i < code.len() {
        c[i] = code[i];
        i += 1;
    }
    c
};

fn put_u64(memory: &HostMemory, at: u64, v: u64) {
    debug_assert!(at + 8 <= memory.len as u64);
    // SAFETY: `at` is one of the fixed offsets below FIRST_FREE, inside the mapping (RAM is at
    // least 4 MiB); unaligned-safe write.
    unsafe {
        memory
            .addr
            .add(at as usize)
            .cast::<u64>()
            .write_unaligned(v)
    };
}

/// Writes the page tables and the writer loop into guest RAM.
pub fn write_image(memory: &HostMemory, ram: u64) {
    put_u64(memory, PML4, PDPT | PTE_PWU);
    put_u64(memory, PDPT, PD | PTE_PWU);
    for i in 0..ram / (2 << 20) {
        put_u64(memory, PD + i * 8, (i * (2 << 20)) | PTE_PWU | PTE_PS);
    }
    for (i, b) in WRITER.iter().enumerate() {
        // SAFETY: inside the code page, below FIRST_FREE.
        unsafe { memory.addr.add(CODE as usize + i).write(*b) };
    }
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the vCPU in 64-bit user mode over the identity map.
pub fn set_up_vcpu(_kvm: &Kvm, vcpu: &VcpuFd) -> Result<(), KvmError> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| KvmError::call("KVM_GET_SREGS", e, "see dmesg"))?;
    sregs.cs = segment(0x33, true);
    let data = segment(0x2b, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4;
    sregs.cr0 = 0x8005_0033;
    sregs.cr4 = 0x1_0020;
    sregs.efer = 0x501;
    vcpu.set_sregs(&sregs)
        .map_err(|e| KvmError::call("KVM_SET_SREGS(CPL3)", e, "the host refused long mode"))?;
    // MSR_STAR[63:32]: the user segment base selector that SYSRET would load; set so the
    // selectors above are consistent with it.
    let msrs = kvm_bindings::Msrs::from_entries(&[kvm_msr_entry {
        index: 0xc000_0081,
        data: 0x0023_0010 << 32,
        ..Default::default()
    }])
    .map_err(|_| KvmError::Layout {
        what: "msr entries",
        value: 1,
        fix: "internal: one entry always fits",
    })?;
    vcpu.set_msrs(&msrs)
        .map_err(|e| KvmError::call("KVM_SET_MSRS(STAR)", e, "see dmesg"))?;
    Ok(())
}

/// Points the writer at `records` records from `ipa`.
pub fn start_pass(vcpu: &VcpuFd, ipa: u64, records: u64) -> Result<(), KvmError> {
    let mut regs = vcpu
        .get_regs()
        .map_err(|e| KvmError::call("KVM_GET_REGS", e, "see dmesg"))?;
    regs.rip = CODE;
    regs.rdi = ipa;
    regs.rcx = records;
    regs.rax = 0x5350_4552_4543_4f52; // "SPERECOR": a recognisable payload
    regs.rflags = 0x3202;
    vcpu.set_regs(&regs)
        .map_err(|e| KvmError::call("KVM_SET_REGS", e, "see dmesg"))
}
