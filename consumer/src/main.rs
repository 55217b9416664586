use clap::Parser;
use consumer::Config;

#[tokio::main]
async fn main() {
    telemetry::init_logging();
    let config = Config::parse();
    let shutdown = telemetry::shutdown_token();
    let result = consumer::run(config, shutdown).await;
    // Exit here rather than by dropping the runtime: leaving the group is already bounded in
    // run(), and a librdkafka close stuck in a blocking thread must not keep the process alive.
    std::process::exit(match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("Error: {error:?}");
            1
        }
    })
}
