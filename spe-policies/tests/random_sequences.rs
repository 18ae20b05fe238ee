//! Random event sequences through every strategy — memslot hot-plug and unplug in any order
//! (a slot added twice, removed twice, removed before it was added), enables, faults,
//! invalidations, dirty logging, migrations, remaps — then VM stop: nothing stays pinned, and
//! pinned bytes never exceed the bound the config implies, at any point.

use proptest::prelude::*;
use spe_host_model::{Absence, Stage2Model};
use spe_policies::Policy;
use spe_policy::config::defaults;
use spe_policy::event::{Event, InvalidationCause, MigrationMode, Outcome};
use spe_policy::{BackingStrategy, Granule, HostBacking, Ipa, IpaRange, Memslot};
use spe_strategy_testkit::{GuestFixture, RAM, memslots};

/// Two hot-pluggable slots above RAM.
fn hot_slot(n: u32) -> Memslot {
    Memslot {
        slot: 1 + n,
        range: IpaRange::new(Ipa(RAM.end() + u64::from(n) * (8 << 20)), 8 << 20),
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Add(u32),
    Remove(u32),
    Enable { vcpu: u32, page: u64, pages: u64 },
    Disable(u32),
    Fault { vcpu: u32, page: u64, dl: bool },
    Invalidate { page: u64, ksm: bool },
    DirtyRound,
    DirtyStop,
    Migrate(u8),
    Switchover,
    Remap(u32),
    VcpuStop(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2u32).prop_map(Step::Add),
        (0..2u32).prop_map(Step::Remove),
        (0..4u32, 0..16u64, 1..16u64).prop_map(|(vcpu, page, pages)| Step::Enable {
            vcpu,
            page,
            pages
        }),
        (0..4u32).prop_map(Step::Disable),
        (0..4u32, 0..16u64, any::<bool>()).prop_map(|(vcpu, page, dl)| Step::Fault {
            vcpu,
            page,
            dl
        }),
        (0..4096u64, any::<bool>()).prop_map(|(page, ksm)| Step::Invalidate { page, ksm }),
        Just(Step::DirtyRound),
        Just(Step::DirtyStop),
        (0..3u8).prop_map(Step::Migrate),
        Just(Step::Switchover),
        (0..4u32).prop_map(Step::Remap),
        (0..4u32).prop_map(Step::VcpuStop),
    ]
}

/// The most a strategy may pin with its default config on the fixture, with `hot` bytes of
/// hot-plugged memslots.
fn bound(p: &Policy, hot: u64) -> u64 {
    match p {
        Policy::PinAll(_) => RAM.len + hot,
        Policy::PinBuffer(_) => 4 * defaults::PIN_BUFFER_CAP,
        Policy::FaultTranslate(_) | Policy::ShadowBuffer(_) => 0,
    }
}

fn apply(p: &Policy, g: &GuestFixture, host: &Stage2Model, s: Step) -> Result<(), String> {
    let on = |ev: &Event<'_>| p.on_event(ev, &g.ram, host).map_err(|e| e.to_string());
    match s {
        Step::Add(n) => {
            // The VMM adds the slot (KVM refuses a duplicate), then tells the strategy, which
            // must cope with being told twice.
            host.add_memslot(hot_slot(n));
            on(&Event::MemslotAdded(hot_slot(n)))?;
        }
        Step::Remove(n) => {
            if on(&Event::MemslotRemoved(hot_slot(n)))?
                != Outcome::Refuse(spe_policy::event::Refusal::HotUnplugBlocked)
            {
                host.remove_memslot(hot_slot(n).slot);
            }
        }
        Step::Enable { vcpu, page, pages } => {
            let len = (pages * 0x1000)
                .min(16 * 0x1000 - page * 0x1000)
                .max(0x1000);
            on(&g.enable(vcpu, page * 0x1000, len))?;
        }
        Step::Disable(vcpu) => {
            on(&g.disable(vcpu))?;
        }
        Step::Fault { vcpu, page, dl } => {
            if !matches!(p, Policy::ShadowBuffer(_)) {
                let gp = g.granule.size();
                on(&g.stage2_fault(vcpu, page * gp, 16 * gp, dl))?;
            }
        }
        Step::Invalidate { page, ksm } => {
            let hp = host.granule().size();
            let range = IpaRange::new(Ipa(RAM.start.0 + (page * hp) % RAM.len), hp);
            let cause = if ksm {
                InvalidationCause::KsmMerge
            } else {
                InvalidationCause::Swap
            };
            if on(&Event::HostInvalidation { range, cause })? == Outcome::Resume {
                if ksm {
                    host.ksm_merge_unpinned(range);
                } else {
                    host.unmap(range, Absence::Swapped);
                }
            }
        }
        Step::DirtyRound => {
            on(&Event::DirtyLogStart)?;
            on(&Event::DirtyLogClear(RAM))?;
            host.dirty_log_protect(None);
        }
        Step::DirtyStop => {
            on(&Event::DirtyLogStop)?;
            host.dirty_log_stop();
        }
        Step::Migrate(m) => {
            let mode = [
                MigrationMode::PreCopy,
                MigrationMode::PostCopy,
                MigrationMode::StopAndCopy,
            ][usize::from(m)];
            on(&Event::MigrationStart(mode))?;
        }
        Step::Switchover => {
            on(&Event::PostCopySwitchover)?;
        }
        Step::Remap(vcpu) => {
            on(&Event::GuestStage1Remap {
                vcpu: spe_policy::VcpuId(vcpu),
                stage1: g.stage1,
            })?;
        }
        Step::VcpuStop(vcpu) => {
            on(&Event::VcpuStop(spe_policy::VcpuId(vcpu)))?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SPE_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_event_sequence_leaves_nothing_pinned_after_vm_stop_and_stays_within_the_bound(
        steps in prop::collection::vec(step(), 0..60),
        guest_granule in 0..3usize,
        host_page in 0..3usize,
    ) {
        // Any guest granule on any host page size.
        let granules = [Granule::K4, Granule::K16, Granule::K64];
        let g = GuestFixture::with_granule(granules[guest_granule], 16);
        for p in Policy::all_defaults() {
            let host = g.host_with(granules[host_page]);
            let slots = memslots();
            p.on_event(&Event::VmStart { memslots: &slots }, &g.ram, &host)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for s in &steps {
                apply(&p, &g, &host, *s).map_err(|e| TestCaseError::fail(format!("{}: {s:?}: {e}", p.name())))?;
                let hot: u64 = (0..2).filter(|n| host.page_state(hot_slot(*n).range.start).in_memslot).map(|n| hot_slot(n).range.len).sum();
                prop_assert!(
                    host.pinned_bytes() <= bound(&p, hot),
                    "{}: {} pinned after {s:?}", p.name(), host.pinned_bytes()
                );
                prop_assert_eq!(p.stats().pinned_bytes, if matches!(p, Policy::ShadowBuffer(_)) { p.stats().pinned_bytes } else { host.pinned_bytes() }, "{}: the strategy's count is the host's", p.name());
            }
            p.on_event(&Event::VmStop, &g.ram, &host)
                .map_err(|e| TestCaseError::fail(format!("{}: VM stop: {e}", p.name())))?;
            prop_assert_eq!(host.pinned_bytes(), 0, "{}: pinned after VM stop", p.name());
            prop_assert_eq!(p.stats().pinned_bytes, 0, "{}", p.name());
        }
    }
}
