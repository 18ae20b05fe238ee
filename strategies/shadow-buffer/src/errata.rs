//! shadow-buffer's errata and profile.

use spe_policy::errata::{Erratum, GuestTold, Profile, Property};
use spe_policy::guest_notice::bits;

/// The errata of shadow-buffer.
pub static ERRATA: [Erratum; 7] = [
    Erratum {
        id: "SB-01",
        title: "Records reach guest memory only when the host copies them",
        trigger: "The guest reads its buffer memory directly, without first reading PMBPTR_EL1 or taking a buffer management interrupt.",
        guest_visible: "Memory past the last copy point still holds old bytes while the records sit in the host buffer. Every PMBPTR_EL1 read drains and copies first, so a driver that reads PMBPTR before consuming data (Linux's arm_spe_perf_aux_output_end does) sees every record.",
        host_visible: "Records wait in the host buffer until the next copy point: a host buffer-full, a trapped PMBPTR read or PMB* write, a vCPU stop.",
        mitigation: "None needed for Linux guests. A smaller host buffer shortens the wait (at the price of SB-04).",
        guest_told: GuestTold::NoticeBit(bits::DELAYED_RECORDS),
        scenario: "steady",
    },
    Erratum {
        id: "SB-02",
        title: "Every access to a Profiling Buffer register traps",
        trigger: "Any guest access to PMBPTR_EL1, PMBLIMITR_EL1, PMBSR_EL1 or PMBIDR_EL1: with MDCR_EL2.E2PB = 0b00 they trap to EL2 (spec sheet §1.10).",
        guest_visible: "Each access costs a trap (about a microsecond); Linux makes two to four per buffer interrupt and per perf start or stop.",
        host_visible: "One exit per access, counted; the host emulates the registers exactly.",
        mitigation: "None: trapping is how the host keeps the buffer. A larger guest buffer means fewer interrupts and so fewer traps.",
        guest_told: GuestTold::No,
        scenario: "steady",
    },
    Erratum {
        id: "SB-03",
        title: "The host copies every byte of SPE data",
        trigger: "Every copy point (SB-01): the records written since the last one are copied through the guest's stage 1.",
        guest_visible: "Nothing, except the CPU time the copy takes from the vCPU thread.",
        host_visible: "CPU time proportional to the SPE data rate: one stage 1 walk per guest page plus a copy of each byte (measured against memcpy in the shadow_copy benchmark, docs/BENCHMARKS.md).",
        mitigation: "Sample less often (a larger PMSIRR_EL1 interval) or filter (PMSFCR_EL1) to lower the data rate.",
        guest_told: GuestTold::No,
        scenario: "steady",
    },
    Erratum {
        id: "SB-04",
        title: "A host buffer-full stops the SPU until the host takes its interrupt",
        trigger: "The SPU fills one half of the host buffer (every host_buffer / 2 bytes of SPE data).",
        guest_visible: "The guest runs unprofiled from the SPU stopping until the host takes the interrupt (about a microsecond: one sample in some 600 at 64 B per µs with 32 KiB halves); the host's handling (flip halves, copy) is a stall of the vCPU, not a loss.",
        host_visible: "One buffer management interrupt per half of host buffer filled; the rate is the SPE data rate over the half size.",
        mitigation: "A larger spe.shadow_buffer.host_buffer lowers the interrupt rate (host memory grows with it, independent of the guest's buffer).",
        guest_told: GuestTold::NoticeBit(bits::BLACKOUT),
        scenario: "steady",
    },
    Erratum {
        id: "SB-05",
        title: "A guest buffer over memory that cannot be brought in gets a stage 2 fault",
        trigger: "A guest buffer page outside every memslot, or one the host cannot bring back (post-copy source lost, backing gone).",
        guest_visible: "A buffer management event with PMBSR_EL1.EC = 0x25 at the exact faulting PMBPTR_EL1, as the SPU would report it; Linux treats it as fatal and stops the session.",
        host_visible: "The copy stops at the fault; the records after it are dropped, as the SPU would have stopped there.",
        mitigation: "Keep guest RAM backed; do not lose the post-copy source.",
        guest_told: GuestTold::NoticeBit(bits::FATAL_FAULT),
        scenario: "unbackable",
    },
    Erratum {
        id: "SB-06",
        title: "A copy that waits for host paging stalls the vCPU",
        trigger: "Guest buffer pages swapped out (or still at the post-copy source, if the window could not be sent before switch-over) when their records are copied, and the other host half fills before that copy ends.",
        guest_visible: "The vCPU stalls while the copy waits for swap-in or a post-copy fetch (service = \"before-entry\", the default); copying in the background instead, the SPU stops when the other half fills before the copy ends, and the guest runs unprofiled until it does.",
        host_visible: "The vCPU thread waits for swap-in or a post-copy fetch inside the copy; the wait is measured.",
        mitigation: "A larger host buffer gives slow copies more time. Before post-copy switch-over the strategy sends each vCPU's buffer (from the lowest PMBPTR programmed with the current limit) and its table pages, so only pages the guest maps later are fetched at copy time.",
        guest_told: GuestTold::NoticeBit(bits::BLACKOUT),
        scenario: "swap-heavy",
    },
    Erratum {
        id: "SB-07",
        title: "A guest remap of its buffer is seen at the next copy, not when the SPU wrote",
        trigger: "The guest changes the stage 1 mapping of its enabled buffer while records it took are still in the host buffer (the host copies at host buffer-fulls, PMB* accesses and vCPU stops).",
        guest_visible: "Records the SPU took before the change are copied through the new mapping; where it no longer maps, the stage 1 fault is reported at the first record on that page (not at the record the hardware would have stopped at) and the records after it are dropped.",
        host_visible: "The copy meets the new tables; the bytes dropped are counted.",
        mitigation: "Guests do not remap an enabled buffer (Linux's vmap'd AUX buffer is stable while perf runs). Trapping TLB maintenance (GuestStage1Remap) makes the copy drain before new stage 1 registers are taken; a smaller host buffer shortens the window.",
        guest_told: GuestTold::NoticeBit(bits::STAGE1_REMAP),
        scenario: "hostile-guest",
    },
];

/// shadow-buffer's profile, as designed; the simulator measures whether it holds.
pub const PROFILE: Profile = Profile {
    keeps: &[Property::Cheap, Property::Fast],
    gives_up: &[Property::Reliable],
    why: "No guest page is pinned (only a small host buffer per vCPU), no stage 2 fault can reach the SPU and enables cost one trap; reliable but for the SPU's stop-to-interrupt latency at each host buffer half (SB-04), and copies that wait for paging stall the vCPU (SB-06). The price is a copy of the SPE data and a trap on every PMB* access.",
};
