//! `corral drain`, `corral resume` and `corral remediation`: an admin's hand on the
//! coordinator's remediation ([`corral_coordinator::remediation`]).
//!
//! A drain by hand cordons the node and drains it in its schedulers and Ray now, whatever
//! the policy's limits or a pause; only `corral resume` lifts it. `corral resume` lifts
//! what corral drained (a drain someone set in the scheduler itself stays).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::show::age;
use super::{ApiArgs, ApiClient};
use corral_proto::api::{Cordon, DrainRequest, RemediationView};
use corral_proto::model::unix_ms;

#[derive(Args, Debug)]
pub(super) struct DrainArgs {
    /// The corral node name (`corral nodes`).
    node: String,
    /// Why, one line: schedulers show it as `corral: TEXT (you)`.
    #[arg(long)]
    reason: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args, Debug)]
pub(super) struct ResumeArgs {
    node: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub(super) enum RemediationCmd {
    /// What the policy is doing: paused, blocked by a limit, cordoned nodes, nodes waiting.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop the policy's actions (admin); kept across coordinator restarts.
    Pause {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let the policy act again (admin).
    Resume {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

const TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn drain(a: DrainArgs) -> Result<()> {
    let c: Cordon = ApiClient::new(&a.api)?
        .post_json(
            &format!("/api/v1/nodes/{}/drain", a.node),
            Some(&DrainRequest { reason: a.reason }),
            TIMEOUT,
            "draining a node",
        )
        .await?;
    print_cordon(&a.node, &c, a.json, "cordoned")
}

pub(super) async fn resume(a: ResumeArgs) -> Result<()> {
    let c: Cordon = ApiClient::new(&a.api)?
        .post_json::<(), _>(
            &format!("/api/v1/nodes/{}/resume", a.node),
            None,
            TIMEOUT,
            "resuming a node",
        )
        .await?;
    print_cordon(&a.node, &c, a.json, "resuming")
}

fn print_cordon(node: &str, c: &Cordon, json: bool, what: &str) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
    } else {
        let places: Vec<String> = c
            .drains
            .iter()
            .map(|d| format!("{} ({})", d.target, d.node))
            .collect();
        let places = if places.is_empty() {
            "corral only".to_string()
        } else {
            format!("corral, {}", places.join(", "))
        };
        println!("{node} {what}: {places}; follow it with `corral node {node}` or `corral events --node {node}`");
    }
    Ok(())
}

pub(super) async fn run(cmd: RemediationCmd) -> Result<()> {
    let (view, json): (RemediationView, bool) = match cmd {
        RemediationCmd::Status { json, api } => (
            ApiClient::new(&api)?
                .get_json("/api/v1/remediation", "reading the remediation")
                .await?,
            json,
        ),
        RemediationCmd::Pause { json, api } => (
            ApiClient::new(&api)?
                .post_json::<(), _>(
                    "/api/v1/remediation/pause",
                    None,
                    TIMEOUT,
                    "pausing the remediation",
                )
                .await?,
            json,
        ),
        RemediationCmd::Resume { json, api } => (
            ApiClient::new(&api)?
                .post_json::<(), _>(
                    "/api/v1/remediation/resume",
                    None,
                    TIMEOUT,
                    "resuming the remediation",
                )
                .await?,
            json,
        ),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", status_text(&view, unix_ms()));
    }
    Ok(())
}

fn status_text(v: &RemediationView, now: u64) -> String {
    let mut s = String::new();
    let state = match (&v.paused, v.enabled, v.dry_run) {
        (Some(p), _, _) => format!("paused by {} {} ago", p.by, age(now, Some(p.since_ms))),
        (None, false, _) => "off (remediation.enabled = false): only drains by hand".into(),
        (None, true, true) => "dry run: deciding and recording, changing nothing".into(),
        (None, true, false) => "running".into(),
    };
    let _ = writeln!(s, "Remediation: {state}");
    let _ = writeln!(
        s,
        "Cordoned:    {} of {} nodes (the limit allows {})",
        v.cordoned, v.nodes, v.limit
    );
    if let Some(b) = &v.blocked {
        let _ = writeln!(s, "Blocked:     {b}");
    }
    if v.failing > 0 {
        let _ = writeln!(
            s,
            "Failing:     {} actions being retried (see `corral nodes` and `corral events`)",
            v.failing
        );
    }
    for w in &v.waiting {
        let when = match (&w.held_by, w.due_ms) {
            (Some(h), _) => format!("held: {h}"),
            (None, Some(d)) => format!("drains in {} unless it recovers", age(d, Some(now))),
            (None, None) => "due".into(),
        };
        let _ = writeln!(s, "Waiting:     {}: {} ({when})", w.node, w.reason);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::api::{Paused, Waiting};

    #[test]
    fn status_says_why_drains_are_held_back() {
        let v = RemediationView {
            enabled: true,
            dry_run: false,
            paused: Some(Paused {
                by: "alice".into(),
                since_ms: 1_000,
            }),
            blocked: Some("3 of 10 nodes are cordoned".into()),
            cordoned: 3,
            limit: 3,
            nodes: 10,
            waiting: vec![Waiting {
                node: "gpu-07".into(),
                reason: "GPU 0 XID 79".into(),
                due_ms: None,
                held_by: Some("remediation paused by alice".into()),
            }],
            failing: 1,
        };
        let text = status_text(&v, 61_000);
        assert!(text.contains("paused by alice 1m ago"), "{text}");
        assert!(
            text.contains("3 of 10 nodes (the limit allows 3)"),
            "{text}"
        );
        assert!(text.contains("Blocked:     3 of 10"), "{text}");
        assert!(
            text.contains("gpu-07: GPU 0 XID 79 (held: remediation paused by alice)"),
            "{text}"
        );
        assert!(text.contains("1 actions being retried"), "{text}");
    }
}
