//! A Toxiproxy-compatible TCP proxy, in Rust, for network faults in front of PostgreSQL (or
//! any TCP service).
//!
//! [`ProxyServer`] holds named proxies, each a real TCP listener forwarding to an upstream
//! address through a chain of *toxics*, and serves the subset of the
//! [Toxiproxy](https://github.com/Shopify/toxiproxy) HTTP API that the `toxiproxy_rust`
//! client uses ([`api`]): create/populate/list/get/update/delete proxies, add/list/update/
//! delete toxics, reset, version. So the same scenario can drive this proxy or a real
//! Toxiproxy server ([`client`]; set [`TOXIPROXY_URL_ENV`] to use a real one).
//!
//! # Toxics
//!
//! Toxics apply to one direction (`stream`: `upstream` = client → server, `downstream` =
//! server → client) and, like Toxiproxy's, to a connection with probability `toxicity`
//! (drawn once per connection and toxic, from the server's seed). They take effect on open
//! connections as soon as they are added or removed.
//!
//! | type | attributes | effect |
//! |---|---|---|
//! | `latency` | `latency`, `jitter` (ms) | each chunk is delayed `latency ± jitter` |
//! | `bandwidth` | `rate` (KB/s) | data flows at most at `rate` |
//! | `slicer` | `average_size`, `size_variation` (bytes), `delay` (µs) | chunks are cut into small slices |
//! | `timeout` | `timeout` (ms) | no data passes; the connection is closed after `timeout` (0: never, a blackhole) |
//! | `reset_peer` | `timeout` (ms) | after `timeout`, both sides get a TCP RST (`SO_LINGER` 0) |
//! | `slow_close` | `delay` (ms) | the close (EOF) is forwarded `delay` late |
//! | `limit_data` | `bytes` | the connection is closed once `bytes` passed |
//!
//! A proxy that is disabled (`enabled: false`, Toxiproxy's "down") closes its listener
//! (connections are refused) and every open connection.

pub mod api;
pub mod client;

use crate::rng::{ChaosRng, mix};
use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The environment variable naming a real Toxiproxy server (`host:port`) to use instead of
/// the built-in one.
pub const TOXIPROXY_URL_ENV: &str = "FLOXY_TOXIPROXY_URL";

/// Version string reported by `GET /version`.
pub const VERSION: &str = "floxy-chaos-toxiproxy 2.9.0-compatible";

/// Size of the forwarding buffer of one direction of one connection.
pub const CHUNK_BYTES: usize = 32 * 1024;

/// Errors of the proxy server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No proxy of that name.
    #[error("proxy not found")]
    NotFound,
    /// A proxy or toxic of that name exists.
    #[error("{0} already exists")]
    Exists(String),
    /// No toxic of that name.
    #[error("toxic not found")]
    ToxicNotFound,
    /// A bad request (unknown toxic type, bad stream, bad address).
    #[error("bad request: {0}")]
    Bad(String),
    /// Binding or connecting failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// One toxic, in Toxiproxy's JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Toxic {
    /// Name (default `<type>_<stream>`).
    #[serde(default)]
    pub name: String,
    /// Type (`latency`, `bandwidth`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// `upstream` or `downstream` (default).
    #[serde(default = "downstream")]
    pub stream: String,
    /// Probability that the toxic applies to a connection.
    #[serde(default = "one")]
    pub toxicity: f32,
    /// Attributes of the type.
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

fn downstream() -> String {
    "downstream".into()
}
fn one() -> f32 {
    1.0
}

impl Toxic {
    /// A toxic of `kind` on `stream` with integer attributes.
    #[must_use]
    pub fn new(kind: &str, stream: &str, attributes: &[(&str, u64)]) -> Self {
        Self {
            name: format!("{kind}_{stream}"),
            kind: kind.to_owned(),
            stream: stream.to_owned(),
            toxicity: 1.0,
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect(),
        }
    }

    // A float attribute is clamped at 0 and `as` drops its fraction (and saturates above).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn attr(&self, k: &str) -> u64 {
        self.attributes
            .get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
            .unwrap_or(0)
    }

    fn validate(&mut self) -> Result<(), ProxyError> {
        const TYPES: [&str; 7] = [
            "latency",
            "bandwidth",
            "slicer",
            "timeout",
            "reset_peer",
            "slow_close",
            "limit_data",
        ];
        if !TYPES.contains(&self.kind.as_str()) {
            return Err(ProxyError::Bad(format!(
                "unknown toxic type {:?}",
                self.kind
            )));
        }
        if self.stream != "upstream" && self.stream != "downstream" {
            return Err(ProxyError::Bad(format!("bad stream {:?}", self.stream)));
        }
        if self.name.is_empty() {
            self.name = format!("{}_{}", self.kind, self.stream);
        }
        Ok(())
    }
}

/// A proxy in Toxiproxy's JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// Name.
    pub name: String,
    /// Listen address (`host:port`; port 0 picks one, reported back).
    pub listen: String,
    /// Upstream address.
    pub upstream: String,
    /// Whether the proxy accepts and forwards (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its toxics.
    #[serde(default)]
    pub toxics: Vec<Toxic>,
}

fn yes() -> bool {
    true
}

/// Counters of one proxy.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections killed by a toxic, a disable or a reset.
    pub killed: AtomicU64,
    /// Bytes forwarded (both directions).
    pub bytes: AtomicU64,
}

/// One connection's shared state.
struct Conn {
    kill: CancellationToken,
    reset: AtomicBool,
    id: u64,
}

impl Conn {
    fn kill(&self, reset: bool, counters: &ProxyCounters) {
        if reset {
            self.reset.store(true, Ordering::SeqCst);
        }
        if !self.kill.is_cancelled() {
            counters.killed.fetch_add(1, Ordering::Relaxed);
        }
        self.kill.cancel();
    }
}

/// A running proxy.
pub struct Proxy {
    config: RwLock<ProxyConfig>,
    changed: watch::Sender<u64>,
    listener_stop: Mutex<Option<CancellationToken>>,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    seed: u64,
    /// Counters.
    pub counters: ProxyCounters,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &*self.config.read())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy's current configuration (with the bound listen address).
    #[must_use]
    pub fn config(&self) -> ProxyConfig {
        self.config.read().clone()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    async fn bind(self: &Arc<Self>) -> Result<(), ProxyError> {
        let listen = self.config.read().listen.clone();
        let addr: SocketAddr = tokio::net::lookup_host(&listen)
            .await?
            .next()
            .ok_or_else(|| ProxyError::Bad(format!("cannot resolve {listen}")))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let bound = listener.local_addr()?;
        self.config.write().listen = bound.to_string();
        let stop = CancellationToken::new();
        *self.listener_stop.lock() = Some(stop.clone());
        let me = Arc::clone(self);
        tokio::spawn(async move { me.accept_loop(listener, stop).await });
        Ok(())
    }

    fn unbind(&self) {
        if let Some(stop) = self.listener_stop.lock().take() {
            stop.cancel();
        }
        let conns: Vec<Arc<Conn>> = self.conns.lock().values().cloned().collect();
        for c in conns {
            c.kill(false, &self.counters);
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let (client, _) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.serve(client).await });
        }
    }

    async fn serve(self: Arc<Self>, client: TcpStream) {
        let upstream = self.config.read().upstream.clone();
        let server = match TcpStream::connect(&upstream).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, upstream, "proxy cannot reach upstream");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            kill: CancellationToken::new(),
            reset: AtomicBool::new(false),
            id,
        });
        self.conns.lock().insert(id, Arc::clone(&conn));
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let up = tokio::spawn(Arc::clone(&self).pipe(Arc::clone(&conn), "upstream", cr, sw));
        let down = tokio::spawn(Arc::clone(&self).pipe(Arc::clone(&conn), "downstream", sr, cw));
        let _ = up.await;
        let _ = down.await;
        self.conns.lock().remove(&id);
    }

    /// The toxics active on `stream` for connection `conn` (toxicity drawn per connection).
    fn active(&self, conn: u64, stream: &str) -> Vec<Toxic> {
        self.config
            .read()
            .toxics
            .iter()
            .filter(|t| t.stream == stream)
            .filter(|t| {
                t.toxicity >= 1.0 || {
                    let mut r = ChaosRng::seed_from_u64(mix(
                        self.seed,
                        &[t.name.as_bytes(), &conn.to_le_bytes()],
                    ));
                    r.random::<f32>() < t.toxicity
                }
            })
            .cloned()
            .collect()
    }

    async fn pipe(
        self: Arc<Self>,
        conn: Arc<Conn>,
        stream: &'static str,
        mut reader: OwnedReadHalf,
        mut writer: OwnedWriteHalf,
    ) {
        let mut changed = self.changed.subscribe();
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut sent: u64 = 0;
        let mut rng = ChaosRng::seed_from_u64(mix(
            self.seed,
            &[stream.as_bytes(), &conn.id.to_le_bytes(), b"pipe"],
        ));
        let outcome: Result<(), ()> = async {
            loop {
                changed.borrow_and_update();
                let toxics = self.active(conn.id, stream);
                let find = |k: &str| toxics.iter().find(|t| t.kind == k);
                if let Some(t) = find("reset_peer") {
                    let after = Duration::from_millis(t.attr("timeout"));
                    tokio::select! {
                        () = conn.kill.cancelled() => return Err(()),
                        r = changed.changed() => { if r.is_err() { return Err(()) } continue }
                        () = tokio::time::sleep(after) => {
                            conn.kill(true, &self.counters);
                            return Err(());
                        }
                    }
                }
                if let Some(t) = find("timeout") {
                    let ms = t.attr("timeout");
                    let deadline =
                        (ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(ms));
                    // Blackhole: read and drop until the toxic goes away or the deadline.
                    loop {
                        tokio::select! {
                            () = conn.kill.cancelled() => return Err(()),
                            r = changed.changed() => { if r.is_err() { return Err(()) } break }
                            () = sleep_until_opt(deadline) => {
                                conn.kill(false, &self.counters);
                                return Err(());
                            }
                            r = reader.read(&mut buf) => match r {
                                Ok(0) | Err(_) => return Ok(()),
                                Ok(_) => {}
                            }
                        }
                    }
                    continue;
                }
                let n = tokio::select! {
                    () = conn.kill.cancelled() => return Err(()),
                    r = changed.changed() => { if r.is_err() { return Err(()) } continue }
                    r = reader.read(&mut buf) => match r {
                        Ok(n) => n,
                        Err(_) => return Err(()),
                    }
                };
                if n == 0 {
                    if let Some(t) = find("slow_close") {
                        tokio::select! {
                            () = conn.kill.cancelled() => return Err(()),
                            () = tokio::time::sleep(Duration::from_millis(t.attr("delay"))) => {}
                        }
                    }
                    return Ok(());
                }
                let mut data = &buf[..n];
                let mut close_after = false;
                if let Some(t) = find("limit_data") {
                    let limit = t.attr("bytes");
                    if sent + n as u64 >= limit {
                        // `sent + n >= limit`: what is left is at most `n`.
                        let left = usize::try_from(limit.saturating_sub(sent)).unwrap_or(n);
                        data = &data[..left];
                        close_after = true;
                    }
                }
                if let Some(t) = find("latency") {
                    let ms = |name| i64::try_from(t.attr(name)).unwrap_or(i64::MAX);
                    let (lat, jit) = (ms("latency"), ms("jitter"));
                    let d = if jit > 0 {
                        lat.saturating_add(rng.random_range(-jit..=jit))
                    } else {
                        lat
                    };
                    // A negative delay (jitter below zero) is no delay.
                    let d = u64::try_from(d).unwrap_or(0);
                    tokio::select! {
                        () = conn.kill.cancelled() => return Err(()),
                        () = tokio::time::sleep(Duration::from_millis(d)) => {}
                    }
                }
                let rate = find("bandwidth").map(|t| t.attr("rate"));
                let slicer = find("slicer").map(|t| {
                    (
                        t.attr("average_size"),
                        t.attr("size_variation"),
                        t.attr("delay"),
                    )
                });
                while !data.is_empty() {
                    let mut take = data.len();
                    let mut pause = Duration::ZERO;
                    if let Some((avg, var, delay_us)) = slicer {
                        let avg = avg.max(1);
                        let size = if var > 0 {
                            let lo = avg.saturating_sub(var).max(1);
                            rng.random_range(lo..=avg + var)
                        } else {
                            avg
                        };
                        take = take.min(usize::try_from(size).unwrap_or(usize::MAX));
                        pause += Duration::from_micros(delay_us);
                    }
                    if let Some(kbps) = rate {
                        // At most 100 ms worth of data per write, then wait for it.
                        let per_100ms = (kbps.max(1) * 1024 / 10).max(1) as usize;
                        take = take.min(per_100ms);
                        pause +=
                            Duration::from_micros(take as u64 * 1_000_000 / (kbps.max(1) * 1024));
                    }
                    let (now, rest) = data.split_at(take);
                    tokio::select! {
                        () = conn.kill.cancelled() => return Err(()),
                        r = writer.write_all(now) => if r.is_err() { return Err(()) },
                    }
                    sent += take as u64;
                    self.counters
                        .bytes
                        .fetch_add(take as u64, Ordering::Relaxed);
                    data = rest;
                    if !pause.is_zero() {
                        tokio::select! {
                            () = conn.kill.cancelled() => return Err(()),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
                if close_after {
                    conn.kill(false, &self.counters);
                    return Err(());
                }
            }
        }
        .await;
        if outcome.is_ok() {
            // EOF from the reader: half-close towards the writer, keep the other direction.
            let _ = writer.shutdown().await;
        } else {
            conn.kill.cancel();
            if conn.reset.load(Ordering::SeqCst) {
                // No FIN first: close with SO_LINGER 0, which sends a RST.
                let _ = reader.as_ref().set_zero_linger();
                let _ = writer.as_ref().set_zero_linger();
                writer.forget();
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The proxy server: named proxies and their toxics.
#[derive(Debug)]
pub struct ProxyServer {
    proxies: Mutex<BTreeMap<String, Arc<Proxy>>>,
    seed: u64,
}

impl ProxyServer {
    /// An empty server; toxicity draws come from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            proxies: Mutex::new(BTreeMap::new()),
            seed,
        })
    }

    /// Creates (and, if enabled, starts) a proxy.
    ///
    /// # Errors
    /// [`ProxyError::Exists`], [`ProxyError::Bad`] toxics, [`ProxyError::Io`] binding.
    pub async fn create(&self, mut cfg: ProxyConfig) -> Result<Arc<Proxy>, ProxyError> {
        if self.proxies.lock().contains_key(&cfg.name) {
            return Err(ProxyError::Exists(format!("proxy {}", cfg.name)));
        }
        for t in &mut cfg.toxics {
            t.validate()?;
        }
        let (changed, _) = watch::channel(0);
        let proxy = Arc::new(Proxy {
            config: RwLock::new(cfg.clone()),
            changed,
            listener_stop: Mutex::new(None),
            conns: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            seed: mix(self.seed, &[cfg.name.as_bytes()]),
            counters: ProxyCounters::default(),
        });
        if cfg.enabled {
            proxy.bind().await?;
        }
        self.proxies
            .lock()
            .insert(cfg.name.clone(), Arc::clone(&proxy));
        Ok(proxy)
    }

    /// Creates or replaces every proxy of `cfgs` (Toxiproxy's `populate`).
    ///
    /// # Errors
    /// As [`ProxyServer::create`].
    pub async fn populate(&self, cfgs: Vec<ProxyConfig>) -> Result<Vec<ProxyConfig>, ProxyError> {
        let mut out = Vec::new();
        for cfg in cfgs {
            let existing = self.proxies.lock().get(&cfg.name).cloned();
            if let Some(p) = existing {
                let same = {
                    let c = p.config.read();
                    c.upstream == cfg.upstream && listen_matches(&c.listen, &cfg.listen)
                };
                if same {
                    out.push(p.config());
                    continue;
                }
                self.delete(&cfg.name)?;
            }
            out.push(self.create(cfg).await?.config());
        }
        Ok(out)
    }

    /// The proxy `name`.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`].
    pub fn get(&self, name: &str) -> Result<Arc<Proxy>, ProxyError> {
        self.proxies
            .lock()
            .get(name)
            .cloned()
            .ok_or(ProxyError::NotFound)
    }

    /// Every proxy's configuration.
    #[must_use]
    pub fn list(&self) -> BTreeMap<String, ProxyConfig> {
        self.proxies
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.config()))
            .collect()
    }

    /// Enables or disables a proxy (and may change its upstream).
    ///
    /// # Errors
    /// [`ProxyError::NotFound`], [`ProxyError::Io`] when re-binding.
    pub async fn update(
        &self,
        name: &str,
        enabled: Option<bool>,
        upstream: Option<String>,
    ) -> Result<ProxyConfig, ProxyError> {
        let p = self.get(name)?;
        if let Some(u) = upstream {
            p.config.write().upstream = u;
        }
        if let Some(en) = enabled {
            let was = p.config.read().enabled;
            if was && !en {
                p.config.write().enabled = false;
                p.unbind();
            } else if !was && en {
                p.config.write().enabled = true;
                p.bind().await?;
            }
        }
        p.bump();
        Ok(p.config())
    }

    /// Stops and removes a proxy.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`].
    pub fn delete(&self, name: &str) -> Result<(), ProxyError> {
        let p = self
            .proxies
            .lock()
            .remove(name)
            .ok_or(ProxyError::NotFound)?;
        p.unbind();
        Ok(())
    }

    /// Adds a toxic to a proxy.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`], [`ProxyError::Exists`], [`ProxyError::Bad`].
    pub fn add_toxic(&self, proxy: &str, mut t: Toxic) -> Result<Toxic, ProxyError> {
        let p = self.get(proxy)?;
        t.validate()?;
        {
            let mut c = p.config.write();
            if c.toxics.iter().any(|x| x.name == t.name) {
                return Err(ProxyError::Exists(format!("toxic {}", t.name)));
            }
            c.toxics.push(t.clone());
        }
        p.bump();
        Ok(t)
    }

    /// Changes the attributes (and toxicity) of a toxic.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`], [`ProxyError::ToxicNotFound`].
    pub fn update_toxic(
        &self,
        proxy: &str,
        toxic: &str,
        attributes: BTreeMap<String, serde_json::Value>,
        toxicity: Option<f32>,
    ) -> Result<Toxic, ProxyError> {
        let p = self.get(proxy)?;
        let t = {
            let mut c = p.config.write();
            let t = c
                .toxics
                .iter_mut()
                .find(|x| x.name == toxic)
                .ok_or(ProxyError::ToxicNotFound)?;
            t.attributes.extend(attributes);
            if let Some(tx) = toxicity {
                t.toxicity = tx;
            }
            t.clone()
        };
        p.bump();
        Ok(t)
    }

    /// Removes a toxic.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`], [`ProxyError::ToxicNotFound`].
    pub fn remove_toxic(&self, proxy: &str, toxic: &str) -> Result<(), ProxyError> {
        let p = self.get(proxy)?;
        {
            let mut c = p.config.write();
            let before = c.toxics.len();
            c.toxics.retain(|x| x.name != toxic);
            if c.toxics.len() == before {
                return Err(ProxyError::ToxicNotFound);
            }
        }
        p.bump();
        Ok(())
    }

    /// Removes every toxic and enables every proxy (Toxiproxy's `reset`).
    ///
    /// # Errors
    /// [`ProxyError::Io`] when re-binding.
    pub async fn reset(&self) -> Result<(), ProxyError> {
        let all: Vec<Arc<Proxy>> = self.proxies.lock().values().cloned().collect();
        for p in all {
            p.config.write().toxics.clear();
            if !p.config.read().enabled {
                p.config.write().enabled = true;
                p.bind().await?;
            }
            p.bump();
        }
        Ok(())
    }

    /// Stops every proxy.
    pub fn shutdown(&self) {
        let all: Vec<Arc<Proxy>> = std::mem::take(&mut *self.proxies.lock())
            .into_values()
            .collect();
        for p in all {
            p.unbind();
        }
    }
}

fn listen_matches(bound: &str, asked: &str) -> bool {
    bound == asked || asked.ends_with(":0")
}
