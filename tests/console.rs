//! The web console in a real browser: headless Chromium driven over WebDriver
//! ([`support::browser`]) against a real coordinator with real agents on scripted fake
//! GPUs (the one fake here: there is no GPU on this machine), and the real Slurm for the
//! jobs pages.
//!
//! Without Chromium (or Slurm, for the jobs test) a test prints `SKIPPED: <why>` and
//! passes, except under `CI=true`, where the harness installs them and they must run.
//! Every test writes a screenshot of each page it visits to
//! `target/tmp/console-screenshots/`.

use corral_test_support as support;

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use support::browser::Browser;
use support::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// One fake GPU as the scripted source replays it, at PCI bus 0x18 + 0x10 × index.
fn gpu(index: u32, util: u32, temp: u32) -> Value {
    json!({
        "index": index, "uuid": format!("GPU-console-{index}"), "name": "Fake H100",
        "pci_bus_id": format!("00000000:{:02X}:00.0", 0x18 + index * 0x10),
        "utilization_percent": util, "temperature_celsius": temp,
        "memory_used_bytes": 20u64 << 30, "memory_total_bytes": 80u64 << 30,
        "power_watts": 250.0, "pcie_link_width": 16, "pcie_link_width_max": 16,
        "ecc_corrected_volatile": 0, "ecc_uncorrected_volatile": 0, "xids": []
    })
}

/// NVIDIA's kernel-log line for XID 79 on the GPU at `index`.
fn xid_79_line(index: u32) -> String {
    format!(
        "3,{},4213885200,-;NVRM: Xid (PCI:0000:{:02x}:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n",
        2000 + index,
        0x18 + index * 0x10
    )
}

/// The console's cluster: `gpu-a` (2 GPUs) and `gpu-b` (4 GPUs), each reading XIDs from
/// a kernel-log file the test appends to, and `cpu-c` without GPUs.
struct ConsoleCluster {
    c: Cluster,
}

impl ConsoleCluster {
    async fn start(extra_agent: &str) -> ConsoleCluster {
        let mut c = Cluster::new();
        // Drains would change what the pages show under the test; the console's own
        // buttons are tested with remediation's manual drain, which ignores this.
        // Jobs polled often, as in tests/jobs.rs: Slurm forgets an ended job quickly.
        c.coordinator_extra =
            "[remediation]\nenabled = false\n[jobs]\npoll_interval = \"300ms\"".into();
        c.start_coordinator();
        for (name, n) in [("gpu-a", 2), ("gpu-b", 4)] {
            let log = c.path(&format!("kmsg-{name}"));
            std::fs::write(&log, "").unwrap();
            let gpus: Vec<Value> = (0..n).map(|i| gpu(i, 10 + 25 * i, 40 + 10 * i)).collect();
            c.start_fake_gpu_agent(
                name,
                vec![json!({ "gpus": gpus })],
                &format!("sample_interval = \"200ms\"\nreport_interval = \"1s\"\n{extra_agent}"),
                &format!("kernel_log = \"{}\"", log.display()),
            );
        }
        c.start_agent(
            "cpu-c",
            "sample_interval = \"200ms\"\nreport_interval = \"1s\"",
        );
        for name in ["gpu-a", "gpu-b", "cpu-c"] {
            c.wait_node(name, "reporting", SECS(30), |n| n.report.is_some())
                .await;
        }
        ConsoleCluster { c }
    }

    /// Appends XID 79 of GPU `index` to `node`'s kernel log.
    fn xid_79(&self, node: &str, index: u32) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.c.path(&format!("kmsg-{node}")))
            .unwrap();
        f.write_all(xid_79_line(index).as_bytes()).unwrap();
    }

    /// A browser logged in with a new token of `user` with `role`, on the overview.
    async fn browser_as(&self, user: &str, role: &str) -> Option<Browser> {
        let b = Browser::start().await?;
        let token = self.c.token(user, role).await;
        b.goto(&format!("{}/login#token={token}", self.c.api()))
            .await;
        b.wait_page("overview").await;
        Some(b)
    }
}

/// Navigates inside the console (a click on its own link: no page load).
async fn click_nav(b: &Browser, href: &str, page: &str) {
    let script = format!(
        "const a = document.querySelector('a[href=\"{href}\"]'); if (!a) return false; a.click(); return true"
    );
    assert_eq!(
        b.js(&script, vec![]).await,
        json!(true),
        "no link to {href}"
    );
    b.wait_page(page).await;
}

/// The colour of the GPU grid's pixel at the centre of `node`'s GPU `index`.
async fn cell_rgb(b: &Browser, node: &str, index: u32) -> Option<[u8; 3]> {
    let v = b
        .js(
            "const r = window.corralGpuCell(arguments[0], arguments[1]); if (!r) return null;
             const c = document.getElementById('gpu-grid');
             const k = c.width / c.getBoundingClientRect().width;
             const p = c.getContext('2d').getImageData(Math.floor((r.x + r.w / 2) * k), Math.floor((r.y + r.h / 2) * k), 1, 1).data;
             return [p[0], p[1], p[2]];",
            vec![json!(node), json!(index)],
        )
        .await;
    serde_json::from_value(v).ok()
}

/// The names in the nodes table, sorted, as a JS expression.
const ROWS: &str =
    "[...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.dataset.node).sort().join(',')";

/// The console's colour for `fail` / `unhealthy`.
const RED: [u8; 3] = [0xd3, 0x2f, 0x2f];

#[tokio::test(flavor = "multi_thread")]
async fn every_page_renders_and_an_xid_79_turns_its_node_and_its_gpu_cell_red_without_a_reload() {
    let cc = ConsoleCluster::start("").await;
    let Some(b) = cc.browser_as("ops", "admin").await else {
        return;
    };
    // Overview: three ready nodes, six healthy GPUs.
    b.until(
        "three ready nodes",
        SECS(10),
        "return document.getElementById('count-ready')?.textContent.trim() === '3'",
    )
    .await;
    assert_eq!(b.text("#gpus-ok").await.trim(), "6");
    assert_eq!(b.text("#count-unhealthy").await.trim(), "0");
    b.screenshot("overview").await;
    // A marker that a reload would lose.
    b.js("window.__noReload = 42; return true", vec![]).await;

    click_nav(&b, "/nodes", "nodes").await;
    for name in ["gpu-a", "gpu-b", "cpu-c"] {
        assert!(
            b.has(&format!("#nodes tr[data-node=\"{name}\"]")).await,
            "{name} listed"
        );
    }
    b.screenshot("nodes").await;

    click_nav(&b, "/nodes/gpu-a", "node").await;
    assert_eq!(b.text("h1").await.trim(), "gpu-a");
    assert!(b.has("#gpus tr[data-gpu=\"1\"][data-health=\"ok\"]").await);
    b.wait_css("#charts svg.chart[data-series=\"gpu0-util\"]", SECS(10))
        .await;
    assert!(b.has("#charts svg.chart[data-series=\"cpu\"]").await);
    assert!(b.has("#node-events").await);
    b.screenshot("node").await;

    // XID 79 on gpu-a's GPU 0 while its page is open.
    cc.xid_79("gpu-a", 0);
    b.wait_css("#node-health[data-health=\"unhealthy\"]", SECS(15))
        .await;
    b.wait_css("#gpus tr[data-gpu=\"0\"][data-health=\"fail\"]", SECS(10))
        .await;
    assert!(
        b.text("#reasons").await.contains("XID 79"),
        "{}",
        b.text("#reasons").await
    );
    b.screenshot("node-xid-79").await;

    click_nav(&b, "/gpus", "gpus").await;
    assert_eq!(
        cell_rgb(&b, "gpu-a", 0).await,
        Some(RED),
        "gpu-a's GPU 0 is red"
    );
    assert_ne!(
        cell_rgb(&b, "gpu-b", 2).await,
        Some(RED),
        "gpu-b's GPU 2 is not"
    );
    // XID 79 on gpu-b's GPU 2 while the grid is open: its cell turns red.
    cc.xid_79("gpu-b", 2);
    b.until(
        "gpu-b's GPU 2 to turn red",
        SECS(15),
        "const r = window.corralGpuCell('gpu-b', 2); if (!r) return false;
         const c = document.getElementById('gpu-grid');
         const k = c.width / c.getBoundingClientRect().width;
         const p = c.getContext('2d').getImageData(Math.floor((r.x + r.w / 2) * k), Math.floor((r.y + r.h / 2) * k), 1, 1).data;
         return p[0] === 0xd3 && p[1] === 0x2f && p[2] === 0x2f;",
    )
    .await;
    b.screenshot("gpus").await;

    click_nav(&b, "/events", "events").await;
    b.until("the GPU events", SECS(10), "return [...document.querySelectorAll('#events tr[data-event]')].some(r => r.textContent.includes('gpu-b') && r.textContent.includes('fail'))").await;
    b.screenshot("events").await;

    click_nav(&b, "/", "overview").await;
    b.until(
        "two unhealthy nodes",
        SECS(10),
        "return document.getElementById('count-unhealthy')?.textContent.trim() === '2'",
    )
    .await;
    assert!(b.has("#problems li[data-node=\"gpu-a\"]").await);
    assert_eq!(
        b.js("return window.__noReload", vec![]).await,
        json!(42),
        "the page was reloaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_and_search_narrow_the_nodes_table() {
    let cc = ConsoleCluster::start("").await;
    cc.xid_79("gpu-a", 1);
    cc.c.wait_node("gpu-a", "unhealthy", SECS(15), |n| {
        n.health == corral_proto::model::HealthStatus::Unhealthy
    })
    .await;
    let Some(b) = cc.browser_as("ops", "viewer").await else {
        return;
    };
    click_nav(&b, "/nodes", "nodes").await;
    let rows = |want: &str| format!("return {ROWS} === '{want}'");
    b.until("all three rows", SECS(10), &rows("cpu-c,gpu-a,gpu-b"))
        .await;
    let select = |id: &str, value: &str| {
        format!("const s = document.getElementById('{id}'); s.value = '{value}'; s.dispatchEvent(new Event('change', {{bubbles: true}})); return true")
    };
    let search = |text: &str| {
        format!("const s = document.getElementById('search'); s.value = '{text}'; s.dispatchEvent(new Event('input', {{bubbles: true}})); return true")
    };
    b.js(&select("f-health", "unhealthy"), vec![]).await;
    b.until("only gpu-a", SECS(5), &rows("gpu-a")).await;
    b.screenshot("nodes-unhealthy").await;
    b.js(&select("f-health", ""), vec![]).await;
    b.js(&select("f-gpu", "none"), vec![]).await;
    b.until("only cpu-c", SECS(5), &rows("cpu-c")).await;
    b.js(&select("f-gpu", ""), vec![]).await;
    b.js(&search("gpu-"), vec![]).await;
    b.until("the two GPU nodes", SECS(5), &rows("gpu-a,gpu-b"))
        .await;
    assert!(
        b.text("#count").await.contains("2 of 3"),
        "{}",
        b.text("#count").await
    );
    // The search reads reasons too.
    b.js(&search("fallen off"), vec![]).await;
    b.until("gpu-a by its reason", SECS(5), &rows("gpu-a"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_submitted_to_slurm_shows_its_output_and_history_and_is_cancelled_from_its_page() {
    let Some(_slurm) = support::slurm::Slurm::start() else {
        return;
    };
    let Some(plugins) = support::slurm::built_plugins_dir("slurm") else {
        return;
    };
    let cc = ConsoleCluster::start(&format!(
        "[plugins]\ndir = \"{}\"\nenable = [\"slurm\"]\ncache_dir = \"plugin-cache\"\n{}",
        plugins.display(),
        runs_as_runner_keys()
    ))
    .await;
    cc.c.wait_plugins_announced("gpu-a", SECS(120)).await;
    // Slurm writes slurm-ID.out in the job's directory.
    let out = run_async(vec![
        "submit".into(),
        "--socket".into(),
        cc.c.socket(),
        "--scheduler".into(),
        "slurm".into(),
        "--json".into(),
        "--chdir".into(),
        std::env::temp_dir().display().to_string(),
        "--name".into(),
        "console-job".into(),
        "--".into(),
        "/bin/sh".into(),
        "-c".into(),
        "echo hello-from-the-console-test; sleep 120".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "submit: {}\n{}",
        stderr(&out),
        cc.c.coordinator_log()
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let Some(b) = cc.browser_as(runner(), "admin").await else {
        return;
    };
    click_nav(&b, "/jobs", "jobs").await;
    b.wait_css(&format!("#jobs tr[data-job=\"{id}\"]"), SECS(15))
        .await;
    b.screenshot("jobs").await;
    b.js(
        "const s = document.getElementById('f-scheduler'); s.value = 'slurm'; s.dispatchEvent(new Event('change', {bubbles: true})); return true",
        vec![],
    )
    .await;
    assert!(b.has(&format!("#jobs tr[data-job=\"{id}\"]")).await);
    click_nav(&b, &format!("/jobs/{id}"), "job").await;
    // While it runs its output is shown (Slurm forgets a finished job's output path
    // after MinJobAge); the cancel button ends it, and the history shows it live.
    b.until(
        "the job to run",
        SECS(60),
        "return document.getElementById('job-state')?.textContent.includes('running')",
    )
    .await;
    b.js(
        "document.getElementById('log-refresh')?.click(); return true",
        vec![],
    )
    .await;
    b.until("the job's output", SECS(20), "return document.querySelector('#log pre')?.textContent.includes('hello-from-the-console-test')").await;
    b.click("#cancel").await;
    b.until(
        "the job to be cancelled",
        SECS(60),
        "return document.getElementById('job-state')?.textContent.includes('cancel')",
    )
    .await;
    b.until(
        "its history: submitting, queued, running, cancelled",
        SECS(10),
        "return document.querySelectorAll('#history li').length >= 4",
    )
    .await;
    b.screenshot("job").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_the_login_page_shows_and_a_viewer_gets_no_actions_and_a_forged_one_is_refused(
) {
    let cc = ConsoleCluster::start("").await;
    let Some(b) = Browser::start().await else {
        return;
    };
    b.goto(&format!("{}/nodes/gpu-b", cc.c.api())).await;
    b.wait_page("login").await;
    b.screenshot("login").await;
    // A wrong token says so.
    b.type_into("#token", "corral_tnope_0000").await;
    b.click("#login").await;
    b.until("the login error", SECS(5), "return document.getElementById('login-error')?.textContent.includes('not one this coordinator issued')").await;
    // A viewer's token logs in and lands where it was going.
    let viewer = cc.c.token("vera", "viewer").await;
    b.type_into("#token", &viewer).await;
    b.click("#login").await;
    b.wait_page("node").await;
    assert_eq!(b.text("h1").await.trim(), "gpu-b");
    assert!(b.text("#whoami").await.contains("vera"));
    assert!(!b.has("#drain").await, "a viewer sees no drain button");
    // Someone else's login link does not swap the live session for theirs: it asks.
    let admin = cc.c.token("mallory", "admin").await;
    b.goto(&format!("{}/login#token={admin}", cc.c.api())).await;
    b.until(
        "the question",
        SECS(10),
        "return document.getElementById('login-error')?.textContent.includes('logged in as vera')",
    )
    .await;
    let me = b
        .js_async(
            "const done = arguments[arguments.length - 1]; fetch('/api/v1/whoami').then(r => r.json()).then(done)",
            vec![],
        )
        .await;
    assert_eq!(me["user"], "vera", "{me}");
    b.goto(&format!("{}/nodes/gpu-b", cc.c.api())).await;
    b.wait_page("node").await;
    assert!(!b.has("#resume").await, "nor a resume button");
    b.screenshot("node-as-viewer").await;
    // A forged drain, with the session's own CSRF token: the role refuses it.
    let status = b
        .js_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/whoami').then(r => r.json()).then(me =>
               fetch('/api/v1/nodes/gpu-b/drain', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf}, body: JSON.stringify({reason: 'forged'})}))
             .then(r => r.text().then(t => done([r.status, t]))).catch(e => done([0, String(e)]));",
            vec![],
        )
        .await;
    assert_eq!(status[0], json!(403), "{status}");
    assert!(
        status[1].as_str().unwrap().contains("admin role"),
        "{status}"
    );
    assert!(cc.c.node("gpu-b").await.unwrap().cordon.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_drains_and_resumes_from_the_node_page_and_a_cross_site_post_does_nothing() {
    let cc = ConsoleCluster::start("").await;
    let Some(b) = cc.browser_as("ops", "admin").await else {
        return;
    };
    click_nav(&b, "/nodes/gpu-b", "node").await;
    b.click("#drain").await;
    b.type_into("#drain-reason", "swap the fan").await;
    b.click("#drain-confirm").await;
    let (n, _) =
        cc.c.wait_node("gpu-b", "cordoned", SECS(10), |n| n.cordon.is_some())
            .await;
    let reason = n.cordon.unwrap().reason;
    assert!(reason.starts_with("swap the fan"), "{reason}");
    b.wait_css("#cordon", SECS(10)).await;
    b.screenshot("node-cordoned").await;
    b.click("#resume").await;
    cc.c.wait_node("gpu-b", "resumed", SECS(10), |n| n.cordon.is_none())
        .await;

    // Another site (localhost is not 127.0.0.1 to a browser) posts to the console's
    // API with the browser's cookies: a no-cors fetch and a plain HTML form.
    let api = cc.c.api();
    b.goto(&format!(
        "http://localhost:{}/login",
        api.rsplit(':').next().unwrap()
    ))
    .await;
    b.js_async(
            "const [api, done] = [arguments[0], arguments[arguments.length - 1]];
             fetch(api + '/api/v1/nodes/gpu-a/drain', {method: 'POST', mode: 'no-cors', credentials: 'include', headers: {'Content-Type': 'text/plain'}, body: JSON.stringify({reason: 'cross-site'})})
               .then(() => done(true), () => done(true));",
            vec![json!(api)],
        )
        .await;
    b.js(
        "const f = document.createElement('form'); f.method = 'POST'; f.action = arguments[0] + '/api/v1/nodes/gpu-a/drain';
         f.enctype = 'text/plain'; const i = document.createElement('input'); i.name = '{\"reason\":\"x\",\"y\":\"'; i.value = '\"}';
         f.appendChild(i); document.body.appendChild(f); f.submit(); return true",
        vec![json!(api)],
    )
    .await;
    tokio::time::sleep(SECS(2)).await;
    assert!(
        cc.c.node("gpu-a").await.unwrap().cordon.is_none(),
        "a cross-site post drained gpu-a"
    );
    assert!(
        !cc.c
            .events("gpu-a")
            .await
            .iter()
            .any(|e| e.message.contains("cross-site")),
        "nothing about it was recorded as done"
    );
}

/// Revokes `token` (`corral_<id>_<secret>`) with `corral tokens revoke`.
async fn revoke(c: &Cluster, token: &str) {
    let id = token.split('_').nth(1).unwrap().to_string();
    let out = run_async(vec![
        "tokens".into(),
        "revoke".into(),
        id,
        "--socket".into(),
        c.socket(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Logs in over HTTP (no browser): the session cookie and CSRF token.
async fn login(c: &Cluster, token: &str) -> (reqwest::Response, Option<String>) {
    let resp = reqwest::Client::new()
        .post(format!("{}/ui/login", c.api()))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (resp, cookie)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_cookie_is_httponly_and_strict_needs_its_csrf_token_to_act_and_ends_with_its_token(
) {
    let mut c = Cluster::new();
    c.start_coordinator();
    c.start_agent("n1", "");
    c.wait_node("n1", "connected", SECS(20), |n| n.connected)
        .await;
    let token = c.token("ada", "admin").await;
    let (resp, cookie) = login(&c, &token).await;
    assert_eq!(resp.status(), 200);
    let me: Value = resp.json().await.unwrap();
    let cookie = cookie.expect("a Set-Cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let csrf = me["csrf"].as_str().unwrap().to_string();
    assert_eq!(me["user"], "ada");
    let http = reqwest::Client::new();
    let drain = |csrf: Option<&str>| {
        let mut r = http
            .post(format!("{}/api/v1/nodes/n1/drain", c.api()))
            .header("cookie", &session)
            .json(&json!({ "reason": "by cookie" }));
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    // Reading needs only the cookie; acting needs the CSRF token too.
    let whoami: Value = http
        .get(format!("{}/api/v1/whoami", c.api()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["csrf"], json!(csrf));
    let r = drain(None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("CSRF"));
    let r = drain(Some("0123")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(c.node("n1").await.unwrap().cordon.is_none());
    let r = drain(Some(&csrf)).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(c.node("n1").await.unwrap().cordon.is_some());

    // A bad login says why; a revoked token ends the sessions it opened.
    let (bad, no_cookie) = login(&c, "corral_tx_y").await;
    assert_eq!(bad.status(), 401);
    assert!(no_cookie.is_none());
    revoke(&c, &token).await;
    let r = http
        .get(format!("{}/api/v1/nodes", c.api()))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("revoked"));

    // The shell is public and locked down; the feed is not public.
    let shell = http.get(format!("{}/nodes", c.api())).send().await.unwrap();
    assert_eq!(shell.status(), 200);
    let csp = shell.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let feed = http
        .get(format!("{}/api/v1/console/stream", c.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_starts_with_a_snapshot_and_sends_a_delta_when_a_node_changes() {
    let mut c = Cluster::new();
    c.start_coordinator();
    c.start_agent(
        "n1",
        "sample_interval = \"200ms\"\nreport_interval = \"1s\"",
    );
    c.wait_node("n1", "reporting", SECS(20), |n| n.report.is_some())
        .await;
    let token = c.token("ada", "viewer").await;
    let stream = || {
        reqwest::Client::new()
            .get(format!("{}/api/v1/console/stream", c.api()))
            .bearer_auth(&token)
    };
    // What an <img> another page points here sends is not what EventSource sends.
    let not_events = stream().header("accept", "image/*").send().await.unwrap();
    assert_eq!(not_events.status(), 406);
    let mut resp = stream()
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut text = String::new();
    let deadline = std::time::Instant::now() + SECS(20);
    let mut saw_snapshot = false;
    let mut saw_liveness_delta = false;
    while std::time::Instant::now() < deadline && !saw_liveness_delta {
        let chunk = tokio::time::timeout(SECS(5), resp.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else { continue };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let message: String = text.drain(..end + 2).collect();
            let event = message
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            let data: String = message
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if event.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            match event {
                "snapshot" => {
                    assert!(!saw_snapshot, "one snapshot");
                    saw_snapshot = true;
                    assert_eq!(v["nodes"][0]["name"], "n1", "{data}");
                    assert_eq!(v["nodes"][0]["liveness"], "ready");
                    c.signal_agent("n1", libc::SIGKILL);
                }
                "delta" => {
                    assert!(saw_snapshot, "a delta before the snapshot");
                    let nodes = v["nodes"].as_array().unwrap();
                    if nodes
                        .iter()
                        .any(|n| n["name"] == "n1" && n["liveness"] == "disconnected")
                    {
                        assert!(v["events"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|e| e["to"] == "disconnected"));
                        saw_liveness_delta = true;
                    }
                }
                other => panic!("unexpected event {other}: {data}"),
            }
        }
    }
    assert!(
        saw_snapshot && saw_liveness_delta,
        "no snapshot then disconnect delta: {text}"
    );
    // Revoking the token ends the stream it opened (re-checked at least every 15 s).
    revoke(&c, &token).await;
    let ended = tokio::time::timeout(SECS(25), async {
        while let Ok(Some(_)) = resp.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its revoked token");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_certificate_logs_in_to_a_secure_host_only_session_over_https() {
    let mut c = Cluster::new();
    c.api_extra = "tls_cert = \"tls/coordinator.pem\"\ntls_key = \"tls/coordinator.key\"".into();
    c.issue("ops", "operator");
    c.start_coordinator();
    let tls = c.tls_dir();
    let pem = |name: &str| std::fs::read(tls.join(name)).unwrap();
    let ca = reqwest::Certificate::from_pem(&pem("ca.pem")).unwrap();
    let mut identity = pem("ops.pem");
    identity.extend(pem("ops.key"));
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let login = format!("https://127.0.0.1:{}/ui/login", c.api_port);
    let r = with_cert
        .post(&login)
        .json(&json!({ "certificate": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("__Host-corral_session=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    let me: Value = r.json().await.unwrap();
    assert_eq!(
        (me["user"].as_str(), me["role"].as_str()),
        (Some("ops"), Some("admin"))
    );
    assert_eq!(me["via"]["kind"], "certificate");
    // Without a certificate the login says what to do.
    let without = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = without
        .post(&login)
        .json(&json!({ "certificate": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("no operator certificate came with this connection"));
}
