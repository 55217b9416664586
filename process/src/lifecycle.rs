//! Start-up shared by every binary: logs, and the shutdown signal.

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The logging flag every binary shares.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log lines as text or JSON, on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info".into())
        // sqlx warns of a connect parameter it does not know with its value: `sslpassword`'s
        // passphrase in clear. The parameter is named by our own start-up line, redacted.
        .add_directive(
            "sqlx_postgres::options::parse=error"
                .parse()
                .expect("a valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Ends the process with `result`: 0, or 1 after one line naming the error and its causes.
pub fn exit(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            let causes = causes(&error);
            tracing::error!(error = %causes, "fatal");
            eprintln!("error: {causes}");
            std::process::exit(1)
        }
    }
}

/// The error and its causes in one line, each cause said once: libraries often repeat their
/// source in their own message (`failed to reach Kafka: Meta data fetch error: X` above `Meta data
/// fetch error: X`), which `{:#}` would print again at every level.
pub fn causes(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    // A message that repeats its own last part ("X: X").
    let mut parts: Vec<&str> = Vec::new();
    for part in line.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Doubling delays between retries, capped: the one retry schedule of every component.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: std::time::Duration,
    next: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    pub const fn new(first: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The delay before the next attempt; each call doubles the one after, up to the cap.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps the next delay; false when shutdown came first.
    pub async fn wait(&mut self, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// How an attempt of [`retry`] failed: worth another try after the backoff, or not.
#[derive(Debug)]
pub enum Attempt<E> {
    Retry(E),
    Fail(E),
}

/// Why [`retry`] gave up: shutdown came first, or an attempt failed for good.
#[derive(Debug)]
pub enum Stopped<E> {
    Shutdown,
    Failed(E),
}

/// A failure is a way to stop: `?` carries it out of a step that may also stop for shutdown.
impl<E> From<E> for Stopped<E> {
    fn from(error: E) -> Stopped<E> {
        Stopped::Failed(error)
    }
}

/// Runs `attempt` until it succeeds, sleeping `backoff` between tries; an attempt says whether
/// its failure is worth another try (and logs it: only it knows what to say).
pub async fn retry<T, E>(
    mut backoff: Backoff,
    shutdown: &tokio_util::sync::CancellationToken,
    mut attempt: impl AsyncFnMut() -> Result<T, Attempt<E>>,
) -> Result<T, Stopped<E>> {
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(Attempt::Fail(error)) => return Err(Stopped::Failed(error)),
            Err(Attempt::Retry(_)) => {
                if !backoff.wait(shutdown).await {
                    return Err(Stopped::Shutdown);
                }
            }
        }
    }
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let on_signal = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        on_signal.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("canceling statement due to statement timeout")]
        Timeout,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        // Repeats its source in its own message, as many library errors do.
        #[error("while executing migration 13: {0}")]
        Migration(#[source] Inner),
    }

    #[test]
    fn each_cause_is_said_once() {
        let error = anyhow::Error::new(Outer::Migration(Inner::Timeout))
            .context("failed to prepare the database");
        assert_eq!(
            causes(&error),
            "failed to prepare the database: while executing migration 13: canceling statement due to statement timeout"
        );
        let error = anyhow::anyhow!("BrokerTransportFailure (down): BrokerTransportFailure (down)")
            .context("failed to reach Kafka at k:9092");
        assert_eq!(
            causes(&error),
            "failed to reach Kafka at k:9092: BrokerTransportFailure (down)"
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn retry_tries_again_until_success_or_a_failure_for_good_or_shutdown() {
        let backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut tries = 0;
        let done = retry(backoff, &shutdown, async || {
            tries += 1;
            if tries < 3 {
                Err(Attempt::Retry("not yet"))
            } else {
                Ok(tries)
            }
        })
        .await;
        assert!(matches!(done, Ok(3)));
        let failed: Result<(), _> =
            retry(backoff, &shutdown, async || Err(Attempt::Fail("never"))).await;
        assert!(matches!(failed, Err(Stopped::Failed("never"))));
        shutdown.cancel();
        let stopped: Result<(), _> =
            retry(backoff, &shutdown, async || Err(Attempt::Retry("down"))).await;
        assert!(matches!(stopped, Err(Stopped::Shutdown)));
    }
}
