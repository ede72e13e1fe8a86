//! [`Broker`]: a real `nats-server` process with JetStream on loopback, for tests and
//! experiments, with the users and subject permissions of [`Access`] and optional TLS. Its
//! config is the one `deploy/nats/` documents for several machines, written for one.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::subjects::Subjects;

/// Who may do what at the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A cloud worker: the JetStream API, its acks, every answer subject, handshakes and
    /// probes of every device.
    Worker,
    /// A device (its user name is its id): publish its own requests, handshakes and probes;
    /// read only its own answers and inboxes.
    Device,
}

/// One user of the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name (a device's is its id).
    pub name: String,
    /// Its password.
    pub password: String,
    /// What it may do.
    pub role: Role,
}

/// The users of a broker; none means no authentication (anyone may do anything).
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The users.
    pub users: Vec<User>,
}

impl Access {
    /// The `authorization { users = [...] }` block for subjects under `subjects` (empty
    /// without users).
    pub fn render(&self, subjects: &Subjects) -> String {
        if self.users.is_empty() {
            return String::new();
        }
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = String::from("authorization {\n  users = [\n");
        for user in &self.users {
            let (publish, subscribe) = permissions(subjects, user);
            let _ = writeln!(
                out,
                "    {{ user: \"{}\", password: \"{}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}",
                user.name,
                user.password,
                list(&publish),
                list(&subscribe)
            );
        }
        out.push_str("  ]\n}\n");
        out
    }
}

/// The subjects `user` may publish to and subscribe to.
pub fn permissions(subjects: &Subjects, user: &User) -> (Vec<String>, Vec<String>) {
    match user.role {
        Role::Worker => (
            vec![
                "$JS.API.>".into(),
                "$JS.ACK.>".into(),
                subjects.reply("*"),
                "_INBOX.>".into(),
            ],
            vec![subjects.hellos("*"), subjects.pings("*"), "_INBOX.>".into()],
        ),
        Role::Device => {
            let d = user.name.as_str();
            let replies = subjects.reply_stream();
            (
                vec![
                    subjects.request("*", d),
                    subjects.hello("*", d),
                    subjects.ping("*", d),
                    format!("$JS.API.CONSUMER.INFO.{replies}.{d}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{replies}.{d}"),
                    format!("$JS.ACK.{replies}.{d}.>"),
                ],
                vec![format!("{}.>", subjects.inbox(d))],
            )
        }
    }
}

/// A `nats-server` process (killed when dropped).
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    port: u16,
    tls: bool,
    log: PathBuf,
}

impl Broker {
    /// The `nats-server` binary: `$NATS_SERVER`, else the first on `PATH` (or in `/usr/sbin`,
    /// where Debian puts it); none if absent.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("NATS_SERVER") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    }

    /// Starts a broker with JetStream (file store under `dir`, which also holds its config
    /// and log) on a free loopback port, with `access` and, given `tls = (cert, key)` PEM
    /// files, TLS required; waits until it takes connections.
    ///
    /// # Errors
    /// No `nats-server` ([`io::ErrorKind::NotFound`]), or it did not come up within 10 s.
    pub fn start(
        dir: &Path,
        subjects: &Subjects,
        access: &Access,
        tls: Option<(&Path, &Path)>,
    ) -> io::Result<Self> {
        let binary = Self::binary().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "nats-server is not installed")
        })?;
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let store = dir.join("jetstream");
        let mut text = format!(
            "host: 127.0.0.1\nport: {port}\nmax_payload: 8MB\n\
             jetstream {{ store_dir: \"{}\" }}\n",
            store.display()
        );
        if let Some((cert, key)) = tls {
            let _ = writeln!(
                text,
                "tls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 2 }}",
                cert.display(),
                key.display()
            );
        }
        text.push_str(&access.render(subjects));
        let config = dir.join("nats-server.conf");
        std::fs::write(&config, text)?;
        let mut broker = Self {
            child: None,
            binary,
            config,
            port,
            tls: tls.is_some(),
            log: dir.join("nats-server.log"),
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "nats-server exited ({status}); see {}",
                    self.log.display()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "nats-server did not listen on {addr} within 10 s; see {}",
            self.log.display()
        )))
    }

    /// The URL clients connect to (`tls://` when TLS is on).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stops the process at once (SIGKILL: nothing is flushed beyond what JetStream synced).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and store.
    ///
    /// # Errors
    /// As [`Broker::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
