use clap::Parser;
use generator::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let config = Config::parse();
    let shutdown = telemetry::shutdown_token();
    generator::run(config, shutdown).await
}
