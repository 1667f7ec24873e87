//! Exit codes, stable for scripts, and the mapping from an error chain to one of them.

use backstop::ErrorKind;

/// The process exit codes; documented in `--help` and the README. Never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    Success = 0,
    Failure = 1,
    Usage = 2,
    Corrupt = 3,
    Locked = 4,
    WrongPassword = 5,
    NotFound = 6,
    Interrupted = 130,
}

impl Code {
    pub(crate) fn as_u8(self) -> u8 {
        self as u8
    }
}

/// An error that decides its own exit code, for outcomes the engine reports as data (a verify
/// report with problems) or that a caller's protocol fixes (wal-fetch of a missing segment).
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: Code,
    pub(crate) message: String,
}

impl Exit {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit code for a failed command: the first [`Exit`] or engine error kind in the chain
/// decides; an interruption wins over whatever the interrupted work failed with.
pub(crate) fn code_for(err: &anyhow::Error, interrupted: bool) -> Code {
    if is_broken_pipe(err) {
        // Output piped into `head` and the like: the reader has all it wanted.
        return Code::Success;
    }
    for cause in err.chain() {
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.code;
        }
    }
    if interrupted {
        return Code::Interrupted;
    }
    for cause in err.chain() {
        if let Some(engine) = cause.downcast_ref::<backstop::Error>() {
            return code_for_kind(engine.kind());
        }
    }
    Code::Failure
}

fn code_for_kind(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::Corrupt => Code::Corrupt,
        ErrorKind::Locked => Code::Locked,
        ErrorKind::WrongKey => Code::WrongPassword,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Cancelled => Code::Interrupted,
        _ => Code::Failure,
    }
}

pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The engine error kind in the chain, if any.
pub(crate) fn engine_kind(err: &anyhow::Error) -> Option<ErrorKind> {
    err.chain().find_map(|cause| {
        cause
            .downcast_ref::<backstop::Error>()
            .map(backstop::Error::kind)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    fn engine_err(kind: ErrorKind) -> anyhow::Error {
        Err::<(), _>(backstop::Error::msg(kind, "inner"))
            .context("outer")
            .err()
            .unwrap()
    }

    #[test]
    fn engine_kinds_map_to_documented_codes() {
        assert_eq!(
            code_for(&engine_err(ErrorKind::Corrupt), false),
            Code::Corrupt
        );
        assert_eq!(
            code_for(&engine_err(ErrorKind::Locked), false),
            Code::Locked
        );
        assert_eq!(
            code_for(&engine_err(ErrorKind::WrongKey), false),
            Code::WrongPassword
        );
        assert_eq!(
            code_for(&engine_err(ErrorKind::NotFound), false),
            Code::NotFound
        );
        assert_eq!(
            code_for(&engine_err(ErrorKind::Cancelled), false),
            Code::Interrupted
        );
        assert_eq!(code_for(&engine_err(ErrorKind::Io), false), Code::Failure);
        assert_eq!(code_for(&anyhow::anyhow!("plain"), false), Code::Failure);
    }

    #[test]
    fn interruption_wins_over_the_failure_it_caused() {
        assert_eq!(
            code_for(&engine_err(ErrorKind::Source), true),
            Code::Interrupted
        );
    }

    #[test]
    fn explicit_exit_code_wins() {
        let err = anyhow::Error::new(Exit::new(Code::Failure, "missing")).context("fetching");
        assert_eq!(code_for(&err, true), Code::Failure);
    }

    #[test]
    fn broken_pipe_is_success() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe");
        let err = anyhow::Error::new(io).context("writing stdout");
        assert_eq!(code_for(&err, false), Code::Success);
    }
}
