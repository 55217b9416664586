//! Services from Docker (feature `docker`): Redpanda and PostgreSQL 15 containers, started once per
//! test binary. Compiled in CI; run only where a Docker engine is available (not on our build host).
//!
//! Every container carries the label [`LABEL`] with this process's id, so
//! `scripts/test-docker.sh` removes what a run leaves behind (the containers live until the
//! process exits, and no destructor runs then).

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
    let process = std::process::id().to_string();
    let postgres = GenericImage::new("postgres", "15")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_label(LABEL, process.as_str())
        .start()
        .await?;
    // Where the containers' ports are reachable, as testcontainers sees the Docker host.
    let host = postgres.get_host().await?;
    let postgres_port = postgres.get_host_port_ipv4(5432.tcp()).await?;
    // Redpanda must advertise the address clients use, so its host port is chosen before it
    // starts: a free one for each test process, so test binaries can run side by side.
    let redpanda_port = crate::services::free_port();
    let advertised = format!("{host}:{redpanda_port}");
    let redpanda = GenericImage::new("redpandadata/redpanda", "v24.2.7")
        .with_exposed_port(9092.tcp())
        .with_wait_for(WaitFor::message_on_stderr("Successfully started Redpanda!"))
        .with_mapped_port(redpanda_port, 9092.tcp())
        .with_label(LABEL, process.as_str())
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
        ])
        .start()
        .await?;
    Ok((
        Services {
            brokers: advertised,
            database_url: format!("postgres://postgres@{host}:{postgres_port}/postgres"),
        },
        (redpanda, postgres),
    ))
}
