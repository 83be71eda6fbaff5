//! Running under systemd: readiness, watchdog and status notifications (`Type=notify`,
//! through `sd-notify`), and log lines shaped for the journal.
//!
//! Invariants:
//! - Outside systemd everything here is a no-op: without `NOTIFY_SOCKET` nothing is sent,
//!   without `WATCHDOG_USEC` no watchdog task runs, and without `JOURNAL_STREAM` naming
//!   our stderr the log format is the terminal's. `corral dev`, the tests and a daemon
//!   started by hand behave exactly as before.
//! - `READY=1` means "doing its job": the coordinator sends it once its QUIC endpoint and
//!   HTTP API are bound, the agent once its sampler, Ray supervisor and reconnect loop
//!   run (the coordinator need not be reachable: a node whose coordinator is down is
//!   still a running agent, and its `STATUS=` says so).
//! - The watchdog pings come from a task on the daemon's own async runtime at half of
//!   `WATCHDOG_USEC`, so a wedged runtime (every worker blocked) stops them and systemd
//!   restarts the daemon. They deliberately do not depend on the sampler thread: a hung
//!   GPU driver delays reports but must not take the node's beats away by restarting the
//!   agent over and over. Pings stop when the daemon begins to shut down.
//! - Notification failures are logged, never fatal: a daemon that cannot reach the
//!   notify socket still does its work (systemd then times it out, which is the visible
//!   failure).
//!
//! Trade-off: the variables stay in the environment, so Ray, check programs and scheduler
//! commands inherit `NOTIFY_SOCKET`; the units use `NotifyAccess=main`, which makes
//! systemd ignore anything a child might send. Unsetting them would need `unsafe`
//! environment mutation before the runtime starts, for no gain under that setting.
//!
//! Journal format: when stderr is the journal (`JOURNAL_STREAM` matches its device and
//! inode), text logs drop the timestamp (journald stamps every line) and colours, and each
//! line starts with its syslog priority (`<3>` error … `<7>` debug), which journald turns
//! into the entry's priority, so `journalctl -p warning -u corral-agent` works.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Tells systemd the daemon is ready, with a status line, and starts the watchdog pings
/// (when the unit asks for them) until `shutdown` is cancelled. Call from within the
/// daemon's runtime.
pub fn ready(status: &str, shutdown: &CancellationToken) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    if let Some(every) = watchdog_interval() {
        tracing::debug!(
            interval_ms = every.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => send(&[NotifyState::Watchdog]),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells systemd the daemon is shutting down (it then waits for the exit rather than
/// treating the silence of the watchdog as a hang).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Half of the watchdog timeout the unit set for this process, if any.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|t| (t / 2).max(Duration::from_millis(10)))
}

/// Whether stderr is connected to the journal (systemd sets `JOURNAL_STREAM` to the
/// `DEVICE:INODE` of the stream it connected; a child whose stderr was redirected
/// elsewhere inherits the variable but not the stream, hence the comparison).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => journal_stream_is(&var.to_string_lossy(), m.dev(), m.ino()),
        Err(_) => false,
    }
}

/// Whether a `JOURNAL_STREAM` value names the stream with this device and inode.
fn journal_stream_is(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The text log format for the journal: `<priority>LEVEL target: message fields`, no
/// timestamp. Use it with `with_ansi(false)`.
pub struct JournalFormat {
    inner: Format<Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        JournalFormat {
            inner: tracing_subscriber::fmt::format().without_time(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn journal_stream_must_name_this_very_stream() {
        assert!(journal_stream_is("8:4711", 8, 4711));
        assert!(!journal_stream_is("8:4711", 8, 4712));
        assert!(!journal_stream_is("9:4711", 8, 4711));
        assert!(!journal_stream_is("garbage", 8, 4711));
        assert!(!journal_stream_is("", 0, 0));
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_start_with_their_syslog_priority_and_carry_no_time_or_colour() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(JournalFormat::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(node = "gpu-01", "broken");
            tracing::warn!("careful");
            tracing::info!("fine");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<3>ERROR "), "{text}");
        assert!(lines[0].contains("broken") && lines[0].contains("node=\"gpu-01\""));
        assert!(lines[1].starts_with("<4> WARN "), "{text}");
        assert!(lines[2].starts_with("<6> INFO "), "{text}");
        assert!(lines[3].starts_with("<7>DEBUG "), "{text}");
        assert!(!text.contains('\u{1b}'), "ANSI escapes in {text:?}");
        // A timestamp would put digits and a 'T' before the level.
        assert!(
            lines.iter().all(|l| !l.contains("Z ")),
            "timestamp in {text}"
        );
    }
}
