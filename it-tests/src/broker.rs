//! Private Apache Kafka nodes a test may stop and start at will, alone or as a three-node
//! cluster, each on free ports with its data in a temporary folder.

use crate::ports::free_port;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Kafka jars are: `KAFKA_LIBS` (`scripts/lib.sh` sets it), else the cache folder
/// `scripts/lib.sh` fills for the version `scripts/kafka/pom.xml` pins.
fn kafka_libs() -> String {
    let libs = std::env::var("KAFKA_LIBS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!(
            "{home}/.cache/ecommerce-pipeline/kafka-{}/libs",
            kafka_version()
        )
    });
    assert!(
        Path::new(&libs).join(".complete").exists(),
        "Kafka's jars are not in {libs}: run scripts/test.sh (it fetches them) or set KAFKA_LIBS"
    );
    format!("{libs}/*")
}

/// The `<kafka.version>` of `scripts/kafka/pom.xml`, the one place it is pinned.
fn kafka_version() -> String {
    let pom = std::fs::read_to_string(kafka_file("pom.xml")).expect("scripts/kafka/pom.xml");
    pom.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(version, _)| version.trim().to_owned())
        .expect("<kafka.version> in scripts/kafka/pom.xml")
}

fn kafka_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/kafka")
        .join(name)
}

/// Runs one of Kafka's command-line tools (`kafka.tools.StorageTool`, `org.apache.kafka.tools.*`)
/// and returns its output; panics with it when the tool fails.
pub fn kafka_tool(class: &str, args: &[&str]) -> String {
    let output = Command::new("java")
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            kafka_file("log4j2.yaml").display()
        ))
        .args([
            "-XX:TieredStopAtLevel=1",
            "-Xshare:auto",
            "-cp",
            &kafka_libs(),
        ])
        .arg(class)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("java on PATH (scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{class} {args:?} failed:\n{text}");
    text
}

/// How clients reach a private broker.
#[derive(Clone, Default)]
pub enum ClientListener {
    #[default]
    Plaintext,
    /// TLS with a certificate `ca` signed, and SCRAM-SHA-512 users; brokers and tools talk on a
    /// separate plaintext listener.
    SaslSsl {
        cert: PathBuf,
        key: PathBuf,
        users: Vec<(String, String)>,
    },
}

/// What a private broker is started with.
#[derive(Clone, Default)]
pub struct BrokerSettings {
    pub listener: ClientListener,
    /// ACLs enforced (StandardAuthorizer): only the plaintext listener's ANONYMOUS (brokers,
    /// tools) and the user `admin` are super users.
    pub authorizer: bool,
    /// More `key=value` server properties.
    pub extra: Vec<String>,
}

/// One Kafka node's ports.
#[derive(Clone, Copy)]
struct NodePorts {
    client: u16,
    controller: u16,
    /// Brokers' and tools' plaintext listener, where clients use another one.
    internal: Option<u16>,
}

/// An Apache Kafka node (KRaft, broker and controller in one process) with its own storage and
/// ports: killed, restarted or wiped at will. Alone, or one of a [`KafkaCluster`].
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    node_id: u32,
    ports: NodePorts,
    settings: BrokerSettings,
    /// `controller.quorum.voters` of a cluster; a single node bootstraps its own quorum.
    voters: Option<String>,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        Self::start_with(BrokerSettings::default())
    }

    /// A node whose clients must use TLS (its certificate signed by `ca`) and SCRAM-SHA-512 as
    /// one of `users` (name, password); with `authorizer`, each user may do only what ACLs allow.
    pub fn start_sasl_ssl(
        ca: &crate::tls::TestCa,
        users: &[(&str, &str)],
        authorizer: bool,
    ) -> PrivateBroker {
        PrivateBroker::start_with(BrokerSettings {
            listener: ClientListener::SaslSsl {
                cert: ca.server_cert(),
                key: ca.server_key(),
                users: users
                    .iter()
                    .map(|(name, password)| (name.to_string(), password.to_string()))
                    .collect(),
            },
            authorizer,
            extra: Vec::new(),
        })
    }

    pub fn start_with(settings: BrokerSettings) -> PrivateBroker {
        let mut broker = Self::prepare(1, settings, None);
        broker.format(&random_cluster_id());
        broker.spawn();
        broker.wait_until_serving(1);
        broker
    }

    fn prepare(node_id: u32, settings: BrokerSettings, voters: Option<String>) -> PrivateBroker {
        let internal = matches!(settings.listener, ClientListener::SaslSsl { .. });
        PrivateBroker {
            dir: tempfile::tempdir().expect("broker dir"),
            node_id,
            ports: NodePorts {
                client: free_port(),
                controller: free_port(),
                internal: internal.then(free_port),
            },
            settings,
            voters,
            child: None,
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }

    /// Where tools connect without credentials (the client listener of a plain node).
    pub fn admin_address(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.ports.internal.unwrap_or(self.ports.client)
        )
    }

    pub fn controller_address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.controller)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kafka.log")).unwrap_or_default()
    }

    fn properties_path(&self) -> PathBuf {
        self.dir.path().join("server.properties")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `scripts/kafka/server.properties`, then this node's own lines.
    fn write_properties(&self) {
        let base = std::fs::read_to_string(kafka_file("server.properties"))
            .expect("scripts/kafka/server.properties");
        let NodePorts {
            client,
            controller,
            internal,
        } = self.ports;
        let mut lines = vec![
            format!("node.id={}", self.node_id),
            format!("log.dirs={}", self.data_dir().display()),
            match &self.voters {
                Some(voters) => format!("controller.quorum.voters={voters}"),
                None => format!("controller.quorum.bootstrap.servers=127.0.0.1:{controller}"),
            },
        ];
        match (&self.settings.listener, internal) {
            (ClientListener::SaslSsl { cert, key, .. }, Some(internal)) => {
                let chain = pem_value(cert);
                let key = pem_value(key);
                lines.extend([
                    format!("listeners=SASL_SSL://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}"),
                    format!("advertised.listeners=SASL_SSL://127.0.0.1:{client},INTERNAL://127.0.0.1:{internal}"),
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL".into(),
                    "inter.broker.listener.name=INTERNAL".into(),
                    "sasl.enabled.mechanisms=SCRAM-SHA-512".into(),
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
                    "listener.name.sasl_ssl.ssl.keystore.type=PEM".into(),
                    format!("listener.name.sasl_ssl.ssl.keystore.certificate.chain={chain}"),
                    format!("listener.name.sasl_ssl.ssl.keystore.key={key}"),
                ]);
            }
            _ => lines.extend([
                format!(
                    "listeners=PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}"
                ),
                format!("advertised.listeners=PLAINTEXT://127.0.0.1:{client}"),
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".into(),
                "inter.broker.listener.name=PLAINTEXT".into(),
            ]),
        }
        if self.settings.authorizer {
            lines.extend([
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                    .into(),
                "super.users=User:ANONYMOUS;User:admin".into(),
            ]);
        }
        lines.extend(self.settings.extra.iter().cloned());
        std::fs::write(
            self.properties_path(),
            format!("{base}\n{}\n", lines.join("\n")),
        )
        .expect("server.properties");
    }

    /// Formats the storage (a cluster's nodes share `cluster_id`; a lone node is its own quorum).
    fn format(&self, cluster_id: &str) {
        self.write_properties();
        let properties = self.properties_path();
        let mut args = vec![
            "format",
            "-t",
            cluster_id,
            "-c",
            properties.to_str().expect("utf-8 path"),
        ];
        if self.voters.is_none() {
            args.push("--standalone");
        }
        let scram: Vec<String> = match &self.settings.listener {
            ClientListener::SaslSsl { users, .. } => users
                .iter()
                .map(|(name, password)| format!("SCRAM-SHA-512=[name={name},password={password}]"))
                .collect(),
            ClientListener::Plaintext => Vec::new(),
        };
        for user in &scram {
            args.extend(["--add-scram", user]);
        }
        kafka_tool("kafka.tools.StorageTool", &args);
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("kafka.log"))
            .expect("broker log");
        // A small heap and the quick compiler: tests run several nodes on two cores.
        let child = Command::new("java")
            .args([
                "-Xmx384m",
                "-Xms64m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                kafka_file("log4j2.yaml").display()
            ))
            .args(["-cp", &kafka_libs(), "kafka.Kafka"])
            .arg(self.properties_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .expect("java on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
    }

    /// Waits until the broker answers a metadata request listing `brokers` brokers.
    fn wait_until_serving(&mut self, brokers: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = self.admin_address();
        use rdkafka::consumer::Consumer;
        let client: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &admin)
            .set("log_level", "0")
            .create()
            .expect("metadata client");
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("kafka exited ({status}):\n{}", self.log_text());
            }
            if client
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|metadata| metadata.brokers().len() >= brokers)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kafka on {admin} did not answer within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the node again on the same storage and ports.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_until_serving(1);
    }

    /// Kills the node, deletes its storage (every topic, offset and group), formats it anew and
    /// starts it again on the same ports: what a broker whose disk was lost looks like to its
    /// clients.
    pub fn wipe(&mut self) {
        self.kill9();
        std::fs::remove_dir_all(self.data_dir()).expect("remove broker storage");
        self.format(&random_cluster_id());
        self.restart();
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Grants `operations` on a resource (`--topic T`, `--group G`, `--cluster`) to `principal`
    /// (`User:bridge`), through the tools' plaintext listener.
    pub fn allow(&self, principal: &str, operations: &[&str], resource: &[&str]) {
        let admin = self.admin_address();
        let mut args = vec![
            "--bootstrap-server",
            &admin,
            "--add",
            "--allow-principal",
            principal,
        ];
        for operation in operations {
            args.extend(["--operation", operation]);
        }
        args.extend_from_slice(resource);
        kafka_tool("org.apache.kafka.tools.AclCommand", &args);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PEM file as one property value (Kafka takes PEM inline, its line ends as `\n` escapes).
fn pem_value(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("pem file")
        .trim()
        .replace('\n', "\\n")
}

/// A new cluster id, from Kafka's own tool.
fn random_cluster_id() -> String {
    kafka_tool("kafka.tools.StorageTool", &["random-uuid"])
        .trim()
        .to_owned()
}

/// Three Kafka nodes in one KRaft quorum: topics with three replicas and `min.insync.replicas=2`,
/// so one node may die without losing an acknowledged write.
pub struct KafkaCluster {
    pub nodes: Vec<PrivateBroker>,
}

impl KafkaCluster {
    pub fn start(size: u32) -> KafkaCluster {
        let replicas = size.min(3);
        let insync = replicas.saturating_sub(1).max(1);
        let settings = BrokerSettings {
            extra: vec![
                format!("offsets.topic.replication.factor={replicas}"),
                format!("transaction.state.log.replication.factor={replicas}"),
                format!("transaction.state.log.min.isr={insync}"),
                format!("share.coordinator.state.topic.replication.factor={replicas}"),
                format!("share.coordinator.state.topic.min.isr={insync}"),
                format!("default.replication.factor={replicas}"),
                format!("min.insync.replicas={insync}"),
                // A dead leader's partitions move within seconds.
                "broker.session.timeout.ms=6000".into(),
                "broker.heartbeat.interval.ms=1000".into(),
            ],
            ..BrokerSettings::default()
        };
        let mut nodes: Vec<PrivateBroker> = (1..=size)
            .map(|id| PrivateBroker::prepare(id, settings.clone(), Some(String::new())))
            .collect();
        let voters = nodes
            .iter()
            .map(|node| format!("{}@{}", node.node_id, node.controller_address()))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = random_cluster_id();
        for node in &mut nodes {
            node.voters = Some(voters.clone());
            node.format(&cluster_id);
        }
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_until_serving(size as usize);
        }
        KafkaCluster { nodes }
    }

    /// Every node's client address, as a bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateBroker::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node with this id.
    pub fn node(&mut self, id: i32) -> &mut PrivateBroker {
        self.nodes
            .iter_mut()
            .find(|node| node.node_id as i32 == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
}
