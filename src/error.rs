//! The errors that decide tusk's exit status.
//!
//! Every other failure is an `anyhow::Error` with context and exits 1. The
//! documented codes (docs/exit-codes.md) come from the variants below, which
//! `main` finds anywhere in an error's chain.

use std::process::ExitCode;

/// A failure with its own documented exit status.
#[derive(Debug, thiserror::Error)]
pub enum TuskError {
    /// Bad flags, a malformed or incomplete configuration, a missing container.
    #[error("{0}")]
    Usage(String),
    /// A backup set does not match its manifest or did not restore to the same data.
    #[error("verification failed: {0}")]
    VerificationFailed(String),
    /// Another tusk run holds the lock on the backup directory.
    #[error("{0}")]
    Locked(String),
    /// The admin's own command failed (`tusk rehearse --run`).
    #[error("{0}")]
    CommandFailed(String),
    /// `tusk status`'s Nagios outcome (1 warning, 2 critical, 3 unknown),
    /// after it printed its report; an empty message prints nothing more.
    #[error("{message}")]
    Status { code: u8, message: String },
}

impl TuskError {
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        TuskError::Usage(message.into()).into()
    }
}

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_VERIFY: u8 = 3;
pub const EXIT_LOCKED: u8 = 4;
pub const EXIT_COMMAND: u8 = 5;

/// The exit status for an error, by the first `TuskError` in its chain.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(exit_status_for(err))
}

/// The number behind [`exit_code_for`], for reports that carry it.
pub fn exit_status_for(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<TuskError>())
        .map_or(EXIT_FAILED, |tusk| match tusk {
            TuskError::Usage(_) => EXIT_USAGE,
            TuskError::VerificationFailed(_) => EXIT_VERIFY,
            TuskError::Locked(_) => EXIT_LOCKED,
            TuskError::CommandFailed(_) => EXIT_COMMAND,
            TuskError::Status { code, .. } => *code,
        })
}

/// Whether the error only carries an exit status, its report already
/// printed (`tusk status` with a warning or a critical check).
pub fn is_report_only(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<TuskError>(),
            Some(TuskError::Status { message, .. }) if message.is_empty()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn each_error_kind_has_its_documented_code_even_under_context() {
        let cases = [
            (TuskError::usage("bad flag"), EXIT_USAGE),
            (
                TuskError::VerificationFailed("checksum".into()).into(),
                EXIT_VERIFY,
            ),
            (TuskError::Locked("held".into()).into(), EXIT_LOCKED),
            (
                TuskError::CommandFailed("db:migrate".into()).into(),
                EXIT_COMMAND,
            ),
            (anyhow::anyhow!("pg_dump exited with status 1"), EXIT_FAILED),
        ];
        for (err, code) in cases {
            let wrapped = Err::<(), _>(err).context("while backing up").unwrap_err();
            assert_eq!(exit_code_for(&wrapped), ExitCode::from(code), "{wrapped:#}");
        }
    }
}
