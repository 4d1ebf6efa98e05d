//! The signals that end a run: SIGINT (Ctrl-C), SIGTERM (systemd's stop,
//! `timeout`, a CI job's cancel, `docker stop`) and SIGHUP (a dropped SSH
//! session).
//!
//! All three mean the same thing to tusk: cancel the operation and run
//! every undo action (docs/exit-codes.md). Once [`Signals::listen`] has
//! installed the handlers, none of them kills the process any more, so the
//! undo actions cannot be cut short by a second signal either.

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// One of the signals tusk handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    Hangup,
}

impl Signal {
    /// The name as `kill -l` and the logs print it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
        }
    }

    /// The exit status shells report for a death by this signal (128 + its
    /// number), which tusk returns after undoing its work.
    pub fn exit_code(self) -> u8 {
        128 + match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Hangup => libc::SIGHUP,
        } as u8
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The installed handlers for SIGINT, SIGTERM and SIGHUP.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; from here on these signals are only reported
    /// by [`Signals::recv`]. Needs a Tokio runtime.
    pub fn listen() -> Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("could not install a handler for {name}"))
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for the next of the three signals and says which it was.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Signal::Interrupt,
            Some(()) = self.terminate.recv() => Signal::Terminate,
            Some(()) = self.hangup.recv() => Signal::Hangup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal_number() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
        assert_eq!(Signal::Hangup.exit_code(), 129);
    }

    #[tokio::test]
    async fn a_signal_sent_to_the_process_is_reported_and_does_not_kill_it() {
        let mut signals = Signals::listen().unwrap();
        // SAFETY: sends SIGHUP to this very process, whose handler is installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), signals.recv())
            .await
            .unwrap();
        assert_eq!(got, Signal::Hangup);
    }
}
