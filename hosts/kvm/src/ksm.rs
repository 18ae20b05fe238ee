//! KSM, the host-wide page-merging daemon, turned on for a measurement and put back after.
//!
//! KSM is global state (`/sys/kernel/mm/ksm`): turning it on scans every process's
//! `MADV_MERGEABLE` memory, not just this VM's. So it is opt-in (a caller asks for it), one
//! [`KsmDaemon`] at a time in a process, and its knobs go back to what they were on drop, also
//! when a test panics.

use std::time::{Duration, Instant};

use crate::KvmError;

const KSM: &str = "/sys/kernel/mm/ksm";

/// One user of the daemon at a time in this process.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// KSM running fast for a measurement; the knobs as they were come back on drop.
pub struct KsmDaemon {
    saved: Vec<(&'static str, String)>,
    _one: parking_lot::MutexGuard<'static, ()>,
}

fn knob(name: &str) -> Result<u64, KvmError> {
    std::fs::read_to_string(format!("{KSM}/{name}"))
        .map_err(|e| KvmError::call("read /sys/kernel/mm/ksm", e, "needs CONFIG_KSM"))?
        .trim()
        .parse()
        .map_err(|_| KvmError::Layout {
            what: "a /sys/kernel/mm/ksm counter",
            value: 0,
            fix: "a decimal number (is this a Linux kernel with KSM?)",
        })
}

impl KsmDaemon {
    /// Starts KSM scanning 20,000 pages every millisecond, after the knobs are saved. Fails
    /// without KSM (`CONFIG_KSM` off) or without root.
    pub fn start() -> Result<Self, KvmError> {
        let one = ONE_AT_A_TIME.lock();
        let mut saved = Vec::new();
        for k in ["run", "pages_to_scan", "sleep_millisecs"] {
            let v = std::fs::read_to_string(format!("{KSM}/{k}"))
                .map_err(|e| KvmError::call("read /sys/kernel/mm/ksm", e, "needs CONFIG_KSM"))?;
            saved.push((k, v.trim().to_string()));
        }
        let d = KsmDaemon { saved, _one: one };
        for (k, v) in [
            ("pages_to_scan", "20000"),
            ("sleep_millisecs", "1"),
            ("run", "1"),
        ] {
            std::fs::write(format!("{KSM}/{k}"), v)
                .map_err(|e| KvmError::call("write /sys/kernel/mm/ksm", e, "run as root"))?;
        }
        Ok(d)
    }

    /// Pages sharing a merged page, host-wide (`pages_sharing`).
    pub fn sharing() -> Result<u64, KvmError> {
        knob("pages_sharing")
    }

    /// Waits until KSM has scanned all mergeable memory twice since the call (a page is
    /// merged at the latest on the second scan that sees it unchanged), or `limit` passed.
    /// Returns whether the scans completed.
    pub fn settle(&self, limit: Duration) -> Result<bool, KvmError> {
        let start = knob("full_scans")?;
        let deadline = Instant::now() + limit;
        while knob("full_scans")? < start + 2 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(true)
    }
}

impl Drop for KsmDaemon {
    fn drop(&mut self) {
        for (k, v) in self.saved.iter().rev() {
            let _ = std::fs::write(format!("{KSM}/{k}"), v);
        }
    }
}

impl std::fmt::Debug for KsmDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KsmDaemon")
            .field("saved", &self.saved)
            .finish()
    }
}
