//! Helpers shared by corral's unit and integration tests. Not part of the public API.
//!
//! Invariant: a test that writes an executable must not make another test's `exec` of it
//! fail. Writing it from this process races with concurrent `fork`s in other test threads:
//! a child forked while the file is open for writing keeps that descriptor until it
//! `exec`s, and Linux refuses to run a file open for writing (`ETXTBSY`, "Text file
//! busy"). So the file is written by a short-lived `sh`, whose descriptors no thread of
//! ours can inherit.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes `#!/bin/sh` followed by `body` to `path` and makes it executable (0755).
pub fn write_script(path: &Path, body: &str) {
    write_executable(path, &format!("#!/bin/sh\n{body}\n"));
}

/// Writes `contents` to `path` and makes it executable (0755), safe against `ETXTBSY`.
pub fn write_executable(path: &Path, contents: &str) {
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run sh to write a test executable");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(contents.as_bytes())
        .expect("write test executable");
    let status = child.wait().expect("wait for sh");
    assert!(status.success(), "writing {} failed", path.display());
}
