//! Frames over QUIC: a 4-byte big-endian length, then a postcard-encoded message from
//! `corral_proto::wire`; the QUIC transport settings both ends share; the UDP socket
//! an endpoint runs on.
//!
//! Invariants:
//! - A frame longer than the receiver's limit is never buffered: the length prefix is
//!   checked as soon as its 4 bytes are in, and reading fails with
//!   [`WireError::FrameTooLarge`] (the coordinator then refuses the connection with
//!   `Refusal::FrameTooLarge`). A reader never asks the stream for more than the rest of
//!   the frame it is on, or, before a prefix is known, for more than one frame at the
//!   limit: it never holds more than `4 + limit` bytes.
//! - A reader or writer that is not in the middle of a frame holds no buffer. A
//!   connection is idle almost all the time (one 16-byte beat a second), and the
//!   coordinator holds one reader and one writer per agent: a fixed buffer per stream
//!   would be most of what a connected agent costs it (tokio-util's codec kept 8 KiB
//!   each way, 16 KiB per agent).
//! - Reading is cancel-safe (it is raced against other events in `select!`): what the
//!   stream gave is stored in the reader before it waits again.
//! - A frame is written to the stream in one call, so it leaves in one packet where it
//!   fits in one.
//! - Both ends use [`transport_config`]: liveness is decided by beats, so QUIC's idle
//!   timer only reclaims connections whose peer vanished, and a peer cannot open more
//!   than the one control stream it needs.
//!
//! Trade-off: a frame that arrives in one QUIC chunk (a beat, a small report) is handed
//! out as a view of the received packet, without a copy; a frame split over chunks is
//! copied once into a buffer sized to that frame.

use std::net::SocketAddr;
use std::time::Duration;

pub use bytes::Bytes;
use bytes::{Buf, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use corral_proto::wire::{decode, encode, Refusal, WireError};

/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// Frames up to this size are copied behind their prefix and written as one chunk; larger
/// ones go as two chunks (prefix, body) without a copy.
const COPY_UP_TO: usize = 4096;

/// A refusal as the QUIC application error code that carries it.
pub fn refusal_code(r: Refusal) -> quinn::VarInt {
    quinn::VarInt::from_u32(r.code())
}

/// The refusal a QUIC close code stands for (`None`: not one of corral's).
pub fn refusal_of(code: quinn::VarInt) -> Option<Refusal> {
    Refusal::from_code(code.into_inner())
}

/// The receiving half of a framed stream.
pub struct FrameReader {
    stream: quinn::RecvStream,
    max: usize,
    /// The rest of the last chunk the stream gave, while `partial` is empty: whole frames,
    /// or the start of one.
    pending: Bytes,
    /// A frame that spans chunks, being assembled (capacity: that frame).
    partial: BytesMut,
}

impl FrameReader {
    pub fn new(stream: quinn::RecvStream, max_frame: usize) -> Self {
        FrameReader {
            stream,
            max: max_frame,
            pending: Bytes::new(),
            partial: BytesMut::new(),
        }
    }

    /// The length a buffer's prefix announces, once it has one; refused when over the limit.
    fn announced(&self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(prefix) = buf.get(..PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(WireError::FrameTooLarge { max: self.max });
        }
        Ok(Some(len))
    }

    /// A whole frame from what is buffered, if there is one.
    fn take_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if self.partial.is_empty() {
            let Some(len) = self.announced(&self.pending)? else {
                return Ok(None);
            };
            if self.pending.len() >= PREFIX + len {
                let frame = self.pending.slice(PREFIX..PREFIX + len);
                self.pending.advance(PREFIX + len);
                return Ok(Some(frame));
            }
            return Ok(None);
        }
        let Some(len) = self.announced(&self.partial)? else {
            return Ok(None);
        };
        if self.partial.len() < PREFIX + len {
            return Ok(None);
        }
        let mut frame = self.partial.split_to(PREFIX + len);
        frame.advance(PREFIX);
        if self.partial.is_empty() {
            // Keep no capacity between frames.
            self.partial = BytesMut::new();
        }
        Ok(Some(frame.freeze()))
    }

    /// How much to ask the stream for: the rest of the current frame, or, before its
    /// prefix is in, at most one frame at the limit.
    fn wanted(&self) -> usize {
        let buffered = self.partial.len() + self.pending.len();
        let buf: &[u8] = if self.partial.is_empty() {
            &self.pending
        } else {
            &self.partial
        };
        match self.announced(buf) {
            Ok(Some(len)) => PREFIX + len - buffered,
            _ => PREFIX + self.max - buffered,
        }
    }

    /// Adds a chunk from the stream to what is buffered.
    fn push(&mut self, chunk: Bytes) {
        if self.partial.is_empty() && self.pending.is_empty() {
            self.pending = chunk;
            return;
        }
        if self.partial.is_empty() {
            // The frame in `pending` continues in this chunk: assemble it, sized to the
            // frame once its prefix is known.
            let need = match self.announced(&self.pending) {
                Ok(Some(len)) => PREFIX + len,
                _ => PREFIX,
            };
            self.partial
                .reserve(need.max(self.pending.len() + chunk.len()));
            self.partial.extend_from_slice(&self.pending);
            self.pending = Bytes::new();
        } else if let Ok(Some(len)) = self.announced(&self.partial) {
            self.partial
                .reserve((PREFIX + len).saturating_sub(self.partial.len()));
        }
        self.partial.extend_from_slice(&chunk);
    }

    /// The next raw frame; `Closed` at the end of the stream.
    pub async fn next_frame(&mut self) -> Result<Bytes, WireError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            let want = self.wanted();
            match self.stream.read_chunk(want, true).await {
                Ok(Some(chunk)) => self.push(chunk.bytes),
                Ok(None) if self.partial.is_empty() && self.pending.is_empty() => {
                    return Err(WireError::Closed)
                }
                Ok(None) => {
                    return Err(WireError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the stream ended inside a frame ({} bytes of it received)",
                            self.partial.len() + self.pending.len()
                        ),
                    )))
                }
                Err(e) => return Err(WireError::Io(e.into())),
            }
        }
    }

    pub async fn recv<T: DeserializeOwned>(&mut self, what: &'static str) -> Result<T, WireError> {
        let frame = self.next_frame().await?;
        decode(what, &frame)
    }
}

/// The sending half of a framed stream.
pub struct FrameWriter {
    stream: quinn::SendStream,
    max: usize,
}

impl FrameWriter {
    pub fn new(stream: quinn::SendStream, max_frame: usize) -> Self {
        FrameWriter {
            stream,
            max: max_frame,
        }
    }

    pub async fn send<T: Serialize>(
        &mut self,
        what: &'static str,
        msg: &T,
    ) -> Result<usize, WireError> {
        let bytes = encode(what, msg)?;
        let len = bytes.len();
        self.send_raw(Bytes::from(bytes)).await?;
        Ok(len)
    }

    /// Sends bytes as one frame without encoding (tests use this to send garbage). A
    /// frame over this writer's limit is not sent: [`WireError::FrameTooLarge`].
    pub async fn send_raw(&mut self, frame: Bytes) -> Result<(), WireError> {
        if frame.len() > self.max || u32::try_from(frame.len()).is_err() {
            return Err(WireError::FrameTooLarge { max: self.max });
        }
        let prefix = (frame.len() as u32).to_be_bytes();
        let written = if frame.len() <= COPY_UP_TO {
            let mut one = Vec::with_capacity(PREFIX + frame.len());
            one.extend_from_slice(&prefix);
            one.extend_from_slice(&frame);
            self.stream.write_chunk(Bytes::from(one)).await
        } else {
            self.stream
                .write_all_chunks(&mut [Bytes::copy_from_slice(&prefix), frame])
                .await
        };
        written.map_err(|e| WireError::Io(e.into()))
    }

    /// Finishes the stream gracefully.
    pub fn finish(&mut self) {
        let _ = self.stream.finish();
    }
}

/// QUIC transport settings shared by both ends.
///
/// What they are sized for: one long-lived bidirectional stream per agent carrying a
/// 16-byte beat a second and a report every few seconds, tens of thousands of such
/// connections on one coordinator socket.
/// - The idle timeout only reclaims connections whose peer vanished without a close;
///   liveness is decided by beats. The keep-alive never fires while an agent beats (any
///   packet received restarts it); it keeps a quiet connection open through NAT.
/// - One control stream per agent, no unidirectional streams, no datagrams: a peer
///   cannot open thousands of streams, and nothing is set aside for datagrams.
/// - No path-MTU discovery: corral's messages are small (a beat is one packet of
///   about 60 bytes at any MTU), so probing each connection up from QUIC's 1,200 bytes
///   would cost several extra packets per handshake, and one more every ten minutes per
///   connection, for nothing. Large command results still flow, at 1,200-byte packets.
/// - Acknowledge at once (QUIC ACK_FREQUENCY, asking the peer for an ack-eliciting
///   threshold of 0). A beat a second cannot share an ACK with the next one: quinn caps
///   the ACK delay a peer may be asked for at the larger of the RTT and 25 ms, so each
///   beat costs the coordinator one ACK packet whatever the policy. The policy only
///   decides when: 25 ms later, from a timer that wakes the connection's driver a second
///   time, or in the same wake-up that read the beat (one wake-up per beat, not two;
///   figures in BENCHMARKS.md). A peer without the extension acknowledges as before.
/// - No UDP segmentation offload (GSO): a connection's send buffer grows to the largest
///   batch of packets it ever sent at once (its handshake flight: a few kilobytes) and
///   keeps that capacity for its life; without GSO it is one packet. Nothing corral
///   sends in steady state is more than one packet at a time.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s fits"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(2));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.datagram_receive_buffer_size(None);
    t.mtu_discovery_config(None);
    t.enable_segmentation_offload(false);
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(0));
    t.ack_frequency_config(Some(ack));
    t
}

/// The UDP socket buffers an endpoint asks for (each way). A coordinator's one socket
/// takes every agent's beats: at 50,000 agents a second, the kernel's default
/// (`net.core.rmem_default`, 208 KiB on Linux: a few hundred small packets) overflows in
/// a few milliseconds of the process not reading, and every packet dropped there is a
/// beat late by a QUIC retransmission.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// What [`bind_udp`] got of the [`UDP_BUFFER_BYTES`] it asked for, each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpBuffers {
    pub recv: usize,
    pub send: usize,
}

/// A UDP socket bound to `addr` for a QUIC endpoint, with receive and send buffers of
/// [`UDP_BUFFER_BYTES`] where the kernel allows that much (Linux caps them at
/// `net.core.rmem_max` / `net.core.wmem_max`; then the cap is taken and a warning names
/// the setting). Linux reports twice the size it was given (the doubling is its
/// bookkeeping overhead); the sizes returned are as the kernel reports them.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<(std::net::UdpSocket, UdpBuffers)> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // A refusal leaves the default, which works, only with less headroom.
    let _ = state.set_recv_buffer_size((&socket).into(), UDP_BUFFER_BYTES);
    let _ = state.set_send_buffer_size((&socket).into(), UDP_BUFFER_BYTES);
    let got = UdpBuffers {
        recv: state.recv_buffer_size((&socket).into())?,
        send: state.send_buffer_size((&socket).into())?,
    };
    if got.recv < UDP_BUFFER_BYTES {
        tracing::warn!(
            wanted = UDP_BUFFER_BYTES,
            got = got.recv,
            setting = "net.core.rmem_max",
            "the UDP receive buffer is smaller than asked for; under load the kernel drops packets it has no room for (raise the setting to at least the size wanted)"
        );
    }
    Ok((socket, got))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pki::{self, Role};

    /// A QUIC connection over loopback with mutual TLS, and its control stream's ends:
    /// (client writer, server reader, server writer, client reader).
    struct Pair {
        _dir: tempfile::TempDir,
        _endpoints: (quinn::Endpoint, quinn::Endpoint),
        client: quinn::Connection,
        client_send: quinn::SendStream,
        server_recv: quinn::RecvStream,
    }

    async fn pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(dir.path(), "test CA", 2).unwrap();
        let ca = pki::Ca::load(dir.path()).unwrap();
        let server_files = ca
            .issue_to_dir(
                "coordinator",
                Role::Coordinator,
                &["localhost".into()],
                2,
                &dir.path().join("c"),
            )
            .unwrap();
        let client_files = ca
            .issue_to_dir("n1", Role::Agent, &[], 2, &dir.path().join("a"))
            .unwrap();
        let server_tls = server_files.load().unwrap();
        let revocations = crate::crl::Revocations::open(&server_files, &server_tls).unwrap();
        let server_cfg =
            pki::quic_server_config(&server_tls, transport_config(), &revocations).unwrap();
        let (socket, _) = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let server = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_cfg),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        let client_cfg =
            pki::quic_client_config(&client_files.load().unwrap(), transport_config()).unwrap();
        let client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = async {
            let conn = server
                .accept()
                .await
                .unwrap()
                .accept()
                .unwrap()
                .await
                .unwrap();
            conn.accept_bi().await.unwrap()
        };
        let connect = async {
            let conn = client
                .connect_with(client_cfg, addr, "localhost")
                .unwrap()
                .await
                .unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            // A stream exists for the peer once something is sent on it.
            send.write_all(&[0, 0, 0, 1, 42]).await.unwrap();
            (conn, send, recv)
        };
        let ((_server_send, mut server_recv), (conn, client_send, _client_recv)) =
            tokio::join!(accept, connect);
        let mut first = [0u8; 5];
        server_recv.read_exact(&mut first).await.unwrap();
        assert_eq!(first, [0, 0, 0, 1, 42]);
        Pair {
            _dir: dir,
            _endpoints: (server, client),
            client: conn,
            client_send,
            server_recv,
        }
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order_however_the_stream_splits_them() {
        let mut p = pair().await;
        let mut reader = FrameReader::new(p.server_recv, 1 << 20);
        // Frames written in one piece, then frames whose bytes trickle in one at a time
        // (a prefix split, a body split), then a large one over many packets.
        let frames: Vec<Vec<u8>> = vec![
            vec![1; 12],
            vec![],
            vec![2; 300],
            vec![3; 7],
            (0..200_000u32).map(|i| i as u8).collect(),
            vec![4; 16],
        ];
        let mut wire = vec![];
        for f in &frames[..2] {
            wire.extend_from_slice(&(f.len() as u32).to_be_bytes());
            wire.extend_from_slice(f);
        }
        p.client_send.write_all(&wire).await.unwrap();
        for f in &frames[2..4] {
            let mut bytes = (f.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(f);
            for b in bytes {
                p.client_send.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
        }
        let mut writer = FrameWriter::new(p.client_send, 1 << 20);
        for f in &frames[4..] {
            writer.send_raw(Bytes::from(f.clone())).await.unwrap();
        }
        for want in &frames {
            let got = reader.next_frame().await.unwrap();
            assert_eq!(&got[..], &want[..]);
        }
        // Nothing is kept between frames.
        assert!(reader.pending.is_empty());
        assert_eq!(reader.partial.capacity(), 0);
        writer.finish();
        assert!(matches!(reader.next_frame().await, Err(WireError::Closed)));
        drop(p.client);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_from_its_prefix_alone() {
        let mut p = pair().await;
        let mut reader = FrameReader::new(p.server_recv, 1000);
        // Only the prefix is sent: the refusal cannot have waited for the body.
        p.client_send
            .write_all(&1001u32.to_be_bytes())
            .await
            .unwrap();
        match reader.next_frame().await {
            Err(WireError::FrameTooLarge { max: 1000 }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(reader.partial.capacity() <= PREFIX);
    }

    #[tokio::test]
    async fn a_frame_at_the_limit_passes_and_the_writer_refuses_one_over_its_own() {
        let p = pair().await;
        let mut reader = FrameReader::new(p.server_recv, 5000);
        let mut writer = FrameWriter::new(p.client_send, 5000);
        writer.send_raw(Bytes::from(vec![9u8; 5000])).await.unwrap();
        assert_eq!(reader.next_frame().await.unwrap().len(), 5000);
        match writer.send_raw(Bytes::from(vec![9u8; 5001])).await {
            Err(WireError::FrameTooLarge { max: 5000 }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_frame_is_an_error_not_a_clean_close() {
        let mut p = pair().await;
        let mut reader = FrameReader::new(p.server_recv, 1000);
        p.client_send
            .write_all(&[0, 0, 0, 10, 1, 2, 3])
            .await
            .unwrap();
        p.client_send.finish().unwrap();
        match reader.next_frame().await {
            Err(WireError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
                assert!(e.to_string().contains("7 bytes"), "{e}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reading_is_cancel_safe() {
        let mut p = pair().await;
        let mut reader = FrameReader::new(p.server_recv, 1 << 16);
        // The frame comes in two parts; the read is abandoned while waiting between them.
        p.client_send.write_all(&[0, 0, 0, 4, 7, 7]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), reader.next_frame()).await;
        assert!(waited.is_err(), "half a frame is not a frame");
        p.client_send.write_all(&[7, 7]).await.unwrap();
        assert_eq!(&reader.next_frame().await.unwrap()[..], &[7, 7, 7, 7]);
    }

    #[test]
    fn a_bound_socket_gets_the_buffers_the_kernel_allows() {
        let (socket, got) = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        assert!(socket.local_addr().unwrap().port() != 0);
        // Whatever the caps, never below the kernel's own minimum, and at least what was
        // asked for where the caps allow it (Linux reports twice what it keeps).
        assert!(got.recv > 0 && got.send > 0, "{got:?}");
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        if let Some(cap) = cap {
            assert!(got.recv >= UDP_BUFFER_BYTES.min(cap), "{got:?}, cap {cap}");
        }
    }
}
