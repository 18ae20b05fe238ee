//! Post-copy migration on the real kernel, as QEMU does it: the destination's guest memory is
//! registered with userfaultfd in MISSING mode; pages sent before switch-over are placed with
//! `UFFDIO_COPY`; every other page is demanded when first touched (here: by the vCPU standing in
//! for the SPU, through KVM's stage 2 fault), and a handler thread fetches and places it.
//!
//! The userfaultfd uAPI (`linux/userfaultfd.h`) is issued directly: the `userfaultfd` crate's
//! bindings need libclang at build time. The structures below are the kernel's, field for field.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::{KvmError, KvmVm, PAGE};

const UFFD_API: u64 = 0xaa;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffd_msg`: 32 bytes; for a page fault the address is at offset 16.
#[repr(C)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    flags: u64,
    address: u64,
    _rest: u64,
}

fn ioctl<T>(
    fd: &OwnedFd,
    request: libc::c_ulong,
    arg: &mut T,
    call: &'static str,
) -> Result<(), KvmError> {
    // SAFETY: `arg` is the structure `request` takes (above, field for field), alive for the
    // call; the fd is a userfaultfd we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) } != 0 {
        return Err(KvmError::last_os(
            call,
            "needs userfaultfd (root, or vm.unprivileged_userfaultfd = 1)",
        ));
    }
    Ok(())
}

/// Places `page` (a 4 KiB source) at host address `dst`, waking the faulting thread.
fn copy_page(fd: &OwnedFd, dst: u64, page: &[u8]) -> Result<(), KvmError> {
    let mut c = UffdioCopy {
        dst,
        src: page.as_ptr() as u64,
        len: PAGE,
        mode: 0,
        copy: 0,
    };
    ioctl(fd, UFFDIO_COPY, &mut c, "ioctl(UFFDIO_COPY)")
}

/// The destination's buffer range under userfaultfd, and the thread that serves its faults.
#[derive(Debug)]
pub struct PostCopy {
    fd: Arc<OwnedFd>,
    start: u64,
    len: u64,
    stop: Arc<AtomicBool>,
    handler: Option<JoinHandle<Result<(), KvmError>>>,
    demanded: crossbeam_channel::Receiver<u64>,
}

impl PostCopy {
    /// Switch-over for `[ipa, ipa + len)` of `vm`: the range is emptied (the destination has
    /// not received it), registered in MISSING mode, and the pages of `sent` (IPAs, sent before
    /// switch-over) are placed at once. Every other page is fetched (filled with `fill`) when
    /// first touched; [`PostCopy::finish`] returns the IPAs demanded, in order.
    pub fn switch_over(
        vm: &mut KvmVm,
        ipa: u64,
        len: u64,
        sent: &[u64],
        fill: u8,
    ) -> Result<PostCopy, KvmError> {
        vm.discard(ipa, len)?;
        let start = vm.host_address(ipa, len)? as u64;
        // SAFETY: a plain system call; the result is a new fd or -1.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(KvmError::last_os(
                "userfaultfd",
                "needs root or vm.unprivileged_userfaultfd = 1",
            ));
        }
        // SAFETY: `raw` is a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        ioctl(&fd, UFFDIO_API, &mut api, "ioctl(UFFDIO_API)")?;
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(&fd, UFFDIO_REGISTER, &mut reg, "ioctl(UFFDIO_REGISTER)")?;
        let page = vec![fill; PAGE as usize];
        for s in sent {
            copy_page(&fd, start + (s - ipa), &page)?;
        }
        let fd = Arc::new(fd);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, demanded) = crossbeam_channel::unbounded();
        let handler = {
            let (fd, stop) = (Arc::clone(&fd), Arc::clone(&stop));
            std::thread::spawn(move || serve(&fd, &stop, start, ipa, &page, &tx))
        };
        Ok(PostCopy {
            fd,
            start,
            len,
            stop,
            handler: Some(handler),
            demanded,
        })
    }

    /// Stops the handler, unregisters the range and returns the IPAs demanded.
    pub fn finish(mut self) -> Result<Vec<u64>, KvmError> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handler.take() {
            h.join()
                .map_err(|_| KvmError::UnexpectedExit("the fault handler panicked".into()))??;
        }
        let mut range = UffdioRange {
            start: self.start,
            len: self.len,
        };
        ioctl(
            &self.fd,
            UFFDIO_UNREGISTER,
            &mut range,
            "ioctl(UFFDIO_UNREGISTER)",
        )?;
        Ok(self.demanded.try_iter().collect())
    }
}

impl Drop for PostCopy {
    fn drop(&mut self) {
        // A PostCopy dropped without finish: stop the thread; closing the fd unregisters.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}

/// The handler: waits for page faults (polling, so a stop is seen within 10 ms), fetches each
/// page (a fill here; the source's bytes in a real migration) and places it.
fn serve(
    fd: &OwnedFd,
    stop: &AtomicBool,
    start: u64,
    ipa: u64,
    page: &[u8],
    demanded: &crossbeam_channel::Sender<u64>,
) -> Result<(), KvmError> {
    while !stop.load(Ordering::SeqCst) {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, ours.
        if unsafe { libc::poll(&mut p, 1, 10) } <= 0 {
            continue;
        }
        let mut msg = UffdMsg {
            event: 0,
            _reserved: [0; 7],
            flags: 0,
            address: 0,
            _rest: 0,
        };
        // SAFETY: reads at most one uffd_msg into our own structure of that size.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut msg as *mut UffdMsg).cast(),
                std::mem::size_of::<UffdMsg>(),
            )
        };
        if n != std::mem::size_of::<UffdMsg>() as isize || msg.event != UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let addr = msg.address & !(PAGE - 1);
        copy_page(fd, addr, page)?;
        let _ = demanded.send(ipa + (addr - start));
    }
    Ok(())
}
