use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

fn startup() -> Vec<u8> {
    let body = b"user\0app\0\0";
    let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&196_608u32.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn ssl_request() -> Vec<u8> {
    let mut v = 8u32.to_be_bytes().to_vec();
    v.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    v
}

/// Feeds `b` one byte at a time, the worst split a socket can give.
fn bytewise(f: &mut Frames, up: bool, b: &[u8]) {
    for x in b {
        if up {
            f.up(std::slice::from_ref(x));
        } else {
            f.down(std::slice::from_ref(x));
        }
    }
}

/// A login's answer: AuthenticationOk, a ParameterStatus, BackendKeyData, ready.
fn login_answer() -> Vec<u8> {
    [
        msg(b'R', &0u32.to_be_bytes()),
        msg(b'S', b"a\0b\0"),
        msg(b'K', &[0; 8]),
        ready(b'I'),
    ]
    .concat()
}

#[test]
fn idle_only_after_the_login_answer_ends_with_ready_idle() {
    let answer = login_answer();
    let mut f = Frames::after_startup(&answer[..3]);
    assert!(!f.idle());
    f.down(&answer[3..answer.len() - 1]);
    assert!(!f.idle(), "the status byte is still due");
    f.down(&answer[answer.len() - 1..]);
    assert!(f.idle());
}

#[test]
fn a_query_in_flight_is_busy_until_its_ready() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&msg(b'Q', b"select 1\0"));
    assert!(!f.idle());
    f.down(&msg(b'T', &[0, 0]));
    f.down(&msg(b'D', b"\0\0"));
    assert!(!f.idle());
    f.down(&msg(b'C', b"SELECT 1\0"));
    f.down(&ready(b'I'));
    assert!(f.idle());
}

#[test]
fn an_open_transaction_is_not_idle() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&msg(b'Q', b"begin\0"));
    f.down(&[msg(b'C', b"BEGIN\0"), ready(b'T')].concat());
    assert!(!f.idle());
    f.up(&msg(b'Q', b"select 1/0\0"));
    f.down(&[msg(b'E', b"x\0"), ready(b'E')].concat());
    assert!(!f.idle(), "a failed transaction is still open");
    f.up(&msg(b'Q', b"rollback\0"));
    f.down(&[msg(b'C', b"ROLLBACK\0"), ready(b'I')].concat());
    assert!(f.idle());
}

#[test]
fn pipelined_queries_wait_for_every_ready() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&[msg(b'Q', b"select 1\0"), msg(b'Q', b"select 2\0")].concat());
    f.down(&ready(b'I'));
    assert!(!f.idle(), "the second query is still running");
    f.down(&ready(b'I'));
    assert!(f.idle());
}

#[test]
fn extended_protocol_counts_syncs_not_flushes() {
    let mut f = Frames::after_startup(&login_answer());
    let batch = [
        msg(b'P', b"\0select 1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'H', b""),
        msg(b'S', b""),
    ]
    .concat();
    bytewise(&mut f, true, &batch);
    assert!(!f.idle());
    let answer = [
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'C', b"SELECT 1\0"),
        ready(b'I'),
    ]
    .concat();
    bytewise(&mut f, false, &answer[..answer.len() - 1]);
    assert!(!f.idle());
    bytewise(&mut f, false, &answer[answer.len() - 1..]);
    assert!(f.idle());
}

#[test]
fn a_half_sent_message_is_not_idle() {
    let mut f = Frames::after_startup(&login_answer());
    let q = msg(b'Q', b"select 1\0");
    f.up(&q[..3]);
    assert!(!f.idle());
    f.up(&q[3..]);
    f.down(&ready(b'I'));
    assert!(f.idle());
}

#[test]
fn ssl_refused_then_plain_startup_is_followed() {
    let mut f = Frames::after_request(&ssl_request());
    assert!(!f.idle());
    f.down(b"N");
    bytewise(&mut f, true, &startup());
    bytewise(&mut f, false, &login_answer());
    assert!(f.idle());
    f.up(&msg(b'Q', b"select 1\0"));
    assert!(!f.idle());
}

#[test]
fn gss_refused_then_ssl_refused_then_startup_is_followed() {
    let mut gss = 8u32.to_be_bytes().to_vec();
    gss.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
    let mut f = Frames::after_request(&gss);
    f.down(b"N");
    f.up(&ssl_request());
    f.down(b"N");
    f.up(&startup());
    f.down(&login_answer());
    assert!(f.idle());
}

#[test]
fn an_encrypted_stream_is_never_idle() {
    let mut f = Frames::after_request(&ssl_request());
    f.down(b"S");
    f.up(&[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5]);
    f.down(&ready(b'I'));
    assert!(!f.idle());
}

#[test]
fn bytes_that_are_no_request_are_opaque() {
    let mut f = Frames::after_request(&[0x16, 3, 1, 2, 0, 1, 0, 0]);
    f.down(&login_answer());
    assert!(!f.idle());
}

#[test]
fn a_malformed_length_makes_the_stream_opaque() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&[b'Q', 0, 0, 0, 2]);
    f.down(&ready(b'I'));
    assert!(!f.idle());
    let mut g = Frames::after_startup(&login_answer());
    g.down(&msg(b'Z', b"II"));
    assert!(!g.idle());
}

#[test]
fn a_large_data_row_split_anywhere_keeps_the_count() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&msg(b'Q', b"select big\0"));
    let row = msg(b'D', &[b'Z'; 70_000]);
    let answer = [row.clone(), row, msg(b'C', b"SELECT 2\0"), ready(b'I')].concat();
    for chunk in answer.chunks(4093) {
        f.down(chunk);
    }
    assert!(f.idle());
}

#[test]
fn extended_messages_waiting_for_their_sync_are_not_idle() {
    let mut f = Frames::after_startup(&login_answer());
    // An insert run by Execute, its transaction open until the Sync.
    f.up(&[
        msg(b'P', b"\0insert\0\0\0"),
        msg(b'B', &[0; 8]),
        msg(b'E', &[0; 5]),
    ]
    .concat());
    assert!(!f.idle());
    f.up(&msg(b'H', b""));
    f.down(&[msg(b'1', b""), msg(b'2', b""), msg(b'C', b"INSERT 0 1\0")].concat());
    assert!(!f.idle(), "a Flush answered, the Sync still due");
    f.up(&msg(b'S', b""));
    assert!(!f.idle());
    f.down(&ready(b'I'));
    assert!(f.idle());
}

#[test]
fn copy_in_by_the_extended_protocol_ignores_the_syncs_sent_during_it() {
    // libpq's PQexecParams: Parse, Bind, Describe, Execute, Sync at once;
    // the server enters copy-in mode at the Execute and ignores that Sync.
    let mut f = Frames::after_startup(&login_answer());
    let start = [
        msg(b'P', b"\0copy t from stdin\0\0\0"),
        msg(b'B', &[0; 8]),
        msg(b'D', b"P\0"),
        msg(b'E', &[0; 5]),
        msg(b'S', b""),
    ];
    f.up(&start.concat());
    f.down(&[msg(b'1', b""), msg(b'2', b""), msg(b'G', &[0, 0, 0])].concat());
    assert!(!f.idle(), "copying");
    f.up(&[msg(b'd', b"1\n"), msg(b'S', b""), msg(b'd', b"2\n")].concat());
    assert!(!f.idle());
    f.up(&[msg(b'c', b""), msg(b'S', b"")].concat());
    assert!(!f.idle(), "the Sync after CopyDone is answered");
    f.down(&msg(b'C', b"COPY 2\0"));
    assert!(!f.idle());
    f.down(&ready(b'I'));
    assert!(f.idle(), "one ReadyForQuery settles it");
}

#[test]
fn copy_in_by_a_query_and_a_failed_copy_settle_too() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&msg(b'Q', b"copy t from stdin\0"));
    f.down(&msg(b'G', &[0, 0, 0]));
    f.up(&[msg(b'd', b"x\n"), msg(b'f', b"no\0")].concat());
    assert!(!f.idle());
    f.down(&[msg(b'E', b"x\0"), ready(b'I')].concat());
    assert!(f.idle());
    // An extended batch answered before a later Query's COPY: its Sync
    // was answered and is not taken back.
    f.up(&[
        msg(b'P', b"\0select 1\0\0\0"),
        msg(b'E', &[0; 5]),
        msg(b'S', b""),
    ]
    .concat());
    f.down(&[msg(b'1', b""), msg(b'C', b"SELECT 1\0"), ready(b'I')].concat());
    assert!(f.idle());
    f.up(&msg(b'Q', b"copy t from stdin\0"));
    f.down(&msg(b'G', &[0, 0, 0]));
    f.up(&msg(b'c', b""));
    assert!(!f.idle());
    f.down(&[msg(b'C', b"COPY 0\0"), ready(b'I')].concat());
    assert!(f.idle());
}

#[test]
fn replication_copy_both_is_not_followed() {
    let mut f = Frames::after_startup(&login_answer());
    f.up(&msg(b'Q', b"START_REPLICATION 0/0\0"));
    f.down(&msg(b'W', &[0, 0, 0]));
    f.down(&ready(b'I'));
    assert!(!f.idle());
    assert!(!f.between_messages());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap xorshift: the same bytes every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000 {
        let mut f = if round % 2 == 0 {
            Frames::after_startup(&[])
        } else {
            Frames::after_request(&ssl_request())
        };
        for _ in 0..8 {
            let n = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                f.up(&bytes);
            } else {
                f.down(&bytes);
            }
            let _ = f.idle();
        }
    }
}
