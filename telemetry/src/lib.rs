//! Just enough Prometheus: label-keyed counters, gauges and fixed-bucket histograms rendered as
//! text exposition format; an HTTP server (axum on hyper) for `/metrics`, `/healthz`, `/readyz`
//! and a few more routes.
//!
//! Hand-written rather than a metrics stack: a handful of series, updated once per batch or file.
//! Names follow `<namespace>_<name>_<unit>_total` for counters; labels stay low-cardinality.

pub mod signal;

pub use signal::{exit, init_logging, shutdown_token, LogArgs, LogFormat};

use axum::http::{header, Method, StatusCode, Uri};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Labels, f64>,
}

struct Histogram {
    help: &'static str,
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// One process's metrics. Cheap to clone; updates lock a mutex, which is fine at per-batch rates.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    families: BTreeMap<&'static str, Family>,
    histograms: BTreeMap<&'static str, Histogram>,
}

impl Registry {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
        update: impl FnOnce(&mut f64),
    ) {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        self.with(|inner| {
            let family = inner.families.entry(name).or_insert_with(|| Family {
                help,
                kind,
                series: BTreeMap::new(),
            });
            update(family.series.entry(labels).or_insert(0.0));
        });
    }

    /// Declares a counter at 0 so it is exported before its first increment.
    pub fn declare_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) {
        self.series(name, help, Kind::Counter, labels, |_| {});
    }

    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        by: u64,
    ) {
        self.series(name, help, Kind::Counter, labels, |value| {
            *value += by as f64
        });
    }

    pub fn set(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        to: f64,
    ) {
        self.series(name, help, Kind::Gauge, labels, |value| *value = to);
    }

    /// Whether any series of the family was recorded.
    pub fn has(&self, name: &str) -> bool {
        self.with(|inner| inner.families.contains_key(name))
    }

    /// Sum over every series of a family.
    pub fn total(&self, name: &str) -> f64 {
        self.with(|inner| {
            inner
                .families
                .get(name)
                .map_or(0.0, |f| f.series.values().sum())
        })
    }

    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
        value: f64,
    ) {
        self.observe_many(name, help, bounds, [value]);
    }

    /// Observes many values under one lock (a batch's rows).
    pub fn observe_many(
        &self,
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
        values: impl IntoIterator<Item = f64>,
    ) {
        self.with(|inner| {
            let histogram = inner.histograms.entry(name).or_insert_with(|| Histogram {
                help,
                bounds,
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            });
            for value in values {
                for (bound, count) in histogram.bounds.iter().zip(histogram.counts.iter_mut()) {
                    if value <= *bound {
                        *count += 1;
                    }
                }
                histogram.sum += value;
                histogram.count += 1;
            }
        });
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.with(|inner| {
            let mut out = String::new();
            for (name, family) in &inner.families {
                let kind = match family.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
                for (labels, value) in &family.series {
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        render_labels(labels, None),
                        number(*value)
                    );
                }
            }
            for (name, histogram) in &inner.histograms {
                let _ = writeln!(
                    out,
                    "# HELP {name} {}\n# TYPE {name} histogram",
                    histogram.help
                );
                for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", number(*bound));
                }
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
                let _ = writeln!(out, "{name}_sum {}", number(histogram.sum));
                let _ = writeln!(out, "{name}_count {}", histogram.count);
            }
            out
        })
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn render_labels(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
        .collect();
    if let Some((key, value)) = extra {
        parts.push(format!("{key}=\"{value}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
pub fn metrics_handler(registry: Registry) -> Handler {
    Arc::new(move |path: String| {
        let registry = registry.clone();
        Box::pin(async move {
            match path.as_str() {
                "/metrics" => Response::ok("text/plain; version=0.0.4", registry.render()),
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
    fn renders_prometheus_text() {
        let registry = Registry::default();
        registry.add("x_rows_total", "rows", &[("reason", "late")], 2);
        registry.add("x_rows_total", "rows", &[("reason", "late")], 3);
        registry.set("x_lag_messages", "lag", &[("partition", "0")], 7.0);
        registry.observe("x_latency_seconds", "latency", &[0.1, 1.0], 0.5);
        let text = registry.render();
        assert!(
            text.contains("# TYPE x_rows_total counter\nx_rows_total{reason=\"late\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("x_lag_messages{partition=\"0\"} 7\n"));
        assert!(text.contains("x_latency_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(text.contains("x_latency_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("x_latency_seconds_bucket{le=\"+Inf\"} 1\nx_latency_seconds_sum 0.5\nx_latency_seconds_count 1\n"));
        assert_eq!(registry.total("x_rows_total"), 5.0);
    }
}
