//! Draining the ring buffer and decoding its records.
//!
//! The programs submit without waking the reader, so the reader wakes on a
//! timer, or early when a program saw the ring pass its watermark. Records
//! are decoded in place into a stack value: nothing is allocated per event.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use probe_common::{COMM_LEN, RECORD_HEADER_LEN, RECORD_KIND_EVENT};

use crate::loader::RingPositions;

/// One record as it sits in the ring: the header decoded, the payload not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent<'a> {
    pub probe_id: u32,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ktime_ns: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// The whole record, header included: field offsets are from its start.
    pub record: &'a [u8],
}

impl RawEvent<'_> {
    /// The command name up to its first NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {expected}-byte layout")]
    Short { len: usize, expected: usize },
    #[error("record kind {kind} is unknown")]
    UnknownKind { kind: u32 },
    #[error("record names probe {probe_id}, which is not attached")]
    UnknownProbe { probe_id: u32 },
}

/// Receives what [`RingReader::drain`] takes from the ring.
pub trait RecordSink {
    fn event(&mut self, event: &RawEvent<'_>);
    fn decode_error(&mut self, error: DecodeError);
}

/// Decodes a record's header; the payload is left to the probe's schema.
pub fn decode(bytes: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    let header_len = RECORD_HEADER_LEN as usize;
    if bytes.len() < header_len {
        return Err(DecodeError::Short {
            len: bytes.len(),
            expected: header_len,
        });
    }
    let kind = u32_at(bytes, 0);
    if kind != RECORD_KIND_EVENT {
        return Err(DecodeError::UnknownKind { kind });
    }
    let pid_tgid = u64_at(bytes, 16);
    let mut comm = [0; COMM_LEN];
    comm.copy_from_slice(&bytes[32..32 + COMM_LEN]);
    Ok(RawEvent {
        probe_id: u32_at(bytes, 4),
        ktime_ns: u64_at(bytes, 8),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id: u64_at(bytes, 24),
        comm,
        record: bytes,
    })
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(word)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(word)
}

/// How full the ring buffer is, at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingUsage {
    /// Bytes waiting to be drained (records, their headers and padding).
    pub used_bytes: u64,
    /// The ring's data size.
    pub size_bytes: u64,
}

/// The consumer side of the `EVENTS` ring buffer.
pub struct RingReader {
    ring: RingBuf<MapData>,
    positions: Option<RingPositions>,
    size_bytes: u32,
}

impl RingReader {
    pub(crate) fn new(
        ring: RingBuf<MapData>,
        positions: Option<RingPositions>,
        size_bytes: u32,
    ) -> Self {
        Self {
            ring,
            positions,
            size_bytes,
        }
    }

    /// The fill level now, read from the ring's producer and consumer
    /// positions; `None` if they could not be mapped.
    pub fn usage(&self) -> Option<RingUsage> {
        let positions = self.positions.as_ref()?;
        Some(RingUsage {
            used_bytes: positions.used_bytes(),
            size_bytes: u64::from(self.size_bytes),
        })
    }

    /// Takes every record currently in the ring. Returns how many it took.
    pub fn drain(&mut self, sink: &mut impl RecordSink) -> u64 {
        let mut taken = 0;
        while let Some(item) = self.ring.next() {
            taken += 1;
            match decode(&item) {
                Ok(event) => sink.event(&event),
                Err(error) => sink.decode_error(error),
            }
        }
        taken
    }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(kind: u32, pid: u32, tid: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&7u32.to_ne_bytes());
        bytes.extend_from_slice(&123_456u64.to_ne_bytes());
        bytes.extend_from_slice(&((u64::from(pid) << 32) | u64::from(tid)).to_ne_bytes());
        bytes.extend_from_slice(&99u64.to_ne_bytes());
        bytes.extend_from_slice(b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0");
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn decodes_a_header() {
        let bytes = record(RECORD_KIND_EVENT, 42, 43, &[1, 2, 3]);
        let event = decode(&bytes).expect("valid record");
        assert_eq!(event.probe_id, 7);
        assert_eq!(event.ktime_ns, 123_456);
        assert_eq!((event.pid, event.tid), (42, 43));
        assert_eq!(event.cgroup_id, 99);
        assert_eq!(event.comm(), b"cat");
        assert_eq!(event.record.len(), 51);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let full = record(RECORD_KIND_EVENT, 1, 1, &[]);
        assert_eq!(
            decode(&full[..10]),
            Err(DecodeError::Short {
                len: 10,
                expected: 48
            })
        );
        assert_eq!(
            decode(&record(9, 1, 1, &[])),
            Err(DecodeError::UnknownKind { kind: 9 })
        );
    }
}
