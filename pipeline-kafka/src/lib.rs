//! What the bridge and the consumer share about Kafka: client settings with `-X key=value`
//! pass-through (TLS, SASL, tuning), and creating the topic, since brokers need not auto-create it.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("failed to reach Kafka at {brokers}: {source}{detail}")]
    Client {
        brokers: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
        /// What librdkafka reported on the way (`; SSL handshake failed: ...`), if anything.
        detail: String,
    },
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
    /// Extra librdkafka option, repeatable: -X security.protocol=SASL_SSL.
    /// From the environment: KAFKA_OPTIONS="key=value,key=value".
    #[arg(short = 'X', long = "kafka-option", env = "KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ',', value_parser = parse_option)]
    pub options: Vec<(String, String)>,
}

impl KafkaArgs {
    /// Client settings: `defaults` first, then the user's `-X` options, which win.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        client_config(&self.brokers, defaults, &self.options)
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

/// Client settings: our defaults first, then the user's `-X` options, which win.
pub fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    overrides: &[(String, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
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
}
