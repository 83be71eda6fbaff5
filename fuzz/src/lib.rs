//! What the fuzz targets (`fuzz_targets/`) share: the parsers that live in crates too
//! heavy to link here, compiled from their own source files, and the helpers that feed
//! them the way the daemons and the plugin host do.
//!
//! Why source files and not crates: `corral-node`, `corral-coordinator` and
//! `corral-sandbox` link wasmtime (and the coordinator rusqlite, axum, quinn), minutes
//! of cold build for CI on two cores, while the parsers fuzzed here depend only on
//! `corral-base`, `corral-proto`, serde, toml and humantime. Those files are compiled
//! here unchanged, as modules: if one of them grows a dependency on the rest of its
//! crate, this crate stops building, which the CI smoke reports.

#![allow(clippy::new_without_default)]

use std::cell::{Cell, RefCell};

use corral_plugin_sdk::{Backend, Command, Error, Level, Output, Request, Response};
use serde::{de::DeserializeOwned, Serialize};

/// `crates/node/src/config.rs`: the agent's `[agent]` section.
#[allow(dead_code)]
#[path = "../../crates/node/src/config.rs"]
pub mod node_config;

/// `crates/coordinator/src/config.rs`: `[coordinator]`, `[api]`, `[jobs]`,
/// `[remediation]`, `[schedulers.NAME]`.
#[allow(dead_code)]
#[path = "../../crates/coordinator/src/config.rs"]
pub mod coordinator_config;

/// `crates/sandbox/src/plugins/manifest.rs`: plugin manifests (`NAME.toml`).
#[allow(dead_code)]
#[path = "../../crates/sandbox/src/plugins/manifest.rs"]
pub mod manifest;

/// `crates/transport/src/delta.rs`: report deltas (zstd against the previous report).
#[allow(dead_code)]
#[path = "../../crates/transport/src/delta.rs"]
pub mod delta;

/// The frame length prefix (`crates/transport/src/frame.rs`).
pub const PREFIX: usize = 4;

/// The frames in a byte stream as `FrameReader` cuts them: a 4-byte big-endian length,
/// then that many bytes; a length over `max` ends the stream (`FrameTooLarge`), and so
/// does a stream that ends inside a frame.
pub fn frames(mut data: &[u8], max: usize) -> Vec<Result<&[u8], &'static str>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Some(prefix) = data.get(..PREFIX) else {
            out.push(Err("the stream ended inside a prefix"));
            break;
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > max {
            out.push(Err("frame too large"));
            break;
        }
        let Some(frame) = data.get(PREFIX..PREFIX + len) else {
            out.push(Err("the stream ended inside a frame"));
            break;
        };
        out.push(Ok(frame));
        data = &data[PREFIX + len..];
    }
    out
}

/// A stream of `frames` as a writer sends them (for seeds).
pub fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Checks what a decoded message must satisfy: it encodes, that encoding decodes, and
/// encoding is a fixed point from there (postcard is positional and deterministic; the
/// frame it came from may differ, e.g. in trailing bytes or over-long varints). Compared
/// as bytes, so that a NaN in a report does not fail it.
pub fn assert_roundtrip<T: Serialize + DeserializeOwned + std::fmt::Debug>(
    what: &'static str,
    msg: &T,
) {
    let once = corral_proto::wire::encode(what, msg)
        .unwrap_or_else(|e| panic!("a decoded {what} does not encode: {e}: {msg:?}"));
    let again: T = corral_proto::wire::decode(what, &once)
        .unwrap_or_else(|e| panic!("an encoded {what} does not decode: {e}: {msg:?}"));
    let twice = corral_proto::wire::encode(what, &again).expect("encodes");
    assert_eq!(
        once, twice,
        "{what} does not re-encode to the same bytes: {msg:?}"
    );
}

/// The parts of a plugin target's input: an operation byte, then the argument (ids, a
/// node name) and the programs' replies, separated by `\x1e`. A reply is an exit-status
/// byte (`0`-`9` for 0-9, `k` for killed by a signal, anything else its value), then its
/// stdout, then, after a `\x1f`, its stderr. For HTTP the status byte is `0` for 200,
/// `4` for 404, `5` for 500, anything else 100 plus its value.
pub struct Input<'a> {
    pub op: u8,
    pub arg: String,
    pub replies: Vec<&'a [u8]>,
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let (&op, rest) = data.split_first()?;
        let mut parts = rest.split(|&b| b == 0x1e);
        let arg = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        Some(Input {
            op,
            arg,
            replies: parts.collect(),
        })
    }

    /// The argument as ids (white space or commas between them), at most 16.
    pub fn ids(&self) -> Vec<String> {
        self.arg
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .take(16)
            .map(str::to_string)
            .collect()
    }

    /// The first reply's stdout as text (what a parser called directly gets).
    pub fn text(&self) -> String {
        self.replies
            .first()
            .map(|r| split_reply(r).1)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default()
    }

    /// A backend that answers with these replies, in order.
    pub fn backend(&self) -> Replay<'a> {
        Replay::new(self.replies.clone())
    }
}

fn split_reply(r: &[u8]) -> (u8, &[u8], &[u8]) {
    let Some((&status, rest)) = r.split_first() else {
        return (b'0', &[], &[]);
    };
    match rest.iter().position(|&b| b == 0x1f) {
        Some(at) => (status, &rest[..at], &rest[at + 1..]),
        None => (status, rest, &[]),
    }
}

/// Builds one reply of a plugin target's input (for seeds).
pub fn reply(status: u8, stdout: &str, stderr: &str) -> Vec<u8> {
    let mut r = vec![status];
    r.extend_from_slice(stdout.as_bytes());
    if !stderr.is_empty() {
        r.push(0x1f);
        r.extend_from_slice(stderr.as_bytes());
    }
    r
}

/// Builds a plugin target's input (for seeds).
pub fn input(op: u8, arg: &str, replies: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![op];
    out.extend_from_slice(arg.as_bytes());
    for r in replies {
        out.push(0x1e);
        out.extend_from_slice(r);
    }
    out
}

/// A [`Backend`] whose programs and HTTP requests answer with the fuzz input's
/// replies in order; once they are used up, programs exit 1 with nothing printed and
/// requests fail, as a host whose scheduler went away would answer.
pub struct Replay<'a> {
    replies: Vec<&'a [u8]>,
    next: Cell<usize>,
    /// How many programs and requests the plugin made.
    pub calls: Cell<usize>,
    pub logged: RefCell<usize>,
}

impl<'a> Replay<'a> {
    pub fn new(replies: Vec<&'a [u8]>) -> Self {
        Replay {
            replies,
            next: Cell::new(0),
            calls: Cell::new(0),
            logged: RefCell::new(0),
        }
    }

    fn take(&self) -> Option<(u8, &'a [u8], &'a [u8])> {
        self.calls.set(self.calls.get() + 1);
        // A plugin call makes a bounded number of calls: never a loop on output.
        assert!(self.calls.get() < 1000, "a plugin call made 1000 calls");
        let i = self.next.get();
        let r = self.replies.get(i)?;
        self.next.set(i + 1);
        Some(split_reply(r))
    }
}

impl Backend for Replay<'_> {
    fn run(&self, _cmd: &Command) -> Result<Output, Error> {
        let Some((status, stdout, stderr)) = self.take() else {
            return Ok(Output {
                status: Some(1),
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
            });
        };
        let status = match status {
            b'0'..=b'9' => Some(i32::from(status - b'0')),
            b'k' => None,
            s => Some(i32::from(s)),
        };
        Ok(Output {
            status,
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            truncated: false,
        })
    }

    fn send(&self, _req: &Request) -> Result<Response, Error> {
        let Some((status, body, _)) = self.take() else {
            return Err(Error::Backend("fuzz: connection refused".into()));
        };
        let status = match status {
            b'0' => 200,
            b'4' => 404,
            b'5' => 500,
            s => 100 + u16::from(s),
        };
        Ok(Response {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
        })
    }

    fn config(&self, key: &str) -> Option<String> {
        (key == "dashboard").then(|| "http://127.0.0.1:8265".to_string())
    }

    fn log(&self, _level: Level, _message: &str) {
        *self.logged.borrow_mut() += 1;
    }

    fn now_ms(&self) -> u64 {
        1_764_633_600_000
    }
}

/// What every plugin's `status` promises (`corral_plugin_sdk::status`): one status per
/// unique id, in the order asked.
pub fn check_statuses(ids: &[String], got: &[corral_plugin_sdk::JobStatus]) {
    let unique = corral_plugin_sdk::unique_ids(ids.to_vec(), |_| Ok(())).expect("no check");
    let got_ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(got_ids, unique, "status answered for other ids than asked");
}

/// The exports a plugin target drives with a [`Replay`] backend, by operation byte:
/// `0` status of the argument's ids, `1` list, `2` node-state of the argument, `3`
/// cancel, `4` logs; anything else is the target's own (`None`). Checked: nothing
/// panics, `status` keeps its promise ([`check_statuses`]), and `logs` answers at most
/// what was asked for (up to the replacement characters of invalid UTF-8).
pub fn drive<P: corral_plugin_sdk::Scheduler>(inp: &Input) -> Option<()> {
    let b = inp.backend();
    match inp.op % 16 {
        0 => {
            let ids = inp.ids();
            if let Ok(got) = P::status(&b, ids.clone()) {
                check_statuses(&ids, &got);
            }
        }
        1 => {
            let _ = P::list(&b);
        }
        2 => {
            let _ = P::node_state(&b, inp.arg.clone());
        }
        3 => {
            let _ = P::cancel(&b, inp.arg.clone());
        }
        4 => {
            let max = 64;
            if let Ok(text) = P::logs(&b, inp.arg.clone(), max) {
                assert!(
                    text.len() <= 3 * max as usize,
                    "logs answered {} bytes",
                    text.len()
                );
            }
        }
        _ => return None,
    }
    Some(())
}

/// Every allocation of every target goes through here: one larger than
/// [`MAX_ALLOCATION`] is a finding (a length read from input and trusted), reported as
/// a crash with its size. libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc
/// hooks, which a stable build has not.
pub struct Bounded;

/// Far above anything a 64 KiB frame, a config file or a scheduler's output for a few
/// jobs needs.
pub const MAX_ALLOCATION: usize = 256 << 20;

unsafe impl std::alloc::GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // No panic (it would allocate, and unwinding out of an allocator is not
        // allowed): a message, then abort, which libFuzzer reports as a crash.
        let msg = b"corral-fuzz: an allocation over MAX_ALLOCATION (256 MiB)\n";
        // SAFETY: writes a static buffer to stderr.
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;
