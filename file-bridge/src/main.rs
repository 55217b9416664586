use clap::Parser;
use file_bridge::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let config = Config::parse();
    let shutdown = telemetry::shutdown_token();
    file_bridge::run(config, shutdown).await
}
