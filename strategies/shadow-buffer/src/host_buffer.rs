//! The host-owned SPU buffer of one vCPU: two halves, so the SPU restarts on one while the
//! other is copied (double buffering). Its size is the host's choice, fixed at construction:
//! nothing the guest programs changes how much host memory it takes.

/// What the SPU did with one record written into the host buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpuWrite {
    /// The record is in the host buffer.
    Written,
    /// The record is in the host buffer and filled it (spec sheet §1.11 rule 4: PMBPTR went
    /// past `LIMIT − 2^MaxSize`): the SPU stopped with PMBSR.S = 1, BSC = buffer full, and the
    /// host must handle the buffer management event before profiling goes on.
    HostBufferFull,
    /// Profiling is stopped for this vCPU (buffer disabled, a guest-visible event pending, a
    /// host buffer-full not yet handled, or the guest's registers break the enable rules of
    /// §1.11 rule 3): the record is not taken.
    NotProfiling,
    /// The record is longer than the SPU's largest record (2^PMSIDR_EL1.MaxSize): no SPU
    /// writes such a record; it is refused rather than overrunning the host buffer.
    Oversized,
}

/// The two halves and the SPU's pointer into the active one.
#[derive(Debug)]
pub(crate) struct HostBuffer {
    halves: [Vec<u8>; 2],
    active: usize,
    /// Bytes the SPU wrote into the active half.
    pub(crate) written: usize,
    /// The SPU's limit in the active half: it stops (buffer full) once `written` passes
    /// `window − max_record`.
    pub(crate) window: usize,
    /// The SPU is stopped on a host buffer-full until the host handles it.
    pub(crate) stopped: bool,
}

impl HostBuffer {
    /// Two halves of `half` bytes each.
    pub(crate) fn new(half: usize) -> Self {
        HostBuffer {
            halves: [vec![0; half], vec![0; half]],
            active: 0,
            written: 0,
            window: 0,
            stopped: false,
        }
    }

    /// Bytes of host memory held (both halves).
    pub(crate) fn bytes(&self) -> u64 {
        (self.halves[0].len() + self.halves[1].len()) as u64
    }

    /// The capacity of one half.
    pub(crate) fn half(&self) -> usize {
        self.halves[0].len()
    }

    /// The complete records the SPU wrote into the active half.
    pub(crate) fn pending(&self) -> &[u8] {
        &self.halves[self.active][..self.written]
    }

    /// Appends one record as the SPU would; `max_record` is 2^MaxSize.
    pub(crate) fn spu_write(&mut self, record: &[u8], max_record: usize) -> SpuWrite {
        if record.len() > max_record {
            return SpuWrite::Oversized;
        }
        if self.stopped || self.window < max_record || self.written + record.len() > self.window {
            return SpuWrite::NotProfiling;
        }
        let at = self.written;
        self.halves[self.active][at..at + record.len()].copy_from_slice(record);
        self.written += record.len();
        // §1.11 rule 4: full once another largest record might not fit.
        if self.written > self.window - max_record {
            self.stopped = true;
            SpuWrite::HostBufferFull
        } else {
            SpuWrite::Written
        }
    }

    /// Restarts the SPU on the other half with `window` bytes (the copy of the old half is
    /// done by then in this model; in KVM the interrupt handler flips first and the vCPU
    /// thread copies later).
    pub(crate) fn flip(&mut self, window: usize) {
        self.active ^= 1;
        self.written = 0;
        self.window = window.min(self.half());
        self.stopped = false;
    }

    /// Forgets what the active half holds and sets a new window (after a guest register write
    /// or a guest-visible event: what the hardware would not have written is dropped).
    pub(crate) fn reset(&mut self, window: usize) {
        self.written = 0;
        self.window = window.min(self.half());
        self.stopped = false;
    }

    /// What a migration carries: the records in the active half not yet copied, the window
    /// and whether the SPU stands stopped at a host buffer-full.
    pub(crate) fn save(&self) -> (Vec<u8>, usize, bool) {
        (self.pending().to_vec(), self.window, self.stopped)
    }

    /// Two halves of `half` bytes holding `pending` in the active one, as saved; `None` when
    /// the saved state does not fit (a different host buffer size).
    pub(crate) fn restore(
        half: usize,
        pending: &[u8],
        window: usize,
        stopped: bool,
    ) -> Option<Self> {
        if pending.len() > half || window > half {
            return None;
        }
        let mut b = HostBuffer::new(half);
        b.halves[0][..pending.len()].copy_from_slice(pending);
        b.written = pending.len();
        b.window = window;
        b.stopped = stopped;
        Some(b)
    }

    /// Stops the SPU with no window (buffer disabled or a guest event pending).
    pub(crate) fn park(&mut self) {
        self.written = 0;
        self.window = 0;
        self.stopped = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spu_stops_when_another_largest_record_might_not_fit() {
        let mut b = HostBuffer::new(256);
        b.reset(256);
        assert_eq!(b.spu_write(&[1; 64], 64), SpuWrite::Written); // 64
        assert_eq!(b.spu_write(&[2; 64], 64), SpuWrite::Written); // 128
        assert_eq!(b.spu_write(&[3; 64], 64), SpuWrite::Written); // 192 = 256 - 64: fits
        assert_eq!(b.spu_write(&[4; 4], 64), SpuWrite::HostBufferFull); // 196 > 192
        assert_eq!(b.spu_write(&[5; 4], 64), SpuWrite::NotProfiling);
        assert_eq!(b.pending().len(), 196);
        b.flip(100);
        assert_eq!(b.window, 100);
        assert_eq!(b.spu_write(&[6; 40], 64), SpuWrite::HostBufferFull); // 40 > 100 - 64
    }

    #[test]
    fn records_longer_than_max_size_and_windows_below_it_are_refused() {
        let mut b = HostBuffer::new(4096);
        b.reset(4096);
        assert_eq!(b.spu_write(&[0; 65], 64), SpuWrite::Oversized);
        b.reset(63);
        assert_eq!(b.spu_write(&[0; 8], 64), SpuWrite::NotProfiling);
        b.park();
        assert_eq!(b.spu_write(&[0; 8], 64), SpuWrite::NotProfiling);
    }
}
