//! WebDriver harness of the console's browser tests (floxy-http's and floxyd's): chromedriver
//! with a headless Chromium, waits, sign-in, screenshots under `target/screenshots/`.
//! Included by path from each test crate that drives the console.
#![allow(dead_code, unreachable_pub)]

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "chromedriver";

/// chromedriver, killed when dropped.
pub struct Driver {
    child: Child,
    pub port: u16,
    pub profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn start_driver() -> Driver {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install the Debian packages `chromium` and `chromium-driver` \
         (apt-get install -y chromium chromium-driver) to run the browser tests"
    );
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {CHROMEDRIVER} ({e}): install the Debian packages `chromium` and \
                 `chromium-driver` (apt-get install -y chromium chromium-driver)"
            )
        });
    let driver = Driver {
        child,
        port,
        profile: tempfile::tempdir().unwrap(),
    };
    // Ready once it accepts connections.
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

pub async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                format!("--user-data-dir={}", driver.profile.path().display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap()
}

/// Waits until the element of `css` exists and its text satisfies `ok`; returns the text.
pub async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(t) = el.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        assert!(
            Instant::now() < deadline,
            "{css}: text {last:?} never matched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the element of `css` exists and its `class` attribute contains `needle`;
/// returns the attribute. Retries through re-renders (a live page replaces its elements:
/// a handle found a moment ago may be stale).
pub async fn wait_class(c: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(Some(class)) = el.attr("class").await
        {
            if class.contains(needle) {
                return class;
            }
            last = class;
        }
        assert!(
            Instant::now() < deadline,
            "{css}: class {last:?} never contained {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the page loaded from the API (the app stamps `main`).
pub async fn wait_loaded(c: &Client) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("main[data-loaded]"))
        .await
        .unwrap();
}

pub async fn goto(c: &Client, base: &str, hash: &str) {
    c.goto(&format!("{base}/ui/{hash}")).await.unwrap();
    wait_loaded(c).await;
}

pub async fn sign_in(c: &Client, token: &str, role: &str) {
    let input = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#token-input"))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !input.is_displayed().await.unwrap() {
        assert!(Instant::now() < deadline, "the token prompt did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    input.send_keys(token).await.unwrap();
    c.find(Locator::Css("#token-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "#role", |t| t.eq_ignore_ascii_case(role)).await;
}

pub fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot of the whole page (the window grown to the page's height) at 1280
/// pixels wide.
pub async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let height = c
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(900)
        .clamp(800, 4000);
    c.set_window_size(1280, u32::try_from(height).unwrap() + 90)
        .await
        .unwrap();
    let png = c.screenshot().await.unwrap();
    c.set_window_size(1280, 900).await.unwrap();
    let path = screenshots_dir().join(name);
    std::fs::write(&path, png).unwrap();
    path
}

pub async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

pub async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}
