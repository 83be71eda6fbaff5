//! Frames over QUIC: a 4-byte big-endian length, then a postcard-encoded message from
//! `corral_proto::wire`.
//!
//! Invariants:
//! - A frame longer than the receiver's limit is never buffered: the length prefix is
//!   checked first and reading fails with [`WireError::FrameTooLarge`] (the coordinator
//!   then refuses the connection with `Refusal::FrameTooLarge`).
//! - Both ends use [`transport_config`]: liveness is decided by beats, so QUIC's idle
//!   timer only reclaims connections whose peer vanished, and a peer cannot open more
//!   than the one control stream it needs.

pub use bytes::Bytes;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use corral_proto::wire::{decode, encode, Refusal, WireError};

/// A refusal as the QUIC application error code that carries it.
pub fn refusal_code(r: Refusal) -> quinn::VarInt {
    quinn::VarInt::from_u32(r.code())
}

/// The refusal a QUIC close code stands for (`None`: not one of corral's).
pub fn refusal_of(code: quinn::VarInt) -> Option<Refusal> {
    Refusal::from_code(code.into_inner())
}

fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max_frame)
        .new_codec()
}

/// The receiving half of a framed stream.
pub struct FrameReader {
    inner: FramedRead<quinn::RecvStream, LengthDelimitedCodec>,
    max: usize,
}

impl FrameReader {
    pub fn new(stream: quinn::RecvStream, max_frame: usize) -> Self {
        FrameReader {
            inner: FramedRead::new(stream, codec(max_frame)),
            max: max_frame,
        }
    }

    /// The next raw frame; `Closed` at the end of the stream.
    pub async fn next_frame(&mut self) -> Result<BytesMut, WireError> {
        match self.inner.next().await {
            Some(Ok(frame)) => Ok(frame),
            // tokio-util reports an over-long length prefix as InvalidData, before
            // reading (or buffering) the body.
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(WireError::FrameTooLarge { max: self.max })
            }
            Some(Err(e)) => Err(WireError::Io(e)),
            None => Err(WireError::Closed),
        }
    }

    pub async fn recv<T: DeserializeOwned>(&mut self, what: &'static str) -> Result<T, WireError> {
        let frame = self.next_frame().await?;
        decode(what, &frame)
    }
}

/// The sending half of a framed stream.
pub struct FrameWriter {
    inner: FramedWrite<quinn::SendStream, LengthDelimitedCodec>,
}

impl FrameWriter {
    pub fn new(stream: quinn::SendStream, max_frame: usize) -> Self {
        FrameWriter {
            inner: FramedWrite::new(stream, codec(max_frame)),
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

    /// Sends bytes as one frame without encoding (tests use this to send garbage).
    pub async fn send_raw(&mut self, frame: Bytes) -> Result<(), WireError> {
        self.inner.send(frame).await.map_err(WireError::Io)
    }

    /// Finishes the stream gracefully.
    pub fn finish(&mut self) {
        let _ = self.inner.get_mut().finish();
    }
}

/// QUIC transport settings shared by both ends.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Liveness is decided by beats, not by QUIC's idle timer; the idle timeout only
    // reclaims connections whose peer vanished without a close.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30)).expect("30 s fits"),
    ));
    t.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    // One control stream per agent; refuse more so a peer cannot open thousands.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(2));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t
}
