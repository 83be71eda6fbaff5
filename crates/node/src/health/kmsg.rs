//! The kernel-log XID source: `NVRM: Xid (PCI:…): N, …` lines, and NVSwitch `SXid`
//! lines, read from `/dev/kmsg` (or a file or FIFO in the same formats, for tests).
//!
//! Why: NVML's event API does not deliver every XID (DCGM cannot report 79, 119 and 120
//! through NVML, NVIDIA/DCGM#162; 62 shows in dmesg only, NVIDIA/DCGM#235), and it
//! delivers only the latest XID of a device when several arrive between two waits. The
//! kernel log has every one.
//!
//! Invariants and trade-offs:
//! - [`parse_line`] accepts what NVIDIA documents and what logs show: `/dev/kmsg` records
//!   (`PRI,SEQ,TS,FLAGS;message`, continuation lines starting with a space are skipped),
//!   `dmesg` lines (`[  123.456] NVRM: …`), syslog/journal lines (`… kernel: NVRM: …`),
//!   with or without the `PCI:` prefix older drivers omit. A line that names an XID but
//!   cannot be read is a [`LineError`]: counted and logged, never a panic, and the lines
//!   after it are read as usual. Lines about anything else are `Ok(None)`.
//! - Lines are mapped to GPUs by PCI address (domain, bus, device; the function is
//!   ignored because the kernel log writes `0000:3b:00` where NVML writes
//!   `00000000:3B:00.0`), in [`super::device_health`], which also merges duplicates of
//!   NVML events.
//! - [`KernelLog`] reads on its own thread (`corral-kmsg`) with a non-blocking descriptor
//!   it polls every 100 ms, so it notices shutdown and never stalls sampling.
//!   `/dev/kmsg` holds only the current boot's ring buffer, so reading it from its start
//!   starts from the current boot without replaying old ones; the records the reader
//!   finds already there are marked `backlog`. Each `/dev/kmsg` record carries its
//!   sequence number; the tracker persists the last one it counted (keyed by boot id, see
//!   [`super::state`]), so an agent restart does not count a record twice. Lines of a
//!   regular file without a sequence number use their line number instead; FIFO lines
//!   have none (a FIFO does not replay).
//! - A record the ring buffer overwrote before it was read (`EPIPE`) is logged and
//!   skipped; reading goes on.
//! - A node without access (no `/dev/kmsg` in a container, `kernel.dmesg_restrict` for a
//!   non-root agent) is normal: the source stops, logs one warning, and its
//!   [`KernelLogStatus`] carries the note.

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The path the NVML backend reads when `gpu.kernel_log` is not set.
pub const DEFAULT_PATH: &str = "/dev/kmsg";

/// How long the reader sleeps when it has caught up.
const IDLE: Duration = Duration::from_millis(100);

/// Longest line kept; longer ones are cut (the kernel's own limit is 8 KiB per record).
const MAX_LINE: usize = 64 * 1024;

/// A PCI address as both NVML and the kernel log name a GPU: domain, bus, device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PciAddr {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
}

impl PciAddr {
    /// Parses `0000:3b:00`, `0000:3b:00.0` (kernel log) or `00000000:3B:00.0` (NVML).
    pub fn parse(s: &str) -> Option<PciAddr> {
        let s = s.trim();
        let (domain, rest) = s.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let device = rest.split_once('.').map_or(rest, |(d, _)| d);
        fn hex(t: &str, max: usize) -> Option<u32> {
            if t.is_empty() || t.len() > max {
                return None;
            }
            u32::from_str_radix(t, 16).ok()
        }
        Some(PciAddr {
            domain: hex(domain, 8)?,
            bus: u8::try_from(hex(bus, 2)?).ok()?,
            device: u8::try_from(hex(device, 2)?).ok()?,
        })
    }
}

impl std::fmt::Display for PciAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}",
            self.domain, self.bus, self.device
        )
    }
}

/// What a kernel-log line reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// `NVRM: Xid (PCI:0000:3b:00): 79, pid=…, GPU has fallen off the bus.`
    Xid {
        pci: PciAddr,
        xid: u64,
        /// The text after the code, as the driver wrote it.
        message: String,
    },
    /// `nvidia-nvswitch3: SXid (PCI:0000:c6:00.0): 12028, Non-fatal, Link 46 …`
    Sxid {
        /// The switch's address as written (`0000:c6:00.0`).
        pci: String,
        sxid: u64,
        fatal: bool,
        message: String,
    },
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    /// The `/dev/kmsg` sequence number, or the line number in a regular file; `None` for
    /// lines that have neither (a FIFO, a fake script).
    pub seq: Option<u64>,
    pub event: KernelEvent,
    /// Already in the log when the reader started (may predate NVML's event
    /// registration, so it never absorbs a later NVML event as a duplicate).
    pub backlog: bool,
}

/// A line that names an XID or SXid but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("no `(PCI address):` after `{marker}`")]
    NoAddress { marker: &'static str },
    #[error("{addr:?} is not a PCI address")]
    BadAddress { addr: String },
    #[error("no {what} code after the PCI address")]
    NoCode { what: &'static str },
}

/// A `/dev/kmsg` record prefix: `PRI,SEQ,TIMESTAMP,FLAGS[,…];` → the sequence number and
/// the message. `None` when `line` has no such prefix.
fn kmsg_prefix(line: &str) -> Option<(u64, &str)> {
    let (prefix, message) = line.split_once(';')?;
    let mut fields = prefix.split(',');
    fn numeric(f: Option<&str>) -> Option<&str> {
        f.filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
    }
    numeric(fields.next())?;
    let seq = numeric(fields.next())?.parse().ok()?;
    numeric(fields.next())?;
    Some((seq, message))
}

/// Reads `(PCI:addr): code, rest` (the part after `Xid ` / `SXid `).
fn address_and_code<'a>(
    after: &'a str,
    marker: &'static str,
    what: &'static str,
) -> Result<(&'a str, u64, &'a str), LineError> {
    let inner = after
        .strip_prefix('(')
        .and_then(|r| r.split_once("):"))
        .ok_or(LineError::NoAddress { marker })?;
    let (addr, rest) = inner;
    let addr = addr.trim();
    let addr = addr.strip_prefix("PCI:").unwrap_or(addr);
    let rest = rest.trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let code = rest[..digits]
        .parse()
        .map_err(|_| LineError::NoCode { what })?;
    let message = rest[digits..]
        .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
        .trim_end();
    Ok((addr, code, message))
}

/// Parses one kernel-log line (see the module doc for the formats). `Ok(None)`: not an
/// XID or SXid line.
pub fn parse_line(line: &str) -> Result<Option<(Option<u64>, KernelEvent)>, LineError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.starts_with(' ') && !line.contains("Xid (") {
        // A `/dev/kmsg` continuation line (` SUBSYSTEM=pci`).
        return Ok(None);
    }
    let (seq, message) = match kmsg_prefix(line) {
        Some((seq, m)) => (Some(seq), m),
        None => (None, line),
    };
    if let Some(at) = message.find("SXid ") {
        let (addr, sxid, rest) = address_and_code(&message[at + 5..], "SXid", "SXid")?;
        if PciAddr::parse(addr).is_none() {
            return Err(LineError::BadAddress { addr: addr.into() });
        }
        // The headline says `Fatal` or `Non-fatal`; the lines after it (`Severity …`,
        // `Data {…}`) repeat the code with details and are not further SXids.
        let fatal = match rest.split(',').next().map(str::trim) {
            Some(s) if s.eq_ignore_ascii_case("fatal") => true,
            Some(s) if s.eq_ignore_ascii_case("non-fatal") => false,
            _ => return Ok(None),
        };
        return Ok(Some((
            seq,
            KernelEvent::Sxid {
                pci: addr.to_string(),
                sxid,
                fatal,
                message: rest.to_string(),
            },
        )));
    }
    let Some(at) = message.find("NVRM: Xid ") else {
        return Ok(None);
    };
    let (addr, xid, rest) = address_and_code(&message[at + 10..], "NVRM: Xid", "XID")?;
    let pci = PciAddr::parse(addr).ok_or_else(|| LineError::BadAddress { addr: addr.into() })?;
    Ok(Some((
        seq,
        KernelEvent::Xid {
            pci,
            xid,
            message: rest.to_string(),
        },
    )))
}

/// What the kernel-log source says about itself (for logs and `corral agent --once`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KernelLogStatus {
    /// What the agent reads: `/dev/kmsg`, or the file the config points to.
    pub path: String,
    /// False once the source stopped; `note` says why.
    pub reading: bool,
    /// Why the source is not reading.
    pub note: Option<String>,
    /// Lines that looked like an XID or SXid but could not be parsed (skipped).
    pub skipped_lines: u64,
}

/// Records read since the last drain, and the source's status.
#[derive(Debug, Clone, Default)]
pub struct KernelBatch {
    pub records: Vec<KernelRecord>,
    pub status: KernelLogStatus,
}

/// What the reader thread shares with the sampler.
#[derive(Debug, Default)]
struct Shared {
    reading: bool,
    note: Option<String>,
    skipped: u64,
}

/// The reader thread and its channel.
#[derive(Debug)]
pub struct KernelLog {
    path: PathBuf,
    records: mpsc::Receiver<KernelRecord>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl KernelLog {
    /// Starts reading `path`. Never fails: a path that cannot be read gives a source that
    /// has stopped, with the reason in its status.
    pub fn start(path: &Path) -> KernelLog {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Mutex::new(Shared {
            reading: true,
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let log = KernelLog {
            path: path.to_path_buf(),
            records: rx,
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let thread_path = path.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("corral-kmsg".into())
            .spawn(move || read_thread(&thread_path, &tx, &shared, &stop));
        if let Err(e) = spawned {
            tracing::warn!(path = %path.display(), error = %e, "cannot start the kernel-log thread; XIDs will come from NVML only");
            stopped(
                &log.shared,
                format!("cannot start the kernel-log reader: {e}"),
            );
        }
        log
    }

    /// The records read since the last call, and the source's status.
    pub fn drain(&mut self) -> KernelBatch {
        KernelBatch {
            records: self.records.try_iter().collect(),
            status: self.status(),
        }
    }

    pub fn status(&self) -> KernelLogStatus {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        KernelLogStatus {
            path: self.path.display().to_string(),
            reading: shared.reading,
            note: shared.note.clone(),
            skipped_lines: shared.skipped,
        }
    }
}

fn stopped(shared: &Mutex<Shared>, note: String) {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    s.reading = false;
    s.note = Some(note);
}

/// Turns lines into records, counting the ones it cannot read.
struct LineSink<'a> {
    tx: &'a mpsc::Sender<KernelRecord>,
    shared: &'a Mutex<Shared>,
    path: &'a Path,
    /// Line numbers stand in for sequence numbers (regular files only).
    number_lines: bool,
    line_no: u64,
    backlog: bool,
    skipped_logged: u32,
}

impl LineSink<'_> {
    /// False when the receiver is gone (the source was dropped).
    fn line(&mut self, line: &str) -> bool {
        self.line_no += 1;
        match parse_line(line) {
            Ok(None) => true,
            Ok(Some((seq, event))) => {
                let seq = seq.or(self.number_lines.then_some(self.line_no));
                self.tx
                    .send(KernelRecord {
                        seq,
                        event,
                        backlog: self.backlog,
                    })
                    .is_ok()
            }
            Err(e) => {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.skipped += 1;
                drop(s);
                if self.skipped_logged < 5 {
                    self.skipped_logged += 1;
                    tracing::warn!(path = %self.path.display(), line = %line.trim_end(), error = %e, "skipping a kernel-log line that names an XID but cannot be read");
                } else {
                    tracing::debug!(path = %self.path.display(), line = %line.trim_end(), error = %e, "skipping an unreadable XID line");
                }
                true
            }
        }
    }
}

/// Body of the reader thread.
fn read_thread(
    path: &Path,
    tx: &mpsc::Sender<KernelRecord>,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
) {
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            let hint = if e.kind() == ErrorKind::PermissionDenied {
                " (reading the kernel log needs root or CAP_SYSLOG, or kernel.dmesg_restrict = 0)"
            } else {
                ""
            };
            let note = format!("cannot open {}: {e}{hint}", path.display());
            tracing::warn!(path = %path.display(), error = %e, "{note}; XIDs will come from NVML only");
            stopped(shared, format!("{note}; XIDs come from NVML only"));
            return;
        }
    };
    let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    let kind = file
        .metadata()
        .map(|m| {
            let t = m.file_type();
            if t.is_char_device() {
                "character device"
            } else if t.is_fifo() {
                "FIFO"
            } else {
                "file"
            }
        })
        .unwrap_or("file");
    tracing::info!(path = %path.display(), kind, "reading XIDs from the kernel log");
    let mut sink = LineSink {
        tx,
        shared,
        path,
        number_lines: regular,
        line_no: 0,
        backlog: true,
        skipped_logged: 0,
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match file.read(&mut buf) {
            Ok(0) => {
                sink.backlog = false;
                std::thread::sleep(IDLE);
            }
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if !sink.line(&String::from_utf8_lossy(&line)) {
                        return;
                    }
                }
                if pending.len() > MAX_LINE {
                    tracing::warn!(path = %path.display(), bytes = pending.len(), "kernel-log line too long; reading it as cut");
                    let line = String::from_utf8_lossy(&pending).into_owned();
                    pending.clear();
                    if !sink.line(&line) {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                sink.backlog = false;
                std::thread::sleep(IDLE);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                tracing::warn!(path = %path.display(), "the kernel ring buffer overwrote records before they were read; XIDs in them are lost");
            }
            Err(e) => {
                let note = format!("reading {} failed: {e}", path.display());
                tracing::warn!(path = %path.display(), error = %e, "{note}; XIDs will come from NVML only");
                stopped(shared, format!("{note}; XIDs come from NVML only"));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/kmsg")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn xids(text: &str) -> Vec<(Option<u64>, String, u64)> {
        text.lines()
            .filter_map(|l| parse_line(l).ok().flatten())
            .filter_map(|(seq, e)| match e {
                KernelEvent::Xid { pci, xid, .. } => Some((seq, pci.to_string(), xid)),
                KernelEvent::Sxid { .. } => None,
            })
            .collect()
    }

    #[test]
    fn pci_addresses_from_nvml_and_the_kernel_log_compare_equal() {
        let nvml = PciAddr::parse("00000000:3B:00.0").unwrap();
        assert_eq!(PciAddr::parse("0000:3b:00"), Some(nvml));
        assert_eq!(PciAddr::parse("0000:3b:00.1"), Some(nvml));
        assert_eq!(nvml.to_string(), "0000:3b:00");
        for bad in [
            "",
            "3b:00",
            "0000:3b",
            "zz:3b:00",
            "0000:3bb:00",
            "0000:3b:00x",
        ] {
            assert_eq!(PciAddr::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kmsg_records_give_their_sequence_numbers() {
        let got = xids(&fixture("xid-79-fallen-off-the-bus.kmsg"));
        assert_eq!(got, [(Some(1841), "0000:18:00".to_string(), 79)]);
    }

    #[test]
    fn dmesg_journal_and_old_driver_formats_all_parse() {
        let got = xids(&fixture("xid-62-119-reset.txt"));
        assert_eq!(
            got,
            [
                (None, "0000:28:00".to_string(), 62),
                (None, "0000:38:00".to_string(), 119),
                (None, "0000:38:00".to_string(), 154),
            ]
        );
        let (_, e) = parse_line("NVRM: Xid (0000:03:00): 14, Channel 00000001")
            .unwrap()
            .unwrap();
        assert_eq!(
            e,
            KernelEvent::Xid {
                pci: PciAddr::parse("0000:03:00").unwrap(),
                xid: 14,
                message: "Channel 00000001".into()
            }
        );
    }

    #[test]
    fn nvswitch_sxids_parse_with_their_severity() {
        let got: Vec<_> = fixture("sxid-nvswitch.txt")
            .lines()
            .filter_map(|l| parse_line(l).ok().flatten())
            .map(|(_, e)| e)
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[0], KernelEvent::Sxid { pci, sxid: 12028, fatal: false, .. } if pci == "0000:c6:00.0")
        );
        assert!(matches!(
            &got[1],
            KernelEvent::Sxid {
                sxid: 24007,
                fatal: true,
                ..
            }
        ));
    }

    #[test]
    fn malformed_xid_lines_are_errors_and_other_lines_are_ignored() {
        let text = fixture("malformed.txt");
        let results: Vec<_> = text.lines().map(parse_line).collect();
        let errors = results.iter().filter(|r| r.is_err()).count();
        let xids: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned().flatten())
            .collect();
        assert_eq!(errors, 3, "{results:?}");
        assert_eq!(
            xids.len(),
            1,
            "the good line among the bad ones: {results:?}"
        );
        assert_eq!(parse_line("random kernel chatter"), Ok(None));
        assert_eq!(parse_line(" SUBSYSTEM=pci"), Ok(None));
        assert_eq!(parse_line(""), Ok(None));
        assert_eq!(
            parse_line("NVRM: Xid (PCI:0000:18:00): , no code"),
            Err(LineError::NoCode { what: "XID" })
        );
    }

    fn wait_for(log: &mut KernelLog, n: usize) -> Vec<KernelRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(log.drain().records);
            std::thread::sleep(Duration::from_millis(20));
        }
        got
    }

    #[test]
    fn a_file_is_read_to_its_end_and_then_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        std::fs::write(&path, fixture("burst-13-31-13.kmsg")).unwrap();
        let lines = fixture("burst-13-31-13.kmsg").lines().count() as u64;
        let mut log = KernelLog::start(&path);
        let first = wait_for(&mut log, 3);
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.iter().all(|r| r.backlog));
        std::thread::sleep(Duration::from_millis(300));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(
            f,
            "[  9.5] NVRM: Xid (PCI:0000:18:00): 31, pid=7, name=a.out, MMU Fault"
        )
        .unwrap();
        let later = wait_for(&mut log, 1);
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(!later[0].backlog, "appended after the reader caught up");
        assert_eq!(
            later[0].seq,
            Some(lines + 1),
            "a line number stands in for the sequence"
        );
        assert!(log.status().reading);
    }

    #[test]
    fn an_unreadable_kernel_log_stops_the_source_with_a_note() {
        let mut log = KernelLog::start(Path::new("/nonexistent/corral-kmsg"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.status().reading && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = log.drain().status;
        assert!(!status.reading);
        assert!(
            status
                .note
                .as_deref()
                .unwrap_or("")
                .starts_with("cannot open /nonexistent/corral-kmsg"),
            "{status:?}"
        );
    }

    #[test]
    fn skipped_lines_are_counted_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        std::fs::write(&path, fixture("malformed.txt")).unwrap();
        let mut log = KernelLog::start(&path);
        let got = wait_for(&mut log, 1);
        assert_eq!(got.len(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.status().skipped_lines < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.status().skipped_lines, 3);
    }
}
