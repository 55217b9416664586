use clap::Parser;
use consumer::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let config = Config::parse();
    let shutdown = telemetry::shutdown_token();
    consumer::run(config, shutdown).await
}
