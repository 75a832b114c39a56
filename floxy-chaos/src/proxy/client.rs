//! Driving a Toxiproxy API (the built-in [`super::ProxyServer`] or a real Toxiproxy) with
//! the `toxiproxy_rust` client, and the [`NetworkDisruptor`] that a run uses for network
//! faults.
//!
//! `toxiproxy_rust` 0.1.6 is a blocking client (reqwest's blocking client, which panics when
//! created inside a tokio runtime), so every call runs on `spawn_blocking`. It has no method
//! for `reset_peer` toxics and ignores HTTP error statuses; [`raw_request`] covers both.

use super::{ProxyServer, TOXIPROXY_URL_ENV, api};
use crate::faults::FaultCounters;
use crate::rng::{ChaosRng, between};
use crate::runner::Disruptor;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use toxiproxy_rust::client::Client;
use toxiproxy_rust::proxy::ProxyPack;

/// Runs a blocking `toxiproxy_rust` call off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("toxiproxy client call panicked: {e}"))?
}

/// One HTTP/1.1 request to a Toxiproxy API at `api` (`host:port`); returns the status code
/// and body. Blocking: call it from `spawn_blocking` or a plain thread.
///
/// # Errors
/// Connection or protocol errors.
pub fn raw_request(
    api: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect(api).map_err(|e| format!("connect {api}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad HTTP response: {resp:.80}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A Toxiproxy API to drive: the built-in one (started here) or a real one.
#[derive(Debug)]
pub struct ToxiproxyEnv {
    /// `host:port` of the API.
    pub api: String,
    /// The built-in server, when one was started.
    pub builtin: Option<api::ApiHandle>,
}

impl ToxiproxyEnv {
    /// Uses the real Toxiproxy named by [`TOXIPROXY_URL_ENV`] if set (`host:port` or
    /// `http://host:port`), else starts the built-in server on a free loopback port.
    ///
    /// # Errors
    /// The built-in server could not bind.
    pub async fn start(seed: u64) -> Result<Self, String> {
        if let Ok(url) = std::env::var(TOXIPROXY_URL_ENV)
            && !url.trim().is_empty()
        {
            let api = url
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            return Ok(Self { api, builtin: None });
        }
        let server = ProxyServer::new(seed);
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let h = api::serve(server, addr).await.map_err(|e| e.to_string())?;
        Ok(Self {
            api: h.addr.to_string(),
            builtin: Some(h),
        })
    }

    /// Creates (or replaces) proxy `name` from `listen` to `upstream` and returns the address
    /// it listens on. With the built-in server `listen` may use port 0.
    ///
    /// # Errors
    /// The API refused or could not be reached.
    pub async fn proxy(&self, name: &str, listen: &str, upstream: &str) -> Result<String, String> {
        let (api, name2, listen, upstream) = (
            self.api.clone(),
            name.to_owned(),
            listen.to_owned(),
            upstream.to_owned(),
        );
        blocking(move || {
            let c = Client::new(api.as_str());
            let mut ps = c.populate(vec![ProxyPack::new(name2.clone(), listen, upstream)])?;
            let p = ps
                .pop()
                .ok_or_else(|| format!("populate returned no proxy {name2}"))?;
            Ok(p.proxy_pack.listen)
        })
        .await
    }

    /// Stops the built-in server (if any).
    pub async fn shutdown(self) {
        if let Some(h) = self.builtin {
            h.shutdown().await;
        }
    }
}

/// Which network faults a [`NetworkDisruptor`] injects, and how hard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkFaults {
    /// Pause between two faults, ms.
    pub interval_ms: (u64, u64),
    /// How long one fault is held, ms.
    pub hold_ms: (u64, u64),
    /// Latency toxic: latency, ms (Floxy's stress test: 100 ± 20).
    pub latency_ms: u64,
    /// Latency toxic: jitter, ms.
    pub jitter_ms: u64,
    /// Bandwidth toxic: KB/s (Floxy's stress test: 500).
    pub bandwidth_kbps: u64,
    /// Timeout toxic: close after this many ms of silence (Floxy's stress test: 2000; 0 =
    /// blackhole).
    pub timeout_ms: u64,
    /// `slow_close` toxic delay, ms.
    pub slow_close_ms: u64,
    /// `limit_data` toxic: bytes before the connection is cut.
    pub limit_data_bytes: u64,
    /// Include `reset_peer` (connections reset).
    pub reset_peer: bool,
    /// Include `down` (the proxy disabled: refused connections, open ones closed).
    pub down: bool,
}

impl Default for NetworkFaults {
    fn default() -> Self {
        Self {
            interval_ms: (1_000, 4_000),
            hold_ms: (300, 2_000),
            latency_ms: 100,
            jitter_ms: 20,
            bandwidth_kbps: 500,
            timeout_ms: 2_000,
            slow_close_ms: 500,
            limit_data_bytes: 64 * 1024,
            reset_peer: true,
            down: true,
        }
    }
}

/// Applies random toxics from [`NetworkFaults`] to one proxy through a Toxiproxy API, each
/// held for a while and then removed.
#[derive(Debug, Clone)]
pub struct NetworkDisruptor {
    api: String,
    proxy: String,
    faults: NetworkFaults,
}

impl NetworkDisruptor {
    /// A disruptor of proxy `proxy` behind the API at `api` (`host:port`).
    #[must_use]
    pub fn new(api: &str, proxy: &str, faults: NetworkFaults) -> Arc<Self> {
        Arc::new(Self {
            api: api.to_owned(),
            proxy: proxy.to_owned(),
            faults,
        })
    }

    /// Applies one fault `kind` (`latency`, `bandwidth`, `timeout`, `reset_peer`,
    /// `slow_close`, `limit_data`, `down`).
    ///
    /// # Errors
    /// The API refused or could not be reached.
    pub async fn apply(&self, kind: &str, stream: &str) -> Result<(), String> {
        let (api, name, faults, kind, stream) = (
            self.api.clone(),
            self.proxy.clone(),
            self.faults.clone(),
            kind.to_owned(),
            stream.to_owned(),
        );
        blocking(move || {
            let client = Client::new(api.as_str());
            let p = client.find_proxy(&name)?;
            let u = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            let f = &faults;
            match kind.as_str() {
                "latency" => {
                    p.with_latency(stream, u(f.latency_ms), u(f.jitter_ms), 1.0);
                }
                "bandwidth" => {
                    p.with_bandwidth(stream, u(f.bandwidth_kbps), 1.0);
                }
                "timeout" => {
                    p.with_timeout(stream, u(f.timeout_ms), 1.0);
                }
                "slow_close" => {
                    p.with_slow_close(stream, u(f.slow_close_ms), 1.0);
                }
                "limit_data" => {
                    p.with_limit_data(stream, u(f.limit_data_bytes), 1.0);
                }
                "down" => p.disable()?,
                "reset_peer" => {
                    let body = format!(
                        "{{\"name\":\"reset_peer_{stream}\",\"type\":\"reset_peer\",\"stream\":\"{stream}\",\"toxicity\":1.0,\"attributes\":{{\"timeout\":0}}}}"
                    );
                    let (status, reply) = raw_request(
                        &api,
                        "POST",
                        &format!("/proxies/{name}/toxics"),
                        Some(&body),
                    )?;
                    if status >= 300 {
                        return Err(format!("reset_peer refused: {status} {reply}"));
                    }
                }
                other => return Err(format!("unknown network fault {other}")),
            }
            Ok(())
        })
        .await
    }

    /// Removes every toxic and enables the proxy.
    ///
    /// # Errors
    /// The API refused or could not be reached.
    pub async fn clear(&self) -> Result<(), String> {
        let (api, name) = (self.api.clone(), self.proxy.clone());
        blocking(move || {
            let c = Client::new(api.as_str());
            let p = c.find_and_reset_proxy(&name)?;
            let _ = p;
            Ok(())
        })
        .await
    }

    fn kinds(&self) -> Vec<&'static str> {
        let mut k = vec![
            "latency",
            "bandwidth",
            "timeout",
            "slow_close",
            "limit_data",
        ];
        if self.faults.reset_peer {
            k.push("reset_peer");
        }
        if self.faults.down {
            k.push("down");
        }
        k
    }
}

#[floxy::async_trait]
impl Disruptor for NetworkDisruptor {
    fn name(&self) -> String {
        format!("network faults on proxy {}", self.proxy)
    }
    fn interval_ms(&self) -> (u64, u64) {
        self.faults.interval_ms
    }
    async fn disrupt(&self, rng: &mut ChaosRng, counters: &FaultCounters) -> Result<(), String> {
        let kinds = self.kinds();
        let kind = kinds[rng.random_range(0..kinds.len())];
        let stream = if rng.random_bool(0.5) {
            "upstream"
        } else {
            "downstream"
        };
        let hold = between(rng, self.faults.hold_ms.0, self.faults.hold_ms.1);
        self.apply(kind, stream).await?;
        counters.add(&format!("proxy.{kind}"));
        tokio::time::sleep(Duration::from_millis(hold)).await;
        self.clear().await
    }
    async fn heal(&self) -> Result<(), String> {
        self.clear().await
    }
}
