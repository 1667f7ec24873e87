//! `ssh` processes the command would otherwise leave behind.
//!
//! An SFTP store runs one `ssh` connection master per pooled connection (`ssh -M -f`, started
//! by the `openssh` crate under OpenDAL's pool). The foreground `ssh` forks the master once it
//! has authenticated, and the crate waits for that foreground process. When the wait is
//! cancelled (a pool or request timeout, or the end of the command while a connection was
//! still being opened), the master is forked anyway, nobody knows about it, and it keeps its
//! connection open for good: one more `ssh` process, and one more session on the server, per
//! unlucky command run from cron. The test of the SFTP store caught one after a few dozen
//! runs.
//!
//! So the command makes itself the child subreaper of its descendants (Linux): an orphaned
//! master becomes its child instead of init's, and when the command ends it ends every `ssh`
//! process still its child. Masters of sessions that were closed properly are gone by then.
//! A command killed with SIGKILL cannot do this; its masters live on.
//!
//! Only a command that opened an `sftp://` store looks for them: the look reads the `stat` of
//! every process on the machine, a few milliseconds that every other command would pay.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this command opened a store that runs `ssh`.
static SSH_USED: AtomicBool = AtomicBool::new(false);

/// Notes that the command opens the store at `location`: one that runs `ssh` (`sftp://`)
/// makes [`end_leftover_ssh`] look for leftovers.
pub(crate) fn opening_store(location: &str) {
    if runs_ssh(location) {
        SSH_USED.store(true, Ordering::Relaxed);
    }
}

fn runs_ssh(location: &str) -> bool {
    location
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("sftp://"))
}

/// Makes this process the reaper of its orphaned descendants (Linux; elsewhere nothing).
pub(crate) fn adopt() {
    #[cfg(target_os = "linux")]
    if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::debug!("cannot become the reaper of orphaned ssh processes: {err}");
    }
}

/// Ends the `ssh` processes that are children of this process and reaps them, if it opened a
/// store that runs `ssh`; returns how many there were.
pub(crate) fn end_leftover_ssh() -> usize {
    if !SSH_USED.load(Ordering::Relaxed) {
        return 0;
    }
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    let leftovers = children_named("ssh");
    for &pid in &leftovers {
        // Our own child: its pid cannot be reused by another process before we reap it.
        let pid = Pid::from_raw(pid);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let _ = waitpid(pid, None);
        }
    }
    if !leftovers.is_empty() {
        tracing::debug!(
            "ended {} ssh processes that outlived their connections",
            leftovers.len()
        );
    }
    leftovers.len()
}

/// The live (not yet exited) children of this process whose command name is `name`.
fn children_named(name: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid …; comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?;
            (comm == name && ppid == me && state != "Z").then_some(pid)
        })
        .collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_sftp_stores_run_ssh() {
        assert!(runs_ssh("sftp://backup@host:2222/srv/backups"));
        assert!(runs_ssh("SFTP://host/srv"));
        for other in [
            "/srv/backups",
            "s3://bucket/p",
            "sftp:/x",
            "",
            "webdav+https://h/p",
        ] {
            assert!(!runs_ssh(other), "{other}");
        }
    }

    #[test]
    fn an_orphaned_ssh_becomes_our_child_and_is_ended() {
        adopt();
        opening_store("SFTP://backup@host/srv/backups");
        // A stand-in for a forked master: a `sleep` named ssh, started in the background by a
        // shell that exits at once, as `ssh -f` does after forking.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("ssh");
        std::os::unix::fs::symlink("/bin/sleep", &fake).unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("\"$0\" 300 >/dev/null 2>&1 &")
            .arg(&fake)
            .status()
            .unwrap();
        assert!(status.success());
        // The shell has exited, so its background child is ours already; it may not have
        // become `ssh` (exec) yet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut orphans = children_named("ssh");
        while orphans.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            orphans = children_named("ssh");
        }
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(end_leftover_ssh(), 1);
        assert!(children_named("ssh").is_empty());
        let gone = !std::path::Path::new(&format!("/proc/{}", orphans[0])).exists();
        assert!(gone, "the orphan still exists");
    }
}
