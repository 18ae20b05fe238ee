//! Virtual time, in sample intervals ("ticks"), and the order in which vCPUs take them.
//!
//! The reference order is tick by tick, vCPU 0 first within a tick; the host's scheduled
//! events come before the records of their tick. Most intervals concern one vCPU only (a
//! record on a writable page, a sample lost in a blackout), so a vCPU runs ahead through
//! those alone, and only an interval that calls into the strategy (a fault, a buffer-full, a
//! host buffer interrupt) waits for its turn. A vCPU never runs past the turn of another
//! vCPU's pending strategy call, so every interval sees the host exactly as it would in the
//! reference order: the result is the same, and the common case is a tight loop.

use spe_policies::SpuWrite;

use super::{SimError, Waiting};
use crate::scenario::ScheduledEvent;

/// The first tick at or after `from` whose time has reached `at_ns` (the reference loop's own
/// test, so rounding cannot move an event).
fn tick_of(at_ns: f64, interval: f64, from: u64) -> u64 {
    let reached = |t: u64| at_ns <= t as f64 * interval;
    let estimate = (at_ns / interval).ceil();
    if estimate.is_nan() || estimate >= (1u64 << 62) as f64 {
        return u64::MAX; // never, in any run that fits in memory
    }
    let mut t = (estimate.max(0.0) as u64).max(from);
    while t > from && reached(t - 1) {
        t -= 1;
    }
    while !reached(t) {
        t += 1;
    }
    t
}

impl super::Sim<'_> {
    /// Runs ticks `0..ticks` with the scheduled `events` (sorted by time); returns the sum
    /// over ticks of the bytes pinned at each tick's end.
    pub(super) fn run_ticks(
        &mut self,
        events: &[ScheduledEvent],
        interval: f64,
        ticks: u64,
    ) -> Result<u128, SimError> {
        // The pinned-bytes timeline has a point every `sample_every` ticks, from tick 0.
        let sample_every = (ticks / 100).max(1);
        let mut next_event = 0;
        let mut pinned = Pinned::default();
        let mut t0 = 0;
        while t0 < ticks {
            let now = t0 as f64 * interval;
            pinned.upto(t0, self.pinned_now);
            while let Some(e) = events.get(next_event).filter(|e| e.at_ms * 1e6 <= now) {
                self.host_event(e.kind, e.fraction, now)?;
                next_event += 1;
            }
            if self.cpus.iter().all(|c| c.disabled) {
                self.m.pinned_idle_peak_bytes = self.m.pinned_idle_peak_bytes.max(self.pinned_now);
            }
            // The window ends after the next timeline point, or before the next host event.
            let sample_tick = t0.div_ceil(sample_every) * sample_every;
            let mut t1 = (sample_tick + 1).min(ticks);
            if let Some(e) = events.get(next_event) {
                t1 = t1.min(tick_of(e.at_ms * 1e6, interval, t0 + 1));
            }
            self.run_window(t0, t1, interval, &mut pinned)?;
            pinned.upto(t1, self.pinned_now);
            if t1 == sample_tick + 1 {
                let at = sample_tick as f64 * interval;
                self.m
                    .pinned_timeline
                    .push([at / 1e6, self.pinned_now as f64]);
            }
            t0 = t1;
        }
        Ok(pinned.sum)
    }

    /// Ticks `t0..t1`, in which no host event is scheduled, each vCPU running ahead where it
    /// can (or, with [`super::RunOptions::lockstep`], in the reference order).
    fn run_window(
        &mut self,
        t0: u64,
        t1: u64,
        interval: f64,
        pinned: &mut Pinned,
    ) -> Result<(), SimError> {
        let n = self.cpus.len();
        if self.lockstep {
            for tick in t0..t1 {
                pinned.upto(tick, self.pinned_now);
                for v in 0..n as u32 {
                    self.sample(v, tick as f64 * interval, true)?;
                }
            }
            return Ok(());
        }
        // Per vCPU: the next tick to take, and the interval waiting for its turn, if any.
        let mut next = vec![t0; n];
        let mut waiting: Vec<Option<Waiting>> = vec![None; n];
        // The earliest waiting interval: (tick, lowest vCPU waiting there).
        let mut first: Option<(u64, usize)> = None;
        loop {
            for v in 0..n {
                if waiting[v].is_some() {
                    continue;
                }
                // Not past another vCPU's waiting interval: at the same tick, only a vCPU
                // with a lower number goes first. The smallest `next[w] + (v < w)` over the
                // waiting `w` is the earliest waiting tick if a lower vCPU waits there, else
                // the tick after it.
                let bound = match first {
                    Some((tick, w)) if w < v => tick,
                    Some((tick, _)) => tick + 1,
                    None => t1,
                }
                .min(t1);
                while next[v] < bound && waiting[v].is_none() {
                    // A burst where one applies, then one interval the general way (a page
                    // crossing, a stall, a call into the strategy...).
                    if let Some((tick, wait)) = self.burst(v as u32, next[v], bound, interval) {
                        next[v] = tick;
                        waiting[v] = wait;
                        if next[v] == bound || wait.is_some() {
                            break;
                        }
                    }
                    let now = next[v] as f64 * interval;
                    waiting[v] = self.sample(v as u32, now, false)?;
                    if waiting[v].is_none() {
                        next[v] += 1;
                    }
                }
                if waiting[v].is_some() && first.is_none_or(|f| (next[v], v) < f) {
                    first = Some((next[v], v));
                }
            }
            // The earliest waiting interval (lowest vCPU first) goes now: every vCPU has run
            // up to it.
            let Some((tick, v)) = first else {
                return Ok(());
            };
            let now = tick as f64 * interval;
            pinned.upto(tick, self.pinned_now);
            match waiting[v].take() {
                Some(Waiting::Sample) => {
                    self.sample(v as u32, now, true)?;
                }
                Some(Waiting::HostBufferFull) => {
                    if let Some(s) = self.shadow {
                        self.host_buffer_full(s, v as u32, now)?;
                    }
                }
                None => {}
            }
            next[v] = tick + 1;
            first = (0..n)
                .filter(|w| waiting[*w].is_some())
                .map(|w| (next[w], w))
                .min();
        }
    }
}

impl super::Sim<'_> {
    /// Ticks `from..to` of vCPU `v`, or the first of them, as one burst of records when
    /// nothing but the SPU's writes can happen in them: profiling on, no blackout, no
    /// operation latency modelled. Returns the next tick to take and what waits there; `None`
    /// when a burst does not apply. The records are the ones [`Self::sample`] would draw.
    #[inline(always)]
    fn burst(
        &mut self,
        v: u32,
        from: u64,
        to: u64,
        interval: f64,
    ) -> Option<(u64, Option<Waiting>)> {
        let now = from as f64 * interval;
        let c = &mut self.cpus[v as usize];
        let quiet = c.windows.at(now).is_none() && !(c.disabled || c.fatal || c.unpredictable);
        if self.spu.op_latency_ns > 0.0 || self.spu.discard_mode || !quiet {
            return None;
        }
        // Per-task profiling: a burst ends at the next context switch; ticks while the task is
        // away pass with nothing due.
        let to = match c.task {
            Some(t) if t.left == 0 => return None,
            Some(t) if t.away => {
                let end = to.min(from + t.left);
                self.executed(v, end - from);
                return Some((end, None));
            }
            Some(t) => to.min(from + t.left),
            None => to,
        };
        let b = Burst { v, from, to, now };
        let taken = match self.shadow {
            Some(_) => self.host_buffer_burst(b),
            None => self.guest_page_burst(b),
        };
        if let Some((tick, wait)) = taken {
            // The interval a host buffer-full waits at was taken (its record is written).
            let n = tick - from + u64::from(wait.is_some());
            self.m.samples_due += n;
            self.executed(v, n);
        }
        taken
    }

    /// The guest owns the buffer: records written one after another onto the page the SPU
    /// wrote last while it stays writable (same stage 2 generation) and the buffer does not
    /// fill. Stops before the record that would cross the page.
    fn guest_page_burst(&mut self, b: Burst) -> Option<(u64, Option<Waiting>)> {
        let Burst { v, from, to, now } = b;
        let generation = self.host.model.generation();
        let c = &mut self.cpus[v as usize];
        let (page, ipa, g) = c.last_page?;
        if g != generation || (c.base + c.ptr) & !0xfff != page {
            return None;
        }
        let bytes = self.guest.ram.slice_mut(ipa, 0x1000)?;
        let records = &self.records;
        let start_ptr = c.ptr;
        let mut tick = from;
        while tick < to {
            let mut rng = c.rng;
            let rec = rng.pick(records);
            // The offset in this page: a record that ended on the page's last byte leaves the
            // SPU at the start of the next page, which is not this slice.
            let (off, len) = ((c.base + c.ptr - page) as usize, rec.len());
            if off + len > 0x1000 || c.ptr + len as u64 + self.max_record > c.size {
                break;
            }
            // Records are 44 or 64 bytes: fixed-size copies compile to a few moves.
            match (<&[u8; 64]>::try_from(rec), <&[u8; 44]>::try_from(rec)) {
                (Ok(r), _) => bytes[off..off + 64].copy_from_slice(r),
                (_, Ok(r)) => bytes[off..off + 44].copy_from_slice(r),
                _ => bytes[off..off + len].copy_from_slice(rec),
            }
            c.rng = rng;
            c.starts.push(c.ptr as u32);
            c.ptr += len as u64;
            tick += 1;
        }
        let taken = tick - from;
        if taken > 0 {
            self.host.mark_dirty(ipa);
            self.m.records_written += taken;
            self.m.spu_bytes += c.ptr - start_ptr;
        }
        let _ = now;
        Some((tick, None))
    }

    /// shadow-buffer: records written into the host buffer through the SPU port until the
    /// host buffer fills.
    fn host_buffer_burst(&mut self, b: Burst) -> Option<(u64, Option<Waiting>)> {
        let Burst { v, from, to, now } = b;
        let c = &mut self.cpus[v as usize];
        let spu = c.spu.as_ref()?;
        let (records, rng) = (&self.records, &mut c.rng);
        let mut left = to - from;
        let mut bytes = 0u64;
        let mut last_len = 0u64;
        let (taken, last) = spu.write_each(|| {
            left = left.checked_sub(1)?;
            let r = rng.pick(records); // the draw `sample` makes
            bytes += r.len() as u64;
            last_len = r.len() as u64;
            Some(r)
        });
        let written = taken
            - u64::from(!matches!(
                last,
                SpuWrite::Written | SpuWrite::HostBufferFull
            ));
        self.m.records_written += written;
        self.m.unexplained_loss += taken - written;
        self.m.spu_bytes += if written == taken {
            bytes
        } else {
            bytes - last_len
        };
        if written > 0 {
            self.cpus[v as usize].oldest_uncopied.get_or_insert(now);
        }
        Some(match last {
            SpuWrite::HostBufferFull => (from + taken - 1, Some(Waiting::HostBufferFull)),
            _ => (from + taken, None),
        })
    }
}

/// A burst's ticks `from..to` of vCPU `v`; `now` is the time of tick `from`.
#[derive(Clone, Copy, Debug)]
struct Burst {
    v: u32,
    from: u64,
    to: u64,
    now: f64,
}

/// The sum over ticks of the bytes pinned at each tick's end, added up lazily: pins change
/// only in strategy calls, so the value holds from one call to the next.
#[derive(Debug, Default)]
struct Pinned {
    sum: u128,
    /// Ticks before this one are in `sum`.
    counted: u64,
}

impl Pinned {
    /// Counts ticks up to (not including) `tick` at `bytes`.
    fn upto(&mut self, tick: u64, bytes: u64) {
        if tick > self.counted {
            self.sum += u128::from(bytes) * u128::from(tick - self.counted);
            self.counted = tick;
        }
    }
}
