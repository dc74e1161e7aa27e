//! Converting the kernel's monotonic timestamps to wall-clock time.

use nix::time::{ClockId, clock_gettime};

/// Offset between `CLOCK_REALTIME` and `CLOCK_MONOTONIC`, taken once. Adding it
/// to a `bpf_ktime_get_ns` value gives Unix-epoch nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        // Both clocks always exist on Linux; a zero reading would only skew times.
        let ns = |id| {
            clock_gettime(id).map_or(0, |t| {
                i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
            })
        };
        let mono_before = ns(ClockId::CLOCK_MONOTONIC);
        let real = ns(ClockId::CLOCK_REALTIME);
        let mono_after = ns(ClockId::CLOCK_MONOTONIC);
        Self {
            offset_ns: real - (mono_before + mono_after) / 2,
        }
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp.
    pub fn to_unix_ns(&self, ktime_ns: u64) -> i64 {
        (i128::from(ktime_ns) + self.offset_ns) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_now_to_now() {
        let clock = WallClock::now();
        let mono = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
        let mono_ns = mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as i64;
        assert!((clock.to_unix_ns(mono_ns) - unix).abs() < 50_000_000);
    }
}
