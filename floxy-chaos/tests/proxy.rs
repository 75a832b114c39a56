//! The built-in Toxiproxy-compatible proxy, driven through its HTTP API with the
//! `toxiproxy_rust` client: every toxic is measured on real TCP connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use floxy_chaos::proxy::client::{NetworkDisruptor, NetworkFaults, ToxiproxyEnv, raw_request};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server; with `close_after` it answers once and closes.
async fn echo(close_after_first: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    if close_after_first {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Setup {
    env: ToxiproxyEnv,
    listen: String,
    net: std::sync::Arc<NetworkDisruptor>,
}

async fn setup(name: &str, close_after_first: bool, faults: NetworkFaults) -> Setup {
    let upstream = echo(close_after_first).await;
    let env = ToxiproxyEnv::start(7).await.unwrap();
    let listen = env
        .proxy(name, "127.0.0.1:0", &upstream.to_string())
        .await
        .unwrap();
    let net = NetworkDisruptor::new(&env.api, name, faults);
    Setup { env, listen, net }
}

async fn rtt(s: &mut TcpStream, n: usize) -> Duration {
    let data = vec![7u8; n];
    let t = Instant::now();
    s.write_all(&data).await.unwrap();
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, data);
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_and_clear_restores() {
    let st = setup(
        "lat",
        false,
        NetworkFaults {
            latency_ms: 200,
            jitter_ms: 0,
            ..NetworkFaults::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    let base = rtt(&mut s, 16).await;
    assert!(base < Duration::from_millis(100), "baseline {base:?}");
    st.net.apply("latency", "downstream").await.unwrap();
    // An open connection sees the new toxic.
    let slow = rtt(&mut s, 16).await;
    assert!(slow >= Duration::from_millis(190), "with latency {slow:?}");
    assert!(slow < Duration::from_millis(1_500), "with latency {slow:?}");
    st.net.clear().await.unwrap();
    let fast = rtt(&mut s, 16).await;
    assert!(fast < Duration::from_millis(100), "after clear {fast:?}");
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_throughput() {
    let st = setup(
        "bw",
        false,
        NetworkFaults {
            bandwidth_kbps: 100,
            ..NetworkFaults::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    st.net.apply("bandwidth", "downstream").await.unwrap();
    // 50 KiB at 100 KiB/s: about half a second.
    let t = rtt(&mut s, 50 * 1024).await;
    assert!(
        t >= Duration::from_millis(400),
        "50 KiB at 100 KB/s took {t:?}"
    );
    assert!(t < Duration::from_secs(5), "took {t:?}");
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_blackholes_then_cuts() {
    let st = setup(
        "to",
        false,
        NetworkFaults {
            timeout_ms: 400,
            ..NetworkFaults::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    rtt(&mut s, 8).await;
    st.net.apply("timeout", "upstream").await.unwrap();
    let t = Instant::now();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 8];
    // No data comes back; the connection is closed after ~400 ms.
    let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    let el = t.elapsed();
    match r {
        Ok(Ok(0) | Err(_)) => {}
        other => panic!("expected a closed connection, got {other:?}"),
    }
    assert!(el >= Duration::from_millis(350), "closed after {el:?}");
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_drops_data_until_removed() {
    let st = setup(
        "bh",
        false,
        NetworkFaults {
            timeout_ms: 0,
            ..NetworkFaults::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    st.net.apply("timeout", "downstream").await.unwrap();
    s.write_all(b"lost").await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(r.is_err(), "data passed a blackhole: {r:?}");
    st.net.clear().await.unwrap();
    rtt(&mut s, 8).await;
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_resets() {
    let st = setup("rst", false, NetworkFaults::default()).await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    rtt(&mut s, 8).await;
    st.net.apply("reset_peer", "downstream").await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e.kind()),
            }
        }
    })
    .await
    .expect("connection not reset in time");
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionReset));
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_cuts_after_bytes() {
    let st = setup(
        "lim",
        false,
        NetworkFaults {
            limit_data_bytes: 10,
            ..NetworkFaults::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    st.net.apply("limit_data", "downstream").await.unwrap();
    s.write_all(&[1u8; 32]).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "not closed");
    assert_eq!(got.len(), 10, "bytes passed before the cut");
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_delays_eof() {
    let st = setup(
        "sc",
        true,
        NetworkFaults {
            slow_close_ms: 400,
            ..NetworkFaults::default()
        },
    )
    .await;
    st.net.apply("slow_close", "downstream").await.unwrap();
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    s.write_all(b"bye").await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "EOF after {:?}",
        t.elapsed()
    );
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_and_cuts_then_up_works() {
    let st = setup("down", false, NetworkFaults::default()).await;
    let mut s = TcpStream::connect(&st.listen).await.unwrap();
    rtt(&mut s, 8).await;
    st.net.apply("down", "downstream").await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0) | Err(_))),
        "open connection survived down: {r:?}"
    );
    assert!(
        TcpStream::connect(&st.listen).await.is_err(),
        "down proxy accepted"
    );
    st.net.clear().await.unwrap();
    let mut s2 = TcpStream::connect(&st.listen).await.unwrap();
    rtt(&mut s2, 8).await;
    st.env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_speaks_toxiproxy() {
    let st = setup("api", false, NetworkFaults::default()).await;
    let api = st.env.api.clone();
    let out = tokio::task::spawn_blocking(move || {
        let c = toxiproxy_rust::client::Client::new(api.as_str());
        assert!(c.is_running());
        let v = c.version().unwrap();
        let all = c.all().unwrap();
        let p = c.find_proxy("api").unwrap();
        p.with_latency("upstream".into(), 10, 5, 1.0);
        let toxics = p.toxics().unwrap();
        let (status, _) = raw_request(&api, "GET", "/proxies/nope", None).unwrap();
        p.delete_all_toxics().unwrap();
        let after = p.toxics().unwrap().len();
        (
            v,
            all.len(),
            toxics.len(),
            toxics[0].name.clone(),
            status,
            after,
        )
    })
    .await
    .unwrap();
    assert!(out.0.contains("toxiproxy"));
    assert_eq!(out.1, 1);
    assert_eq!((out.2, out.3.as_str()), (1, "latency_upstream"));
    assert_eq!(out.4, 404);
    assert_eq!(out.5, 0);
    st.env.shutdown().await;
}
