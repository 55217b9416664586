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

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send its request head within this time.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A route must answer within this time (a dashboard query on a slow database).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves GET and HEAD on `addr` until `shutdown`, with axum on hyper: at most
/// [`MAX_CONNECTIONS`] connections at once, [`READ_TIMEOUT`] to send a request head,
/// [`ANSWER_TIMEOUT`] for an answer. `handler` gets the path (query stripped).
pub async fn serve(
    addr: SocketAddr,
    handler: Handler,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let router = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let handler = handler.clone();
        async move { answer(&handler, &method, uri.path()).await }
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit,
                _ = shutdown.cancelled() => return,
            };
            let Ok(permit) = permit else { return };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => return,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = connection.await;
            });
        }
    });
    Ok(local)
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

/// What a component needs to be ready, each need with its state: `/readyz` answers 200 when all
/// hold and 503 naming those that do not. `/healthz` answers 200 while the process serves.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    /// Records whether `check` holds now (`Err` says why not).
    pub fn set(&self, check: &'static str, state: Result<(), String>) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks.insert(check, state);
    }

    /// The checks that do not hold, as `name: why` lines; empty when ready.
    pub fn failing(&self) -> Vec<String> {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        checks
            .iter()
            .filter_map(|(name, state)| state.as_ref().err().map(|why| format!("{name}: {why}")))
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
