//! Graceful shutdown: one cancellation signal every task observes, and a drain
//! step that waits for the tasks it tracked, bounded by a deadline.

use std::future::Future;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cheap to clone; all clones share one signal and one set of tracked tasks.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

/// The drain deadline passed with tasks still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{still_running} task(s) still running after the {deadline:?} drain deadline")]
pub struct DrainTimedOut {
    pub still_running: usize,
    pub deadline: Duration,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutdown: every `cancelled()` future completes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has started.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Sleeps for `duration` unless shutdown starts first: true when the
    /// whole time passed, false when the caller should stop.
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.token.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }

    /// A token for code that takes tokio-util's type directly; a child token is
    /// cancelled with this one and can also be cancelled on its own.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Spawns a task that drain will wait for. The task itself must watch
    /// `cancelled()` and finish its work.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits for all tracked tasks, at most `deadline`. Call after `trigger()`.
    pub async fn drain(&self, deadline: Duration) -> Result<(), DrainTimedOut> {
        self.tasks.close();
        match tokio::time::timeout(deadline, self.tasks.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(DrainTimedOut {
                still_running: self.tasks.len(),
                deadline,
            }),
        }
    }
}

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Terminate,
    Interrupt,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        }
    }
}

/// Listens for SIGTERM (kubelet) and SIGINT (Ctrl-C). Installed once, before
/// serving, so a signal that arrives early is not lost.
#[derive(Debug)]
pub struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.terminate.recv() => StopSignal::Terminate,
            _ = self.interrupt.recv() => StopSignal::Interrupt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_runs_its_time_unless_shutdown_comes_first() {
        let shutdown = Shutdown::new();
        assert!(shutdown.sleep(Duration::from_millis(5)).await);
        let s = shutdown.clone();
        let sleeper = tokio::spawn(async move { s.sleep(Duration::from_secs(3600)).await });
        shutdown.trigger();
        let finished = tokio::time::timeout(Duration::from_secs(10), sleeper).await;
        assert!(
            !finished.unwrap().unwrap(),
            "an hour's sleep ends with shutdown"
        );
    }

    #[tokio::test]
    async fn drain_waits_for_tasks_that_observe_the_signal() {
        let shutdown = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s = shutdown.clone();
        shutdown.spawn(async move {
            s.cancelled().await;
            tx.send("flushed").unwrap();
        });
        shutdown.trigger();
        shutdown.drain(Duration::from_secs(5)).await.unwrap();
        assert_eq!(rx.await.unwrap(), "flushed");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_reports_tasks_that_ignore_the_deadline() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        shutdown.trigger();
        let err = shutdown.drain(Duration::from_secs(3)).await.unwrap_err();
        assert_eq!(err.still_running, 1);
        assert_eq!(err.deadline, Duration::from_secs(3));
    }
}
