//! Network faults without netem (this kernel has none): nftables rules that drop UDP at
//! random or entirely, and a userspace UDP relay that delays packets with jitter.
//!
//! Both work on loopback. A rule matches a UDP port as source or destination, so one rule
//! pair covers both directions of every flow to that port. The relay stands between an
//! agent and the coordinator: the agent is given the relay's port, and every flow through
//! it gets its own upstream socket, so the coordinator sees one peer per agent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

/// Whether nftables can be used here: root and the `nft` program (installed with apt under
/// CI=true). `Err(why)` otherwise.
pub fn nft_ready() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("nftables rules need root".into());
    }
    let have = || {
        Command::new("nft")
            .args(["--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() && super::ci() {
        super::apt_install(&["nftables"]);
    }
    if !have() {
        return Err("the nft program is missing (Debian package nftables)".into());
    }
    Ok(())
}

/// An nftables table of the test's own; deleted when dropped.
pub struct Nft {
    table: String,
}

fn nft(args: &str) {
    let out = Command::new("nft")
        .args(args.split(' '))
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Nft {
    /// A table named after `port` (so tests on other ports never share one) with an
    /// input chain; no rules yet.
    pub fn new(port: u16) -> Nft {
        let table = format!("corral_test_{port}");
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .output();
        nft(&format!("add table inet {table}"));
        nft(&format!(
            "add chain inet {table} input {{ type filter hook input priority 0 ; policy accept ; }}"
        ));
        Nft { table }
    }

    /// Drops `percent` % of UDP packets to or from `port`, at random, each way.
    pub fn drop_percent(&self, port: u16, percent: u32) {
        for dir in ["dport", "sport"] {
            nft(&format!(
                "add rule inet {} input udp {dir} {port} numgen random mod 100 < {percent} drop",
                self.table
            ));
        }
    }

    /// Drops every UDP packet to or from `port`.
    pub fn drop_all(&self, port: u16) {
        for dir in ["dport", "sport"] {
            nft(&format!(
                "add rule inet {} input udp {dir} {port} drop",
                self.table
            ));
        }
    }

    /// Removes every rule (the table stays).
    pub fn heal(&self) {
        nft(&format!("flush chain inet {} input", self.table));
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

/// A UDP relay on loopback in front of `upstream`, delaying each packet, each way, by
/// `delay` plus a uniform jitter in `[-jitter, +jitter]`.
pub struct Relay {
    pub port: u16,
    /// Packets forwarded, both ways.
    pub forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr, delay: Duration, jitter: Duration) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let port = front.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let count = forwarded.clone();
        let task = tokio::spawn(async move {
            let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65536];
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let back = match flows.get(&from) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        s.connect(upstream).await.unwrap();
                        flows.insert(from, s.clone());
                        // Replies from the coordinator back to this flow's agent.
                        let (s2, front2, count2) = (s.clone(), front.clone(), count.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            let mut seed = from.port() as u64 | 1;
                            while let Ok(n) = s2.recv(&mut buf).await {
                                let d = jittered(delay, jitter, &mut seed);
                                let (front3, pkt) = (front2.clone(), buf[..n].to_vec());
                                count2.fetch_add(1, Relaxed);
                                tokio::spawn(async move {
                                    tokio::time::sleep(d).await;
                                    let _ = front3.send_to(&pkt, from).await;
                                });
                            }
                        });
                        s
                    }
                };
                let d = jittered(delay, jitter, &mut seed);
                let pkt = buf[..n].to_vec();
                count.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = back.send(&pkt).await;
                });
            }
        });
        Relay {
            port,
            forwarded,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `delay` ± up to `jitter`, from a xorshift generator (no need for a crate here).
fn jittered(delay: Duration, jitter: Duration, seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    if jitter.is_zero() {
        return delay;
    }
    let span = jitter.as_micros() as u64 * 2 + 1;
    let off = (*seed % span) as i64 - jitter.as_micros() as i64;
    Duration::from_micros((delay.as_micros() as i64 + off).max(0) as u64)
}
