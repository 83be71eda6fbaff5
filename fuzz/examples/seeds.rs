//! Writes the seed corpora, `fuzz/corpus/TARGET/`: encoded sample messages (the
//! golden messages pinned in crates/proto/src/wire.rs, and a real report delta), the
//! packaged configs and the plugins' manifests, and every plugin fixture
//! (plugins/*/fixtures) in the plugin targets' input format for each operation.
//!
//!     bash tests/fuzz.sh --seeds
//!
//! writes them to `$SEEDS_DIR/TARGET/` (default fuzz/corpus), and then keeps only the
//! seeds that add coverage (`-merge=1`) in fuzz/corpus/TARGET/. Deterministic: running
//! it again writes the same files (named by content).
//! (A libFuzzer stub target is linked in: this crate's code is built instrumented.)

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use corral_fuzz::delta::ReportEncoder;
use corral_fuzz::{input, reply, stream};
use corral_proto::model::NodeReport;
use corral_proto::wire::{self, AgentMsg};

libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Corpus {
    dir: PathBuf,
    written: BTreeSet<String>,
}

impl Corpus {
    fn new(target: &str) -> Corpus {
        let base = std::env::var_os("SEEDS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("fuzz/corpus"));
        let dir = base.join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Corpus {
            dir,
            written: BTreeSet::new(),
        }
    }
    fn add(&mut self, bytes: &[u8]) {
        // Named by content (FNV-1a), as libFuzzer names by SHA-1: no duplicates.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100000001b3);
        }
        let name = format!("seed-{h:016x}");
        if self.written.insert(name.clone()) {
            fs::write(self.dir.join(name), bytes).unwrap();
        }
    }
}

/// The golden messages of crates/proto/src/wire.rs: (name, bytes).
fn golden() -> Vec<(String, Vec<u8>)> {
    let src = fs::read_to_string(root().join("crates/proto/src/wire.rs")).unwrap();
    let start = src.find("const GOLDEN").expect("wire.rs pins GOLDEN bytes");
    let mut out = Vec::new();
    // Entries read `("name", "hex")`, the hex possibly split over concatenated lines.
    let body = &src[start..];
    let end = body.find("];").unwrap();
    let text: String = body[..end]
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    for entry in text.split("(\"").skip(1) {
        let Some((name, rest)) = entry.split_once('"') else {
            continue;
        };
        let hex: String = rest.split('"').skip(1).step_by(2).collect::<String>();
        if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        out.push((name.to_string(), bytes));
    }
    assert!(out.len() > 10, "found {} golden messages", out.len());
    out
}

fn fixtures(plugin: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> =
        fs::read_dir(root().join("plugins").join(plugin).join("fixtures"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_none_or(|e| e != "md"))
            .collect();
    files.sort();
    files
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect()
}

/// Every fixture as the first reply (stdout, exit 0) and as a failure's stderr (exit 1),
/// for each operation and argument; and pairs of fixtures as two replies.
fn plugin(target: &str, plugin: &str, ops: u8, args: &[&str]) {
    let mut c = Corpus::new(target);
    let fx = fixtures(plugin);
    for op in 0..ops {
        for arg in args {
            for f in &fx {
                c.add(&input(op, arg, &[reply(b'0', f, "")]));
                c.add(&input(op, arg, &[reply(b'1', "", f)]));
            }
            if op < 5 {
                for (i, f) in fx.iter().enumerate() {
                    let g = &fx[(i + 1) % fx.len()];
                    c.add(&input(op, arg, &[reply(b'0', f, ""), reply(b'0', g, "")]));
                }
            }
        }
    }
    println!("{target}: {} seeds", c.written.len());
}

fn main() {
    let golden = golden();
    let msg = |name: &str| -> Vec<u8> {
        golden
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no golden {name}"))
            .1
            .clone()
    };

    // Agent → coordinator.
    let report: NodeReport = match wire::decode("agent message", &msg("agent report")).unwrap() {
        AgentMsg::Report(r) => *r,
        _ => unreachable!(),
    };
    let mut changed = report.clone();
    changed.host.uptime_secs += 5;
    changed.host.cpu_percent = 40.0;
    changed.host.taken_at_ms += 5000;
    let mut enc = ReportEncoder::new();
    let first = wire::encode("m", &enc.encode(&report).unwrap()).unwrap();
    let delta_msg = enc.encode(&changed).unwrap();
    let AgentMsg::ReportDelta { patch } = &delta_msg else {
        panic!("no delta")
    };
    let patch = patch.clone();
    let delta = wire::encode("m", &delta_msg).unwrap();
    let agent: Vec<Vec<u8>> = golden
        .iter()
        .filter(|(n, _)| n.starts_with("agent "))
        .map(|(_, b)| b.clone())
        .collect();
    let mut c = Corpus::new("wire_agent");
    for m in &agent {
        c.add(&stream(&[msg("hello"), m.clone()]));
    }
    c.add(&stream(&[
        msg("hello"),
        first.clone(),
        delta.clone(),
        msg("agent beat"),
    ]));
    let mut all = vec![msg("hello")];
    all.extend(agent.iter().cloned());
    c.add(&stream(&all));
    println!("wire_agent: {} seeds", c.written.len());

    // Coordinator → agent.
    let mut c = Corpus::new("wire_coord");
    let coord: Vec<Vec<u8>> = golden
        .iter()
        .filter(|(n, _)| n.starts_with("coord "))
        .map(|(_, b)| b.clone())
        .collect();
    for m in &coord {
        c.add(&stream(&[msg("welcome"), m.clone()]));
    }
    let mut all = vec![msg("welcome")];
    all.extend(coord.iter().cloned());
    c.add(&stream(&all));
    println!("wire_coord: {} seeds", c.written.len());

    // Deltas: base, then a patch (even) or a second report (odd).
    let mut c = Corpus::new("report_delta");
    let base = wire::encode("r", &report).unwrap();
    let with_base = |rest: &[u8], mode: u8| {
        let mut v = (base.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(&base);
        v.push(mode);
        v.extend_from_slice(rest);
        v
    };
    c.add(&with_base(&patch, 0));
    c.add(&with_base(&wire::encode("r", &changed).unwrap(), 1));
    c.add(&with_base(
        &wire::encode("r", &NodeReport::default()).unwrap(),
        1,
    ));
    println!("report_delta: {} seeds", c.written.len());

    // Configs.
    let mut c = Corpus::new("config_agent");
    c.add(
        fs::read_to_string(root().join("packaging/config/agent.toml"))
            .unwrap()
            .as_bytes(),
    );
    c.add(
        br#"[agent]
name = "gpu-01"
coordinator = "[fd00::1]:7440"
server_name = "head-01"
beat_interval = "500ms"
report_interval = "5s 200ms"
sample_interval = "1s"
reconnect_base = "250ms"
reconnect_cap = "1m"
state_dir = "/var/lib/corral-agent"
"#,
    );
    c.add(b"[agent]\ncoordinator = \"head:7440\"\nbeat_interval = \"1h\"\n");
    println!("config_agent: {} seeds", c.written.len());

    let mut c = Corpus::new("config_coordinator");
    let packaged = fs::read_to_string(root().join("packaging/config/coordinator.toml")).unwrap();
    c.add(packaged.as_bytes());
    // The same with every commented-out key of the coordinator's sections set.
    let uncommented: String = packaged
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(k) if k.contains(" = ") && !k.starts_with(' ') => k,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    c.add(uncommented.as_bytes());
    c.add(
        br#"[coordinator]
listen = "[::]:7440"
state_dir = "/var/lib/corral"
ray_heads = ["head-01", "*"]
[api]
listen = "10.0.0.1:7441"
tls_cert = "/etc/corral/api.pem"
tls_key = "/etc/corral/api.key"
cors_origins = ["https://dash.example:3000"]
[remediation.drain_after]
default = "never"
xid = "0s"
[schedulers.slurm]
nodes = ["login-01", "*"]
members = ["gpu-01", "gpu-02"]
node_names = { gpu-01 = "gpu01" }
drain = false
"#,
    );
    println!("config_coordinator: {} seeds", c.written.len());

    let mut c = Corpus::new("manifest");
    let mut manifests: Vec<PathBuf> = fs::read_dir(root().join("plugins"))
        .unwrap()
        .filter_map(|e| {
            let dir = e.unwrap().path();
            let name = dir.file_name()?.to_str()?.to_string();
            Some(dir.join(format!("{name}.toml")))
        })
        .filter(|p| p.exists())
        .collect();
    manifests.push(root().join("tests/plugins/hostile/hostile.toml"));
    manifests.sort();
    for m in manifests {
        let text = fs::read_to_string(&m).unwrap();
        c.add(text.as_bytes());
        c.add(format!("{text}\n#http://127.0.0.1:8265/api/jobs/").as_bytes());
    }
    c.add(b"[plugin]\nname = \"x\"\nkind = \"provider\"\n[grants]\nhosts = [\"[fd00::1]:443\", \"API.Example.org.:443\", \"10.0.0.5:80\"]\nenv = [\"HOME_DIR\"]\n[limits]\nmemory_mb = 16\n#https://api.example.org/v1\n");
    println!("manifest: {} seeds", c.written.len());

    // Plugins: ops 0-4 drive the exports, 5 and up call parsers directly.
    plugin("slurm", "slurm", 10, &["10 11 12 15 15_2 9", "localhost"]);
    plugin(
        "pbs",
        "pbs",
        8,
        &["101.pbs-head 102.pbs-head 103[].pbs-head", "node01"],
    );
    plugin("sge", "sge", 9, &["1 2 3 4.2", "host1"]);
    plugin("lsf", "lsf", 8, &["301 302 303[2]", "host1"]);
    plugin(
        "ray_jobs",
        "ray-jobs",
        6,
        &["raysubmit_b6vc2msfTvxiE3F4", "raysubmit_1 raysubmit_2"],
    );
    plugin("htcondor", "htcondor", 7, &["101 102.0 103", "101.0"]);
}
