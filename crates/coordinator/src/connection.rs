//! One agent connection, from handshake to close, in its own task.
//!
//! Invariants:
//! - A slow or silent peer only ever holds its own task: the handshake, the control
//!   stream and the hello each have a deadline ([`HANDSHAKE_TIMEOUT`]).
//! - Nothing reaches the registry before the peer proved it is an agent (certificate
//!   role), named itself as its certificate does, and speaks a protocol version this
//!   coordinator supports; a refusal closes with a [`Refusal`] code and a reason, and is
//!   counted by kind.
//! - Every message after the hello is applied under this connection's id, so a replaced
//!   connection's late messages change nothing. The registry ends a replaced connection
//!   through the close handle given at connect, which closes with `Replaced`.
//! - What the agent sends is bounded before anything else sees it ([`crate::bounds`]):
//!   a hello whose beat interval or frame limit is out of bounds is refused with the
//!   value and the range; reports, Ray heads and plugin announcements are cut to the
//!   caps (logged once per connection, counted per report).
//! - A command result completes only a command sent on this connection
//!   ([`crate::commands`]); when the connection ends, its pending commands fail at once.
//! - Frames to the agent respect the limit its hello announced: a command over it is
//!   not sent, and fails alone with [`CommandError::TooLarge`]; the session goes on.
//! - Each connection's events are in one `agent` span carrying `node` (once known) and
//!   `remote`, so the events themselves do not repeat them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{debug, info, info_span, warn, Instrument, Span};

use crate::commands::CommandError;
use crate::{bounds, Shared};
use corral_proto::wire::{
    self, AgentMsg, CoordMsg, Hello, Refusal, Welcome, WireError, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use corral_transport::frame::{refusal_code, Bytes, FrameReader, FrameWriter};
use corral_transport::pki::{self, Role};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown`, each in its own task and its own span.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    max_frame: usize,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        // `node` is known once the handshake shows the certificate.
        let span = info_span!("agent", node = Empty, remote = %incoming.remote_address());
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = handle_connection(incoming, shared, max_frame) => {}
                    _ = shutdown.cancelled() => {}
                }
                debug!("connection task ended");
            }
            .instrument(span),
        );
    }
}

/// Closes `conn` with a refusal, logging and counting it.
fn refuse(
    shared: &Shared,
    conn: &quinn::Connection,
    refusal: Refusal,
    stat: &'static str,
    reason: String,
) {
    warn!(?refusal, %reason, "refusing agent connection");
    shared.registry.record_rejection(stat);
    conn.close(refusal_code(refusal), reason.as_bytes());
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<Shared>, max_frame: usize) {
    let remote = incoming.remote_address();
    let conn = match timeout(HANDSHAKE_TIMEOUT, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // Most often: no client certificate, or one from another CA.
            warn!(error = %e, "QUIC/TLS handshake failed");
            shared.registry.record_rejection("handshake");
            return;
        }
        Err(_) => {
            warn!("QUIC/TLS handshake timed out");
            shared.registry.record_rejection("handshake_timeout");
            return;
        }
    };
    let identity = match pki::peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            return refuse(
                &shared,
                &conn,
                Refusal::NotAnAgent,
                "identity",
                format!("{e:#}"),
            )
        }
    };
    if identity.role != Role::Agent {
        return refuse(
            &shared,
            &conn,
            Refusal::NotAnAgent,
            "role",
            format!(
                "certificate for {:?} has role {}, only agents may connect here",
                identity.name, identity.role
            ),
        );
    }
    let node = identity.name;
    Span::current().record("node", node.as_str());
    // Revocation: a certificate revoked while connected ends the connection (`crate::revocation`).
    crate::revocation::guard(&shared, &conn);
    let (send, recv) = match timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(error = %e, "connection closed before the control stream");
            return;
        }
        Err(_) => {
            return refuse(
                &shared,
                &conn,
                Refusal::Timeout,
                "hello_timeout",
                "no control stream within 10s".into(),
            )
        }
    };
    let mut reader = FrameReader::new(recv, max_frame);
    let frame = match timeout(HANDSHAKE_TIMEOUT, reader.next_frame()).await {
        Ok(Ok(f)) => f,
        Ok(Err(WireError::FrameTooLarge { max })) => {
            return refuse(
                &shared,
                &conn,
                Refusal::FrameTooLarge,
                "frame_too_large",
                format!("hello exceeds the {max}-byte frame limit"),
            )
        }
        Ok(Err(e)) => {
            debug!(error = %e, "no hello");
            return;
        }
        Err(_) => {
            return refuse(
                &shared,
                &conn,
                Refusal::Timeout,
                "hello_timeout",
                "no hello within 10s".into(),
            )
        }
    };
    let version = match wire::peek_version(&frame) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                &shared,
                &conn,
                Refusal::ProtocolViolation,
                "malformed",
                format!("malformed hello: {e}"),
            )
        }
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return refuse(
            &shared,
            &conn,
            Refusal::UnsupportedVersion,
            "version",
            format!(
                "agent speaks protocol {version}; this coordinator ({}) speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; upgrade the {}",
                env!("CARGO_PKG_VERSION"),
                if version > PROTOCOL_VERSION { "coordinator" } else { "agent" }
            ),
        );
    }
    let hello: Hello = match wire::decode("hello", &frame) {
        Ok(h) => h,
        Err(e) => {
            return refuse(
                &shared,
                &conn,
                Refusal::ProtocolViolation,
                "malformed",
                format!("malformed hello: {e}"),
            )
        }
    };
    if hello.node != node {
        return refuse(
            &shared,
            &conn,
            Refusal::IdentityMismatch,
            "identity",
            format!(
                "certificate is for node {node:?} but the hello claims {:?}",
                hello.node
            ),
        );
    }
    let beat_interval = match bounds::beat_interval(hello.beat_interval_ms) {
        Ok(d) => d,
        Err(why) => {
            return refuse(
                &shared,
                &conn,
                Refusal::ProtocolViolation,
                "beat_interval",
                why,
            )
        }
    };
    // What this agent accepts is the most the coordinator sends it.
    let peer_frame = match bounds::peer_frame_limit(hello.max_frame_bytes) {
        Ok(n) => n,
        Err(why) => {
            return refuse(
                &shared,
                &conn,
                Refusal::ProtocolViolation,
                "frame_limit",
                why,
            )
        }
    };
    if hello.agent_version.len() > bounds::MAX_TEXT_BYTES {
        return refuse(
            &shared,
            &conn,
            Refusal::ProtocolViolation,
            "malformed",
            format!(
                "the hello's agent version is {} bytes long, over the {}-byte limit",
                hello.agent_version.len(),
                bounds::MAX_TEXT_BYTES
            ),
        );
    }
    let mut writer = FrameWriter::new(send, peer_frame);
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        coordinator_version: env!("CARGO_PKG_VERSION").into(),
        max_frame_bytes: max_frame as u32,
    };
    if writer.send("welcome", &welcome).await.is_err() {
        return;
    }
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<CoordMsg>(64);
    let registry = shared.registry.clone();
    let replaced = conn.clone();
    let conn_id = registry.connect(
        &node,
        beat_interval,
        remote.to_string(),
        hello.agent_version.clone(),
        cmd_tx,
        Box::new(move || {
            replaced.close(
                refusal_code(Refusal::Replaced),
                b"replaced by a newer connection from the same node",
            )
        }),
    );
    info!(agent_version = %hello.agent_version, beat_ms = hello.beat_interval_ms, frame_limit = peer_frame, "agent connected");

    // What was cut from this connection's messages is logged once, then only counted.
    let mut cut_logged = false;
    let mut note_cuts = |what: &'static str, cuts: bounds::Cuts| {
        if !cuts.is_empty() && !std::mem::replace(&mut cut_logged, true) {
            warn!(message_kind = what, cut = %cuts.summary(), "agent message over the coordinator's caps, truncated (logged once per connection)");
        }
        !cuts.is_empty()
    };
    // This session's report deltas: see `corral_transport::delta`.
    let mut reports = corral_transport::delta::ReportDecoder::new(max_frame);
    let reason = loop {
        tokio::select! {
            frame = reader.next_frame() => {
                let frame = match frame {
                    Ok(f) => f,
                    Err(WireError::FrameTooLarge { max }) => {
                        let why = format!("frame exceeds the {max}-byte limit");
                        refuse(&shared, &conn, Refusal::FrameTooLarge, "frame_too_large", why.clone());
                        break why;
                    }
                    Err(e) => break close_reason(&conn).unwrap_or_else(|| e.to_string()),
                };
                registry.received(frame.len() as u64 + 4);
                let msg: AgentMsg = match wire::decode("agent message", &frame) {
                    Ok(m) => m,
                    Err(e) => {
                        let why = format!("malformed message: {e}");
                        refuse(&shared, &conn, Refusal::ProtocolViolation, "malformed", why.clone());
                        break why;
                    }
                };
                match msg {
                    AgentMsg::Beat(b) => { registry.beat(&node, conn_id, &b); }
                    AgentMsg::Report(_) | AgentMsg::ReportDelta { .. } => {
                        // The base of the next delta is the report as sent, before caps.
                        let report = match msg {
                            AgentMsg::Report(r) => reports.full(&r).map(|()| r),
                            AgentMsg::ReportDelta { patch } => reports.patch(&patch).map(Box::new),
                            _ => unreachable!("matched above"),
                        };
                        let mut r = match report {
                            Ok(r) => r,
                            Err(e) => {
                                let why = format!("report delta refused: {e}");
                                refuse(&shared, &conn, Refusal::ProtocolViolation, "malformed", why.clone());
                                break why;
                            }
                        };
                        if r.node != node {
                            let why = format!("report for node {:?} on the connection of {node:?}", r.node);
                            refuse(&shared, &conn, Refusal::IdentityMismatch, "identity", why.clone());
                            break why;
                        }
                        if note_cuts("report", bounds::report(&mut r)) {
                            registry.record_truncated_report(&node);
                        }
                        let point = crate::console::history::Point::of(&r, corral_proto::model::unix_ms());
                        if registry.report(&node, conn_id, *r) {
                            shared.console.history.record(&node, point);
                        }
                    }
                    AgentMsg::CommandResult { id, mut result } => {
                        note_cuts("command result", bounds::command_result(&mut result));
                        shared.commands.complete(&node, conn_id, id, result);
                    }
                    AgentMsg::RayHead(mut head) => {
                        if let Some(h) = &mut head {
                            note_cuts("ray head", bounds::ray_head(h));
                        }
                        registry.ray_head_announced(&node, conn_id, head);
                    }
                    AgentMsg::Plugins { mut loaded, mut failed } => {
                        note_cuts("plugins", bounds::plugins(&mut loaded, &mut failed));
                        registry.plugins_announced(&node, conn_id, loaded, failed);
                    }
                }
            }
            cmd = cmd_rx.recv() => {
                let Some(cmd) = cmd else { break "command channel closed".into() };
                let frame = match wire::encode("command", &cmd) {
                    Ok(f) => f,
                    Err(e) => break e.to_string(),
                };
                if frame.len() > peer_frame {
                    // Not sent: that command fails alone, the session goes on.
                    match cmd {
                        CoordMsg::Command { id, .. } => {
                            warn!(command = id, bytes = frame.len(), limit = peer_frame, "command over the agent's frame limit not sent");
                            shared.commands.fail(conn_id, id, CommandError::TooLarge {
                                node: node.clone(),
                                bytes: frame.len(),
                                limit: peer_frame,
                            });
                        }
                        CoordMsg::HeadChanged { .. } => {
                            warn!(bytes = frame.len(), limit = peer_frame, "Ray head over the agent's frame limit not sent");
                        }
                    }
                    continue;
                }
                if let Err(e) = writer.send_raw(Bytes::from(frame)).await {
                    break e.to_string();
                }
            }
        }
    };
    // First the queue, then its pending commands: see `crate::commands`.
    drop(cmd_rx);
    shared.commands.connection_closed(conn_id, &reason);
    registry.disconnect(&node, conn_id, &reason);
    info!(%reason, "agent disconnected");
}

fn close_reason(conn: &quinn::Connection) -> Option<String> {
    conn.close_reason().map(|e| match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let why = String::from_utf8_lossy(&c.reason).into_owned();
            if why.is_empty() {
                "agent closed the connection".into()
            } else {
                why
            }
        }
        quinn::ConnectionError::TimedOut => "connection timed out".into(),
        // Refusals break the loop with their own reason; what else closes a connection
        // here is the registry (a newer connection of the node took over) or the
        // revocation watch (its certificate was revoked; logged with the serial there).
        quinn::ConnectionError::LocallyClosed => {
            "closed by the coordinator: replaced by a newer connection from the same node, or its certificate was revoked".into()
        }
        other => other.to_string(),
    })
}
