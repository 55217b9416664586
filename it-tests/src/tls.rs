//! TLS for the tests: a certificate authority made with the `openssl` command, server
//! certificates it signs, and a Kafka node serving SASL_SSL (SCRAM-SHA-512) on its own listener.

use std::path::PathBuf;
use std::process::Command;

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

/// The client options for a broker of `PrivateBroker::start_sasl_ssl`: TLS trusting `ca`,
/// SCRAM-SHA-512 as `user`.
pub fn sasl_ssl_options(ca: &TestCa, user: &str, password: &str) -> Vec<String> {
    [
        "security.protocol=SASL_SSL".to_owned(),
        format!("ssl.ca.location={}", ca.ca_pem().display()),
        "sasl.mechanism=SCRAM-SHA-512".to_owned(),
        format!("sasl.username={user}"),
        format!("sasl.password={password}"),
    ]
    .into_iter()
    .flat_map(|option| ["-X".to_owned(), option])
    .collect()
}
