//! The drive loop: the one thread that owns the [`Engine`] and drains its
//! ring buffer.
//!
//! Both run modes (standalone and cluster) hand their state to
//! [`spawn`]; the loop wakes when the ring crosses its watermark, when
//! someone calls [`Waker::wake`] (a scrape waiting for counters, a watch
//! that saw a change), or after the drain interval, drains, and lets the
//! mode do its work ([`Driven::after_drain`]). Nothing else runs on this
//! thread: queries, rollups, Secret reads and status writes stay on the
//! async runtime and talk to the mode through channels, so none of them
//! can delay a drain.

use std::{
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::sys::{
    epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
    eventfd::{EfdFlags, EventFd},
};

use crate::engine::Engine;

/// A run mode as the drive loop runs it.
pub trait Driven: Send + 'static {
    fn engine(&mut self) -> &mut Engine;

    /// Runs after every drain, on the drive thread: answer requests, apply
    /// what changed. It must not wait on the network or on readers.
    fn after_drain(&mut self, now: Instant);

    /// Runs once after the last drain, before the loop returns.
    fn stopped(&mut self) {}
}

/// Wakes the drive loop, or stops it. Cheap to clone; any thread.
#[derive(Clone, Debug)]
pub struct Waker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    event: EventFd,
    stop: AtomicBool,
}

impl Waker {
    pub fn new() -> std::io::Result<Self> {
        let event =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(std::io::Error::from)?;
        Ok(Self {
            shared: Arc::new(Shared {
                event,
                stop: AtomicBool::new(false),
            }),
        })
    }

    /// Makes the loop drain and run its mode's work now.
    pub fn wake(&self) {
        // A full counter (2^64 - 2 wakes pending) still wakes the loop.
        let _ = self.shared.event.write(1);
    }

    /// Makes the loop drain once more and return.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// Clears pending wakes.
    fn clear(&self) {
        // EAGAIN when none was pending.
        let _ = self.shared.event.read();
    }
}

/// How the loop paces itself.
#[derive(Clone, Copy, Debug)]
pub struct DriveOptions {
    /// The longest the loop sleeps without a wake-up.
    pub drain_interval: Duration,
}

/// The drive thread; join it to get the mode back after [`Waker::stop`].
pub struct DriveThread<D> {
    thread: JoinHandle<D>,
}

impl<D> DriveThread<D> {
    /// Waits for the loop to return (after [`Waker::stop`]).
    pub fn join(self) -> std::thread::Result<D> {
        self.thread.join()
    }
}

/// Starts the drive loop on a thread of its own (`sonde-drive`).
pub fn spawn<D: Driven>(
    driven: D,
    waker: Waker,
    options: DriveOptions,
) -> std::io::Result<DriveThread<D>> {
    let thread = std::thread::Builder::new()
        .name("sonde-drive".to_owned())
        .spawn(move || run(driven, &waker, options))?;
    Ok(DriveThread { thread })
}

/// The loop itself, on the calling thread, until [`Waker::stop`].
///
/// The ring's fd is watched edge-triggered: the kernel reports it readable
/// whenever data waits, so a level-triggered wait would return at once
/// under a steady load and spin. Edges come only from the programs' wake-ups
/// (the ring crossing its watermark); between them the drain interval
/// paces the loop.
pub fn run<D: Driven>(mut driven: D, waker: &Waker, options: DriveOptions) -> D {
    let timeout = EpollTimeout::try_from(options.drain_interval).unwrap_or(EpollTimeout::MAX);
    let epoll = match watch(driven.engine(), waker) {
        Ok(epoll) => Some(epoll),
        Err(e) => {
            // Draining on the interval alone still works: only early
            // wake-ups are lost.
            tracing::warn!("cannot watch the ring buffer for wake-ups: {e}");
            None
        }
    };
    let mut events = [EpollEvent::empty(); 2];
    while !waker.stopping() {
        match &epoll {
            // EINTR and friends: drain anyway, then wait again.
            Some(epoll) => drop(epoll.wait(&mut events, timeout)),
            None => std::thread::sleep(options.drain_interval),
        }
        waker.clear();
        driven.engine().drain();
        driven.engine().serve_requests();
        driven.after_drain(Instant::now());
    }
    driven.engine().drain();
    driven.stopped();
    driven
}

/// An epoll set of the ring (edge-triggered) and the waker's eventfd.
fn watch(engine: &Engine, waker: &Waker) -> nix::Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        engine.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0),
    )?;
    epoll.add(
        waker.shared.event.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, 1),
    )?;
    Ok(epoll)
}
