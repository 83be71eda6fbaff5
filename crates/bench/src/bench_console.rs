//! `corral-bench console`: what the web console costs, in one run against one real
//! `corral coordinator` process with `--nodes` simulated nodes (default 10,000) of 8 fake
//! GPUs each, over real QUIC from this process (the agents of `corral-bench coordinator`,
//! [`crate::bench::start_agents`]). Each node beats at 1 Hz and reports every 5 s, the real
//! agent's defaults, and its readings move between reports (random walks of GPU
//! utilization, temperature, power and memory, and of host CPU and memory, a few percent
//! a report), so the feed has something to send; 1 % of the nodes have a GPU failed
//! with XID 79, so the pages show what a real cluster shows.
//!
//! Measured:
//! 1. The bytes of a page's first load, as the coordinator serves them over HTTP,
//!    uncompressed: the shell HTML, `/ui/app.js`, `/ui/style.css`. (No gzip size: no
//!    deflate crate is in Cargo.lock, and the harness adds no dependency for it.) The
//!    feed's first snapshot at N nodes is data, and is reported apart.
//! 2. Time to first render of the Nodes and GPUs pages in headless Chromium (started
//!    as `tests/support/browser.rs` starts it, driven over WebDriver): logged in once
//!    with `/login#token=...` (an admin token made through the Unix API socket), then a
//!    fresh load of `/nodes` and
//!    `/gpus`, `--runs` times each, reading the page's own performance mark
//!    `corral-rendered` (ms from navigation start; the page sets it once its data has
//!    rendered, with `main#page[data-ready="1"]`). Median and max. Without
//!    `/usr/bin/chromium` and `/usr/bin/chromedriver` this part prints SKIPPED.
//! 3. Update traffic with one console open: bytes/s and deltas/s on one
//!    `GET /api/v1/console/stream` over a `--window`.
//! 4. The coordinator's CPU (% of one core, from /proc over the window) and RSS (the
//!    largest of one-second samples in the window) with 0, 1 and 10 consoles open.
//!
//! The reference, measured side by side in the same run against the same coordinator and
//! nodes: 1 and 10 clients polling `GET /api/v1/nodes` (every node's full view) once a
//! second, what a dashboard that polls whole snapshots does (the Ray dashboard's
//! pattern): the coordinator's CPU and RSS and the bytes/s to the clients.
//!
//! Trade-offs and what the figures are not:
//! - In parts 3 and 4 a console is an SSE client in this process that reads and counts
//!   everything (and a poller reads each body whole and parses nothing): what the
//!   coordinator does for a console does not depend on how the browser renders it, and
//!   ten browsers would not fit beside 10,000 agents on a small machine. Part 2 is the
//!   real browser.
//! - Each console client is its own viewer user (the coordinator limits the consoles
//!   of one user); the pollers share the admin token.
//! - Each node starts its report cycle at a random beat, so reports are spread evenly
//!   over the 5 s as a fleet's are, and the feed's 1 s deltas are even.
//! - Byte counts are HTTP body bytes (after chunked decoding, before TCP/IP).
//! - Every window starts once each client has its first snapshot (or its first poll)
//!   plus 2 s, so a window is the steady cost, not the cost of connecting.
//! - The fake GPUs carry name, memory, utilization, temperature, power, PCI bus and
//!   health; a real agent's GPU fills in every NVML field and NVLink, so the reference's
//!   snapshots would be larger with real agents, while the feed's per-node summary
//!   would be the same size.
//! - Everything shares this machine: the simulated agents and the clients run in this
//!   process (its CPU is printed), Chromium beside it. The load average at the start and
//!   end is printed with the figures.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use rand::Rng;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::bench::{
    proc_usage, raise_fd_limit, start_agents, start_coordinator, Beating, Counters,
};
use corral_proto::api::{ConsoleSnapshot, CreateToken, CreatedToken, Role as ApiRole};
use corral_proto::model::{
    unix_ms, ActionSource, DeviceHealth, DeviceReason, DeviceStatus, GpuAction, GpuSample, Health,
    HealthStatus, NodeReport, Reason, XidCount,
};

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// Simulated nodes, each with 8 fake GPUs.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Each measurement window, seconds.
    #[arg(long, default_value_t = 30)]
    window: u64,
    /// Fresh loads of each page for the render times.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

/// GPUs per simulated node.
const GPUS: u32 = 8;
const GPU_MODEL: &str = "NVIDIA H100 80GB HBM3";
/// What NVML reports for that model: 81,559 MiB.
const GPU_MEMORY: u64 = 81_559 * 1024 * 1024;
/// Nodes `bench-NNNNN` with `NNNNN % 100` equal to this have GPU 3 failed with XID 79.
const UNHEALTHY_MOD_100: u64 = 37;
const UNHEALTHY_GPU: usize = 3;
/// The agent's defaults: beat every second, report every fifth beat.
const BEAT: Duration = Duration::from_secs(1);
const REPORT_EVERY: u64 = 5;
/// Consoles (and, for the reference, pollers) of the windows after the one with none.
const CONSOLES: [usize; 2] = [1, 10];
/// After the clients of a window are connected, before it starts.
const SETTLE: Duration = Duration::from_secs(2);

/// The bench's fake GPU `i` of node number `node`, healthy, with readings from `rng`.
fn fake_gpu(node: u64, i: u32, rng: &mut impl Rng) -> GpuSample {
    let util: u32 = rng.random_range(0..=100);
    GpuSample {
        index: i,
        uuid: format!("GPU-{node:08x}-0000-4000-8000-{i:012x}"),
        name: GPU_MODEL.into(),
        memory_used_bytes: Some(rng.random_range(GPU_MEMORY / 10..GPU_MEMORY)),
        memory_total_bytes: Some(GPU_MEMORY),
        utilization_percent: Some(util),
        temperature_celsius: Some(rng.random_range(32..=75)),
        power_watts: Some(power_for(util, rng)),
        pci_bus_id: Some(format!("00000000:{:02X}:00.0", 0x18 + i * 0x10)),
        ..GpuSample::default()
    }
}

/// An H100's draw at `util` percent, roughly: 70 W idle, 690 W flat out.
fn power_for(util: u32, rng: &mut impl Rng) -> f64 {
    70.0 + f64::from(util) * 6.2 + rng.random_range(-8.0..8.0)
}

/// `g` after XID 79 (fallen off the bus), as the agent judges it with NVIDIA's catalog.
fn fail_with_xid_79(g: &mut GpuSample) {
    let message = "XID 79: GPU has fallen off the bus; reboot the node to clear";
    g.health = DeviceHealth {
        status: DeviceStatus::Fail,
        reasons: vec![DeviceReason {
            code: "xid".into(),
            status: DeviceStatus::Fail,
            message: message.into(),
            needs_reset: false,
            needs_reboot: true,
            action: Some(GpuAction::Reboot),
            action_source: Some(ActionSource::Catalog),
        }],
        xid_last: Some(79),
        xid_total: 1,
        xid_counts: vec![XidCount { xid: 79, count: 1 }],
        action: GpuAction::Reboot,
        action_source: Some(ActionSource::Catalog),
    };
}

/// The first report of a node: its own GPUs and readings, one node in 100 unhealthy.
fn personalize(r: &mut NodeReport, rng: &mut impl Rng) {
    let node: u64 = r
        .node
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    r.facts.hostname = r.node.clone();
    r.gpu_error = None;
    r.ray = None;
    r.host.cpu_percent = rng.random_range(2.0..90.0);
    let total = r.host.memory.total_bytes;
    r.host.memory.used_bytes = (total as f64 * rng.random_range(0.2..0.8)) as u64;
    r.gpus = (0..GPUS).map(|i| fake_gpu(node, i, rng)).collect();
    r.health = Health::default();
    if node % 100 == UNHEALTHY_MOD_100 {
        let g = &mut r.gpus[UNHEALTHY_GPU];
        fail_with_xid_79(g);
        r.health = Health::from_reasons(vec![Reason {
            check: format!("gpu_xid:{}", g.index),
            status: HealthStatus::Unhealthy,
            message: format!(
                "GPU {} ({}) {}",
                g.index, g.uuid, g.health.reasons[0].message
            ),
        }]);
    }
}

/// One step of every reading's random walk.
fn walk(r: &mut NodeReport, rng: &mut impl Rng) {
    r.host.cpu_percent = (r.host.cpu_percent + rng.random_range(-3.0..3.0)).clamp(0.0, 100.0);
    let total = r.host.memory.total_bytes;
    let step = (total / 200) as i64;
    if step > 0 {
        let used = r.host.memory.used_bytes as i64 + rng.random_range(-step..=step);
        r.host.memory.used_bytes = used.clamp(0, total as i64) as u64;
    }
    for g in &mut r.gpus {
        if g.health.status != DeviceStatus::Ok {
            continue;
        }
        let util = g
            .utilization_percent
            .map(|u| (u as i32 + rng.random_range(-4..=4)).clamp(0, 100) as u32);
        g.utilization_percent = util;
        g.temperature_celsius = g
            .temperature_celsius
            .map(|t| (t as i32 + rng.random_range(-2..=2)).clamp(28, 88) as u32);
        g.power_watts = util.map(|u| power_for(u, rng));
        let step = (GPU_MEMORY / 80) as i64;
        g.memory_used_bytes = g.memory_used_bytes.map(|m| {
            (m as i64 + rng.random_range(-step..=step)).clamp(step, GPU_MEMORY as i64) as u64
        });
    }
}

/// [`crate::bench::Vary`] for this harness.
fn vary(r: &mut NodeReport, sent: u64) {
    let mut rng = rand::rng();
    if sent == 0 {
        personalize(r, &mut rng);
    } else {
        walk(r, &mut rng);
    }
    r.host.taken_at_ms = unix_ms();
}

/// Splits a server-sent event stream into events.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
    /// Keep each event's data (otherwise events come with empty data).
    keep_data: bool,
}

impl SseParser {
    /// Takes the next bytes of the stream; calls `on_event(name, data)` for each event
    /// they complete.
    fn feed(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(&str, &[u8])) {
        while let Some(at) = chunk.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&chunk[..at]);
            chunk = &chunk[at + 1..];
            let mut line = std::mem::take(&mut self.line);
            self.line_done(&line, on_event);
            line.clear();
            self.line = line;
        }
        self.line.extend_from_slice(chunk);
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut impl FnMut(&str, &[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let value = |v: &[u8]| -> Vec<u8> { v.strip_prefix(b" ").unwrap_or(v).to_vec() };
        if line.is_empty() {
            if !self.event.is_empty() || !self.data.is_empty() {
                on_event(&self.event, &self.data);
            }
            self.event.clear();
            self.data.clear();
        } else if let Some(v) = line.strip_prefix(b"event:") {
            self.event = String::from_utf8_lossy(&value(v)).into_owned();
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if self.keep_data {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data
                    .extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
            }
        }
        // Comments (`:` keep-alives), `id:` and `retry:` do not matter here.
    }
}

/// Nodes in a delta's JSON (each summary starts with its name).
fn nodes_in(data: &[u8]) -> u64 {
    const KEY: &[u8] = b"{\"name\":";
    data.windows(KEY.len()).filter(|w| *w == KEY).count() as u64
}

/// What the clients of one window received, all together.
#[derive(Default)]
struct Tally {
    bytes: AtomicU64,
    snapshots: AtomicU64,
    deltas: AtomicU64,
    /// Nodes in the deltas, counted only by clients that keep data.
    delta_nodes: AtomicU64,
    resyncs: AtomicU64,
    polls: AtomicU64,
    errors: AtomicU64,
}

/// How the harness reaches the console: the HTTP listener and a bearer token.
#[derive(Clone)]
struct Web {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Web {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn open_stream(&self) -> Result<reqwest::Response> {
        let resp = self
            .get("/api/v1/console/stream")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .context("opening the console stream")?;
        ensure!(
            resp.status().is_success(),
            "the console stream answered {}",
            resp.status()
        );
        Ok(resp)
    }
}

/// One console: the stream, read and counted until it ends or the task is aborted.
async fn sse_client(web: Web, tally: Arc<Tally>, keep_data: bool) -> Result<()> {
    let mut resp = web.open_stream().await?;
    let mut parser = SseParser {
        keep_data,
        ..SseParser::default()
    };
    while let Some(chunk) = resp.chunk().await.context("reading the console stream")? {
        tally.bytes.fetch_add(chunk.len() as u64, Relaxed);
        parser.feed(&chunk, &mut |event, data| match event {
            "snapshot" => {
                tally.snapshots.fetch_add(1, Relaxed);
            }
            "delta" => {
                tally.deltas.fetch_add(1, Relaxed);
                if keep_data {
                    tally.delta_nodes.fetch_add(nodes_in(data), Relaxed);
                }
            }
            "resync" => {
                tally.resyncs.fetch_add(1, Relaxed);
            }
            _ => {}
        });
    }
    bail!("the console stream ended")
}

/// One dashboard polling `GET /api/v1/nodes` once a second (a poll that takes longer
/// is followed by the next at once), after `stagger`.
async fn poller(web: Web, tally: Arc<Tally>, stagger: Duration) {
    tokio::time::sleep(stagger).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match poll_once(&web, &tally).await {
            Ok(()) => tally.polls.fetch_add(1, Relaxed),
            Err(e) => {
                tracing::debug!(error = %e, "poll failed");
                tally.errors.fetch_add(1, Relaxed)
            }
        };
    }
}

async fn poll_once(web: &Web, tally: &Tally) -> Result<()> {
    let mut resp = web
        .get("/api/v1/nodes")
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .context("GET /api/v1/nodes")?;
    ensure!(
        resp.status().is_success(),
        "GET /api/v1/nodes answered {}",
        resp.status()
    );
    while let Some(chunk) = resp.chunk().await.context("reading /api/v1/nodes")? {
        tally.bytes.fetch_add(chunk.len() as u64, Relaxed);
    }
    Ok(())
}

/// The stream's first event, the snapshot: its JSON and how long it took to arrive.
async fn first_snapshot(web: &Web) -> Result<(String, f64)> {
    let t = Instant::now();
    let mut resp = web.open_stream().await?;
    let mut parser = SseParser {
        keep_data: true,
        ..SseParser::default()
    };
    let mut got: Option<String> = None;
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
            .await
            .context("no snapshot on the console stream within 60 s")?
            .context("reading the console stream")?
            .context("the console stream ended before its snapshot")?;
        parser.feed(&chunk, &mut |event, data| {
            if event == "snapshot" && got.is_none() {
                got = Some(String::from_utf8_lossy(data).into_owned());
            }
        });
        if let Some(data) = got.take() {
            return Ok((data, t.elapsed().as_secs_f64()));
        }
    }
}

/// A new token of `user` with `role` for an hour, made through the Unix socket.
async fn make_token(api: &corral::cli::ApiClient, user: &str, role: ApiRole) -> Result<String> {
    let made: CreatedToken = api
        .post_json(
            "/api/v1/tokens",
            Some(&CreateToken {
                user: user.into(),
                role,
                ttl_secs: Some(3600),
            }),
            Duration::from_secs(10),
            &format!("creating a token for {user}"),
        )
        .await?;
    Ok(made.secret)
}

/// Waits until `done()`, checking every 50 ms; fails naming `what` after `within`.
async fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// What a window watches: the coordinator process, its API (through the socket) and
/// the simulated nodes' failure count.
struct Probe<'a> {
    pid: u32,
    api: &'a corral::cli::ApiClient,
    counters: &'a Counters,
}

/// One measurement window.
struct Window {
    what: String,
    /// Consoles or pollers.
    clients: usize,
    /// Pollers of `/api/v1/nodes`, not consoles.
    polling: bool,
    secs: f64,
    /// Coordinator CPU, % of one core.
    cpu: f64,
    /// The largest coordinator RSS sampled (every second) in the window.
    rss_max: u64,
    /// This process's CPU (the simulated agents and the clients), % of one core.
    harness_cpu: f64,
    bytes: u64,
    deltas: u64,
    delta_nodes: u64,
    polls: u64,
    errors: u64,
    resyncs: u64,
    /// Simulated nodes whose connection failed during the window.
    lost: u64,
    /// Nodes the coordinator counted connected at the end.
    connected: usize,
}

/// Measures `secs` seconds of the coordinator `pid` while `tally`'s clients run.
async fn measure(
    what: &str,
    clients: usize,
    probe: &Probe<'_>,
    secs: u64,
    tally: &Tally,
) -> Result<Window> {
    let pid = probe.pid;
    let lost0 = probe.counters.failed.load(Relaxed);
    let me = std::process::id();
    let counts = |t: &Tally| {
        [
            t.bytes.load(Relaxed),
            t.deltas.load(Relaxed),
            t.delta_nodes.load(Relaxed),
            t.polls.load(Relaxed),
            t.errors.load(Relaxed),
            t.resyncs.load(Relaxed),
        ]
    };
    let (cpu0, _, mut rss_max) = proc_usage(pid).context("reading the coordinator's /proc")?;
    let (own0, _, _) = proc_usage(me)?;
    let c0 = counts(tally);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(Duration::from_secs(1))).await;
        rss_max = rss_max.max(proc_usage(pid)?.2);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, _, rss) = proc_usage(pid).context("reading the coordinator's /proc")?;
    let (own1, _, _) = proc_usage(me)?;
    let c1 = counts(tally);
    let lost = probe.counters.failed.load(Relaxed) - lost0;
    let connected = probe.api.stats().await?.connected;
    let d = |i: usize| c1[i] - c0[i];
    Ok(Window {
        what: what.into(),
        clients,
        polling: tally.polls.load(Relaxed) > 0,
        secs: elapsed,
        cpu: (cpu1 - cpu0) / elapsed * 100.0,
        rss_max: rss_max.max(rss),
        harness_cpu: (own1 - own0) / elapsed * 100.0,
        bytes: d(0),
        deltas: d(1),
        delta_nodes: d(2),
        polls: d(3),
        errors: d(4),
        resyncs: d(5),
        lost,
        connected,
    })
}

/// `n` consoles for one window, each with its own token of `tokens` (the coordinator
/// limits the consoles of one user): each gets its snapshot, then the window is
/// measured.
async fn with_consoles(
    web: &Web,
    tokens: &[String],
    probe: &Probe<'_>,
    n: usize,
    secs: u64,
) -> Result<Window> {
    ensure!(tokens.len() >= n, "{n} consoles need {n} tokens");
    let tally = Arc::new(Tally::default());
    let mut clients = JoinSet::new();
    for (i, token) in tokens.iter().take(n).enumerate() {
        let web = Web {
            token: token.clone(),
            ..web.clone()
        };
        let tally = tally.clone();
        // The first console keeps its data, to count the nodes in each delta.
        clients.spawn(async move {
            if let Err(e) = sse_client(web, tally.clone(), i == 0).await {
                tracing::debug!(error = %e, "console client ended");
                tally.errors.fetch_add(1, Relaxed);
            }
        });
    }
    wait_for(
        &format!("{n} consoles getting their snapshot"),
        Duration::from_secs(180),
        || tally.snapshots.load(Relaxed) >= n as u64 || tally.errors.load(Relaxed) > 0,
    )
    .await?;
    ensure!(
        tally.errors.load(Relaxed) == 0,
        "a console stream failed before the window (run with CORRAL_LOG=debug for why)"
    );
    tokio::time::sleep(SETTLE).await;
    let what = format!("{n} console{}", if n == 1 { "" } else { "s" });
    let w = measure(&what, n, probe, secs, &tally).await;
    clients.shutdown().await;
    w
}

/// `n` pollers for one window: each has polled once, then the window is measured.
async fn with_pollers(web: &Web, probe: &Probe<'_>, n: usize, secs: u64) -> Result<Window> {
    let tally = Arc::new(Tally::default());
    let mut clients = JoinSet::new();
    for i in 0..n {
        let stagger = Duration::from_secs_f64(i as f64 / n as f64);
        clients.spawn(poller(web.clone(), tally.clone(), stagger));
    }
    wait_for(
        &format!("{n} pollers' first GET /api/v1/nodes"),
        Duration::from_secs(300),
        || tally.polls.load(Relaxed) + tally.errors.load(Relaxed) >= n as u64,
    )
    .await?;
    ensure!(
        tally.errors.load(Relaxed) == 0,
        "a poll of /api/v1/nodes failed before the window (run with CORRAL_LOG=debug for why)"
    );
    tokio::time::sleep(SETTLE).await;
    let what = format!(
        "reference: {n} poller{} of /api/v1/nodes at 1 Hz",
        if n == 1 { "" } else { "s" }
    );
    let w = measure(&what, n, probe, secs, &tally).await;
    clients.shutdown().await;
    w
}

/// The bytes of one page's first load.
struct PageWeight {
    shell: usize,
    script: usize,
    style: usize,
    /// `Content-Encoding` of any of them, if one was compressed.
    encoding: Option<String>,
}

async fn page_weight(web: &Web) -> Result<PageWeight> {
    let mut sizes = [0usize; 4];
    let mut encoding = None;
    for (i, path) in ["/nodes", "/gpus", "/ui/app.js", "/ui/style.css"]
        .iter()
        .enumerate()
    {
        let resp = web
            .http
            .get(format!("{}{path}", web.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        ensure!(
            resp.status().is_success(),
            "GET {path} answered {}",
            resp.status()
        );
        if let Some(e) = resp.headers().get(reqwest::header::CONTENT_ENCODING) {
            encoding = Some(String::from_utf8_lossy(e.as_bytes()).into_owned());
        }
        sizes[i] = resp
            .bytes()
            .await
            .with_context(|| format!("GET {path}"))?
            .len();
    }
    ensure!(
        sizes[0] == sizes[1],
        "/nodes and /gpus served different shells ({} and {} bytes)",
        sizes[0],
        sizes[1]
    );
    Ok(PageWeight {
        shell: sizes[0],
        script: sizes[2],
        style: sizes[3],
        encoding,
    })
}

/// Render times of one page, in ms, and what its count says after the last load.
struct Rendered {
    page: &'static str,
    ms: Vec<f64>,
    says: String,
}

/// Headless Chromium driven over W3C WebDriver by its chromedriver, started with the
/// flags the console tests' `support::browser` uses; errors are returned, not panics.
/// (Not that helper itself: as a dependency of this binary its WebDriver client changes
/// the features of shared dependencies, which rebuilds the whole release tree.)
struct Chromium {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Chromium {
    async fn start() -> Result<Chromium> {
        use std::os::unix::process::CommandExt;
        let port = crate::bench::free_port()?;
        let profile = tempfile::tempdir().context("a browser profile directory")?;
        // Its own process group, which the Chromium it starts joins: dropping this kills
        // the group, so no Chromium outlives the harness.
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER}"))?;
        let mut browser = Chromium {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()
                .context("building the WebDriver client")?,
            session: String::new(),
            driver,
            _profile: profile,
        };
        let caps = serde_json::json!({ "capabilities": { "alwaysMatch": {
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ]
            }
        }}});
        let url = format!("http://127.0.0.1:{port}/session");
        let deadline = Instant::now() + Duration::from_secs(20);
        let id = loop {
            match browser.http.post(&url).json(&caps).send().await {
                Ok(resp) => {
                    let v = answer(resp, "starting a Chromium session").await?;
                    break v
                        .get("sessionId")
                        .and_then(Value::as_str)
                        .context("chromedriver started a session without an id")?
                        .to_string();
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => bail!("chromedriver on port {port} did not answer within 20 s: {e}"),
            }
        };
        browser.session = format!("{url}/{id}");
        Ok(browser)
    }

    async fn command(&self, path: &str, body: Value, what: &str) -> Result<Value> {
        let resp = self
            .http
            .post(format!("{}/{path}", self.session))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{what}: chromedriver"))?;
        answer(resp, what).await
    }

    /// Opens `url` (chromedriver answers once the page has loaded).
    async fn goto(&self, url: &str) -> Result<()> {
        self.command(
            "url",
            serde_json::json!({ "url": url }),
            &format!("opening {url}"),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body) in the page; its return value.
    async fn js(&self, script: &str) -> Result<Value> {
        self.command(
            "execute/sync",
            serde_json::json!({ "script": script, "args": [] }),
            "running a script in Chromium",
        )
        .await
    }

    /// Waits until the console's `page` has rendered real data.
    async fn wait_page(&self, page: &str, within: Duration) -> Result<()> {
        let script = format!(
            "return document.querySelector('main#page[data-page=\"{page}\"][data-ready=\"1\"]') !== null"
        );
        let deadline = Instant::now() + within;
        loop {
            if self.js(&script).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let text = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await
                    .unwrap_or_default();
                bail!(
                    "the {page} page did not render within {within:?}; it says: {}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this value started.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

/// A WebDriver answer's `value`, or its error as ours.
async fn answer(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{what}: an unreadable WebDriver answer ({status})"))?;
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        bail!("{what}: WebDriver {status}: {message}");
    }
    Ok(value)
}

/// Part 2: `None` (after saying why) where Chromium is not installed.
async fn render_times(web: &Web, runs: usize) -> Result<Option<Vec<Rendered>>> {
    if !Path::new(CHROMIUM).is_file() || !Path::new(CHROMEDRIVER).is_file() {
        eprintln!("render times SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is not installed (apt-get install chromium chromium-driver)");
        return Ok(None);
    }
    let b = Chromium::start().await?;
    b.goto(&format!("{}/login#token={}", web.base, web.token))
        .await?;
    b.wait_page("overview", Duration::from_secs(120))
        .await
        .context("logging in with the token")?;
    let mut out = vec![
        Rendered {
            page: "nodes",
            ms: vec![],
            says: String::new(),
        },
        Rendered {
            page: "gpus",
            ms: vec![],
            says: String::new(),
        },
    ];
    for run in 0..runs {
        for r in &mut out {
            b.goto(&format!("{}/{}", web.base, r.page)).await?;
            b.wait_page(r.page, Duration::from_secs(120)).await?;
            let ms = b
                .js("const e = performance.getEntriesByName('corral-rendered')[0]; return e ? e.startTime : null")
                .await?
                .as_f64()
                .with_context(|| format!("the {} page set no corral-rendered mark", r.page))?;
            let count = if r.page == "nodes" {
                "count"
            } else {
                "gpu-count"
            };
            let says = b
                .js(&format!(
                    "const e = document.getElementById('{count}'); return e ? e.textContent : ''"
                ))
                .await?;
            r.says = says.as_str().unwrap_or_default().to_string();
            eprintln!(
                "render run {}: /{} {ms:.0} ms ({})",
                run + 1,
                r.page,
                r.says
            );
            r.ms.push(ms);
        }
    }
    Ok(Some(out))
}

fn median_max(v: &[f64]) -> Option<(f64, f64)> {
    crate::bench_remediation::spread(v).map(|(_, median, max)| (median, max))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// `n` bytes in kB (10^3) or MB (10^6).
fn bytes(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

fn mib(n: u64) -> String {
    format!("{:.0} MiB", n as f64 / 1048576.0)
}

pub async fn run(a: ConsoleArgs) -> Result<()> {
    ensure!(
        a.nodes > 0 && a.window > 0 && a.runs > 0 && a.connect_concurrency > 0,
        "--nodes, --window, --runs and --connect-concurrency must be positive"
    );
    let load_start = loadavg();
    eprintln!("load average {load_start}, {} CPUs", nproc());
    raise_fd_limit();
    let cluster = start_coordinator().await?;
    let pid = cluster.child.id().context("the coordinator's pid")?;
    let mut base = tokio::task::spawn_blocking(|| {
        corral_node::session::sample_once("bench", &Default::default(), &Default::default())
    })
    .await
    .context("sampling this host")?
    .context("sampling this host")?;
    base.health = Health::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let beating = Beating {
        report: Arc::new(base),
        vary: Some(Arc::new(vary)),
        period: BEAT,
        report_every: REPORT_EVERY,
        spread_reports: true,
        counters: Arc::new(Counters::default()),
        stop: stop.clone(),
    };
    let agents = start_agents(&cluster, a.nodes, &beating, a.connect_concurrency).await?;
    ensure!(
        !agents.conns.is_empty(),
        "no simulated node connected (run with CORRAL_LOG=debug for why)"
    );

    let token = make_token(&cluster.api, "bench", ApiRole::Admin).await?;
    // One user per console client: the coordinator limits the consoles of one user.
    let mut console_tokens = vec![];
    for i in 0..CONSOLES.iter().copied().max().unwrap_or(0) {
        console_tokens
            .push(make_token(&cluster.api, &format!("console-{i}"), ApiRole::Viewer).await?);
    }
    // reqwest wants a process-wide rustls provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let web = Web {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client")?,
        base: format!("http://{}", cluster.http),
        token,
    };

    // Every node's first report comes at its fifth beat, at most a second after it
    // connected: wait for them all to be in the snapshot.
    let connected = agents.conns.len();
    tokio::time::sleep(BEAT * (REPORT_EVERY as u32 + 2)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (snapshot, snapshot_secs, snap) = loop {
        let (data, secs) = first_snapshot(&web).await?;
        let snap: ConsoleSnapshot =
            serde_json::from_str(&data).context("the console snapshot is not ConsoleSnapshot")?;
        let reported = snap
            .nodes
            .iter()
            .filter(|n| n.gpus.len() == GPUS as usize)
            .count();
        if reported >= connected {
            break (data, secs, snap);
        }
        if Instant::now() > deadline {
            bail!("only {reported} of {connected} nodes had reported their GPUs after a minute");
        }
        eprintln!("{reported} of {connected} nodes reported; waiting");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let unhealthy = snap
        .nodes
        .iter()
        .filter(|n| n.health == HealthStatus::Unhealthy)
        .count();
    let gpus: usize = snap.nodes.iter().map(|n| n.gpus.len()).sum();

    eprintln!("measuring the page weight");
    let weight = page_weight(&web).await?;
    eprintln!("measuring render times in headless Chromium");
    let rendered = render_times(&web, a.runs).await?;
    tokio::time::sleep(SETTLE).await;

    let probe = Probe {
        pid,
        api: &cluster.api,
        counters: &beating.counters,
    };
    let lost_before = beating.counters.failed.load(Relaxed);
    let mut windows = vec![];
    eprintln!("window: no console");
    windows.push(measure("no console", 0, &probe, a.window, &Tally::default()).await?);
    for n in CONSOLES {
        eprintln!("window: {n} console(s)");
        windows.push(with_consoles(&web, &console_tokens, &probe, n, a.window).await?);
        tokio::time::sleep(SETTLE).await;
    }
    for n in CONSOLES {
        eprintln!("window: {n} poller(s) of /api/v1/nodes");
        windows.push(with_pollers(&web, &probe, n, a.window).await?);
        tokio::time::sleep(SETTLE).await;
    }
    let reports = beating.counters.reports.load(Relaxed);
    let failed = beating.counters.failed.load(Relaxed);
    stop.cancel();
    let mut child = cluster.child;
    let _ = child.kill().await;
    let load_end = loadavg();

    // The figures.
    println!(
        "## bench console: {} nodes × {GPUS} fake GPUs (beat 1 s, report every 5 s, readings walking), {} s windows",
        a.nodes, a.window
    );
    println!(
        "machine: nproc {}; load average {load_start} at start, {load_end} at end",
        nproc()
    );
    println!(
        "nodes: {connected} of {} connected in {:.1} s, {} lost their connection later ({} in the windows), {reports} reports sent in all; snapshot: {} nodes, {gpus} GPUs, {unhealthy} unhealthy",
        a.nodes,
        agents.connect_secs,
        failed.saturating_sub((a.nodes - connected) as u64),
        failed - lost_before,
        snap.nodes.len()
    );
    println!();
    println!("first load of a page, uncompressed, as served over HTTP:");
    println!(
        "  {:<40} {:>12}",
        "shell HTML (/nodes, /gpus: the same)",
        format!("{} B", weight.shell)
    );
    println!(
        "  {:<40} {:>12}",
        "/ui/app.js",
        format!("{} B", weight.script)
    );
    println!(
        "  {:<40} {:>12}",
        "/ui/style.css",
        format!("{} B", weight.style)
    );
    println!(
        "  {:<40} {:>12}",
        "total",
        format!("{} B", weight.shell + weight.script + weight.style)
    );
    match &weight.encoding {
        Some(e) => println!("  (served with Content-Encoding: {e})"),
        None => println!("  gzip: not measured (no deflate crate in Cargo.lock)"),
    }
    println!(
        "  data: the feed's first snapshot, {} ({} per node), delivered {:.2} s after the request",
        bytes(snapshot.len() as f64),
        bytes(snapshot.len() as f64 / snap.nodes.len().max(1) as f64),
        snapshot_secs
    );
    println!();
    match &rendered {
        None => println!("time to first render: SKIPPED (no Chromium)"),
        Some(pages) => {
            println!(
                "time to first render, headless Chromium, fresh load, mark 'corral-rendered' (ms from navigation start), {} runs:",
                a.runs
            );
            for r in pages {
                if let Some((median, max)) = median_max(&r.ms) {
                    let runs: Vec<String> = r.ms.iter().map(|m| format!("{m:.0}")).collect();
                    println!(
                        "  /{:<6} median {median:6.0} ms   max {max:6.0} ms   (runs {}; the page says \"{}\")",
                        r.page,
                        runs.join(", "),
                        r.says
                    );
                }
            }
        }
    }
    println!();
    if let Some(one) = windows.iter().find(|w| w.what == "1 console") {
        println!(
            "update traffic, one console: {}/s, {:.2} deltas/s, {:.0} nodes per delta, {} per delta ({} resyncs)",
            bytes(one.bytes as f64 / one.secs),
            one.deltas as f64 / one.secs,
            one.delta_nodes as f64 / one.deltas.max(1) as f64,
            bytes(one.bytes as f64 / one.deltas.max(1) as f64),
            one.resyncs
        );
        println!();
    }
    println!(
        "{:<47} {:>11} {:>10} {:>13} {:>13} {:>15} {:>8}",
        "clients", "coord. CPU", "coord. RSS", "to clients", "per client", "per client", "harness"
    );
    println!(
        "{:<47} {:>11} {:>10} {:>13} {:>13} {:>15} {:>8}",
        "", "(1 core)", "(max)", "(all)", "", "", "CPU"
    );
    for w in &windows {
        let per = w.clients.max(1) as f64 * w.secs;
        let (each, messages) = match (w.clients, w.polling) {
            (0, _) => ("-".to_string(), "-".to_string()),
            (_, true) => (
                format!("{}/s", bytes(w.bytes as f64 / per)),
                format!("{:.2} polls/s", w.polls as f64 / per),
            ),
            (_, false) => (
                format!("{}/s", bytes(w.bytes as f64 / per)),
                format!("{:.2} deltas/s", w.deltas as f64 / per),
            ),
        };
        println!(
            "{:<47} {:>11} {:>10} {:>13} {:>13} {:>15} {:>8}",
            w.what,
            format!("{:.1} %", w.cpu),
            mib(w.rss_max),
            format!("{}/s", bytes(w.bytes as f64 / w.secs)),
            each,
            messages,
            format!("{:.1} %", w.harness_cpu)
        );
        if w.errors > 0 || w.resyncs > 0 {
            println!(
                "  ({} errors, {} resyncs in this window)",
                w.errors, w.resyncs
            );
        }
        if w.lost > 0 || w.connected < connected {
            println!(
                "  ({} simulated nodes lost their connection in this window; the coordinator counted {} connected at its end)",
                w.lost, w.connected
            );
        }
    }
    println!("coord. CPU: % of one core over the window; coord. RSS: the largest of 1 s samples; bytes: HTTP body bytes; harness CPU: this process (agents and clients).");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_splits_events_across_chunks() {
        let stream = b"event: snapshot\ndata: {\"seq\":1}\n\n: keep-alive\n\nevent: delta\ndata: {\"seq\":2,\"nodes\":[{\"name\":\"a\"},{\"name\":\"b\"}]}\n\n";
        for cut in 1..stream.len() {
            let mut p = SseParser {
                keep_data: true,
                ..SseParser::default()
            };
            let mut seen = vec![];
            let mut on = |e: &str, d: &[u8]| seen.push((e.to_string(), nodes_in(d)));
            p.feed(&stream[..cut], &mut on);
            p.feed(&stream[cut..], &mut on);
            assert_eq!(
                seen,
                [("snapshot".to_string(), 0), ("delta".to_string(), 2)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn readings_walk_and_one_node_in_a_hundred_is_unhealthy() {
        let mut rng = rand::rng();
        let mut healthy = NodeReport {
            node: "bench-00001".into(),
            ..NodeReport::default()
        };
        healthy.host.memory.total_bytes = 1 << 30;
        personalize(&mut healthy, &mut rng);
        assert_eq!(healthy.gpus.len(), GPUS as usize);
        assert_eq!(healthy.health.status, HealthStatus::Healthy);
        assert!(healthy.gpus.iter().all(|g| g.name == GPU_MODEL));
        let before = healthy.clone();
        let mut moved = false;
        for _ in 0..10 {
            walk(&mut healthy, &mut rng);
            moved |= healthy.gpus != before.gpus;
        }
        assert!(moved);
        for g in &healthy.gpus {
            assert!(g.utilization_percent.is_some_and(|u| u <= 100));
            assert!(g.memory_used_bytes.is_some_and(|m| m <= GPU_MEMORY));
        }
        let mut sick = NodeReport {
            node: "bench-00137".into(),
            ..NodeReport::default()
        };
        personalize(&mut sick, &mut rng);
        assert_eq!(sick.health.status, HealthStatus::Unhealthy);
        assert_eq!(sick.gpus[UNHEALTHY_GPU].health.xid_last, Some(79));
    }
}
