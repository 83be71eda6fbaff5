//! A scripted [`Backend`] for native unit tests of plugin logic.
//!
//! Program runs and HTTP requests are answered in the order they were scripted, and
//! everything asked is recorded for assertions. A call the script did not expect (the
//! wrong program, or one too many) panics with what was asked: in a test that is the
//! failure to report. Nothing here reaches a real program or network.

use std::cell::RefCell;
use std::collections::VecDeque;

use crate::{Backend, Command, Error, Level, Output, Request, Response};

enum Step {
    Run {
        program: String,
        reply: Result<Output, Error>,
    },
    Http {
        reply: Result<Response, Error>,
    },
}

/// One call a plugin made, in order.
#[derive(Debug, Clone)]
pub enum Call {
    Run(Command),
    Http(Request),
}

#[derive(Default)]
pub struct Script {
    steps: RefCell<VecDeque<Step>>,
    calls: RefCell<Vec<Call>>,
    logs: RefCell<Vec<String>>,
    config: Vec<(String, String)>,
    /// What the plugin slept (`Backend::sleep_ms`): the clock moves by it.
    slept: std::cell::Cell<u64>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    /// Expects a run of `program`, which exits with `status` printing `stdout`/`stderr`.
    pub fn run(self, program: &str, status: i32, stdout: &str, stderr: &str) -> Script {
        self.push(Step::Run {
            program: program.into(),
            reply: Ok(Output {
                status: Some(status),
                stdout: stdout.as_bytes().to_vec(),
                stderr: stderr.as_bytes().to_vec(),
                truncated: false,
            }),
        })
    }

    /// Expects a run of `program` that succeeds printing `stdout`.
    pub fn ok(self, program: &str, stdout: &str) -> Script {
        self.run(program, 0, stdout, "")
    }

    /// Expects a run of `program` that the host refuses or cannot do.
    pub fn run_err(self, program: &str, e: Error) -> Script {
        self.push(Step::Run {
            program: program.into(),
            reply: Err(e),
        })
    }

    /// Expects an HTTP request, answered with `status` and `body`.
    pub fn http(self, status: u16, body: &str) -> Script {
        self.push(Step::Http {
            reply: Ok(Response {
                status,
                headers: Vec::new(),
                body: body.as_bytes().to_vec(),
            }),
        })
    }

    /// Expects an HTTP request, answered with `status`, `headers` (a rate limit's, say)
    /// and `body`.
    pub fn http_with(self, status: u16, headers: &[(&str, &str)], body: &str) -> Script {
        self.push(Step::Http {
            reply: Ok(Response {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.as_bytes().to_vec(),
            }),
        })
    }

    pub fn http_err(self, e: Error) -> Script {
        self.push(Step::Http { reply: Err(e) })
    }

    pub fn config(mut self, key: &str, value: &str) -> Script {
        self.config.push((key.into(), value.into()));
        self
    }

    fn push(self, s: Step) -> Script {
        self.steps.borrow_mut().push_back(s);
        self
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The programs run, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Run(c) => Some(c),
                Call::Http(_) => None,
            })
            .collect()
    }

    /// The HTTP requests sent, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Http(r) => Some(r),
                Call::Run(_) => None,
            })
            .collect()
    }

    /// What the plugin logged, as `level: message`.
    /// How long the plugin slept, in ms.
    pub fn slept_ms(&self) -> u64 {
        self.slept.get()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.borrow().clone()
    }

    /// Panics unless every scripted step was used.
    pub fn assert_done(&self) {
        let left = self.steps.borrow().len();
        assert_eq!(
            left,
            0,
            "{left} scripted steps were not used; calls made: {:#?}",
            self.calls()
        );
    }
}

impl Backend for Script {
    fn run(&self, cmd: &Command) -> Result<Output, Error> {
        self.calls.borrow_mut().push(Call::Run(cmd.clone()));
        match self.steps.borrow_mut().pop_front() {
            Some(Step::Run { program, reply }) if program == cmd.program => reply,
            Some(Step::Run { program, .. }) => {
                panic!(
                    "expected a run of {program}, the plugin ran {}",
                    cmd.display()
                )
            }
            Some(Step::Http { .. }) => {
                panic!("expected an HTTP request, the plugin ran {}", cmd.display())
            }
            None => panic!("unscripted run: {}", cmd.display()),
        }
    }

    fn send(&self, req: &Request) -> Result<Response, Error> {
        self.calls.borrow_mut().push(Call::Http(req.clone()));
        match self.steps.borrow_mut().pop_front() {
            Some(Step::Http { reply }) => reply,
            Some(Step::Run { program, .. }) => {
                panic!(
                    "expected a run of {program}, the plugin sent {} {}",
                    req.method, req.url
                )
            }
            None => panic!("unscripted request: {} {}", req.method, req.url),
        }
    }

    fn config(&self, key: &str) -> Option<String> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push(format!("{level:?}: {message}"));
    }

    /// 1,700,000,000,000 ms, and later by whatever the plugin slept.
    fn now_ms(&self) -> u64 {
        1_700_000_000_000 + self.slept.get()
    }

    fn sleep_ms(&self, ms: u32) {
        self.slept.set(self.slept.get() + u64::from(ms));
    }
}
