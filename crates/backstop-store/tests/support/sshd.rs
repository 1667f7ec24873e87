//! A real OpenSSH server (`sshd` from Debian's openssh-server) for the SFTP tests, started on a
//! free loopback port as the current user, with a temporary host key, a temporary user key in
//! a temporary `authorized_keys`, `StrictModes no` (the temporary files live under /tmp) and
//! the built-in SFTP server; killed when dropped (also when the test panics).
//!
//! `scripts/install/store.sh` installs openssh-server and openssh-client. Without `sshd`,
//! `ssh` or `ssh-keygen` a test fails under `CI=true` and skips loudly otherwise.
//!
//! Shared by the store's tests and the CLI's (`#[path]` include), hence the `dead_code` allow.

#![allow(dead_code)]

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backstop_store::test_servers::{free_port, require};

/// A running `sshd`.
pub(crate) struct SshServer {
    child: Option<Child>,
    port: u16,
    user: String,
    dir: tempfile::TempDir,
}

impl Drop for SshServer {
    fn drop(&mut self) {
        // Each connection has its own sshd process, which outlives the listener; ending it
        // closes the connection, and with it the client's ssh master.
        let sessions: Vec<String> = self.sessions().iter().map(u32::to_string).collect();
        if !sessions.is_empty() {
            let _ = Command::new("kill")
                .args(&sessions)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `program` on the PATH, or in the `sbin` directories a non-root PATH leaves out.
pub(crate) fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "backstop-test", "-f"])
        .arg(path));
}

impl SshServer {
    /// Starts `sshd`, or returns `None` (after saying so) when OpenSSH is not installed and
    /// this is not CI.
    pub(crate) fn start() -> Option<SshServer> {
        let sshd = find("sshd");
        let missing: Vec<&str> = [
            ("sshd", sshd.is_some()),
            ("ssh", find("ssh").is_some()),
            ("ssh-keygen", find("ssh-keygen").is_some()),
        ]
        .into_iter()
        .filter_map(|(program, found)| (!found).then_some(program))
        .collect();
        if !require(&missing.join(", "), missing.is_empty()) {
            return None;
        }
        let sshd = sshd?;
        let user = run(Command::new("id").arg("-un")).trim().to_owned();
        if user == "root" && !Path::new("/run/sshd").is_dir() {
            // sshd running as root separates privileges into this empty directory, which
            // the Debian service creates at boot; the test starts sshd without the service.
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("data")).expect("server data dir");
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("user_key"));
        std::fs::copy(
            dir.path().join("user_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("authorized_keys");
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile none\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 AllowUsers {user}\n\
                 StrictModes no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 LogLevel VERBOSE\n\
                 Subsystem sftp internal-sftp\n",
                host_key = dir.path().join("host_key").display(),
                authorized_keys = dir.path().join("authorized_keys").display(),
            ),
        )
        .expect("sshd_config");
        let log = std::fs::File::create(dir.path().join("sshd.log")).expect("sshd log");
        // sshd re-executes itself, which needs the absolute path.
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("sshd log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", sshd.display()));
        let mut server = SshServer {
            child: Some(child),
            port,
            user,
            dir,
        };
        server.wait_for_banner();
        Some(server)
    }

    /// Waits until the server greets with its SSH banner.
    fn wait_for_banner(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().expect("sshd status") {
                    panic!(
                        "sshd exited with {status} before answering:\n{}",
                        self.log()
                    );
                }
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut banner = [0_u8; 8];
                if stream.read_exact(&mut banner).is_ok() && banner.starts_with(b"SSH-2.0") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not answer on {} within 30 s:\n{}",
                self.addr(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id of the listening `sshd`.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The user the server lets in (the current one).
    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// The directory repositories are put under.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The private key `authorized_keys` accepts.
    pub(crate) fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// A private key the server does not accept.
    pub(crate) fn stranger_key(&self) -> PathBuf {
        let path = self.dir.path().join("stranger_key");
        if !path.exists() {
            keygen(&path);
        }
        path
    }

    /// The line of a `known_hosts` file that vouches for this server's host key.
    pub(crate) fn known_hosts_line(&self) -> String {
        let public =
            std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("host key");
        let mut fields = public.split_whitespace();
        let (kind, key) = (
            fields.next().expect("key type"),
            fields.next().expect("key"),
        );
        format!("[127.0.0.1]:{} {kind} {key}\n", self.port)
    }

    /// Everything the server logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `sftp://USER@127.0.0.1:PORT/<data dir>/<path>` without parameters.
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "sftp://{}@{}{}/{path}",
            self.user,
            self.addr(),
            self.data_dir().display()
        )
    }

    /// [`SshServer::url`] with the accepted key and any host key accepted (ssh records it in
    /// the current user's `~/.ssh/known_hosts`, as it would for a first connection).
    pub(crate) fn url_with_key(&self, path: &str) -> String {
        format!(
            "{}?key={}&known_hosts=accept-any",
            self.url(path),
            self.user_key().display()
        )
    }

    /// How many SSH connections the server holds open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.sessions().len()
    }

    /// The live per-connection `sshd` processes: the listener's children.
    fn sessions(&self) -> Vec<u32> {
        let parent = self.pid().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // pid (comm) state ppid …; comm may hold spaces, so split after the last `)`.
                let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
                let state = fields.next()?;
                // A session that ended but was not reaped yet holds no connection.
                (fields.next()? == parent && state != "Z").then_some(pid)
            })
            .collect()
    }
}
