//! Where GPU readings come from: NVML on NVIDIA nodes, nothing elsewhere, a script in
//! tests and benchmarks. All behind [`GpuSource`], which later grows ECC, XID events,
//! throttle reasons, PCIe and NVLink without touching its callers.
//!
//! Invariants and trade-offs:
//! - A node without an NVIDIA driver is a normal node with zero GPUs, not a failing one:
//!   with `backend = "auto"` a missing `libnvidia-ml.so.1` (or a driver that is not
//!   loaded) selects [`NoGpus`] and logs once at info. Only `backend = "nvml"` turns a
//!   missing driver into a start-up error.
//! - A driver that is present but refuses to initialise (permissions, a library/kernel
//!   version mismatch after an upgrade) is a GPU *fault*, not an absence: [`open`] still
//!   returns an NVML source, which retries initialisation on every sample and reports the
//!   failure as an error until it succeeds, so the node shows up degraded with the reason
//!   instead of silently having no GPUs.
//! - A reading a device does not support (NVML `NotSupported`, `NoData`, a symbol the
//!   installed driver lacks, ...) is `None`, never an error and never zero. Any other
//!   failure of any device fails the whole sample: a GPU that fell off the bus must be
//!   loud, and a partial list would look like a node with fewer GPUs.
//! - NVML is loaded at run time by `nvml-wrapper` (libloading), so the agent binary runs
//!   on machines without the driver.
//! - Every call is blocking; NVML calls can take milliseconds per device.

use std::fs;
use std::path::{Path, PathBuf};

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use super::health::ConfigIssue;
use crate::model::GpuSample;

/// A provider of GPU readings.
pub trait GpuSource: Send {
    /// Short name for logs and diagnostics (`nvml`, `none`, `fake`).
    fn name(&self) -> &'static str;
    /// Reads every GPU, in index order. An error means the GPUs could not be read at all.
    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError>;
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "gpu.backend = \"nvml\" but NVML cannot be loaded ({cause}); \
         is the NVIDIA driver installed and loaded, with libnvidia-ml.so.1 on the library path?"
    )]
    NvmlMissing { cause: NvmlError },
    #[error("NVML failed to initialise: {cause}")]
    NvmlInit { cause: NvmlError },
    #[error("NVML {call} failed: {cause}")]
    Nvml {
        call: &'static str,
        cause: NvmlError,
    },
    #[error("GPU {index}: NVML {call} failed: {cause}")]
    NvmlDevice {
        index: u32,
        call: &'static str,
        cause: NvmlError,
    },
    #[error("gpu.backend = \"fake\" requires gpu.fake_script")]
    FakeScriptMissing,
    #[error("cannot read fake GPU script {path}: {cause}")]
    FakeScriptRead {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("fake GPU script {path} is invalid: {cause}")]
    FakeScriptInvalid {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("cannot write fake GPU script {path}: {cause}")]
    FakeScriptWrite {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// An error step of a fake script.
    #[error("{0}")]
    Scripted(String),
}

/// The `[gpu]` table of the agent configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GpuConfig {
    #[serde(default)]
    pub backend: GpuBackend,
    /// JSON script for `backend = "fake"` (see [`FakeScript`]).
    #[serde(default)]
    pub fake_script: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackend {
    /// NVML when the driver is there, otherwise no GPUs.
    #[default]
    Auto,
    /// NVML, and refuse to start without it.
    Nvml,
    /// Never look for GPUs.
    None,
    /// Replay `fake_script`.
    Fake,
}

impl GpuConfig {
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        match (self.backend, &self.fake_script) {
            (GpuBackend::Fake, None) => Err(ConfigIssue::new(
                "gpu.fake_script",
                "required when gpu.backend = \"fake\"",
            )),
            (GpuBackend::Auto | GpuBackend::Nvml | GpuBackend::None, Some(_)) => {
                Err(ConfigIssue::new(
                    "gpu.fake_script",
                    "only used when gpu.backend = \"fake\"; remove it or set the backend",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Opens the source `cfg` asks for (see the module doc for what `auto` does).
pub fn open(cfg: &GpuConfig) -> Result<Box<dyn GpuSource>, GpuError> {
    match cfg.backend {
        GpuBackend::None => Ok(Box::new(NoGpus)),
        GpuBackend::Fake => {
            let path = cfg
                .fake_script
                .as_deref()
                .ok_or(GpuError::FakeScriptMissing)?;
            Ok(Box::new(FakeGpuSource::load(path)?))
        }
        GpuBackend::Nvml => match Nvml::init() {
            Ok(nvml) => Ok(Box::new(NvmlSource::ready(nvml))),
            Err(cause) if driver_absent(&cause) => Err(GpuError::NvmlMissing { cause }),
            Err(cause) => Ok(Box::new(NvmlSource::failing(cause))),
        },
        GpuBackend::Auto => match NvmlSource::open() {
            Ok(Some(source)) => Ok(Box::new(source)),
            Ok(None) => Ok(Box::new(NoGpus)),
            Err(GpuError::NvmlInit { cause }) => Ok(Box::new(NvmlSource::failing(cause))),
            Err(other) => Err(other),
        },
    }
}

/// Whether an `Nvml::init` failure means "this node has no NVIDIA driver".
fn driver_absent(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound | NvmlError::DriverNotLoaded
    )
}

/// Whether a per-field failure means "this device cannot give this reading".
fn unsupported(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported
            | NvmlError::NoData
            | NvmlError::NoPermission
            | NvmlError::FunctionNotFound
            | NvmlError::FailedToLoadSymbol(_)
    )
}

/// A reading that may be unsupported: `None` then, an error for any other failure.
fn optional<T>(
    index: u32,
    call: &'static str,
    r: Result<T, NvmlError>,
) -> Result<Option<T>, GpuError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(cause) => Err(GpuError::NvmlDevice { index, call, cause }),
    }
}

/// GPUs read through NVML.
pub struct NvmlSource {
    /// `None` while initialisation keeps failing; retried on every sample.
    nvml: Option<Nvml>,
    init_error: Option<String>,
}

impl NvmlSource {
    /// Initialises NVML. `Ok(None)` when the node has no NVIDIA driver; an error when the
    /// driver is there but NVML will not initialise.
    pub fn open() -> Result<Option<Self>, GpuError> {
        match Nvml::init() {
            Ok(nvml) => Ok(Some(Self::ready(nvml))),
            Err(e) if driver_absent(&e) => {
                tracing::info!(reason = %e, "no NVIDIA driver; this node reports zero GPUs");
                Ok(None)
            }
            Err(cause) => Err(GpuError::NvmlInit { cause }),
        }
    }

    fn ready(nvml: Nvml) -> Self {
        NvmlSource {
            nvml: Some(nvml),
            init_error: None,
        }
    }

    fn failing(cause: NvmlError) -> Self {
        tracing::warn!(error = %cause, "NVML failed to initialise; will retry on every sample");
        NvmlSource {
            nvml: None,
            init_error: Some(cause.to_string()),
        }
    }

    fn nvml(&mut self) -> Result<&Nvml, GpuError> {
        let nvml = match self.nvml.take() {
            Some(nvml) => nvml,
            None => {
                let nvml = Nvml::init().map_err(|cause| GpuError::NvmlInit { cause })?;
                tracing::info!(previous_error = ?self.init_error.take(), "NVML initialised");
                nvml
            }
        };
        Ok(self.nvml.insert(nvml))
    }
}

impl GpuSource for NvmlSource {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        let nvml = self.nvml()?;
        let count = nvml.device_count().map_err(|cause| GpuError::Nvml {
            call: "device_count",
            cause,
        })?;
        (0..count)
            .map(|index| {
                let device = nvml
                    .device_by_index(index)
                    .map_err(|cause| GpuError::NvmlDevice {
                        index,
                        call: "device_by_index",
                        cause,
                    })?;
                let memory = optional(index, "memory_info", device.memory_info())?;
                let utilization = optional(index, "utilization_rates", device.utilization_rates())?;
                Ok(GpuSample {
                    index,
                    uuid: optional(index, "uuid", device.uuid())?.unwrap_or_default(),
                    name: optional(index, "name", device.name())?.unwrap_or_default(),
                    memory_used_bytes: memory.as_ref().map(|m| m.used),
                    memory_total_bytes: memory.as_ref().map(|m| m.total),
                    utilization_percent: utilization.map(|u| u.gpu),
                    temperature_celsius: optional(
                        index,
                        "temperature",
                        device.temperature(TemperatureSensor::Gpu),
                    )?,
                    power_watts: optional(index, "power_usage", device.power_usage())?
                        .map(|milliwatts| f64::from(milliwatts) / 1000.0),
                })
            })
            .collect()
    }
}

/// A node without GPUs.
pub struct NoGpus;

impl GpuSource for NoGpus {
    fn name(&self) -> &'static str {
        "none"
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        Ok(Vec::new())
    }
}

/// One step of a fake script: `{"gpus": [...]}` or `{"error": "message"}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FakeStep {
    Gpus(Vec<GpuSample>),
    Error(String),
}

/// A fake GPU script: `{"steps": [{"gpus": [...]}, {"error": "..."}], "repeat_last": true}`.
/// With `repeat_last` (the default) the source stays on the last step once the script is
/// exhausted; without it the script starts over. A script without steps means no GPUs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FakeScript {
    pub steps: Vec<FakeStep>,
    #[serde(default = "yes")]
    pub repeat_last: bool,
}

fn yes() -> bool {
    true
}

/// Replays a [`FakeScript`], one step per sample.
#[derive(Debug, Clone)]
pub struct FakeGpuSource {
    script: FakeScript,
    next: usize,
}

impl FakeGpuSource {
    pub fn new(script: FakeScript) -> Self {
        FakeGpuSource { script, next: 0 }
    }

    /// Reads a JSON script from `path`.
    pub fn load(path: &Path) -> Result<Self, GpuError> {
        let text = fs::read_to_string(path).map_err(|cause| GpuError::FakeScriptRead {
            path: path.to_path_buf(),
            cause,
        })?;
        let script = serde_json::from_str(&text).map_err(|cause| GpuError::FakeScriptInvalid {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(Self::new(script))
    }

    /// Writes this source's script as JSON, for an agent started with
    /// `gpu.fake_script` pointing at `path`.
    pub fn write_script(&self, path: &Path) -> Result<(), GpuError> {
        serde_json::to_vec_pretty(&self.script)
            .map_err(std::io::Error::other)
            .and_then(|json| fs::write(path, json))
            .map_err(|cause| GpuError::FakeScriptWrite {
                path: path.to_path_buf(),
                cause,
            })
    }

    /// `n` healthy, plausible GPUs (80 GB cards, a quarter used, 40 °C) on every sample,
    /// for benchmarks and load tests.
    pub fn uniform(n: u32) -> Self {
        const TOTAL: u64 = 80 * 1_000_000_000;
        let gpus = (0..n)
            .map(|index| GpuSample {
                index,
                uuid: format!("GPU-fa4e0000-0000-0000-0000-{index:012x}"),
                name: "Fake H100 80GB".into(),
                memory_used_bytes: Some(TOTAL / 4),
                memory_total_bytes: Some(TOTAL),
                utilization_percent: Some(50),
                temperature_celsius: Some(40),
                power_watts: Some(250.0),
            })
            .collect();
        Self::new(FakeScript {
            steps: vec![FakeStep::Gpus(gpus)],
            repeat_last: true,
        })
    }
}

impl GpuSource for FakeGpuSource {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        let steps = &self.script.steps;
        let Some(step) = steps.get(self.next) else {
            return Ok(Vec::new());
        };
        self.next = match self.next + 1 {
            n if n < steps.len() => n,
            _ if self.script.repeat_last => self.next,
            _ => 0,
        };
        match step {
            FakeStep::Gpus(gpus) => Ok(gpus.clone()),
            FakeStep::Error(message) => Err(GpuError::Scripted(message.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_file(json: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        fs::write(file.path(), json).expect("write script");
        file
    }

    fn outcome(r: Result<Vec<GpuSample>, GpuError>) -> Result<Vec<u32>, String> {
        r.map(|gpus| gpus.iter().map(|g| g.index).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn fake_source_steps_through_script_then_repeats_last() {
        let file = script_file(
            r#"{"steps": [
                {"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A"}]},
                {"error": "GPU 0: device fell off the bus"},
                {"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A"},
                          {"index": 1, "uuid": "GPU-b", "name": "B"}]}
            ], "repeat_last": true}"#,
        );
        let cfg = GpuConfig {
            backend: GpuBackend::Fake,
            fake_script: Some(file.path().to_path_buf()),
        };
        let mut source = open(&cfg).expect("fake source opens");
        assert_eq!(source.name(), "fake");
        let seen: Vec<_> = (0..5).map(|_| outcome(source.sample())).collect();
        assert_eq!(
            seen,
            [
                Ok(vec![0]),
                Err("GPU 0: device fell off the bus".to_string()),
                Ok(vec![0, 1]),
                Ok(vec![0, 1]),
                Ok(vec![0, 1]),
            ]
        );
    }

    #[test]
    fn written_script_replays_the_same_gpus() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let mut uniform = FakeGpuSource::uniform(3);
        uniform.write_script(file.path()).expect("written");
        let mut loaded = FakeGpuSource::load(file.path()).expect("loaded");
        assert_eq!(
            loaded.sample().expect("gpus"),
            uniform.sample().expect("gpus")
        );
    }

    #[test]
    fn fake_source_without_repeat_last_starts_over() {
        let mut source = FakeGpuSource::new(FakeScript {
            steps: vec![FakeStep::Gpus(vec![]), FakeStep::Error("x".into())],
            repeat_last: false,
        });
        let seen: Vec<_> = (0..4).map(|_| source.sample().is_ok()).collect();
        assert_eq!(seen, [true, false, true, false]);
    }

    #[test]
    fn empty_fake_script_means_no_gpus() {
        let mut source = FakeGpuSource::new(FakeScript {
            steps: vec![],
            repeat_last: true,
        });
        assert_eq!(source.sample().expect("no error"), vec![]);
    }

    #[test]
    fn unsupported_gpu_fields_are_absent_not_zero() {
        for e in [
            NvmlError::NotSupported,
            NvmlError::NoData,
            NvmlError::FunctionNotFound,
        ] {
            assert_eq!(optional::<u32>(0, "temperature", Err(e)).ok(), Some(None));
        }
        assert_eq!(optional(0, "temperature", Ok(0u32)).ok(), Some(Some(0)));
        let lost = optional::<u32>(3, "temperature", Err(NvmlError::GpuLost)).unwrap_err();
        assert!(
            lost.to_string()
                .starts_with("GPU 3: NVML temperature failed: device fell off the bus"),
            "{lost}"
        );

        // A scripted device without readings keeps them absent end to end.
        let file =
            script_file(r#"{"steps": [{"gpus": [{"index": 0, "uuid": "GPU-a", "name": "A"}]}]}"#);
        let gpus = FakeGpuSource::load(file.path())
            .expect("valid script")
            .sample()
            .expect("gpus");
        assert_eq!(gpus[0].temperature_celsius, None);
        assert_eq!(gpus[0].power_watts, None);
        assert_eq!(gpus[0].memory_total_bytes, None);
    }

    #[test]
    fn node_without_nvml_reports_zero_gpus_not_an_error() {
        let mut source = open(&GpuConfig {
            backend: GpuBackend::None,
            fake_script: None,
        })
        .expect("none backend opens");
        assert_eq!(source.name(), "none");
        assert_eq!(source.sample().expect("no error"), vec![]);
        // The classification `auto` relies on: a missing library is absence, not failure.
        assert!(driver_absent(&NvmlError::LibraryNotFound));
        assert!(driver_absent(&NvmlError::DriverNotLoaded));
        assert!(!driver_absent(&NvmlError::NoPermission));
    }

    #[test]
    fn auto_backend_opens_on_any_node() {
        // Without a driver this is NoGpus; with one it reads the real GPUs.
        let mut source = open(&GpuConfig::default()).expect("auto never fails to open");
        match source.name() {
            "none" => assert_eq!(source.sample().expect("no error"), vec![]),
            "nvml" => {
                for gpu in source.sample().expect("GPUs readable") {
                    assert!(!gpu.uuid.is_empty());
                    assert!(gpu.memory_total_bytes.unwrap_or(0) > 0, "{gpu:?}");
                }
            }
            other => panic!("unexpected source {other}"),
        }
    }

    #[test]
    fn uniform_fake_builds_n_distinct_gpus() {
        let gpus = FakeGpuSource::uniform(8).sample().expect("gpus");
        assert_eq!(gpus.len(), 8);
        let uuids: std::collections::BTreeSet<_> = gpus.iter().map(|g| &g.uuid).collect();
        assert_eq!(uuids.len(), 8);
    }

    #[test]
    fn fake_backend_without_script_is_rejected_with_key() {
        let cfg = GpuConfig {
            backend: GpuBackend::Fake,
            fake_script: None,
        };
        assert_eq!(cfg.validate().unwrap_err().key, "gpu.fake_script");
        assert!(matches!(open(&cfg), Err(GpuError::FakeScriptMissing)));
        let stray = GpuConfig {
            backend: GpuBackend::Auto,
            fake_script: Some("x.json".into()),
        };
        assert_eq!(stray.validate().unwrap_err().key, "gpu.fake_script");
    }

    #[test]
    fn invalid_fake_script_names_the_file() {
        let file = script_file(r#"{"steps": [{"gpu": []}]}"#);
        let e = FakeGpuSource::load(file.path()).unwrap_err();
        assert!(matches!(e, GpuError::FakeScriptInvalid { .. }));
        assert!(
            e.to_string().contains(&file.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn gpu_config_parses_lowercase_backend() {
        let cfg: GpuConfig = toml::from_str("backend = \"nvml\"").expect("valid");
        assert_eq!(cfg.backend, GpuBackend::Nvml);
        assert_eq!(
            toml::from_str::<GpuConfig>("").expect("valid"),
            GpuConfig::default()
        );
        assert!(toml::from_str::<GpuConfig>("backend = \"cuda\"").is_err());
    }
}
