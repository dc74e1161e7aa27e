//! One shutdown signal, fanned out to every task that must stop.

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

/// The trigger side: [`Shutdown::trigger`] (or SIGINT/SIGTERM, see
/// [`Shutdown::on_signals`]) tells every [`ShutdownSignal`] at once.
#[derive(Debug)]
pub struct Shutdown {
    sender: watch::Sender<bool>,
}

/// The waiting side; clone one per task.
#[derive(Clone, Debug)]
pub struct ShutdownSignal {
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> (Self, ShutdownSignal) {
        let (sender, receiver) = watch::channel(false);
        (Self { sender }, ShutdownSignal { receiver })
    }

    /// Installs SIGINT and SIGTERM handlers now, and triggers the shutdown
    /// when either arrives. Must be called inside a tokio runtime.
    pub fn on_signals() -> std::io::Result<(Self, ShutdownSignal)> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (shutdown, signal) = Self::new();
        let sender = shutdown.sender.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            let _ = sender.send(true);
        });
        Ok((shutdown, signal))
    }

    pub fn trigger(&self) {
        // Nobody waiting is fine: there is nothing left to stop.
        let _ = self.sender.send(true);
    }
}

impl ShutdownSignal {
    /// Resolves once the shutdown is triggered (or its trigger is gone).
    pub async fn wait(mut self) {
        // An error means the trigger was dropped: stop as well.
        let _ = self.receiver.wait_for(|stop| *stop).await;
    }

    /// True once triggered; for loops that poll instead of awaiting.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_hears_one_trigger() {
        let (shutdown, signal) = Shutdown::new();
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(signal.clone().wait()))
            .collect();
        assert!(!signal.is_triggered());
        shutdown.trigger();
        for waiter in waiters {
            waiter.await.expect("waiter finished");
        }
        assert!(signal.is_triggered());
        // A waiter that starts late returns at once.
        signal.wait().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_stops_the_waiters() {
        let (shutdown, signal) = Shutdown::new();
        drop(shutdown);
        signal.wait().await;
    }
}
