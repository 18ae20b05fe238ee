//! How a VMM wires spe-policy in: load the `[spe]` table of its config, build the `Policy`,
//! implement the guest memory and host backing traits, and route trapped PMB* accesses, buffer
//! management interrupts, MMU-notifier and migration events to it.
//!
//! `cargo run -p spe-policies --example embed`

use std::collections::BTreeSet;
use std::sync::Mutex;

use spe_policies::Policy;
use spe_policy::arch::walk::Stage1Regs;
use spe_policy::arch::walk::builder::{LEAF_RW, TableBuilder};
use spe_policy::arch::{BufferMode, Pmbidr, Pmblimitr, Pmbptr, Pmbsr, Sctlr, Tcr, Ttbr};
use spe_policy::config::ByteSize;
use spe_policy::event::{BufferReg, BufferRegs, Event, InvalidationCause, Outcome};
use spe_policy::host::{FaultIn, HostBacking, HostError, PageState};
use spe_policy::{BackingStrategy, Granule, GuestRam, Gva, Ipa, IpaRange, Memslot, VcpuId, VmSpec};

/// The VMM's side of stage 2. A real VMM pins with `pin_user_pages`/`mlock`, faults in by
/// touching the page, and tracks dirty logging in KVM; this one just keeps the set of pinned
/// pages so the example can show what the strategy asked for.
struct MyVmmHost {
    ram: IpaRange,
    pinned: Mutex<BTreeSet<u64>>,
}

impl HostBacking for MyVmmHost {
    fn granule(&self) -> Granule {
        Granule::K4
    }
    fn pin(&self, range: IpaRange) -> Result<(), HostError> {
        if !self.ram.contains(range.start) {
            return Err(HostError::NotInMemslot(range.start));
        }
        let mut p = self
            .pinned
            .lock()
            .map_err(|e| HostError::Other(e.to_string()))?;
        p.extend(range.pages(Granule::K4).map(|i| i.0));
        Ok(())
    }
    fn unpin(&self, range: IpaRange) -> Result<(), HostError> {
        let mut p = self
            .pinned
            .lock()
            .map_err(|e| HostError::Other(e.to_string()))?;
        for page in range.pages(Granule::K4) {
            p.remove(&page.0);
        }
        Ok(())
    }
    fn fault_in(&self, ipa: Ipa) -> Result<FaultIn, HostError> {
        if self.ram.contains(ipa) {
            Ok(FaultIn::AlreadyPresent)
        } else {
            Err(HostError::NotInMemslot(ipa))
        }
    }
    fn page_state(&self, ipa: Ipa) -> PageState {
        let pinned = self
            .pinned
            .lock()
            .is_ok_and(|p| p.contains(&ipa.page_base(Granule::K4).0));
        PageState {
            present: self.ram.contains(ipa),
            write_protected: false,
            pinned,
            dirty_log_exempt: false,
            in_memslot: self.ram.contains(ipa),
        }
    }
    fn set_dirty_log_exempt(&self, _: IpaRange, _: bool) -> Result<(), HostError> {
        Ok(())
    }
    fn send_before_switchover(&self, _: IpaRange) -> Result<(), HostError> {
        Ok(())
    }
    fn write_guest(&self, _: Ipa, _: &[u8]) -> Result<(), HostError> {
        Ok(())
    }
    fn inject(&self, vcpu: VcpuId, pmbsr: Pmbsr, _: Pmbptr) -> Result<(), HostError> {
        println!(
            "  (would inject PMBSR {:#x} into {vcpu})",
            pmbsr.into_bits()
        );
        Ok(())
    }
    fn disable_spe(&self, vcpu: VcpuId) -> Result<(), HostError> {
        println!("  (would disable SPE for {vcpu})");
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The VMM's config file, with its own tables and the [spe] table.
    let config_text = r#"
        [vm]
        memory_mib = 64

        [spe]
        strategy = "pin-buffer"
        [spe.pin_buffer]
        cap_per_vcpu = "8MiB"
    "#;
    let config = spe_policy::config::load_toml(config_text)?;
    // 2. The VM's facts come from the VMM at run time, not from the policy: its vCPUs, RAM,
    //    page sizes and the host CPU's SPE parameters (PMSIDR_EL1.MaxSize).
    let vm = VmSpec {
        vcpus: 2,
        ram: ByteSize(64 << 20),
        buffer_per_vcpu: ByteSize(64 << 10),
        ..VmSpec::default()
    };
    let policy = Policy::from_config(&config, &vm)?;
    println!("strategy: {} ({:?})", policy.name(), policy.profile().keeps);
    println!("tell the guest: {:02x?}", policy.guest_notice().encode());

    // 3. Guest memory: the VMM implements GuestMemoryRead over its RAM (GuestRam here, or
    //    `spe_policy::guest_memory::VmMemory` over a vm-memory GuestMemoryMmap).
    let ram_range = IpaRange::new(Ipa(0x4000_0000), 64 << 20);
    let mut tables = TableBuilder::new(
        GuestRam::new(),
        Granule::K4,
        16,
        Ipa(0x4000_0000),
        0x10_0000,
        false,
    )?;
    let buffer_va = Gva(0xffff_8000_1000_0000);
    tables.map_pages(
        buffer_va,
        (0..16).map(|i| Ipa(0x4200_0000 + i * 0x3000)),
        LEAF_RW,
    )?;
    let guest = tables.into_ram();
    let stage1 = Stage1Regs {
        tcr: Tcr::new()
            .with_t1sz(16)
            .with_tg1(Tcr::tg1_bits(Granule::K4))
            .with_ips(0b101)
            .with_epd0(true),
        ttbr0: Ttbr::new(),
        ttbr1: Ttbr::from_bits(0x4000_0000),
        sctlr: Sctlr::new().with_m(true),
        hw_af: true,
        hw_dbm: true,
    };
    let host = MyVmmHost {
        ram: ram_range,
        pinned: Mutex::new(BTreeSet::new()),
    };

    // 4. Route events. VM start:
    let slots = [Memslot {
        slot: 0,
        range: ram_range,
    }];
    policy.on_event(&Event::VmStart { memslots: &slots }, &guest, &host)?;

    // A trapped guest read of PMBIDR_EL1 (the strategy may emulate it):
    let read = Event::BufferRead {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmbidr,
        regs: BufferRegs::default(),
        pmbidr: Pmbidr::new().with_align(6).with_f(true),
    };
    if let Outcome::Emulated(v) = policy.on_event(&read, &guest, &host)? {
        println!("PMBIDR_EL1 read -> {v:#x}");
    }

    // A trapped PMBLIMITR_EL1 write enabling a 64 KiB buffer:
    let enable = Event::BufferWrite {
        vcpu: VcpuId(0),
        reg: BufferReg::Pmblimitr,
        regs: BufferRegs {
            pmbptr: Pmbptr::from_bits(buffer_va.0),
            pmblimitr: Pmblimitr::for_buffer(Gva(buffer_va.0 + (64 << 10)), true, BufferMode::Fill),
            pmbsr: Pmbsr::new(),
        },
        stage1,
    };
    match policy.on_event(&enable, &guest, &host)? {
        Outcome::Resume => println!("enable: apply the write and run the vCPU"),
        other => println!("enable: {other:?}"),
    }
    println!(
        "pinned pages: {}",
        host.pinned.lock().map(|p| p.len()).unwrap_or(0)
    );

    // The MMU notifier wants a buffer page back:
    let swap = Event::HostInvalidation {
        range: IpaRange::new(Ipa(0x4200_0000), 0x1000),
        cause: InvalidationCause::Swap,
    };
    println!(
        "swap-out of a buffer page: {:?}",
        policy.on_event(&swap, &guest, &host)?
    );

    // Migration: dirty logging starts; at switch-over, with the vCPUs paused, the policy's
    // state goes with the VM's (a serde value: the VMM's snapshot format), the source stops.
    policy.on_event(&Event::DirtyLogStart, &guest, &host)?;
    let state = serde_json::to_string(&policy.save())?;
    policy.on_event(&Event::VmStop, &guest, &host)?;
    println!(
        "source after VM stop: {} pages pinned; state sent: {} bytes of JSON",
        host.pinned.lock().map(|p| p.len()).unwrap_or(0),
        state.len()
    );

    // The destination restores it: the enabled buffer is pinned again before its vCPUs run.
    let destination = MyVmmHost {
        ram: ram_range,
        pinned: Mutex::new(BTreeSet::new()),
    };
    let state: spe_policies::PolicyState = serde_json::from_str(&state)?;
    let policy = Policy::restore(&config, &vm, &state, &guest, &destination)?;
    println!(
        "destination: {} pages pinned before the vCPUs run",
        destination.pinned.lock().map(|p| p.len()).unwrap_or(0)
    );
    policy.on_event(&Event::VmStop, &guest, &destination)?;
    println!("stats at the destination's stop: {:?}", policy.stats());
    Ok(())
}
