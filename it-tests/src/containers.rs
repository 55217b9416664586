//! Services from Docker (feature `docker`): a Kafka-protocol broker and PostgreSQL 15 in containers,
//! started once per test binary. `scripts/test-docker.sh` runs these tests in `.ci/run`.
//!
//! The images, where no registry answers, come from the environment:
//! - `IT_POSTGRES_IMAGE` (default `postgres:15`): anything that reads the official image's
//!   variables, such as `ecommerce-pipeline-fixture/postgres:15`.
//! - `IT_KAFKA_IMAGE` (default: `redpandadata/redpanda:v24.2.7`): when set, an image that runs a
//!   Kafka node as `it-tests/fixtures/docker/kafka` does (`KAFKA_INTERNAL_ADVERTISED`).
//!
//! Every container carries the label [`LABEL`] with the run's id (`IT_DOCKER_RUN`, else this
//! process's id), so `scripts/test-docker.sh` removes what its run left behind and nothing else
//! (the containers live until the process exits, and no destructor runs then).

use std::sync::OnceLock;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

/// The label every test container carries; its value is the test process's id.
pub const LABEL: &str = "ecommerce-pipeline.it-tests";

pub struct Services {
    pub brokers: String,
    pub database_url: String,
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// Starts the containers on first use; they live until the test process exits.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async move {
                let started = start().await;
                let (services, containers) = match started {
                    Ok((services, containers)) => (Ok(services), Some(containers)),
                    Err(error) => (Err(error.to_string()), None),
                };
                let _ = sender.send(services);
                // Hold the containers for the life of the process.
                let _keep = containers;
                std::future::pending::<()>().await;
            });
        });
        receiver
            .recv()
            .expect("container thread")
            .unwrap_or_else(|error| panic!("failed to start containers: {error}"))
    })
}

type Running = (
    testcontainers::ContainerAsync<GenericImage>,
    testcontainers::ContainerAsync<GenericImage>,
);

async fn start() -> anyhow::Result<(Services, Running)> {
    let run = std::env::var("IT_DOCKER_RUN").unwrap_or_else(|_| std::process::id().to_string());
    let (name, tag) = image_from_env("IT_POSTGRES_IMAGE", "postgres:15");
    let postgres = GenericImage::new(name, tag)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_label(LABEL, run.as_str())
        .start()
        .await?;
    // Where the containers' ports are reachable, as testcontainers sees the Docker host.
    let host = postgres.get_host().await?;
    let postgres_port = postgres.get_host_port_ipv4(5432.tcp()).await?;
    // The broker must advertise the address clients use, so its host port is chosen before it
    // starts: a free one for each test process, so test binaries can run side by side.
    let broker_port = crate::ports::free_port();
    let advertised = format!("{host}:{broker_port}");
    let broker = match std::env::var("IT_KAFKA_IMAGE") {
        Ok(image) => {
            let (name, tag) = split_image(&image);
            GenericImage::new(name, tag)
                .with_exposed_port(9092.tcp())
                .with_wait_for(WaitFor::message_on_stdout(
                    "Transition from STARTING to STARTED",
                ))
                .with_mapped_port(broker_port, 9092.tcp())
                .with_env_var("KAFKA_INTERNAL_ADVERTISED", advertised.as_str())
        }
        Err(_) => GenericImage::new("redpandadata/redpanda", "v24.2.7")
            .with_exposed_port(9092.tcp())
            .with_wait_for(WaitFor::message_on_stderr("Successfully started Redpanda!"))
            .with_mapped_port(broker_port, 9092.tcp())
            .with_cmd([
                "redpanda",
                "start",
                "--mode",
                "dev-container",
                "--smp",
                "1",
                "--kafka-addr",
                "0.0.0.0:9092",
                "--advertise-kafka-addr",
                advertised.as_str(),
            ]),
    }
    .with_label(LABEL, run.as_str())
    .start()
    .await?;
    Ok((
        Services {
            brokers: advertised,
            database_url: format!("postgres://postgres@{host}:{postgres_port}/postgres"),
        },
        (broker, postgres),
    ))
}

fn image_from_env(variable: &str, default: &str) -> (String, String) {
    split_image(&std::env::var(variable).unwrap_or_else(|_| default.to_owned()))
}

/// `name:tag` (a registry host's port is not a tag: the tag follows the last `/`).
fn split_image(image: &str) -> (String, String) {
    let slash = image.rfind('/').map_or(0, |at| at + 1);
    match image[slash..].rfind(':') {
        Some(colon) => (
            image[..slash + colon].to_owned(),
            image[slash + colon + 1..].to_owned(),
        ),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn an_image_splits_at_the_tag_not_at_a_registry_port() {
        let split = |image: &str| {
            let (name, tag) = split_image(image);
            format!("{name} {tag}")
        };
        assert_eq!(split("postgres:15"), "postgres 15");
        assert_eq!(
            split("ecommerce-pipeline-fixture/kafka:4.1.1"),
            "ecommerce-pipeline-fixture/kafka 4.1.1"
        );
        assert_eq!(split("registry:5000/pg"), "registry:5000/pg latest");
    }
}
