//! The agent's HTTP endpoints: /metrics (OpenMetrics text, encoded by prometheus-client from
//! the registry the collector updates), /healthz (200 once tracing is live) and /readyz. Only
//! GET; requests are small and each connection has a deadline, so a slow or hostile client
//! costs a task, never the collector.
use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

/// A connection is closed after this long, whatever it is doing.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers that do not
/// ask for OpenMetrics: the same samples; a counter's family is named with its `_total`
/// (OpenMetrics names the family without it), and the UNIT and EOF lines go. prometheus-client
/// encodes OpenMetrics only.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

pub struct Shared {
    registry: Mutex<Option<Registry>>,
    live: AtomicBool,
    connections: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            registry: Mutex::new(None),
            live: AtomicBool::new(false),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    pub fn set_registry(&self, r: Registry) {
        if let Ok(mut g) = self.registry.lock() {
            *g = Some(r);
        }
    }

    pub fn set_live(&self) {
        self.live.store(true, Ordering::Relaxed);
    }

    fn encode(&self) -> Option<String> {
        let g = self.registry.lock().ok()?;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, g.as_ref()?).ok()?;
        Some(out)
    }
}

fn reply(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(kind) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n"));
    }
    let live = shared.live.load(Ordering::Relaxed);
    Ok(match req.uri().path() {
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            match shared.encode() {
                Some(text) if openmetrics => reply(StatusCode::OK, OPENMETRICS, text),
                Some(text) => reply(StatusCode::OK, PROMETHEUS_TEXT, prometheus_text(&text)),
                None => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "metrics not ready\n"),
            }
        }
        "/healthz" | "/readyz" if live => reply(StatusCode::OK, TEXT, "ok\n"),
        "/healthz" | "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "starting\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    })
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_with_total_and_drops_openmetrics_lines() {
        let om = "# HELP oomtrace_oom_kills OOM kills.\n# TYPE oomtrace_oom_kills counter\n\
                  oomtrace_oom_kills_total{pod=\"a\"} 1\n# HELP oomtrace_rss_bytes RSS.\n\
                  # TYPE oomtrace_rss_bytes gauge\n# UNIT oomtrace_rss_bytes bytes\n\
                  oomtrace_rss_bytes 5\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP oomtrace_oom_kills_total OOM kills.\n# TYPE oomtrace_oom_kills_total counter\n\
             oomtrace_oom_kills_total{pod=\"a\"} 1\n# HELP oomtrace_rss_bytes RSS.\n\
             # TYPE oomtrace_rss_bytes gauge\noomtrace_rss_bytes 5\n"
        );
    }
}
