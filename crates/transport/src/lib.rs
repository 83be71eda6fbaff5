//! corral's transport: how agent and coordinator reach each other.
//!
//! - [`frame`]: length-prefixed postcard frames over a QUIC stream, size-checked before
//!   buffering, and the QUIC transport settings both ends share.
//! - [`delta`]: report deltas, so that after a session's first report an agent sends
//!   only what changed.
//! - [`pki`]: the cluster CA, the certificates it issues (CN = name, OU = role) and the
//!   mutual-TLS configurations for QUIC and the HTTPS API.
//! - [`issued`]: the CA's record of what it issued, revocation, and the CRL it signs.
//! - [`crl`]: the CRL as the coordinator applies it, at every handshake and to open
//!   connections, reloaded while it runs.
//!
//! Depends on `corral-proto` for what the frames hold; knows nothing of what either
//! daemon does with them.

pub mod crl;
pub mod delta;
pub mod frame;
pub mod issued;
pub mod pki;
