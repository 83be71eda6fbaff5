//! Node pools: the machines provider plugins create for them (`wit/provider.wit`), as the
//! coordinator tracks them and the API shows them, and the join tokens new nodes bring.
//!
//! Invariant: these mirror the WIT records field for field where they come from one
//! (`ProviderInfo`, `Machine`, `MachineState`); the sandbox's provider host is the one
//! place the two meet.

use serde::{Deserialize, Serialize};

/// What a provider plugin says of itself (`provider.info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderInfo {
    pub name: String,
    pub version: String,
    /// What it drives, for people ("Hetzner Cloud").
    pub provider: String,
    /// Machines are billed by the started hour.
    pub hourly_billing: bool,
}

/// A machine's state in portable words (`machine-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Pending,
    Running,
    Stopping,
    Off,
    Deleting,
    Failed,
    Unknown,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Pending => "pending",
            MachineState::Running => "running",
            MachineState::Stopping => "stopping",
            MachineState::Off => "off",
            MachineState::Deleting => "deleting",
            MachineState::Failed => "failed",
            MachineState::Unknown => "unknown",
        }
    }
}

/// One machine as its provider lists it (`machine`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The provider's id.
    pub id: String,
    /// The corral node name it was created for.
    pub node: String,
    pub state: MachineState,
    pub native_state: String,
    pub created_ms: Option<u64>,
    pub message: Option<String>,
}

/// Where a pool node is in its life, as the coordinator's pool policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolNodePhase {
    /// `create` is running.
    Creating,
    /// Created; its agent has not joined yet.
    Joining,
    /// Its agent joined and is connected.
    Member,
    /// Chosen for deletion: being drained first.
    Draining,
    /// `delete` is running (or being retried).
    Deleting,
}

impl PoolNodePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolNodePhase::Creating => "creating",
            PoolNodePhase::Joining => "joining",
            PoolNodePhase::Member => "member",
            PoolNodePhase::Draining => "draining",
            PoolNodePhase::Deleting => "deleting",
        }
    }
}

/// One node of a pool (`GET /api/v1/pools/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolNodeView {
    /// The corral node name assigned at creation.
    pub node: String,
    /// The provider's id, once `create` returned it.
    pub provider_id: Option<String>,
    pub phase: PoolNodePhase,
    /// The provider's last word on it (from `list`), if any.
    pub machine: Option<Machine>,
    /// The node's liveness as the coordinator sees it (`alive`, `down`, ...), once joined.
    pub liveness: Option<String>,
    pub created_ms: u64,
    /// When it joined (its first connection).
    pub joined_ms: Option<u64>,
    /// Why it is being replaced or deleted, when it is.
    pub reason: Option<String>,
}

/// One thing the pool policy did or tried (`create`, `delete`, `drain`, `replace`...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolAction {
    pub at_ms: u64,
    pub action: String,
    pub node: Option<String>,
    /// `ok`, `failed`, `rate-limited`, `skipped`.
    pub outcome: String,
    pub message: String,
    pub elapsed_ms: Option<u64>,
}

/// A pool as `GET /api/v1/pools` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub name: String,
    pub provider: String,
    pub min: u32,
    pub max: u32,
    /// Nodes the pool counts (everything not being deleted).
    pub size: u32,
    /// Of those, joined and alive.
    pub ready: u32,
    pub paused: bool,
    /// Consecutive failed provider calls; at `max_failures` the pool stops acting.
    pub failures: u32,
    /// Set when the pool stopped acting after `max_failures`, or is waiting out a rate
    /// limit or its API budget: what and until when.
    pub halted: Option<String>,
    /// Provider calls made in the last hour, against `api_calls_per_hour`.
    pub api_calls_last_hour: u32,
    pub api_calls_per_hour: u32,
}

/// `GET /api/v1/pools/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub summary: PoolSummary,
    pub provider_info: Option<ProviderInfo>,
    pub nodes: Vec<PoolNodeView>,
    /// Newest first.
    pub actions: Vec<PoolAction>,
}

/// `POST /api/v1/tokens` with `join`: a bootstrap token for one new node of `pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateJoinToken {
    pub pool: String,
    /// Seconds until it expires (required: join tokens are short-lived).
    pub ttl_secs: u64,
    /// The node name it is for; `None`: the coordinator assigns `POOL-N` at join.
    #[serde(default)]
    pub node: Option<String>,
}

/// A join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenView {
    pub id: String,
    pub pool: String,
    pub node: Option<String>,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// When it was used, and by which node name.
    pub used_ms: Option<u64>,
    pub used_by: Option<String>,
    pub revoked_ms: Option<u64>,
}

/// The join token made, its secret shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedJoinToken {
    /// What `corral agent --join-token` takes.
    pub secret: String,
    pub token: JoinTokenView,
}

/// `POST /join`: a new node's certificate request, authenticated by a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// A PEM PKCS#10 CSR for the node's locally generated key. Its subject is ignored:
    /// the certificate names the node the token assigns.
    pub csr_pem: String,
}

/// `POST /join`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The node name the certificate was issued for.
    pub node: String,
    pub cert_pem: String,
    /// The cluster CA, to trust the coordinator by.
    pub ca_pem: String,
    pub not_after_ms: u64,
    /// The QUIC address (`host:port`) the node's agent dials (`[join] coordinator`).
    pub coordinator: String,
}
