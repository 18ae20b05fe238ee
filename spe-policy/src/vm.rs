//! The VM's facts: what the VMM knows about the VM and its host, as opposed to the policy a
//! VMM operator chooses (`[spe]`, [`crate::config`]).
//!
//! One description serves everyone: a VMM hands a [`VmSpec`] to the facade at run time (its
//! vCPU count, RAM, page sizes and the host CPU's SPE parameters are facts it knows), and the
//! simulator reads the same keys from a scenario's `[vm]` table or from `compare --vm FILE`.
//! Every range is checked here, in one place ([`VmSpec::validate`]).

use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, ConfigError, ConfigErrors, Limit, WriteOrderName, problem};

/// Every default of the VM description, in one place: a realistic VM, not a toy.
pub mod defaults {
    /// vCPUs.
    pub const VCPUS: u32 = 4;
    /// Guest RAM: 8 GiB.
    pub const RAM: u64 = 8 << 30;
    /// The guest's perf AUX buffer per vCPU: 4 MiB, perf's default for root (spec sheet §6).
    pub const BUFFER_PER_VCPU: u64 = 4 << 20;
    /// The guest's stage 1 granule: 4 KiB (arm64 Linux's default).
    pub const GUEST_GRANULE: u64 = 4 << 10;
    /// The host's page size: 4 KiB.
    pub const HOST_PAGE: u64 = 4 << 10;
    /// The physical (and IPA) address size: 48 bits, a machine without FEAT_LPA, which is what
    /// most deployed cores are (ID_AA64MMFR0_EL1.PARange = 0b0101).
    pub const PA_BITS: u8 = 48;
    /// The SPU's largest record: 64 bytes (Neoverse; 2^PMSIDR_EL1.MaxSize).
    pub const MAX_RECORD: u64 = 64;
    /// Most vCPUs a VM description may have (KVM/arm64's KVM_MAX_VCPUS is 512; GICv3 allows
    /// more; 4096 bounds everything the library sizes per vCPU).
    pub const MAX_VCPUS: u32 = 4096;
}

/// The VM and its host, as the VMM knows them (the `[vm]` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmSpec {
    /// vCPUs, 1 to 4096.
    pub vcpus: u32,
    /// Guest RAM, whole host pages, from 16 MiB to the IPA space (2^pa_bits).
    pub ram: ByteSize,
    /// The guest's perf AUX buffer per vCPU (the simulator's guests use it; the library's
    /// checks compare it with the pin-buffer cap). perf wants a power-of-two number of pages,
    /// at least two.
    pub buffer_per_vcpu: ByteSize,
    /// The guest's stage 1 translation granule: 4KiB, 16KiB or 64KiB.
    pub guest_granule: ByteSize,
    /// The host kernel's page size (stage 2 is managed in it): 4KiB, 16KiB or 64KiB.
    pub host_page_size: ByteSize,
    /// The PE's physical address size, PAMax: 32, 36, 40, 42, 44, 48 or 52 bits (the sizes
    /// ID_AA64MMFR0_EL1.PARange encodes).
    pub pa_bits: u8,
    /// The SPU's largest record, 2^PMSIDR_EL1.MaxSize: a power of two from 16 B to 2 KiB.
    pub max_record: ByteSize,
    /// The order the SPU writes a record's bytes in: `unordered` is all the architecture
    /// promises (spec sheet §1.11 rule 2); `sequential` for SPUs known to write in order.
    pub write_order: WriteOrderName,
    /// The VMM's locked-memory limit (RLIMIT_MEMLOCK), or `"unlimited"`.
    pub lock_limit: Limit,
}

impl Default for VmSpec {
    fn default() -> Self {
        VmSpec {
            vcpus: defaults::VCPUS,
            ram: ByteSize(defaults::RAM),
            buffer_per_vcpu: ByteSize(defaults::BUFFER_PER_VCPU),
            guest_granule: ByteSize(defaults::GUEST_GRANULE),
            host_page_size: ByteSize(defaults::HOST_PAGE),
            pa_bits: defaults::PA_BITS,
            max_record: ByteSize(defaults::MAX_RECORD),
            write_order: WriteOrderName::Unordered,
            lock_limit: Limit::Unlimited,
        }
    }
}

/// The PA sizes ID_AA64MMFR0_EL1.PARange can encode (0b0000..0b0110).
pub const PA_SIZES: [u8; 7] = [32, 36, 40, 42, 44, 48, 52];

fn granule_ok(b: ByteSize) -> bool {
    matches!(b.bytes(), 0x1000 | 0x4000 | 0x1_0000)
}

impl VmSpec {
    /// The host page size in bytes (validated: 4, 16 or 64 KiB).
    pub fn host_page(&self) -> u64 {
        self.host_page_size.bytes()
    }

    /// Checks every value's range; returns every problem found, each naming the key (`vm.*`),
    /// the value, the reason and the fix.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs: Vec<ConfigError> = Vec::new();
        if self.vcpus == 0 || self.vcpus > defaults::MAX_VCPUS {
            errs.push(problem(
                "vm.vcpus",
                self.vcpus,
                format!("a VM has 1 to {} vCPUs", defaults::MAX_VCPUS),
                "set the VM's vCPU count",
            ));
        }
        for (key, v) in [
            ("vm.guest_granule", self.guest_granule),
            ("vm.host_page_size", self.host_page_size),
        ] {
            if !granule_ok(v) {
                errs.push(problem(
                    key,
                    v,
                    "arm64 uses 4KiB, 16KiB or 64KiB pages",
                    "use 4KiB, 16KiB or 64KiB",
                ));
            }
        }
        if !PA_SIZES.contains(&self.pa_bits) {
            errs.push(problem(
                "vm.pa_bits",
                self.pa_bits,
                "ID_AA64MMFR0_EL1.PARange encodes 32, 36, 40, 42, 44, 48 or 52 bits",
                "use the host CPU's PA size, e.g. 48 (or 52 with FEAT_LPA)",
            ));
        }
        let rec = self.max_record.bytes();
        if !(16..=2048).contains(&rec) || !rec.is_power_of_two() {
            errs.push(problem(
                "vm.max_record",
                self.max_record,
                "an SPU's largest record is a power of two from 16 B to 2 KiB (PMSIDR_EL1.MaxSize)",
                "use the value 1 << PMSIDR_EL1.MaxSize of the host CPU, e.g. 64",
            ));
        }
        let ram = self.ram.bytes();
        let page = self.host_page();
        let space = 1u64 << self.pa_bits.min(63);
        if ram < (16 << 20) || (granule_ok(self.host_page_size) && ram % page != 0) || ram > space {
            errs.push(problem(
                "vm.ram",
                self.ram,
                format!(
                    "guest RAM is whole host pages from 16MiB up to the {}-bit IPA space ({})",
                    self.pa_bits.min(63),
                    ByteSize(space)
                ),
                "set the VM's memory size, e.g. \"8GiB\"",
            ));
        }
        let gran = self.guest_granule.bytes().max(1);
        let buf = self.buffer_per_vcpu.bytes();
        let pages = buf / gran;
        if buf % gran != 0 || pages < 2 || !pages.is_power_of_two() {
            errs.push(problem(
                "vm.buffer_per_vcpu",
                self.buffer_per_vcpu,
                format!(
                    "perf's AUX buffer is a power-of-two number of guest pages ({}), at least two",
                    self.guest_granule
                ),
                "use perf's default \"4MiB\" (root) or \"128KiB\" (unprivileged), or another power of two",
            ));
        } else if buf.saturating_mul(u64::from(self.vcpus)) > ram / 2 {
            errs.push(problem(
                "vm.buffer_per_vcpu",
                self.buffer_per_vcpu,
                format!(
                    "{} vCPUs x {} is more than half the VM's {} of RAM",
                    self.vcpus, self.buffer_per_vcpu, self.ram
                ),
                "use smaller buffers or give the VM more RAM",
            ));
        }
        if let Limit::Bytes(l) = self.lock_limit {
            if l.bytes() % page.max(1) != 0 && granule_ok(self.host_page_size) {
                errs.push(problem(
                    "vm.lock_limit",
                    l,
                    "RLIMIT_MEMLOCK is accounted in whole host pages",
                    "round it to a multiple of vm.host_page_size, or use \"unlimited\"",
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_vm_is_valid() {
        VmSpec::default().validate().expect("valid");
    }

    #[test]
    fn a_buffer_larger_than_the_ram_can_hold_is_refused() {
        let vm = VmSpec {
            buffer_per_vcpu: ByteSize(16 << 30),
            ..VmSpec::default()
        };
        let e = vm.validate().expect_err("16 GiB buffers in 8 GiB");
        assert_eq!(e.0[0].key, "vm.buffer_per_vcpu");
        assert!(e.0[0].reason.contains("half the VM's 8GiB"), "{e}");
    }

    #[test]
    fn absurd_sizes_are_refused_with_the_key_that_is_wrong() {
        let vm = VmSpec {
            ram: ByteSize(1),
            vcpus: 100_000,
            pa_bits: 47,
            guest_granule: ByteSize(8192),
            buffer_per_vcpu: ByteSize(0),
            ..VmSpec::default()
        };
        let keys: Vec<String> = vm
            .validate()
            .expect_err("invalid")
            .0
            .into_iter()
            .map(|e| e.key)
            .collect();
        for k in [
            "vm.vcpus",
            "vm.guest_granule",
            "vm.pa_bits",
            "vm.ram",
            "vm.buffer_per_vcpu",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} not in {keys:?}");
        }
    }
}
