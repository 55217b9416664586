use clap::Parser;
use consumer::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::parse();
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        event_model::signal::shutdown_signal().await;
        tracing::info!("shutdown requested; finishing the current batch");
        on_signal.cancel();
    });
    consumer::run(config, shutdown).await
}
