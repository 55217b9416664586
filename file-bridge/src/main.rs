use clap::Parser;
use file_bridge::Config;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    process::init_logging(config.log.log_format);
    let shutdown = process::shutdown_token();
    // Exit here rather than by dropping the runtime: a librdkafka close stuck in a blocking
    // thread must not keep the process alive.
    process::exit(file_bridge::run(config, shutdown).await)
}
