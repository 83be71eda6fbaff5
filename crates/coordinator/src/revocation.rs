//! Certificate revocation at the coordinator: the CRL that `[tls] crl` names (by default
//! `crl.pem` beside `tls.ca`), re-read every [`POLL`] while the coordinator runs.
//!
//! - New handshakes: the QUIC (and HTTPS) client verifiers read the lists in force at
//!   every handshake ([`corral_transport::crl`]), so a reloaded CRL applies to the next
//!   handshake with no new server configuration and no restart. A revoked agent is
//!   refused with TLS's `certificate_revoked` alert, which the agent turns into a
//!   sentence naming its certificate's serial and what to do.
//! - Open connections: each agent connection has a [`guard`] that closes it with
//!   [`Refusal::Revoked`] and a reason naming the serial as soon as a list in force
//!   revokes its certificate, so a stolen certificate cannot stay connected (or keep
//!   knocking the real node off as `Replaced`) once revoked.
//! - A CRL that cannot be put in force (unparseable, signed by another key, older than
//!   the one in force, removed) changes nothing: the lists in force stay, and the error is
//!   logged once per distinct file content, naming the file.
//!
//! Trade-off: polling (a small file, hashed every two seconds) rather than inotify: it
//! works the same on network file systems and for files replaced by rename, and two
//! seconds is well inside what an operator waits after `corral certs revoke`.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::Shared;
use corral_proto::wire::Refusal;
use corral_transport::crl::{Reload, Revocations};
use corral_transport::frame::refusal_code;
use corral_transport::pki::CertificateDer;

/// How often the CRL file is looked at.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// Logs the lists in force (at start and after each reload), warning about stale ones.
pub(crate) fn log_in_force(revocations: &Revocations) {
    let lists = revocations.lists();
    if lists.is_empty() {
        info!(crl = %revocations.path().display(), "no certificate revocation list yet; nothing is revoked (`corral certs revoke` writes one; it is applied within seconds)");
        return;
    }
    let now = SystemTime::now();
    for l in lists {
        info!(crl = %revocations.path().display(), issuer = l.issuer(), number = l.number(), revoked = l.len(), "certificate revocation list in force");
        if l.is_stale(now) {
            warn!(
                crl = %revocations.path().display(),
                issuer = l.issuer(),
                number = l.number(),
                "the CRL is past the next update it announced; it still applies; refresh it with `corral certs crl --ca CA_DIR`"
            );
        }
    }
}

/// Re-reads the CRL every [`POLL`] until `shutdown`.
pub(crate) async fn watch_crl(revocations: Revocations, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the file was just read at start.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let r = revocations.clone();
        match tokio::task::spawn_blocking(move || r.reload()).await {
            Ok(Ok(Reload::Unchanged)) => {}
            Ok(Ok(Reload::Applied)) => log_in_force(&revocations),
            Ok(Err(e)) => error!(
                crl = %revocations.path().display(),
                error = %e,
                revoked_in_force = revocations.revoked_count(),
                "certificate revocation list not applied; the revocations in force stay"
            ),
            Err(e) => {
                error!(crl = %revocations.path().display(), error = %e, "reloading the certificate revocation list failed")
            }
        }
    }
}

/// Closes `conn` with [`Refusal::Revoked`] once a list in force revokes the certificate
/// it was accepted with (checked at once too: a reload may land between the handshake
/// and this call). The guard ends with the connection.
pub(crate) fn guard(shared: &Shared, conn: &quinn::Connection) {
    let Some(cert) = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
    else {
        return;
    };
    let mut watch = shared.revocations.watch();
    let registry = shared.registry.clone();
    let conn = conn.clone();
    tokio::spawn(
        async move {
            loop {
                if let Some(r) = watch.revoked(&cert) {
                    let reason = format!(
                        "this node's certificate (serial {}) was revoked (CRL number {}); issue a new one with `corral certs issue`",
                        r.serial, r.crl_number
                    );
                    warn!(serial = %r.serial, crl_number = r.crl_number, "certificate revoked; closing its connection");
                    registry.record_rejection("revoked");
                    conn.close(refusal_code(Refusal::Revoked), reason.as_bytes());
                    return;
                }
                tokio::select! {
                    _ = conn.closed() => return,
                    more = watch.changed() => if !more {
                        debug!("revocation lists gone; guard ends");
                        return;
                    },
                }
            }
        }
        .in_current_span(),
    );
}
