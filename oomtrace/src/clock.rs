//! The clocks events are stamped with and shown in: eBPF timestamps are CLOCK_MONOTONIC
//! nanoseconds; output shows seconds since start or unix time. A leaf: imports nothing of ours.

/// Clock conversion: eBPF timestamps are CLOCK_MONOTONIC nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, in ns, taken at start.
    pub realtime_offset_ns: i128,
    pub start_mono_ns: u64,
    /// CLOCK_BOOTTIME at start: /proc/<pid>/stat start times count from boot on this clock.
    pub start_boot_ns: u64,
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

impl Clock {
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_offset_ns: real as i128 - mono as i128,
            start_mono_ns: mono,
            start_boot_ns: clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub fn unix_seconds(&self, ts_ns: u64) -> f64 {
        (ts_ns as i128 + self.realtime_offset_ns) as f64 / 1e9
    }

    pub fn since_start(&self, ts_ns: u64) -> f64 {
        ts_ns.saturating_sub(self.start_mono_ns) as f64 / 1e9
    }
}
