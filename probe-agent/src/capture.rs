//! What the agent has attached and what each attachment captured.
//!
//! [`CaptureStats`] is the ring buffer's sink: per-probe counters in flat
//! arrays indexed by probe slot, so recording an event is an index and an
//! add, with no lookup or allocation.

use probe_common::{MAX_PROBES, ProbeCounters};

use crate::ring::{DecodeError, RecordSink, SyscallEvent};

/// User-space counts per probe slot.
pub struct CaptureStats {
    received: Vec<u64>,
    last: Vec<Option<SyscallEvent>>,
    decode_errors: u64,
    /// Records naming a slot that is not attached (detached while in flight).
    orphaned: u64,
}

impl Default for CaptureStats {
    fn default() -> Self {
        Self {
            received: vec![0; MAX_PROBES as usize],
            last: vec![None; MAX_PROBES as usize],
            decode_errors: 0,
            orphaned: 0,
        }
    }
}

impl CaptureStats {
    pub fn received(&self, probe: u32) -> u64 {
        self.received.get(probe as usize).copied().unwrap_or(0)
    }

    /// The most recent event of a probe, for a human-readable sample.
    pub fn last(&self, probe: u32) -> Option<&SyscallEvent> {
        self.last.get(probe as usize).and_then(Option::as_ref)
    }

    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    pub fn orphaned(&self) -> u64 {
        self.orphaned
    }

    /// Forgets a probe slot's counts, when the slot is freed or reused.
    pub fn reset(&mut self, probe: u32) {
        if let Some(r) = self.received.get_mut(probe as usize) {
            *r = 0;
        }
        if let Some(l) = self.last.get_mut(probe as usize) {
            *l = None;
        }
    }
}

impl RecordSink for CaptureStats {
    fn syscall(&mut self, event: &SyscallEvent) {
        let slot = event.probe_id as usize;
        match self.received.get_mut(slot) {
            Some(count) => {
                *count += 1;
                self.last[slot] = Some(*event);
            }
            None => self.orphaned += 1,
        }
    }

    fn decode_error(&mut self, _error: DecodeError) {
        self.decode_errors += 1;
    }
}

/// A probe's totals: what the kernel counted and what user space received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeTotals {
    /// Events that matched the probe's targets in the kernel.
    pub matched: u64,
    /// Records received and decoded in user space.
    pub captured: u64,
    /// Records the kernel could not reserve room for.
    pub lost_ring_full: u64,
    /// Records dropped because an argument could not be read.
    pub lost_read_failed: u64,
}

impl ProbeTotals {
    pub fn new(kernel: ProbeCounters, captured: u64) -> Self {
        Self {
            matched: kernel.matched,
            captured,
            lost_ring_full: kernel.ringbuf_full,
            lost_read_failed: kernel.read_failed,
        }
    }

    pub fn lost(&self) -> u64 {
        self.lost_ring_full + self.lost_read_failed
    }

    /// Records emitted but not yet drained from the ring.
    pub fn in_flight(&self) -> u64 {
        self.matched.saturating_sub(self.captured + self.lost())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(probe_id: u32) -> SyscallEvent {
        SyscallEvent {
            probe_id,
            ktime_ns: 1,
            pid: 2,
            tid: 2,
            cgroup_id: 3,
            comm: [0; 16],
            args: [0; 6],
        }
    }

    #[test]
    fn counts_per_probe_and_keeps_the_last_event() {
        let mut stats = CaptureStats::default();
        stats.syscall(&event(3));
        stats.syscall(&event(3));
        stats.syscall(&event(MAX_PROBES + 1));
        stats.decode_error(DecodeError::UnknownKind { kind: 9 });
        assert_eq!(stats.received(3), 2);
        assert_eq!(stats.received(4), 0);
        assert_eq!(stats.last(3).map(|e| e.probe_id), Some(3));
        assert_eq!((stats.orphaned(), stats.decode_errors()), (1, 1));
        stats.reset(3);
        assert_eq!(stats.received(3), 0);
        assert!(stats.last(3).is_none());
    }

    #[test]
    fn totals_balance() {
        let kernel = ProbeCounters {
            matched: 10,
            emitted: 7,
            ringbuf_full: 2,
            read_failed: 1,
        };
        let totals = ProbeTotals::new(kernel, 6);
        assert_eq!(totals.lost(), 3);
        assert_eq!(totals.in_flight(), 1);
    }
}
