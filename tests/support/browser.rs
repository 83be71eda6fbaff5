//! A real browser for the web console's tests: Debian's headless Chromium driven over
//! WebDriver by its chromedriver.
//!
//! - Under `CI=true` a missing `chromium` / `chromium-driver` is installed with apt-get;
//!   elsewhere [`Browser::start`] returns `None` after printing `SKIPPED: <why>`.
//! - Each [`Browser`] is its own chromedriver on a free port with its own profile
//!   directory, so tests run side by side; dropping it ends the session and the driver.
//! - Screenshots go to `target/tmp/console-screenshots/` (kept as test artifacts).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The window every test and screenshot uses.
pub const WINDOW: (u32, u32) = (1280, 800);

pub struct Browser {
    pub client: Client,
    driver: Option<Child>,
    _profile: tempfile::TempDir,
}

fn installed() -> bool {
    Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file()
}

/// Where screenshots are written.
pub fn screenshot_dir() -> PathBuf {
    let dir = super::target_tmp().join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("creating the screenshot directory");
    dir
}

impl Browser {
    /// A headless Chromium at 1280x800, or `None` (printed as skipped) where it cannot
    /// run off CI.
    pub async fn start() -> Option<Browser> {
        if !installed() {
            if !super::ci() {
                return super::skip(
                    "Chromium is not installed (apt-get install chromium chromium-driver; under CI=true the test installs it)",
                );
            }
            static INSTALL: std::sync::Once = std::sync::Once::new();
            INSTALL.call_once(|| super::apt_install(&["chromium", "chromium-driver"]));
        }
        let port = super::free_tcp_port();
        // Its own process group, which the Chromium it starts joins: dropping the
        // browser kills the whole group, so no Chromium outlives a failed test.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // Root (CI) cannot use Chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("an object"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("chromedriver on {url} did not start a session: {e}"),
            }
        };
        Some(Browser {
            client,
            driver: Some(driver),
            _profile: profile,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Runs `script` asynchronously: it calls `arguments[arguments.length - 1]` with its
    /// result.
    pub async fn js_async(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute_async(script, args)
            .await
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Clicks the element matching `css` (waiting for it).
    pub async fn click(&self, css: &str) {
        self.wait_css(css, Duration::from_secs(10))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Types `text` into the input matching `css` (waiting for it), replacing what it held.
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_css(css, Duration::from_secs(10)).await;
        e.clear()
            .await
            .unwrap_or_else(|e| panic!("clearing {css}: {e}"));
        e.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    /// Waits until `script` returns something truthy (checked every 50 ms), and returns
    /// it; panics with `what` and the page's text after `within`.
    pub async fn until(&self, what: &str, within: Duration, script: &str) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(script, vec![]).await;
            let truthy = !matches!(&v, serde_json::Value::Null | serde_json::Value::Bool(false))
                && v != serde_json::json!(0)
                && v != serde_json::json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self
                    .js(
                        "return document.body ? document.body.innerText : ''",
                        vec![],
                    )
                    .await;
                panic!(
                    "waited {within:?} for {what}; the page says:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until an element matches `css`.
    pub async fn wait_css(&self, css: &str, within: Duration) -> fantoccini::elements::Element {
        let script = format!("return document.querySelector({css:?}) !== null");
        self.until(&format!("an element matching {css}"), within, &script)
            .await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("finding {css}: {e}"))
    }

    /// Waits until the console's page `name` has rendered real data
    /// (`main#page[data-page=NAME][data-ready="1"]`).
    pub async fn wait_page(&self, name: &str) {
        let css = format!("main#page[data-page=\"{name}\"][data-ready=\"1\"]");
        self.wait_css(&css, Duration::from_secs(20)).await;
    }

    /// Whether an element matches `css` now.
    pub async fn has(&self, css: &str) -> bool {
        let script = format!("return document.querySelector({css:?}) !== null");
        self.js(&script, vec![]).await == serde_json::Value::Bool(true)
    }

    /// The text of the first element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        let script =
            format!("const e = document.querySelector({css:?}); return e ? e.textContent : ''");
        self.js(&script, vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Writes a PNG of the window to the screenshot directory as `name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking screenshot {name}: {e}"));
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing the screenshot");
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut d) = self.driver.take() {
            // SAFETY: kill(2) on the process group this value started.
            unsafe { libc::kill(-(d.id() as i32), libc::SIGKILL) };
            let _ = d.wait();
        }
    }
}
