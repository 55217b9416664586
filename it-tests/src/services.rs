//! Private service instances a test may stop and start at will: a Tansu broker and a PostgreSQL
//! server, each on a free port with its data in a temporary folder.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not open port {port}");
}

/// A Tansu broker on SQLite (durable across restarts), on its own port.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    port: u16,
    /// The port clients are told to connect to: a TLS terminator in front of `port`, or `port`.
    advertised_port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let port = free_port();
        Self::start_on(port, port)
    }

    /// A broker that tells its clients to connect to `advertised_port` (where a TLS terminator
    /// forwards to it).
    pub fn start_advertising(advertised_port: u16) -> PrivateBroker {
        Self::start_on(free_port(), advertised_port)
    }

    fn start_on(port: u16, advertised_port: u16) -> PrivateBroker {
        let mut broker = PrivateBroker {
            dir: tempfile::tempdir().expect("broker dir"),
            port,
            advertised_port,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same data and port.
    pub fn restart(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("broker log");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let child = Command::new("tansu")
            .current_dir(self.dir.path())
            .args(["broker", "--storage-engine", "sqlite://tansu.db"])
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .expect("tansu on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "tansu");
    }

    /// Kills the broker, deletes its storage (every topic, offset and group), starts it again
    /// empty on the same port: what a broker whose disk was lost looks like to its clients.
    pub fn wipe(&mut self) {
        self.kill9();
        for entry in std::fs::read_dir(self.dir.path()).expect("broker dir") {
            let path = entry.expect("broker dir entry").path();
            if path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("tansu.db"))
            {
                std::fs::remove_file(&path).expect("remove broker storage");
            }
        }
        self.restart();
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PostgreSQL server made with initdb, trust auth, on its own port.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    settings: String,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        Self::start_with("")
    }

    /// Starts with extra server settings, e.g. `-c max_connections=6`.
    pub fn start_with(settings: &str) -> PrivatePostgres {
        Self::start_configured(settings, |_| {})
    }

    /// A server that takes TLS connections only (with a certificate `ca` signed) and refuses
    /// plain ones.
    pub fn start_tls(ca: &crate::tls::TestCa) -> PrivatePostgres {
        let settings = "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key";
        Self::start_configured(settings, |data| {
            std::fs::copy(ca.server_cert(), data.join("server.crt")).expect("server.crt");
            std::fs::copy(ca.server_key(), data.join("server.key")).expect("server.key");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("pg_hba.conf");
            let key = data.join("server.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("key mode");
            if is_root() {
                for file in ["server.crt", "server.key", "pg_hba.conf"] {
                    run(
                        "chown",
                        &["postgres", data.join(file).to_str().expect("utf-8")],
                    );
                }
            }
        })
    }

    fn start_configured(settings: &str, configure: impl FnOnce(&Path)) -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .find(|bin| bin.join("initdb").exists())
            .expect("initdb");
        let dir = std::env::temp_dir().join(format!("it-pg-{}", crate::unique("data")));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let postgres = PrivatePostgres {
            dir,
            port: free_port(),
            bin,
            settings: settings.to_owned(),
        };
        // initdb refuses to run as root: run the server as the postgres user there.
        if is_root() {
            run(
                "chown",
                &["-R", "postgres", postgres.dir.to_str().expect("utf-8")],
            );
        }
        let data = postgres.data_dir();
        postgres.as_owner(&format!(
            "{} -D {data} -A trust -U postgres >/dev/null",
            postgres.bin.join("initdb").display()
        ));
        configure(&postgres.dir.join("data"));
        postgres.restart();
        postgres
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn as_owner(&self, command: &str) {
        assert!(self.try_as_owner(command), "`{command}` failed");
    }

    fn try_as_owner(&self, command: &str) -> bool {
        let status = if is_root() {
            Command::new("su")
                .args(["postgres", "-c", command])
                .status()
        } else {
            Command::new("sh").args(["-c", command]).status()
        };
        status.is_ok_and(|s| s.success())
    }

    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn restart(&self) {
        self.as_owner(&format!(
            "{} -D {} -l {}/log -w -o '-p {} -k {} -c listen_addresses=127.0.0.1 {}' start >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data_dir(),
            self.dir.display(),
            self.port,
            self.dir.display(),
            self.settings
        ));
    }

    /// Stops at once, as a crash would (no checkpoint, connections cut).
    pub fn crash(&self) {
        self.as_owner(&format!(
            "{} -D {} -m immediate stop >/dev/null",
            self.bin.join("pg_ctl").display(),
            self.data_dir()
        ));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Quietly: it may be stopped already.
        self.try_as_owner(&format!(
            "{} -D {} -m immediate stop >/dev/null 2>&1",
            self.bin.join("pg_ctl").display(),
            self.data_dir()
        ));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().expect(program);
    assert!(status.success(), "{program} {args:?} failed: {status}");
}
