//! What the bridge and the consumer share about Kafka: client settings with `-X key=value`
//! pass-through (TLS, SASL, tuning), and creating the topic, since brokers need not auto-create it.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{}: {source}{detail}", client_failure(.brokers, .source))]
    Client {
        brokers: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
        /// What librdkafka reported on the way (`; SSL handshake failed: ...`), if anything.
        detail: String,
    },
    #[error("invalid Kafka client configuration in {file}: {reason}")]
    Config { file: String, reason: String },
    #[error("failed to create topic `{topic}` on {brokers}: {reason}")]
    CreateTopic {
        topic: String,
        brokers: String,
        reason: String,
    },
    #[error("topic `{topic}` did not appear on {brokers} within {waited:?}")]
    TopicNotVisible {
        topic: String,
        brokers: String,
        waited: Duration,
    },
}

/// What a client error was: settings librdkafka refused, or a broker not reached.
fn client_failure(brokers: &str, source: &KafkaError) -> String {
    match source {
        KafkaError::ClientCreation(_) => "librdkafka refused the Kafka client settings".to_owned(),
        _ => format!("failed to reach Kafka at {brokers}"),
    }
}

/// The Kafka flags every component shares.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// The event topic; created when missing.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "ecommerce-events")]
    pub topic: String,
    /// Partitions of the topic, when this component is the one that creates it.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,
    /// Replication factor of the topic, when this component is the one that creates it.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// A librdkafka client properties file (Java style, as kcat -F or Kafka's client.properties):
    /// `key=value` lines, `#` comments. -X options and KAFKA_OPTIONS override it.
    #[arg(long = "kafka-config", env = "KAFKA_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Extra librdkafka option, repeatable: -X security.protocol=SASL_SSL. A value may hold
    /// commas. Overrides KAFKA_OPTIONS and --kafka-config.
    #[arg(short = 'X', long = "kafka-option", value_parser = parse_option)]
    pub options: Vec<(String, String)>,
    /// librdkafka options from the environment: KAFKA_OPTIONS="key=value,key=value"; a comma
    /// followed by text without `=` belongs to the value before it (bootstrap lists).
    #[arg(
        long = "kafka-options",
        env = "KAFKA_OPTIONS",
        hide = true,
        hide_env_values = true
    )]
    pub options_env: Option<String>,
}

impl KafkaArgs {
    /// Client settings for `component`: `defaults` first, then `--kafka-config`, then
    /// KAFKA_OPTIONS, then `-X`, each overriding the one before. `client.id` names the component
    /// and its host, so operators can see who is connected, unless set.
    pub fn client_config(
        &self,
        component: &str,
        defaults: &[(&str, &str)],
    ) -> Result<ClientConfig, SetupError> {
        let mut overrides = Vec::new();
        if let Some(file) = &self.config_file {
            let text = std::fs::read_to_string(file).map_err(|error| SetupError::Config {
                file: file.display().to_string(),
                reason: error.to_string(),
            })?;
            overrides.extend(
                parse_properties(&text).map_err(|reason| SetupError::Config {
                    file: file.display().to_string(),
                    reason,
                })?,
            );
        }
        if let Some(text) = &self.options_env {
            overrides.extend(split_env_options(text)?);
        }
        overrides.extend(self.options.iter().cloned());
        let mut config = client_config(&self.brokers, defaults, &overrides);
        if config.get("client.id").is_none() {
            config.set("client.id", format!("{component}@{}", host_name()));
        }
        Ok(config)
    }

    /// Creates the topic unless it exists (see [`ensure_topic`]).
    pub async fn ensure_topic(&self, config: &ClientConfig) -> Result<(), SetupError> {
        ensure_topic(
            config,
            &self.topic,
            self.partitions,
            self.replication_factor,
        )
        .await
    }
}

impl SetupError {
    /// Whether waiting may mend it: a broker that does not answer yet (down, starting, its name
    /// not resolvable yet, timed out), or a topic still appearing. Not: credentials, certificates,
    /// authorisation, configuration, a topic the broker refused to create.
    pub fn is_transient(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self {
            SetupError::Client { source, detail, .. } => {
                let refused = matches!(
                    source.rdkafka_error_code(),
                    Some(
                        Code::Authentication
                            | Code::SaslAuthenticationFailed
                            | Code::TopicAuthorizationFailed
                            | Code::ClusterAuthorizationFailed
                            | Code::GroupAuthorizationFailed
                            | Code::InvalidArgument
                            | Code::UnsupportedSASLMechanism
                    )
                );
                // Settings librdkafka refuses (`fetch.max.bytes` below `message.max.bytes`, an
                // unknown property) stay refused however long one waits.
                let misconfigured = matches!(**source, KafkaError::ClientCreation(_));
                let said = detail.to_ascii_lowercase();
                !refused
                    && !misconfigured
                    && !said.contains("authentication")
                    && !said.contains("certificate")
                    && !said.contains("ssl handshake failed")
            }
            SetupError::TopicNotVisible { .. } => true,
            SetupError::Config { .. } | SetupError::CreateTopic { .. } => false,
        }
    }
}

/// Parses one `-X key=value` librdkafka option.
pub fn parse_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "`{text}` is not a librdkafka option like key=value"
        )),
    }
}

/// KAFKA_OPTIONS split into options: at commas, except where what follows has no `=` (then the
/// comma is part of the value, as in a broker list).
fn split_env_options(text: &str) -> Result<Vec<(String, String)>, SetupError> {
    let mut parts: Vec<String> = Vec::new();
    for piece in text.split(',') {
        match parts.last_mut() {
            Some(last) if !piece.contains('=') => {
                last.push(',');
                last.push_str(piece);
            }
            _ => parts.push(piece.to_owned()),
        }
    }
    parts
        .iter()
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            parse_option(part).map_err(|reason| SetupError::Config {
                file: "KAFKA_OPTIONS".into(),
                reason,
            })
        })
        .collect()
}

/// Parses Java-style properties: `key=value`, `key: value` or `key value` per line, `#` and `!`
/// comments, a trailing backslash continuing the line, and the escapes `\t \n \r \f \\ \uXXXX`.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut properties = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let mut logical = line.trim_start().to_owned();
        if logical.is_empty() || logical.starts_with('#') || logical.starts_with('!') {
            continue;
        }
        while ends_in_continuation(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start()),
                None => break,
            }
        }
        let (key, value) = split_property(&logical);
        let key = unescape(key).map_err(|e| format!("line {}: {e}", index + 1))?;
        let value = unescape(value).map_err(|e| format!("line {}: {e}", index + 1))?;
        if key.is_empty() {
            return Err(format!("line {}: no key", index + 1));
        }
        properties.push((key, value));
    }
    Ok(properties)
}

fn ends_in_continuation(line: &str) -> bool {
    line.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

/// The key up to the first unescaped `=`, `:` or whitespace; the value after that separator
/// and the whitespace around it.
fn split_property(line: &str) -> (&str, &str) {
    let mut escaped = false;
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' | ' ' | '\t' => {
                let key = &line[..at];
                let rest = line[at..].trim_start_matches([' ', '\t']);
                let rest = rest
                    .strip_prefix(['=', ':'])
                    .unwrap_or(rest)
                    .trim_start_matches([' ', '\t']);
                return (key, rest);
            }
            _ => {}
        }
    }
    (line, "")
}

fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape \\u{hex}"))?;
                out.push(code);
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// This machine's name, for `client.id` and `application_name`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

/// Client settings: our defaults first, then the user's `-X` options, which win.
/// What every client of ours sets, before its own defaults.
pub const SHARED_DEFAULTS: &[(&str, &str)] = &[
    // Partitions added to the live topic are seen within this bound (librdkafka's default is
    // five minutes): the bridge publishes to them and the consumer group rebalances onto them.
    ("topic.metadata.refresh.interval.ms", "10000"),
];

pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    overrides: &[(String, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in SHARED_DEFAULTS.iter().chain(defaults) {
        config.set(*key, *value);
    }
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}

/// Creates the topic unless it exists, then waits until its metadata is visible.
pub async fn ensure_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), SetupError> {
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_owned();
    let client_error = |source| SetupError::Client {
        brokers: brokers.clone(),
        source: Box::new(source),
        detail: String::new(),
    };
    if partitions_of(config, topic)?.is_some() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(client_error)?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(|error| SetupError::CreateTopic {
            topic: topic.to_owned(),
            brokers: brokers.clone(),
            reason: error.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(SetupError::CreateTopic {
                    topic: topic.to_owned(),
                    brokers,
                    reason: code.to_string(),
                })
            }
        }
    }
    let waited = Duration::from_secs(30);
    let deadline = Instant::now() + waited;
    while Instant::now() < deadline {
        if partitions_of(config, topic)?.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(SetupError::TopicNotVisible {
        topic: topic.to_owned(),
        brokers,
        waited,
    })
}

/// Keeps what librdkafka reports about its connections (a TLS handshake that failed, a SASL
/// mechanism refused), so a failure can say why rather than "broker transport failure".
#[derive(Default)]
pub struct ClientErrors(std::sync::Mutex<Vec<String>>);

impl ClientErrors {
    /// The distinct reasons reported so far, as `; reason; reason`.
    pub fn describe(&self) -> String {
        let reasons = self.0.lock().unwrap_or_else(|p| p.into_inner());
        reasons.iter().map(|reason| format!("; {reason}")).collect()
    }
}

impl ClientContext for ClientErrors {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        let mut reasons = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !reasons.iter().any(|r| r == reason) && reasons.len() < 5 {
            reasons.push(reason.to_owned());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ClientErrors {}

/// Whether the client has a connection up to some broker, from librdkafka's statistics (for
/// readiness); `Err` lists what it has instead.
pub fn broker_reachable(statistics: &rdkafka::Statistics) -> Result<(), String> {
    let brokers: Vec<&rdkafka::statistics::Broker> = statistics
        .brokers
        .values()
        .filter(|broker| broker.nodeid >= 0)
        .collect();
    if brokers.iter().any(|broker| broker.state == "UP") {
        return Ok(());
    }
    let states: Vec<String> = statistics
        .brokers
        .values()
        .map(|broker| format!("{} {}", broker.name, broker.state))
        .collect();
    Err(format!(
        "no broker connection is up ({})",
        states.join(", ")
    ))
}

/// How many partitions the topic has, or `None` when the broker does not know it.
pub fn partitions_of(config: &ClientConfig, topic: &str) -> Result<Option<usize>, SetupError> {
    let brokers = config.get("bootstrap.servers").unwrap_or("?").to_owned();
    let probe: BaseConsumer<ClientErrors> = config
        .create_with_context(ClientErrors::default())
        .map_err(|source| SetupError::Client {
            brokers: brokers.clone(),
            source: Box::new(source),
            detail: String::new(),
        })?;
    let metadata = match probe.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(metadata) => metadata,
        Err(source) => {
            // Errors reach the context only through a poll.
            for _ in 0..5 {
                let _ = probe.poll(Duration::from_millis(50));
            }
            return Err(SetupError::Client {
                brokers,
                source: Box::new(source),
                detail: probe.context().describe(),
            });
        }
    };
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_librdkafka_refuses_are_not_waited_out() {
        let mut config = ClientConfig::new();
        config.set("fetch.max.bytes", "1024");
        let refused = config.create::<BaseConsumer>().err().expect("refused");
        let error = SetupError::Client {
            brokers: "b".to_owned(),
            source: Box::new(refused),
            detail: String::new(),
        };
        assert!(!error.is_transient(), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("librdkafka refused the Kafka client settings"),
            "{error}"
        );
    }

    #[test]
    fn options_parse_and_override_defaults() {
        assert_eq!(
            parse_option("security.protocol=SASL_SSL"),
            Ok(("security.protocol".into(), "SASL_SSL".into()))
        );
        assert_eq!(
            parse_option("sasl.password=a=b"),
            Ok(("sasl.password".into(), "a=b".into()))
        );
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=x").is_err());
        let config = client_config(
            "b:9092",
            &[("linger.ms", "50")],
            &[("linger.ms".into(), "5".into())],
        );
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
    }

    #[test]
    fn java_properties_parse_as_kafka_clients_write_them() {
        let text = "# a comment\n! another\n\nsecurity.protocol = SASL_SSL\nsasl.mechanism:SCRAM-SHA-512\n\
                    sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n    username=\"u\" password=\"p=,q\";\n\
                    ssl.ca.location /etc/ca.pem\nkey\\=with\\:sep=v\\u0041\\t\nempty=\n";
        let properties = parse_properties(text).unwrap();
        assert_eq!(
            properties,
            vec![
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
                (
                    "sasl.jaas.config".to_owned(),
                    "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"u\" password=\"p=,q\";".to_owned()
                ),
                ("ssl.ca.location".to_owned(), "/etc/ca.pem".to_owned()),
                ("key=with:sep".to_owned(), "vA\t".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn env_options_keep_commas_that_belong_to_a_value() {
        let options = split_env_options(
            "bootstrap.servers=a:1,b:2,security.protocol=ssl,sasl.password=x,y=z",
        )
        .unwrap();
        assert_eq!(
            options,
            vec![
                ("bootstrap.servers".to_owned(), "a:1,b:2".to_owned()),
                ("security.protocol".to_owned(), "ssl".to_owned()),
                ("sasl.password".to_owned(), "x".to_owned()),
                ("y".to_owned(), "z".to_owned()),
            ]
        );
    }
}
