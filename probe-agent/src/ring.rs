//! Draining the ring buffer and decoding its records.
//!
//! The programs submit without waking the reader, so the reader wakes on a
//! timer, or early when a program saw the ring pass its watermark. Records
//! are decoded in place into a stack value: nothing is allocated per event.

use std::{os::fd::AsRawFd, time::Duration};

use aya::maps::{MapData, RingBuf};
use probe_common::{COMM_LEN, RAW_ARGS, RecordHeader, RecordKind, SyscallRecord};
use tokio::io::unix::AsyncFd;

/// One decoded syscall/tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    pub probe_id: u32,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ktime_ns: u64,
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub args: [u64; RAW_ARGS],
}

impl SyscallEvent {
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
}

/// Receives what [`RingReader::drain`] takes from the ring.
pub trait RecordSink {
    fn syscall(&mut self, event: &SyscallEvent);
    fn decode_error(&mut self, error: DecodeError);
}

/// Decodes one record; the layout is [`SyscallRecord`] in native byte order.
pub fn decode(bytes: &[u8]) -> Result<SyscallEvent, DecodeError> {
    let header_len = size_of::<RecordHeader>();
    if bytes.len() < header_len {
        return Err(DecodeError::Short {
            len: bytes.len(),
            expected: header_len,
        });
    }
    let kind = u32_at(bytes, 0);
    if kind != RecordKind::Syscall as u32 {
        return Err(DecodeError::UnknownKind { kind });
    }
    let expected = size_of::<SyscallRecord>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            len: bytes.len(),
            expected,
        });
    }
    let pid_tgid = u64_at(bytes, 16);
    let mut comm = [0; COMM_LEN];
    comm.copy_from_slice(&bytes[32..32 + COMM_LEN]);
    let mut args = [0; RAW_ARGS];
    for (i, arg) in args.iter_mut().enumerate() {
        *arg = u64_at(bytes, header_len + i * 8);
    }
    Ok(SyscallEvent {
        probe_id: u32_at(bytes, 4),
        ktime_ns: u64_at(bytes, 8),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id: u64_at(bytes, 24),
        comm,
        args,
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_ne_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(word)
}

/// The consumer side of the `EVENTS` ring buffer.
pub struct RingReader {
    ring: RingBuf<MapData>,
}

impl RingReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Takes every record currently in the ring. Returns how many it took.
    pub fn drain(&mut self, sink: &mut impl RecordSink) -> u64 {
        let mut taken = 0;
        while let Some(item) = self.ring.next() {
            taken += 1;
            match decode(&item) {
                Ok(event) => sink.syscall(&event),
                Err(error) => sink.decode_error(error),
            }
        }
        taken
    }

    /// Makes the reader wait asynchronously for wake-ups.
    pub fn into_async(self) -> std::io::Result<AsyncRingReader> {
        // SAFETY: the ring's fd is owned by `self`, which the AsyncFd owns, so
        // it stays open for as long as it is registered.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(self) }?;
        Ok(AsyncRingReader { fd })
    }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// A [`RingReader`] registered with the tokio reactor.
pub struct AsyncRingReader {
    fd: AsyncFd<RingReader>,
}

impl AsyncRingReader {
    /// Waits for a watermark wake-up or for `interval`, whichever comes first,
    /// then drains the ring into `sink`.
    pub async fn drain_next(&mut self, interval: Duration, sink: &mut impl RecordSink) -> u64 {
        if let Ok(Ok(mut guard)) = tokio::time::timeout(interval, self.fd.readable_mut()).await {
            guard.clear_ready();
        }
        self.fd.get_mut().drain(sink)
    }

    pub fn drain_now(&mut self, sink: &mut impl RecordSink) -> u64 {
        self.fd.get_mut().drain(sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, pid: u32, tid: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&7u32.to_ne_bytes());
        bytes.extend_from_slice(&123_456u64.to_ne_bytes());
        bytes.extend_from_slice(&((u64::from(pid) << 32) | u64::from(tid)).to_ne_bytes());
        bytes.extend_from_slice(&99u64.to_ne_bytes());
        bytes.extend_from_slice(b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0");
        for arg in 1..=RAW_ARGS as u64 {
            bytes.extend_from_slice(&(arg * 10).to_ne_bytes());
        }
        bytes
    }

    #[test]
    fn decodes_a_record() {
        let event = decode(&record(RecordKind::Syscall as u32, 42, 43)).expect("valid record");
        assert_eq!(event.probe_id, 7);
        assert_eq!(event.ktime_ns, 123_456);
        assert_eq!((event.pid, event.tid), (42, 43));
        assert_eq!(event.cgroup_id, 99);
        assert_eq!(event.comm(), b"cat");
        assert_eq!(event.args, [10, 20, 30, 40, 50, 60]);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let full = record(RecordKind::Syscall as u32, 1, 1);
        assert_eq!(
            decode(&full[..10]),
            Err(DecodeError::Short {
                len: 10,
                expected: 48
            })
        );
        assert_eq!(
            decode(&full[..60]),
            Err(DecodeError::Short {
                len: 60,
                expected: 96
            })
        );
        assert_eq!(
            decode(&record(9, 1, 1)),
            Err(DecodeError::UnknownKind { kind: 9 })
        );
    }
}
