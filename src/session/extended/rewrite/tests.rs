//! Transparent prepared statements: parse once, reuse, evict safely.
use super::*;
use crate::protocol::message::read_message;

fn text(sql: &str) -> Arc<StmtText> {
    Arc::new(StmtText {
        sql: Arc::from(sql),
        types: Bytes::new(),
    })
}

/// The messages `out` holds, as (tag, statement name) pairs.
async fn sent(out: &[u8]) -> Vec<(u8, String)> {
    let (mut w, mut r) = tokio::io::duplex(1 << 16);
    tokio::io::AsyncWriteExt::write_all(&mut w, out)
        .await
        .unwrap();
    drop(w);
    let mut buf = bytes::BytesMut::new();
    let mut got = Vec::new();
    while let Ok(m) = read_message(&mut r, &mut buf).await {
        let name = match Frontend::parse(&m) {
            Some(Frontend::Parse { name, .. } | Frontend::Close { name, .. }) => name.to_owned(),
            _ => String::new(),
        };
        got.push((m.tag(), name));
    }
    got
}

#[tokio::test]
async fn a_new_statement_is_parsed_once_and_then_reused() {
    let mut cache = PreparedCache::new(2);
    let (mut out, mut queue, mut used) = (Vec::new(), VecDeque::new(), Used::new());
    let a = text("select 1");
    let id = ensure(&mut cache, &mut out, &mut queue, &mut used, &a);
    assert_eq!(sent(&out).await, vec![(b'P', server_name(id).to_string())]);
    // Injected by pgvane: its ParseComplete is swallowed.
    assert_eq!(queue, [Expect::Prepare { id, forward: false }]);
    // The server confirms it: the next use sends nothing.
    cache.confirm(id);
    let (mut out2, mut queue2) = (Vec::new(), VecDeque::new());
    assert_eq!(
        ensure(&mut cache, &mut out2, &mut queue2, &mut used, &a),
        id
    );
    assert!(out2.is_empty() && queue2.is_empty());
}

#[tokio::test]
async fn an_evicted_statement_is_closed_first_and_its_reply_swallowed() {
    let mut cache = PreparedCache::new(1);
    let (mut out, mut queue) = (Vec::new(), VecDeque::new());
    let first = ensure(
        &mut cache,
        &mut out,
        &mut queue,
        &mut Used::new(),
        &text("select 1"),
    );
    cache.confirm(first);
    let (mut out, mut queue) = (Vec::new(), VecDeque::new());
    let second = prepare(
        &mut cache,
        &mut out,
        &mut queue,
        &mut Used::new(),
        text("select 2"),
    );
    assert_ne!(first, second);
    assert_eq!(
        sent(&out).await,
        vec![
            (b'C', server_name(first).to_string()),
            (b'P', server_name(second).to_string())
        ]
    );
    assert_eq!(queue, [Expect::SwallowClose]);
}

#[tokio::test]
async fn statements_the_batch_still_uses_are_never_evicted() {
    let mut cache = PreparedCache::new(1);
    let mut used = Used::new();
    let (mut out, mut queue) = (Vec::new(), VecDeque::new());
    let a = ensure(
        &mut cache,
        &mut out,
        &mut queue,
        &mut used,
        &text("select 1"),
    );
    cache.confirm(a);
    // Same batch: `a` is in `used`, so the cache grows past its
    // capacity rather than closing a statement a Bind still needs.
    let b = ensure(
        &mut cache,
        &mut out,
        &mut queue,
        &mut used,
        &text("select 2"),
    );
    let names: Vec<(u8, String)> = sent(&out).await;
    assert!(
        !names.contains(&(b'C', server_name(a).to_string())),
        "{names:?}"
    );
    assert_ne!(a, b);
}
