//! Messages as read from the topic, their bytes kept in one buffer per batch.

use bytes::{Bytes, BytesMut};

/// A message as read from the topic. Key and payload are views into one buffer per batch (see
/// [`MessageBuffer`]): no allocation per message.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
    /// The reject the row fixes, from the message's header (see `event_model::wire::FIXES_HEADER`).
    pub fixes: Option<i64>,
}

/// Holds the bytes of received messages, handing out views of them; a new block is taken only
/// when one fills up, and is freed when the last message in it is dropped.
#[derive(Debug)]
pub struct MessageBuffer {
    block: BytesMut,
}

/// Large enough that a batch of the default size takes a few blocks.
pub(super) const BLOCK_BYTES: usize = 1 << 20;

impl Default for MessageBuffer {
    fn default() -> Self {
        MessageBuffer {
            block: BytesMut::with_capacity(BLOCK_BYTES),
        }
    }
}

impl MessageBuffer {
    /// A view of a copy of `bytes`.
    pub fn keep(&mut self, bytes: &[u8]) -> Bytes {
        if self.block.capacity() < bytes.len() {
            // Not `reserve`: the old block stays with the messages that point into it.
            self.block = BytesMut::with_capacity(BLOCK_BYTES.max(bytes.len()));
        }
        self.block.extend_from_slice(bytes);
        self.block.split().freeze()
    }
}
