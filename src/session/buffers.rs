//! A per-thread stash of split-port client buffers. An idle session holds
//! no buffer (most sessions idle, and their memory is what a port with
//! thousands of clients pays); a busy one takes its read and reply buffers
//! from here when its request starts and gives them back when it waits on
//! an idle client again. A buffer then serves many requests of many
//! sessions of the same worker, instead of being allocated, grown and
//! freed on each request (three to five allocator calls a request). An
//! extended-protocol batch's message list is kept the same way.
//!
//! Bounded in count and in each buffer's size, so the stash holds at most
//! [`KEEP`] × [`KEEP_BYTES`] per thread for each kind.

use crate::protocol::message::Message;
use bytes::BytesMut;
use std::cell::RefCell;

/// Most buffers of each kind a thread keeps.
pub(super) const KEEP: usize = 64;
/// Buffers with more capacity than this (grown by a large message or
/// reply) are freed instead of kept.
pub(super) const KEEP_BYTES: usize = 16 * 1024;
/// Capacity of a new read buffer.
pub(super) const READ_BYTES: usize = 8192;
/// Capacity of a new reply buffer.
pub(super) const REPLY_BYTES: usize = 4096;
/// Capacity of a new batch list; lists grown past [`KEEP_MESSAGES`] are
/// freed instead of kept.
pub(super) const BATCH_MESSAGES: usize = 8;
/// See [`BATCH_MESSAGES`].
pub(super) const KEEP_MESSAGES: usize = 64;

#[derive(Default)]
struct Stash {
    reads: Vec<BytesMut>,
    replies: Vec<Vec<u8>>,
    batches: Vec<Vec<Message>>,
}

thread_local! {
    static STASH: RefCell<Stash> = RefCell::new(Stash::default());
}

/// Keeps `item` in the thread's list `list` picks, up to [`KEEP`].
fn keep<T>(item: T, list: impl FnOnce(&mut Stash) -> &mut Vec<T>) {
    STASH.with(|s| {
        let mut s = s.borrow_mut();
        let list = list(&mut s);
        if list.len() < KEEP {
            list.push(item);
        }
    });
}

/// An empty read buffer: a kept one, or a new one of [`READ_BYTES`].
pub(super) fn take_read() -> BytesMut {
    STASH
        .with(|s| s.borrow_mut().reads.pop())
        .unwrap_or_else(|| BytesMut::with_capacity(READ_BYTES))
}

/// Keeps an empty read buffer for the next request on this thread. A
/// buffer still shared with a message in use is kept too: its space comes
/// back when that message is gone (`BytesMut::reserve` reclaims it).
pub(super) fn give_read(buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if buf.capacity() == 0 || buf.capacity() > KEEP_BYTES {
        return;
    }
    keep(buf, |s| &mut s.reads);
}

/// An empty reply buffer: a kept one, or a new one of [`REPLY_BYTES`].
pub(super) fn take_reply() -> Vec<u8> {
    STASH
        .with(|s| s.borrow_mut().replies.pop())
        .unwrap_or_else(|| Vec::with_capacity(REPLY_BYTES))
}

/// Keeps a reply buffer (cleared here) for the next request on this thread.
pub(super) fn give_reply(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > KEEP_BYTES {
        return;
    }
    buf.clear();
    keep(buf, |s| &mut s.replies);
}

/// An empty list for an extended-protocol batch's messages.
pub(super) fn take_batch() -> Vec<Message> {
    STASH
        .with(|s| s.borrow_mut().batches.pop())
        .unwrap_or_else(|| Vec::with_capacity(BATCH_MESSAGES))
}

/// A batch's messages, whose list goes back to the thread's stash
/// (emptied) when the batch is done with, on every path.
pub(super) struct BatchList(pub(super) Vec<Message>);

impl std::ops::Deref for BatchList {
    type Target = [Message];
    fn deref(&self) -> &[Message] {
        &self.0
    }
}

impl Drop for BatchList {
    fn drop(&mut self) {
        let mut msgs = std::mem::take(&mut self.0);
        if msgs.capacity() == 0 || msgs.capacity() > KEEP_MESSAGES {
            return;
        }
        msgs.clear();
        keep(msgs, |s| &mut s.batches);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn a_reply_buffer_comes_back_cleared_with_its_space() {
        let mut out = take_reply();
        out.extend_from_slice(b"reply");
        let at = out.as_ptr();
        give_reply(out);
        let again = take_reply();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the kept buffer is reused");
    }

    #[test]
    fn a_read_buffer_is_reclaimed_once_its_message_is_gone() {
        let mut buf = take_read();
        let base = buf.as_ptr();
        buf.put_slice(b"Q\0\0\0\x05;");
        let msg = buf.split_to(6).freeze();
        give_read(buf);
        drop(msg);
        let mut again = take_read();
        again.reserve(READ_BYTES);
        assert_eq!(again.as_ptr(), base, "no new allocation once unique");
    }

    #[test]
    fn a_batch_list_comes_back_empty_when_dropped() {
        let mut msgs = take_batch();
        msgs.push(Message::from_raw(bytes::Bytes::from_static(b"S\0\0\0\x04")));
        let at = msgs.as_ptr();
        drop(BatchList(msgs));
        let again = take_batch();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at);
    }

    #[test]
    fn large_buffers_are_not_kept() {
        give_reply(Vec::with_capacity(KEEP_BYTES + 1));
        give_read(BytesMut::with_capacity(KEEP_BYTES + 1));
        let (r, w) = (take_read(), take_reply());
        assert!(r.capacity() <= KEEP_BYTES && w.capacity() <= KEEP_BYTES);
    }
}
