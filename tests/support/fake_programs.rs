//! Fake scheduler programs for plugin tests: scripted per test and put where the plugin
//! host resolves granted programs, so a plugin runs end to end through the real host
//! (wasmtime, grants, argv, stdin, output limits, timeouts) with no scheduler installed.
//!
//! ```ignore
//! let fakes = Fakes::new();
//! fakes.install(&["qsub", "qstat", "qdel", "pbsnodes"]);
//! fakes.ok("qsub", "110.pbs-head\n").fail("qdel", 15001, "qdel: Unknown Job Id 9\n");
//! let host = fakes.host(&plugins_dir, "pbs");       // resolves programs on the fakes only
//! // ... host.call("pbs", PluginCall::Submit(spec)).await ...
//! assert_eq!(fakes.calls("qsub")[0].args, ["-S", "/bin/sh"]);
//! fakes.assert_done();                             // every scripted reply was used
//! ```
//!
//! Invariants:
//! - Each fake answers its scripted replies in order, one per run (exit status, stdout,
//!   stderr, any bytes). A run beyond its script exits 127 with `fake NAME: no reply
//!   scripted for run N` on stderr, which the plugin reports and the test sees.
//! - Every run is recorded: each argument exactly (NUL-separated on disk) and the stdin
//!   bytes ([`Fakes::calls`]). Runs of one fake are numbered under a lock (an atomic
//!   `mkdir`), so concurrent plugin calls cannot take the same reply.
//! - The fakes are written with `corral_base::testing::write_script`, which is safe
//!   against `ETXTBSY` while other test threads fork; replies are plain files the script
//!   `cat`s. Everything lives in one temporary folder, removed on drop.
//! - The test process's environment is never changed (other threads read it): the
//!   host gets the fakes' folder as its search path ([`Fakes::search_path`],
//!   `PluginHost::load_on_path`), and a child process gets it first on its `PATH`
//!   ([`Fakes::env_path`]). The fakes themselves run with the agent's environment, so
//!   the shell tools they use (`cat`, `mkdir`, `printf`) come from the real `PATH`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use corral_sandbox::plugins::{PluginHost, PluginsConfig};

/// One scripted answer of a fake program.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Reply {
    pub fn new(status: i32, stdout: &str, stderr: &str) -> Reply {
        Reply {
            status,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }
}

/// One recorded run of a fake program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub args: Vec<String>,
    pub stdin: Vec<u8>,
}

impl Call {
    pub fn stdin_text(&self) -> String {
        String::from_utf8_lossy(&self.stdin).into_owned()
    }
}

/// A folder of fake programs (see the module docs).
pub struct Fakes {
    dir: tempfile::TempDir,
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Default for Fakes {
    fn default() -> Self {
        Fakes::new()
    }
}

impl Fakes {
    pub fn new() -> Fakes {
        let dir = tempfile::tempdir().expect("a temporary folder for fake programs");
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Fakes { dir }
    }

    /// The folder holding the fake executables.
    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn state(&self, program: &str) -> PathBuf {
        self.dir.path().join("state").join(program)
    }

    /// Where the host should look programs up: the fakes only, so a real scheduler
    /// program on this machine is never run by mistake.
    pub fn search_path(&self) -> OsString {
        self.bin().into_os_string()
    }

    /// A `PATH` for a child process (`corral dev`, `corral plugin check`): the fakes
    /// first, then this process's `PATH`.
    pub fn env_path(&self) -> OsString {
        let rest = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.bin()];
        dirs.extend(std::env::split_paths(&rest));
        std::env::join_paths(dirs).expect("PATH entries without ':'")
    }

    /// Installs fakes for `programs` with no replies yet (a run fails until one is
    /// scripted); installing one twice keeps its script.
    pub fn install(&self, programs: &[&str]) -> &Self {
        for p in programs {
            self.ensure(p);
        }
        self
    }

    fn ensure(&self, program: &str) {
        assert!(
            !program.is_empty() && !program.contains(['/', '\'', '\0']),
            "{program:?} cannot name a fake program"
        );
        let state = self.state(program);
        if state.is_dir() {
            return;
        }
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("count"), "0\n").unwrap();
        let d = sh_quote(&state.to_string_lossy());
        let body = format!(
            r#"# A fake {program} (tests/support/fake_programs.rs): scripted replies, in order.
d={d}
while ! mkdir "$d/lock" 2>/dev/null; do sleep 0.01; done
n=$(( $(cat "$d/count") + 1 ))
echo "$n" > "$d/count"
rmdir "$d/lock"
mkdir "$d/call.$n"
for a in "$@"; do printf '%s\0' "$a"; done > "$d/call.$n/argv"
cat > "$d/call.$n/stdin"
r="$d/reply.$n"
if [ ! -e "$r.status" ]; then
    echo "fake {program}: no reply scripted for run $n" >&2
    exit 127
fi
cat "$r.stdout"
cat "$r.stderr" >&2
exit "$(cat "$r.status")""#
        );
        corral_base::testing::write_script(&self.bin().join(program), &body);
    }

    fn replies(&self, program: &str) -> usize {
        (1..)
            .take_while(|n| {
                self.state(program)
                    .join(format!("reply.{n}.status"))
                    .exists()
            })
            .count()
    }

    /// Scripts `program`'s next unscripted run to answer `reply`.
    pub fn reply(&self, program: &str, reply: Reply) -> &Self {
        self.ensure(program);
        let n = self.replies(program) + 1;
        let file = |part: &str| self.state(program).join(format!("reply.{n}.{part}"));
        std::fs::write(file("stdout"), &reply.stdout).unwrap();
        std::fs::write(file("stderr"), &reply.stderr).unwrap();
        // Written last: its presence is what makes the reply exist.
        std::fs::write(file("status"), reply.status.to_string()).unwrap();
        self
    }

    /// Scripts a run that succeeds printing `stdout`.
    pub fn ok(&self, program: &str, stdout: &str) -> &Self {
        self.reply(program, Reply::new(0, stdout, ""))
    }

    /// Scripts a run that exits `status` printing `stderr`.
    pub fn fail(&self, program: &str, status: i32, stderr: &str) -> &Self {
        self.reply(program, Reply::new(status, "", stderr))
    }

    /// `program`'s runs so far, in order.
    pub fn calls(&self, program: &str) -> Vec<Call> {
        let state = self.state(program);
        (1..)
            .map(|n| state.join(format!("call.{n}")))
            .take_while(|c| c.join("stdin").exists())
            .map(|c| {
                let argv = std::fs::read(c.join("argv")).unwrap_or_default();
                let mut args: Vec<String> = argv
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.pop(); // after the last NUL
                Call {
                    args,
                    stdin: std::fs::read(c.join("stdin")).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Fails naming each fake whose runs did not use exactly its scripted replies.
    pub fn assert_done(&self) {
        let mut wrong = Vec::new();
        for e in std::fs::read_dir(self.dir.path().join("state")).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let (scripted, ran) = (self.replies(&name), self.calls(&name).len());
            if scripted != ran {
                wrong.push(format!("{name}: {scripted} replies scripted, {ran} runs"));
            }
        }
        wrong.sort();
        assert!(wrong.is_empty(), "fake programs: {}", wrong.join("; "));
    }

    /// Loads plugin `name` from `plugins_dir` into a real host whose programs resolve
    /// on these fakes only; fails on a load failure or a load warning (a granted
    /// program without a fake).
    pub fn host(&self, plugins_dir: &Path, name: &str) -> PluginHost {
        let cfg = super::runs_as_runner(PluginsConfig {
            dir: Some(plugins_dir.to_path_buf()),
            enable: vec![name.to_string()],
            ..PluginsConfig::default()
        });
        let (host, failures) = PluginHost::load_on_path(&cfg, Some(&self.search_path()));
        assert!(failures.is_empty(), "{name} did not load: {failures:?}");
        let details = host.details();
        assert!(
            details[0].warnings.is_empty(),
            "{name} loaded with warnings (install a fake for each granted program): {:?}",
            details[0].warnings
        );
        host
    }
}
