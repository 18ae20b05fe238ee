//! The real Linux backing on a small region: pins hold against reclaim, unpinned pages go, and
//! the strategies run on it unchanged.

use spe_host_linux::{LinuxGuestRam, host_page_size, mlock_error};
use spe_policies::{FaultTranslateConfig, PinBufferConfig, Policy, StrategyConfig};
use spe_policy::event::{Event, Outcome};
use spe_policy::host::{FaultIn, HostBacking, HostError};
use spe_policy::{BackingStrategy, GuestMemoryRead, Ipa, IpaRange};
use spe_strategy_testkit::{GuestFixture, RAM, memslots};

fn ram(len: usize) -> (tempfile::TempDir, LinuxGuestRam) {
    // On the project's disk, not /tmp: a tmpfs file could not be paged out without swap.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tmp");
    let r = LinuxGuestRam::new(Ipa(0x4000_0000), len, dir.path()).expect("guest RAM");
    (dir, r)
}

#[test]
fn pinned_pages_stay_resident_after_pageout_and_unpinned_ones_are_paged_out() {
    let page = host_page_size() as u64;
    let (_d, r) = ram(64 * page as usize);
    let all = r.range();
    let pinned = IpaRange::new(Ipa(0x4000_0000), 16 * page);
    assert_eq!(r.resident_pages(all), 64, "all pages start resident");
    r.pin(pinned).expect("mlock");
    let evicted = r.page_out(all).expect("pageout");
    assert_eq!(r.resident_pages(pinned), 16, "mlocked pages stay");
    assert!(
        evicted >= 40,
        "only {evicted} of 48 unpinned pages were paged out"
    );
    assert!(!r.page_state(Ipa(0x4000_0000 + 20 * page)).present);
    // Fault-in brings a page back.
    assert_eq!(
        r.fault_in(Ipa(0x4000_0000 + 20 * page)),
        Ok(FaultIn::MadePresent)
    );
    assert!(r.page_state(Ipa(0x4000_0000 + 20 * page)).present);
    // Unpinned, the same pages can go.
    r.unpin(pinned).expect("munlock");
    r.page_out(pinned).expect("pageout");
    assert!(r.resident_pages(pinned) < 16);
}

#[test]
fn contents_survive_pageout_and_reads_see_writes() {
    let (_d, r) = ram(16 * host_page_size());
    r.write_bytes(Ipa(0x4000_1000), b"spe record")
        .expect("write");
    r.page_out(r.range()).expect("pageout");
    let mut b = [0u8; 10];
    r.read(Ipa(0x4000_1000), &mut b).expect("read");
    assert_eq!(&b, b"spe record");
    assert!(r.read(Ipa(0x3fff_f000), &mut b).is_err());
}

#[test]
fn write_protection_is_real_and_fault_in_lifts_it() {
    let page = host_page_size() as u64;
    let (_d, r) = ram(8 * page as usize);
    let p = Ipa(0x4000_0000 + 2 * page);
    r.write_protect(r.range(), true).expect("mprotect");
    assert!(r.page_state(p).write_protected);
    assert_eq!(r.fault_in(p), Ok(FaultIn::MadePresent));
    assert!(r.page_state(p).writable());
    r.write_bytes(p, &[1, 2, 3])
        .expect("writes after the fault");
    // Exempt pages are never protected.
    r.set_dirty_log_exempt(IpaRange::new(p, page), true)
        .expect("exempt");
    r.write_protect(r.range(), true).expect("mprotect");
    assert!(r.page_state(p).writable());
}

#[test]
fn double_pins_and_unbalanced_unpins_are_refused() {
    let page = host_page_size() as u64;
    let (_d, r) = ram(4 * page as usize);
    let one = IpaRange::new(Ipa(0x4000_0000), page);
    r.pin(one).expect("pin");
    assert!(r.pin(one).is_err());
    r.unpin(one).expect("unpin");
    assert_eq!(r.unpin(one), Err(HostError::NotPinned(Ipa(0x4000_0000))));
    assert!(matches!(
        r.pin(IpaRange::new(Ipa(0x1000), page)),
        Err(HostError::NotInMemslot(_))
    ));
}

#[test]
fn a_refused_mlock_becomes_a_lock_limit_error_naming_the_fix() {
    let e = mlock_error(&std::io::Error::from_raw_os_error(libc_enomem()), 1 << 20);
    assert!(matches!(
        e,
        HostError::LockLimit {
            requested: 0x10_0000,
            ..
        }
    ));
    assert!(e.to_string().contains("RLIMIT_MEMLOCK"), "{e}");
}

fn libc_enomem() -> i32 {
    12
}

/// The testkit guest, loaded into real memory.
fn real_guest() -> (tempfile::TempDir, LinuxGuestRam, GuestFixture) {
    let g = GuestFixture::new(16);
    let (d, r) = ram(RAM.len as usize);
    let bytes = g
        .ram
        .slice(RAM.start, RAM.len as usize)
        .expect("fixture RAM");
    r.write_bytes(RAM.start, bytes).expect("load");
    (d, r, g)
}

#[test]
fn pin_buffer_pins_real_memory_and_vm_stop_releases_it() {
    let (_d, r, g) = real_guest();
    let p = Policy::new(StrategyConfig::PinBuffer(PinBufferConfig::default()));
    let slots = memslots();
    p.on_event(&Event::VmStart { memslots: &slots }, &r, &r)
        .expect("start");
    assert_eq!(
        p.on_event(&g.enable(0, 0, 16 * 4096), &r, &r)
            .expect("enable"),
        Outcome::Resume
    );
    assert_eq!(r.pinned_bytes(), (16 + 4) * 4096);
    r.page_out(RAM).expect("reclaim everything it can");
    for page in &g.buffer_pages {
        assert!(
            r.page_state(*page).present,
            "pinned buffer page {page} was reclaimed"
        );
    }
    p.on_event(&Event::VmStop, &r, &r).expect("stop");
    assert_eq!(r.pinned_bytes(), 0);
}

#[test]
fn fault_translate_repairs_a_really_paged_out_buffer_page() {
    let (_d, r, g) = real_guest();
    let p = Policy::new(StrategyConfig::FaultTranslate(
        FaultTranslateConfig::default(),
    ));
    // Page out the whole 2 MiB around the page: the page cache may hold it in a large folio,
    // which the kernel only reclaims whole.
    let around = IpaRange::new(Ipa(g.buffer_pages[0].0 & !0x1f_ffff), 2 << 20);
    assert!(r.page_out(around).expect("pageout") > 0);
    assert!(
        !r.page_state(g.buffer_pages[0]).present,
        "the buffer page is paged out"
    );
    let out = p
        .on_event(&g.stage2_fault(0, 0, 16 * 4096, false), &r, &r)
        .expect("fault");
    assert!(matches!(out, Outcome::ResumeAt { .. }), "{out:?}");
    assert!(r.page_state(g.buffer_pages[0]).present);
    assert_eq!(r.pinned_bytes(), 0);
}

#[test]
fn a_batch_of_writes_lifts_write_protection_and_stops_at_the_first_write_outside_ram() {
    // shadow-buffer's copy hands the host every write of a copy at once (one lock round):
    // write-protected pages (dirty logging) are made writable first, and a write outside the
    // mapping stops the batch with the writes before it done, as one by one.
    let page = host_page_size() as u64;
    let (_d, r) = ram(8 * page as usize);
    let base = Ipa(0x4000_0000);
    r.write_protect(r.range(), true).expect("mprotect");
    let a = Ipa(base.0 + 2 * page);
    let b = Ipa(base.0 + 5 * page + 100);
    let outside = Ipa(base.0 + 8 * page);
    r.write_guest_batch(&[(a, b"first"), (b, b"second")])
        .expect("both inside");
    assert!(!r.page_state(a).write_protected && !r.page_state(b).write_protected);
    assert!(
        r.page_state(Ipa(base.0 + 3 * page)).write_protected,
        "untouched pages stay"
    );
    let stopped = r
        .write_guest_batch(&[(a, b"again"), (outside, b"lost"), (b, b"never")])
        .expect_err("the second write is outside RAM");
    assert_eq!(stopped.written, 1);
    assert!(matches!(stopped.error, HostError::NotInMemslot(ipa) if ipa == outside));
    let mut got = [0u8; 6];
    r.read(a, &mut got[..5]).expect("read");
    assert_eq!(&got[..5], b"again");
    r.read(b, &mut got).expect("read");
    assert_eq!(&got, b"second", "the write after the stop was not made");
}
