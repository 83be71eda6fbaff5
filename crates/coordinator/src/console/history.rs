//! The console's chart history: the last hour of each node's CPU and memory and each
//! GPU's utilization, memory, temperature and power, at one point a minute.
//!
//! Invariants:
//! - Bounded: [`POINTS`] one-minute slots per series, one byte per slot (two for
//!   power; an empty slot is a sentinel value, not an `Option`), at most [`MAX_GPUS`]
//!   GPUs per node; a node or GPU not heard from for the whole window is forgotten
//!   ([`History::prune`]). A GPU's four series take 300 bytes and a node's two 120, so
//!   10,000 nodes with 8 GPUs each hold about 30 MB with the maps' overhead
//!   (the test `a_node_with_8_gpus_holds_under_3_5_kb` keeps it so).
//! - Time is the coordinator's (when the report arrived), not the agent's: a node with
//!   a wrong clock still charts now.
//! - A slot is the mean of the reports received in its minute; a minute without a
//!   report is `None`, never a repeated or interpolated value.
//! - GPUs are kept by UUID, so a GPU that falls off the bus and returns under another
//!   index keeps its history.
//!
//! Trade-off: minutes, not seconds. Longer or finer history is Prometheus's job (the
//! shipped Grafana dashboard reads `/metrics`); the console's charts answer "what was
//! this node doing in the last hour" without a second system.

use std::collections::HashMap;
use std::sync::Mutex;

use corral_proto::api::{GpuHistory, NodeHistory};
use corral_proto::model::{whole_percent as percent, NodeReport};

/// Slots per series: one hour.
pub(crate) const POINTS: usize = 60;
/// Seconds per slot.
pub(crate) const STEP_S: u64 = 60;
/// GPUs kept per node (a report is already capped lower, see `bounds`).
const MAX_GPUS: usize = 64;

/// A slot's value type, with the value that means "no report that minute" (never a
/// reading: percentages and temperatures are clamped below it).
trait Slot: Copy + PartialEq + Into<u32> + TryFrom<u32> {
    const NONE: Self;
}

impl Slot for u8 {
    const NONE: u8 = u8::MAX;
}

impl Slot for u16 {
    const NONE: u16 = u16::MAX;
}

/// One series: a ring of slots plus the running mean of the current minute.
#[derive(Clone)]
struct Series<T> {
    slots: [T; POINTS],
    sum: u32,
    n: u16,
}

fn slot(minute: u64) -> usize {
    (minute % POINTS as u64) as usize
}

impl<T: Slot> Series<T> {
    fn new() -> Self {
        Series {
            slots: [T::NONE; POINTS],
            sum: 0,
            n: 0,
        }
    }

    /// Clears the slots of the minutes `from..to` (exclusive of `from`, which is the
    /// last minute written): they had no report.
    fn skip(&mut self, from: u64, to: u64) {
        for m in (from + 1..to).take(POINTS) {
            self.slots[slot(m)] = T::NONE;
        }
    }

    fn record(&mut self, minute: u64, new_minute: bool, value: Option<T>) {
        if new_minute {
            self.sum = 0;
            self.n = 0;
            self.slots[slot(minute)] = T::NONE;
        }
        let Some(v) = value.filter(|v| *v != T::NONE) else {
            return;
        };
        self.sum = self.sum.saturating_add(v.into());
        self.n = self.n.saturating_add(1);
        let mean = (self.sum + u32::from(self.n) / 2) / u32::from(self.n);
        self.slots[slot(minute)] = T::try_from(mean).unwrap_or(T::NONE);
    }

    /// Oldest first, ending with `minute`.
    fn window(&self, last_written: u64, minute: u64) -> Vec<Option<T>> {
        (0..POINTS as u64)
            .map(|back| {
                let m = minute.wrapping_sub(POINTS as u64 - 1 - back);
                if m > last_written || last_written - m >= POINTS as u64 {
                    None
                } else {
                    Some(self.slots[slot(m)]).filter(|v| *v != T::NONE)
                }
            })
            .collect()
    }
}

struct GpuSeries {
    uuid: String,
    index: u32,
    last_minute: u64,
    util: Series<u8>,
    mem: Series<u8>,
    temp: Series<u8>,
    power: Series<u16>,
}

struct NodeSeries {
    /// The minute (Unix time / 60) of the newest report.
    last_minute: u64,
    cpu: Series<u8>,
    mem: Series<u8>,
    gpus: Vec<GpuSeries>,
}

/// The readings of one report that the history keeps, taken before the report is
/// handed to the registry.
pub(crate) struct Point {
    at_ms: u64,
    cpu: Option<u8>,
    mem: Option<u8>,
    gpus: Vec<GpuPoint>,
}

struct GpuPoint {
    uuid: String,
    index: u32,
    util: Option<u8>,
    mem: Option<u8>,
    temp: Option<u8>,
    power: Option<u16>,
}

impl Point {
    /// The readings of `report`, which arrived at `at_ms` (the coordinator's clock).
    pub(crate) fn of(report: &NodeReport, at_ms: u64) -> Point {
        let host = &report.host;
        Point {
            at_ms,
            cpu: Some(host.cpu_percent.clamp(0.0, 100.0).round() as u8),
            mem: percent(host.memory.used_bytes, host.memory.total_bytes),
            gpus: report
                .gpus
                .iter()
                .filter(|g| g.parent_uuid.is_none() && g.lost.is_none())
                .take(MAX_GPUS)
                .map(|g| GpuPoint {
                    uuid: g.uuid.clone(),
                    index: g.index,
                    util: g.utilization_percent.map(|u| u.min(100) as u8),
                    mem: match (g.memory_used_bytes, g.memory_total_bytes) {
                        (Some(u), Some(t)) => percent(u, t),
                        _ => None,
                    },
                    temp: g.temperature_celsius.map(|t| t.min(254) as u8),
                    power: g.power_watts.map(|w| w.clamp(0.0, 65_534.0).round() as u16),
                })
                .collect(),
        }
    }
}

/// Every node's last hour.
pub(crate) struct History {
    nodes: Mutex<HashMap<String, NodeSeries>>,
}

impl History {
    pub(crate) fn new() -> History {
        History {
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeSeries>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one report's readings. A report older than the node's newest minute (a
    /// clock step back) is dropped rather than rewriting the past.
    pub(crate) fn record(&self, node: &str, p: Point) {
        let minute = p.at_ms / 1000 / STEP_S;
        let mut nodes = self.lock();
        let mut created = false;
        let n = nodes.entry(node.to_string()).or_insert_with(|| {
            created = true;
            NodeSeries {
                last_minute: minute,
                cpu: Series::new(),
                mem: Series::new(),
                gpus: vec![],
            }
        });
        if minute < n.last_minute {
            return;
        }
        let new_minute = created || minute != n.last_minute;
        if minute > n.last_minute {
            n.cpu.skip(n.last_minute, minute);
            n.mem.skip(n.last_minute, minute);
        }
        n.cpu.record(minute, new_minute, p.cpu);
        n.mem.record(minute, new_minute, p.mem);
        for g in p.gpus {
            let (s, fresh) = match n.gpus.iter_mut().position(|s| s.uuid == g.uuid) {
                Some(i) => {
                    let fresh = minute != n.gpus[i].last_minute;
                    (&mut n.gpus[i], fresh)
                }
                None => {
                    if n.gpus.len() >= MAX_GPUS {
                        continue;
                    }
                    n.gpus.push(GpuSeries {
                        uuid: g.uuid.clone(),
                        index: g.index,
                        last_minute: minute,
                        util: Series::new(),
                        mem: Series::new(),
                        temp: Series::new(),
                        power: Series::new(),
                    });
                    (n.gpus.last_mut().expect("just pushed"), true)
                }
            };
            if minute > s.last_minute {
                s.util.skip(s.last_minute, minute);
                s.mem.skip(s.last_minute, minute);
                s.temp.skip(s.last_minute, minute);
                s.power.skip(s.last_minute, minute);
            }
            s.index = g.index;
            s.last_minute = minute;
            s.util.record(minute, fresh, g.util);
            s.mem.record(minute, fresh, g.mem);
            s.temp.record(minute, fresh, g.temp);
            s.power.record(minute, fresh, g.power);
        }
        n.last_minute = minute;
        n.gpus.sort_by_key(|g| g.index);
    }

    /// The last hour of `node`, ending at `now_ms`'s minute; `None` if nothing was
    /// recorded of it in that hour.
    pub(crate) fn of(&self, node: &str, now_ms: u64) -> Option<NodeHistory> {
        let minute = now_ms / 1000 / STEP_S;
        let nodes = self.lock();
        let n = nodes.get(node)?;
        let live = |last: u64| minute.saturating_sub(last) < POINTS as u64;
        Some(NodeHistory {
            node: node.to_string(),
            step_s: STEP_S as u32,
            end_ms: (minute + 1) * STEP_S * 1000,
            cpu: n.cpu.window(n.last_minute, minute),
            mem: n.mem.window(n.last_minute, minute),
            gpus: n
                .gpus
                .iter()
                .filter(|g| live(g.last_minute))
                .map(|g| GpuHistory {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    util: g.util.window(g.last_minute, minute),
                    mem: g.mem.window(g.last_minute, minute),
                    temp: g.temp.window(g.last_minute, minute),
                    power: g.power.window(g.last_minute, minute),
                })
                .collect(),
        })
    }

    /// Forgets nodes and GPUs with nothing in the window ending at `now_ms`.
    pub(crate) fn prune(&self, now_ms: u64) {
        let minute = now_ms / 1000 / STEP_S;
        let live = |last: u64| minute.saturating_sub(last) < POINTS as u64;
        let mut nodes = self.lock();
        nodes.retain(|_, n| live(n.last_minute));
        for n in nodes.values_mut() {
            n.gpus.retain(|g| live(g.last_minute));
        }
    }

    /// Nodes with history.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::model::{GpuSample, HostSample, Memory};

    const MIN: u64 = 60_000;

    fn report(cpu: f32, gpu_util: Option<u32>) -> NodeReport {
        NodeReport {
            node: "n1".into(),
            host: HostSample {
                cpu_percent: cpu,
                memory: Memory {
                    total_bytes: 100,
                    used_bytes: 25,
                    ..Default::default()
                },
                ..Default::default()
            },
            gpus: gpu_util
                .map(|u| {
                    vec![GpuSample {
                        index: 0,
                        uuid: "GPU-a".into(),
                        utilization_percent: Some(u),
                        temperature_celsius: Some(70),
                        power_watts: Some(301.4),
                        ..Default::default()
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minute_holds_the_mean_of_its_reports_and_a_silent_minute_is_empty() {
        let h = History::new();
        let t0 = 1_000 * MIN;
        h.record("n1", Point::of(&report(10.0, Some(40)), t0));
        h.record("n1", Point::of(&report(30.0, Some(60)), t0 + 20_000));
        // Nothing in minute 1001; minute 1002 has one report.
        h.record("n1", Point::of(&report(90.0, Some(100)), t0 + 2 * MIN));
        let v = h.of("n1", t0 + 2 * MIN + 5_000).unwrap();
        assert_eq!(v.cpu.len(), POINTS);
        assert_eq!(&v.cpu[POINTS - 3..], &[Some(20), None, Some(90)]);
        assert_eq!(v.mem[POINTS - 1], Some(25));
        assert!(v.cpu[..POINTS - 3].iter().all(Option::is_none));
        let g = &v.gpus[0];
        assert_eq!(&g.util[POINTS - 3..], &[Some(50), None, Some(100)]);
        assert_eq!(g.power[POINTS - 1], Some(301));
        assert_eq!(g.temp[POINTS - 1], Some(70));
    }

    #[test]
    fn the_window_slides_and_an_hour_of_silence_forgets_the_node() {
        let h = History::new();
        let t0 = 5_000 * MIN;
        for m in 0..90 {
            h.record("n1", Point::of(&report(m as f32, None), t0 + m * MIN));
        }
        let v = h.of("n1", t0 + 89 * MIN).unwrap();
        // Minutes 30..=89, oldest first.
        assert_eq!(v.cpu[0], Some(30));
        assert_eq!(v.cpu[POINTS - 1], Some(89));
        // Ten minutes later the last ten slots are empty, the rest shifted.
        let later = h.of("n1", t0 + 99 * MIN).unwrap();
        assert_eq!(later.cpu[POINTS - 11], Some(89));
        assert!(later.cpu[POINTS - 10..].iter().all(Option::is_none));
        h.prune(t0 + 89 * MIN + 59 * MIN);
        assert_eq!(h.len(), 1);
        h.prune(t0 + 89 * MIN + 60 * MIN);
        assert_eq!(h.len(), 0);
        assert!(h.of("n1", t0 + 200 * MIN).is_none());
    }

    #[test]
    fn a_node_with_8_gpus_holds_under_3_5_kb() {
        let gpu =
            std::mem::size_of::<GpuSeries>() + "GPU-00000000-0000-0000-0000-000000000000".len();
        let node = std::mem::size_of::<NodeSeries>() + 8 * gpu;
        assert!(node < 3_500, "{node} bytes");
    }

    #[test]
    fn a_report_from_before_the_newest_minute_changes_nothing() {
        let h = History::new();
        let t0 = 7_000 * MIN;
        h.record("n1", Point::of(&report(50.0, None), t0));
        h.record("n1", Point::of(&report(99.0, None), t0 - 3 * MIN));
        let v = h.of("n1", t0).unwrap();
        assert_eq!(v.cpu[POINTS - 1], Some(50));
        assert_eq!(v.cpu[POINTS - 4], None);
    }
}
