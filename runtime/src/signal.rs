//! Waiting for Ctrl-C / SIGTERM, for nodes that shut down gracefully.
//!
//! Call [`TerminationSignals::block`] first thing in `main`, before building a
//! runtime, so that every thread inherits the blocked mask and the signals
//! stay pending until [`TerminationSignals::wait`] takes them (typically on the
//! main thread, which then calls [`crate::Runtime::shutdown`]).

use std::io;

/// SIGINT and SIGTERM, blocked and ready to be waited for.
pub struct TerminationSignals {
    set: libc::sigset_t,
}

/// Which termination signal arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl TerminationSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread and in threads it
    /// starts from now on.
    pub fn block() -> io::Result<TerminationSignals> {
        Ok(TerminationSignals {
            set: crate::sys::block_termination_signals()?,
        })
    }

    /// Waits until one of the two signals arrives.
    pub fn wait(&self) -> io::Result<Termination> {
        let sig = crate::sys::wait_for_signal(&self.set)?;
        Ok(if sig == libc::SIGINT {
            Termination::Interrupt
        } else {
            Termination::Terminate
        })
    }
}
