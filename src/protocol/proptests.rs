//! Property tests of the codec: what `encode` writes, `message` and
//! `startup` read back unchanged, however the bytes are split on arrival.

use super::encode::{self, Severity};
use super::message::{self, Frontend};
use super::sqlstate::SqlState;
use super::startup::{self, FirstPacket};
use bytes::BytesMut;
use proptest::prelude::*;

/// Text without NUL, as every C string in the protocol.
fn cstring() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,200}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn queries_round_trip_across_any_split(
        sqls in proptest::collection::vec(cstring(), 1..8),
        cuts in proptest::collection::vec(1usize..64, 0..32),
    ) {
        let mut wire = Vec::new();
        for sql in &sqls {
            encode::query(&mut wire, sql);
        }
        encode::sync(&mut wire);
        // Feed the bytes in arbitrary pieces, cutting whenever possible.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut cuts = cuts.into_iter().chain(std::iter::repeat(usize::MAX));
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(usize::MAX).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(m) = message::try_cut(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), sqls.len() + 1);
        for (m, sql) in got.iter().zip(&sqls) {
            prop_assert_eq!(Frontend::parse(m), Some(Frontend::Query(sql.as_str())));
        }
        prop_assert_eq!(Frontend::parse(&got[sqls.len()]), Some(Frontend::Sync));
    }

    #[test]
    fn parse_messages_round_trip(name in cstring(), sql in cstring()) {
        let mut wire = Vec::new();
        encode::parse(&mut wire, &name, &sql, &[]);
        let mut buf = BytesMut::from(&wire[..]);
        let m = message::try_cut(&mut buf).unwrap().unwrap();
        match Frontend::parse(&m) {
            Some(Frontend::Parse { name: n, sql: s, .. }) => {
                prop_assert_eq!(n, name.as_str());
                prop_assert_eq!(s, sql.as_str());
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn error_responses_round_trip(text in cstring(), code in "[0-9A-Z]{5}") {
        let code: &'static str = Box::leak(code.into_boxed_str());
        let mut wire = Vec::new();
        encode::error_response(&mut wire, Severity::Fatal, SqlState(code), &text);
        let mut buf = BytesMut::from(&wire[..]);
        let m = message::try_cut(&mut buf).unwrap().unwrap();
        prop_assert_eq!(m.tag(), crate::protocol::tag::backend::ERROR_RESPONSE);
        let (c, t) = message::error_fields(m.body());
        prop_assert_eq!(c, code);
        prop_assert_eq!(t, text);
    }

    #[test]
    fn startup_packets_round_trip(
        params in proptest::collection::vec(("[a-z_]{1,20}", cstring()), 0..10),
    ) {
        let pairs: Vec<(&str, &str)> =
            params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut wire = Vec::new();
        encode::startup(&mut wire, &pairs);
        match startup::packet_len(&wire[..4]) {
            Ok(Some(len)) => prop_assert_eq!(len, wire.len()),
            // Longer than PostgreSQL's 10,000-byte limit: refused, not parsed.
            _ => {
                prop_assert!(wire.len() > 10_000);
                return Ok(());
            }
        }
        match startup::parse(&wire) {
            Ok(FirstPacket::Startup { params: got, .. }) => {
                let want: Vec<(String, String)> = params.clone();
                prop_assert_eq!(got, want);
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }

    #[test]
    fn cancel_requests_round_trip(pid: u32, key: u32) {
        let mut wire = Vec::new();
        encode::cancel_request(&mut wire, pid, key);
        prop_assert_eq!(startup::parse(&wire).ok(), Some(FirstPacket::Cancel { pid, key }));
    }
}
