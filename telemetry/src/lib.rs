//! What every component serves: its metrics (declared on prometheus-client, rendered as
//! OpenMetrics text), `/healthz` and `/readyz`, from an HTTP server on axum and hyper.
//!
//! Hand-written rather than a metrics stack: a handful of series, updated once per batch or file.
//! Names follow `<namespace>_<name>_<unit>_total` for counters; labels stay low-cardinality.

use axum::http::{header, Method, StatusCode, Uri};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The metrics of one process, declared once each with its help text (prometheus-client).
pub type Registry = prometheus_client::registry::Registry;

/// OpenMetrics text, which Prometheus scrapes natively.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// `<prefix>_build_info{version="..."} 1`: which build answers.
pub fn register_build_info(registry: &mut Registry) {
    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct Build {
        version: &'static str,
    }
    let info = prometheus_client::metrics::info::Info::new(Build {
        version: env!("CARGO_PKG_VERSION"),
    });
    registry.register("build", "the version of this build", info);
}

/// What a route answers: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status: 200,
            content_type,
            body: body.into(),
        }
    }

    pub fn not_found() -> Response {
        Response {
            status: 404,
            content_type: "text/plain",
            body: b"not found\n".to_vec(),
        }
    }
}

pub type Handler =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Connections that sent their request, served at once; more wait briefly for a turn.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections that have not sent a byte yet (each a descriptor and a small task, closed after
/// [`FIRST_BYTE_TIMEOUT`]). Beyond this the one that has waited longest is closed: clients that
/// send nothing can never keep a probe out. Below the usual descriptor limit of a container.
pub const MAX_WAITING: usize = 4096;
/// A client must send its first byte within this time (probes and scrapers send at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client must send its whole request head within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A route must answer within this time (a dashboard query on a slow database).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves GET and HEAD on `addr` until `shutdown`, with axum on hyper. Idle and slow clients
/// cannot starve it: a connection holds no serving slot until its first byte arrives (within
/// [`FIRST_BYTE_TIMEOUT`], at most [`MAX_WAITING`] such, the oldest closed first), then at most
/// [`MAX_CONNECTIONS`] are served at once, each with [`READ_TIMEOUT`] for its request head and
/// [`ANSWER_TIMEOUT`] for the answer. `handler` gets the path (query stripped).
pub async fn serve(
    addr: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = listen(addr)?;
    let local = listener.local_addr()?;
    let router = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let handler = handler.clone();
        async move { answer(&handler, &method, uri.path()).await }
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let waiting = WaitingRoom::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                // Out of descriptors, say: let some connections close before the next accept.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let (router, permits, waiting) = (router.clone(), permits.clone(), waiting.clone());
            tokio::spawn(async move {
                if !waiting.first_byte(&stream).await {
                    return;
                }
                let Ok(Ok(_permit)) =
                    tokio::time::timeout(READ_TIMEOUT, permits.acquire_owned()).await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let bound = READ_TIMEOUT + ANSWER_TIMEOUT + Duration::from_secs(1);
                let _ = tokio::time::timeout(bound, connection).await;
            });
        }
    });
    Ok(local)
}

/// Connections queued by the kernel before they are accepted: room for bursts of clients (the
/// kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connections that have not sent a byte yet, oldest first; entering a full room closes the
/// oldest.
#[derive(Clone, Default)]
struct WaitingRoom {
    inner: Arc<Mutex<WaitingInner>>,
}

#[derive(Default)]
struct WaitingInner {
    next: u64,
    queue: std::collections::VecDeque<(u64, CancellationToken)>,
}

impl WaitingRoom {
    /// Waits for the connection's first byte: true when it came, false when the client sent
    /// nothing in time or was closed to make room.
    async fn first_byte(&self, stream: &tokio::net::TcpStream) -> bool {
        let (id, evicted) = self.enter();
        let mut first = [0u8; 1];
        let arrived = tokio::select! {
            // A peek, not readiness: a fresh socket may report itself readable with nothing
            // to read (seen: every idle client passed a readiness wait at once).
            peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)) => {
                matches!(peeked, Ok(Ok(n)) if n > 0)
            }
            _ = evicted.cancelled() => false,
        };
        self.leave(id);
        arrived
    }

    fn enter(&self) -> (u64, CancellationToken) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while inner.queue.len() >= MAX_WAITING {
            if let Some((_, oldest)) = inner.queue.pop_front() {
                oldest.cancel();
            }
        }
        let (id, token) = (inner.next, CancellationToken::new());
        inner.next += 1;
        inner.queue.push_back((id, token.clone()));
        (id, token)
    }

    fn leave(&self, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = inner.queue.iter().position(|(entry, _)| *entry == id) {
            inner.queue.remove(at);
        }
    }
}

async fn answer(handler: &Handler, method: &Method, path: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "GET or HEAD only\n",
        )
            .into_response();
    }
    let Ok(response) = tokio::time::timeout(ANSWER_TIMEOUT, handler(path.to_owned())).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no answer in time\n").into_response();
    };
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let length = response.body.len();
    // HEAD: the same head, no body.
    let body = if method == Method::HEAD {
        Vec::new()
    } else {
        response.body
    };
    let mut answer = (
        status,
        [
            (header::CONTENT_TYPE, response.content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    if let Ok(length) = header::HeaderValue::from_str(&length.to_string()) {
        answer.headers_mut().insert(header::CONTENT_LENGTH, length);
    }
    answer
}

/// One thing a component needs to be ready, named in `/readyz` (declared in the order they are
/// listed there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// A working broker connection, by any evidence (metadata, an assignment, a delivery,
    /// librdkafka's statistics).
    Broker,
    /// The database answers.
    Database,
    /// The bridge's input folder is there and its claim folder taken.
    InputFolder,
    /// The group assigned this consumer partitions.
    Partitions,
    /// No batch is stuck.
    Progress,
}

impl Check {
    pub const fn as_str(self) -> &'static str {
        match self {
            Check::Broker => "broker",
            Check::Database => "database",
            Check::InputFolder => "input_folder",
            Check::Partitions => "partitions",
            Check::Progress => "progress",
        }
    }
}

/// What a component needs to be ready, each need with its state: `/readyz` answers 200 when all
/// hold and 503 naming those that do not. `/healthz` answers 200 while the process serves.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<Check, Result<(), String>>>>,
}

impl Readiness {
    /// Records whether `check` holds now (`Err` says why not).
    pub fn set(&self, check: Check, state: Result<(), String>) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks.insert(check, state);
    }

    /// The checks that do not hold, as `name: why` lines; empty when ready.
    pub fn failing(&self) -> Vec<String> {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks
            .iter()
            .filter_map(|(check, state)| {
                state
                    .as_ref()
                    .err()
                    .map(|why| format!("{}: {why}", check.as_str()))
            })
            .collect()
    }

    fn answer(&self) -> Response {
        let failing = self.failing();
        if failing.is_empty() {
            Response::ok("text/plain", "ready\n")
        } else {
            Response {
                status: 503,
                content_type: "text/plain",
                body: format!("not ready\n{}\n", failing.join("\n")).into_bytes(),
            }
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`, when one is given.
pub async fn serve_metrics(
    addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let handler = with_health(readiness, metrics_handler(registry));
    let bound = serve(addr, handler, shutdown).await.map_err(|error| {
        std::io::Error::new(
            error.kind(),
            format!("failed to listen on {addr} for metrics: {error}"),
        )
    })?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
    Ok(())
}

/// `/healthz` and `/readyz` from `readiness`, everything else from `inner`.
pub fn with_health(readiness: Readiness, inner: Handler) -> Handler {
    Arc::new(move |path: String| {
        let (readiness, inner) = (readiness.clone(), inner.clone());
        Box::pin(async move {
            match path.as_str() {
                "/healthz" => Response::ok("text/plain", "alive\n"),
                "/readyz" => readiness.answer(),
                _ => inner(path).await,
            }
        })
    })
}

/// A handler serving only `/metrics` from `registry`.
pub fn metrics_handler(registry: Arc<Registry>) -> Handler {
    Arc::new(move |path: String| {
        let registry = registry.clone();
        Box::pin(async move {
            match path.as_str() {
                "/metrics" => Response::ok(METRICS_CONTENT_TYPE, render(&registry)),
                _ => Response::not_found(),
            }
        })
    })
}

/// A plain HTTP/1.1 GET of `http://host:port/path`, for liveness checks and tests.
pub async fn http_get(url: &str, timeout: std::time::Duration) -> std::io::Result<(u16, String)> {
    let invalid = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not an http:// URL: {url}"),
        )
    };
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{url} did not answer"),
            )
        })??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_renders_as_openmetrics() {
        let mut registry = Registry::with_prefix("x");
        register_build_info(&mut registry);
        let text = render(&registry);
        assert!(
            text.contains(&format!(
                "x_build_info{{version=\"{}\"}} 1\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
