//! The kernel's counters through `KVM_GET_STATS_FD` (Documentation/virt/kvm/api.rst 4.133): a
//! header, descriptors (`flags, exponent, size, offset, bucket_size, name[name_size]`) and
//! 64-bit data, read with `pread` so each read is the value now.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::FileExt;

use crate::KvmError;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;
/// Descriptors this crate reads at most (the kernel has 47 per vCPU, 16 per VM).
const MAX_DESCRIPTORS: u32 = 4096;
/// Longest name the kernel uses is 48 bytes; refuse absurd headers.
const MAX_NAME: u32 = 256;

/// One statistics file and where each named counter lives in it.
#[derive(Debug)]
pub struct Stats {
    file: File,
    offsets: Vec<(String, u64)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Stats {
    /// Opens the statistics of a VM or vCPU fd.
    pub fn open(fd: RawFd, call: &'static str) -> Result<Self, KvmError> {
        // SAFETY: an ioctl without argument on a KVM fd the caller owns.
        let stats = unsafe { libc::ioctl(fd, KVM_GET_STATS_FD as _) };
        if stats < 0 {
            return Err(KvmError::last_os(
                call,
                "needs Linux 5.14 or later (KVM_CAP_BINARY_STATS_FD)",
            ));
        }
        // SAFETY: the fd was just returned to us and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(stats) };
        let bad = |what: &str| {
            KvmError::call(
                call,
                std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
                "the kernel's stats layout is not the documented one",
            )
        };
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| KvmError::call(call, e, "the stats fd is unreadable"))?;
        let name_size = u32_at(&header, 4);
        let num_desc = u32_at(&header, 8);
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        if name_size > MAX_NAME || num_desc > MAX_DESCRIPTORS {
            return Err(bad("header out of range"));
        }
        let entry = 16 + name_size as usize;
        let mut descs = vec![0u8; entry * num_desc as usize];
        file.read_exact_at(&mut descs, desc_offset)
            .map_err(|e| KvmError::call(call, e, "the descriptors are unreadable"))?;
        let offsets = descs
            .chunks_exact(entry)
            .map(|d| {
                let offset = u64::from(u32_at(d, 8));
                let name = &d[16..];
                let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                (
                    String::from_utf8_lossy(&name[..len]).into_owned(),
                    data_offset + offset,
                )
            })
            .collect();
        Ok(Stats { file, offsets })
    }

    /// The current value of the counter `name` (the first 64-bit value for histograms).
    pub fn read(&self, name: &str) -> Result<u64, KvmError> {
        let Some(&(_, at)) = self.offsets.iter().find(|(n, _)| n == name) else {
            return Err(KvmError::call(
                "stats lookup",
                std::io::Error::new(std::io::ErrorKind::NotFound, name.to_string()),
                "this kernel does not export that counter",
            ));
        };
        let mut v = [0u8; 8];
        self.file
            .read_exact_at(&mut v, at)
            .map_err(|e| KvmError::call("pread(stats)", e, "the stats fd is unreadable"))?;
        Ok(u64::from_le_bytes(v))
    }
}
