//! Draining the ring buffer and decoding its records.
//!
//! The programs submit without waking the reader, so the reader wakes on a
//! timer, or early when a program saw the ring pass its watermark. Records
//! are decoded in place into a stack value: nothing is allocated per event.

use std::os::fd::AsRawFd;

use aya::maps::{MapData, RingBuf};
use probe_common::{COMM_LEN, RECORD_HEADER_LEN, RECORD_KIND_EVENT, RecordHeader};

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
    let header = RecordHeader::read(bytes).ok_or(DecodeError::Short {
        len: bytes.len(),
        expected: RECORD_HEADER_LEN as usize,
    })?;
    if header.kind != RECORD_KIND_EVENT {
        return Err(DecodeError::UnknownKind { kind: header.kind });
    }
    Ok(RawEvent {
        probe_id: header.probe_id,
        ktime_ns: header.ktime_ns,
        pid: (header.pid_tgid >> 32) as u32,
        tid: header.pid_tgid as u32,
        cgroup_id: header.cgroup_id,
        comm: header.comm,
        record: bytes,
    })
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
    /// The reader of `ring`, whose data area is `size_bytes` and whose
    /// position pages are `page` bytes each.
    pub(crate) fn new(ring: RingBuf<MapData>, page: u32, size_bytes: u32) -> Self {
        // Without the positions only the fill-level gauge is missing.
        let positions = RingPositions::map(&ring, page)
            .map_err(|e| tracing::warn!("cannot map the ring buffer's positions: {e}"))
            .ok();
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

impl std::os::fd::AsFd for RingReader {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// A read-only mapping of a ring buffer's first two pages: the consumer
/// position (page 0, which the reader advances as it takes records) and the
/// producer position (page 1, which the kernel advances as programs reserve
/// records). aya's `RingBuf` keeps its own mapping private, so this is a
/// second, read-only one of the same pages.
struct RingPositions {
    base: std::ptr::NonNull<libc::c_void>,
    page: usize,
}

// SAFETY: the mapping is process-wide, not tied to a thread, and is only
// read through atomic loads.
#[allow(unsafe_code)]
unsafe impl Send for RingPositions {}
// SAFETY: as above: shared access only performs atomic loads.
#[allow(unsafe_code)]
unsafe impl Sync for RingPositions {}

impl RingPositions {
    /// Maps the position pages of `ring` read-only. The kernel allows
    /// read-only mappings of a ring buffer's metadata pages.
    #[allow(unsafe_code)]
    pub fn map(ring: &impl std::os::fd::AsRawFd, page: u32) -> std::io::Result<Self> {
        let page = page as usize;
        // SAFETY: a fresh shared read-only mapping chosen by the kernel; it
        // aliases no Rust object, and a failure is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(base).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self { base, page })
    }

    /// Bytes reserved in the ring and not yet taken by the reader: records
    /// with their 8-byte headers and padding, including those still being
    /// written by a program.
    #[allow(unsafe_code)]
    pub fn used_bytes(&self) -> u64 {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let at = |offset: usize| {
            // SAFETY: both pages stay mapped while `self` lives; each
            // position is an aligned machine word at the start of its page,
            // written by the kernel (producer) or the reader (consumer)
            // with atomic stores.
            unsafe {
                (*self
                    .base
                    .as_ptr()
                    .cast::<u8>()
                    .add(offset)
                    .cast::<AtomicUsize>())
                .load(Ordering::Acquire)
            }
        };
        // Consumer first: it never passes the producer read after it.
        let consumer = at(0);
        let producer = at(self.page);
        producer.wrapping_sub(consumer) as u64
    }
}

impl Drop for RingPositions {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr(), 2 * self.page);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(kind: u32, pid: u32, tid: u32, payload: &[u8]) -> Vec<u8> {
        let header = RecordHeader {
            kind,
            probe_id: 7,
            ktime_ns: 123_456,
            pid_tgid: (u64::from(pid) << 32) | u64::from(tid),
            cgroup_id: 99,
            comm: RecordHeader::comm_from(b"cat"),
        };
        let mut bytes = header.to_bytes().to_vec();
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
