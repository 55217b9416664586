//! Private PostgreSQL servers a test may stop and start at will, on a free port with the data
//! in a temporary folder.

use crate::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;

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
