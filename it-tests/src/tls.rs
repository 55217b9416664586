//! TLS for the tests: a certificate authority made with the `openssl` command, server
//! certificates it signs, and a Tansu broker behind stunnel (Tansu 0.6 cannot serve TLS itself).

use crate::services::{free_port, PrivateBroker};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A throwaway CA and one server certificate for `localhost` and `127.0.0.1`.
pub struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let ca = TestCa {
            dir: tempfile::tempdir().expect("ca dir"),
        };
        let ext = ca.path("server.ext");
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext file");
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        ca.openssl(
            &[
                &["req", "-x509"],
                &key[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat()
            .iter()
            .chain(&["-days", "2", "-subj", &format!("/CN={name} test CA")])
            .copied()
            .collect::<Vec<_>>(),
        );
        ca.openssl(
            &[
                &["req"],
                &key[..],
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat()
            .iter()
            .chain(&["-subj", "/CN=localhost"])
            .copied()
            .collect::<Vec<_>>(),
        );
        ca.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        ca
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl on PATH");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The CA certificate clients trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.path("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }
}

/// A Tansu broker reachable only through TLS: stunnel accepts TLS on `tls_port` and forwards to
/// Tansu's plain listener, and Tansu advertises the TLS port to its clients.
pub struct TlsBroker {
    _broker: PrivateBroker,
    stunnel: Child,
    tls_port: u16,
    _config: tempfile::TempDir,
}

impl TlsBroker {
    pub fn start(ca: &TestCa) -> TlsBroker {
        let tls_port = free_port();
        let broker = PrivateBroker::start_advertising(tls_port);
        let config = tempfile::tempdir().expect("stunnel dir");
        let conf = config.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = {}\ncert = {}\nkey = {}\n",
                broker.address(),
                ca.server_cert().display(),
                ca.server_key().display()
            ),
        )
        .expect("stunnel config");
        let log = std::fs::File::create(config.path().join("stunnel.log")).expect("stunnel log");
        let stunnel = Command::new(stunnel_binary())
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("stunnel log"))
            .stderr(log)
            .spawn()
            .expect("stunnel on PATH (scripts/test.sh installs stunnel4)");
        crate::services::wait_for_port(tls_port, "stunnel");
        TlsBroker {
            _broker: broker,
            stunnel,
            tls_port,
            _config: config,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

fn stunnel_binary() -> &'static str {
    if Path::new("/usr/bin/stunnel4").exists() {
        "/usr/bin/stunnel4"
    } else {
        "stunnel"
    }
}
