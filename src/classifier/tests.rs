use super::*;

fn c(sql: &str) -> Classification {
    classify_uncached(sql, true, &[])
}

fn route(sql: &str) -> Route {
    c(sql).route
}

use Route::{Leader, Replica};

#[test]
fn reads_go_to_replicas() {
    for sql in [
        "select 1",
        "SELECT * FROM t WHERE id = $1",
        "select count(*), max(x) from t group by y",
        "with a as (select 1) select * from a",
        "values (1), (2)",
        "table t",
        "select now(), inet_server_addr(), version()",
        "select * from generate_series(1, 3)",
        "explain select * from t",
        "explain insert into t values (1)",
        "(select 1) union (select 2)",
        "select 'for update' as x, \"nextval\" from t",
    ] {
        assert_eq!(route(sql), Replica, "{sql}");
    }
}

#[test]
fn writes_locks_and_unsure_go_to_the_leader() {
    for (sql, reason) in [
        ("insert into t values (1)", Reason::Write),
        ("update t set x = 1", Reason::Write),
        ("delete from t", Reason::Write),
        (
            "merge into t using s on t.id = s.id when matched then delete",
            Reason::Write,
        ),
        ("create table t (x int)", Reason::Write),
        ("copy t from stdin", Reason::Write),
        ("select * from t for update", Reason::Lock),
        ("select * from t for share", Reason::Lock),
        ("select * from t for no key update", Reason::Unparsed),
        ("select * from (select * from t for update) s", Reason::Lock),
        ("table t for update", Reason::Lock),
        ("select * into t2 from t", Reason::Write),
        (
            "with d as (delete from t returning *) select * from d",
            Reason::Write,
        ),
        (
            "with a as (select 1), b as (with c as (insert into t values (1) returning 1) select * from c) select 1",
            Reason::Write,
        ),
        ("select my_func(1)", Reason::UnknownFunction),
        ("select * from my_srf(1)", Reason::UnknownFunction),
        ("select pg_notify('c', 'x')", Reason::WriteFunction),
        ("select txid_current()", Reason::WriteFunction),
        ("select pg_advisory_xact_lock(1)", Reason::WriteFunction),
        ("select pg_is_in_recovery()", Reason::Probe),
        ("show transaction_read_only", Reason::Probe),
        ("explain analyze insert into t values (1)", Reason::Write),
        ("explain (analyze, buffers) delete from t", Reason::Write),
        ("select 1; insert into t values (1)", Reason::Write),
        ("select $$ unterminated", Reason::Unparsed),
        ("vacuum t", Reason::Write),
        ("do $$ begin end $$", Reason::Write),
        ("begin", Reason::Transaction),
        (
            "begin isolation level serializable read only deferrable",
            Reason::Transaction,
        ),
        ("commit", Reason::Transaction),
        ("rollback to savepoint a", Reason::Transaction),
    ] {
        let got = c(sql);
        assert_eq!((got.route, got.reason), (Leader, reason), "{sql}");
    }
}

#[test]
fn explain_analyze_of_a_read_is_a_read() {
    assert_eq!(route("explain analyze select * from t"), Replica);
    assert_eq!(route("explain analyse select 1"), Replica);
    assert_eq!(
        route("explain (analyze false) insert into t values (1)"),
        Replica
    );
}

#[test]
fn session_state_pins() {
    for (sql, pin) in [
        ("set search_path = a", Pin::Set),
        ("SET SESSION statement_timeout = 5", Pin::Set),
        ("reset all", Pin::Set),
        ("select set_config('a.b', '1', false)", Pin::SetConfig),
        ("create temp table x (a int)", Pin::TempTable),
        ("create temporary view v as select 1", Pin::TempTable),
        ("create local temp table x (a int)", Pin::TempTable),
        ("listen chan", Pin::Listen),
        ("select pg_advisory_lock(1)", Pin::AdvisoryLock),
        ("select pg_try_advisory_lock(1, 2)", Pin::AdvisoryLock),
        ("prepare p as select 1", Pin::Prepare),
        ("declare c cursor with hold for select 1", Pin::HoldCursor),
        ("load 'auto_explain'", Pin::Load),
        ("select nextval('s')", Pin::Sequence),
        ("select currval('s')", Pin::Sequence),
        ("select dblink_connect('x')", Pin::Dblink),
    ] {
        let got = c(sql);
        assert_eq!((got.route, got.pin), (Leader, Some(pin)), "{sql}");
    }
    for sql in [
        "set local statement_timeout = 5",
        "set transaction read only",
        "select set_config('a.b', '1', true)",
        "prepare transaction 'x'",
        "declare c cursor for select 1",
    ] {
        assert_eq!(c(sql).pin, None, "{sql}");
    }
    assert!(c("discard all").discard_all);
    assert!(!c("discard plans").discard_all);
}

#[test]
fn transactions() {
    assert_eq!(c("begin read only").begin, Some(true));
    assert_eq!(c("begin read only").route, Replica);
    assert_eq!(
        c("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").begin,
        Some(true)
    );
    assert_eq!(
        c("start transaction read only deferrable").begin,
        Some(true)
    );
    assert_eq!(c("begin").begin, Some(false));
    assert_eq!(c("begin read write").begin, Some(false));
    assert_eq!(
        c("begin isolation level serializable read only").begin,
        Some(false)
    );
    assert_eq!(
        c("begin read only; select 1").route,
        Leader,
        "a transaction inside a multi-statement query"
    );
}

#[test]
fn hints() {
    assert_eq!(route("/* pgvane: leader */ select 1"), Leader);
    assert_eq!(c("/* pgvane: leader */ select 1").reason, Reason::Hint);
    assert_eq!(
        route("-- pgvane: replica\nselect my_func(1)"),
        Replica,
        "replica hint relaxes an unknown function"
    );
    assert_eq!(
        route("/* pgvane: replica */ update t set x = 1"),
        Leader,
        "never overrides a write"
    );
    assert_eq!(
        route("/* pgvane: replica */ select nextval('s')"),
        Leader,
        "never overrides session state"
    );
    assert_eq!(
        route("/* pgvane: replica */ select * from t for update"),
        Leader
    );
    assert_eq!(
        route("select 1 /* pgvane: leader */"),
        Replica,
        "hints only before the first token"
    );
}

#[test]
fn allowlist_and_scs() {
    let allow = vec!["my_func".to_owned()];
    assert_eq!(
        classify_uncached("select my_func(1)", true, &allow).route,
        Replica
    );
    assert_eq!(
        classify_uncached("select public.\"my_func\"(1)", true, &allow).route,
        Replica
    );
    assert_eq!(
        classify_uncached("select 'a\\'", false, &[]).route,
        Leader,
        "scs off fails closed"
    );
}

#[test]
fn cache_hits_and_stays_bounded() {
    let cl = Classifier::new(vec![]);
    let source = |sql: &str, scs: bool| cl.classify_query(sql, scs).source;
    assert_eq!(source("select 1", true), Source::Fast);
    assert_eq!(source("select f(1)", true), Source::Full);
    assert_eq!(source("select f(1)", true), Source::Cache);
    assert_eq!(
        source("select f(1)", false),
        Source::Full,
        "scs is part of the key"
    );
    assert_eq!(
        source("select f(2)", true),
        Source::Cache,
        "literals are not part of the key"
    );
    assert_eq!(source("select g(2)", true), Source::Full);
    assert_eq!(source("select g(2) ; select 3", true), Source::Full);
    assert_eq!(
        cl.classify_query("select g(2) ; select 3", true).statements,
        2
    );
    let v = cl.classify_query("select g(4) ; select 5", true);
    assert_eq!((v.source, v.statements), (Source::Cache, 2));
    assert_eq!(
        cl.classify("select nextval('s')", true).0.pin,
        Some(Pin::Sequence)
    );
    assert_eq!(
        cl.classify("select nextval('t')", true),
        (c("select nextval('t')"), true)
    );
    for i in 0..(CACHE_CAPACITY + 10) {
        // A function call keeps it off the fast path.
        let _ = cl.classify(&format!("select f(c{i})"), true);
    }
    let held: usize = cl.cache.shards().map(|s| s.len()).sum();
    assert!(held <= CACHE_CAPACITY, "{held}");
}

#[test]
fn cache_stays_within_its_byte_budget() {
    let cl = Classifier::new(vec![]);
    // 4,000 distinct keys of almost 4 KiB: 16 MiB if all were kept.
    let filler = "c".repeat(MAX_CACHED_KEY - 64);
    for i in 0..4000 {
        let sql = format!("select f({filler}{i}) from t");
        assert!(!cl.classify(&sql, true).1);
    }
    let (mut bytes, mut held) = (0, 0);
    for shard in cl.cache.shards() {
        assert_eq!(shard.bytes, shard.counted_bytes(), "the byte count drifted");
        assert!(shard.bytes <= CACHE_BYTES / SHARDS);
        bytes += shard.bytes;
        held += shard.len();
    }
    assert!(bytes <= CACHE_BYTES, "{bytes} bytes cached");
    assert!(held > 1000, "evicted too much: {held}");
    // The newest entry is kept.
    let last = format!("select f({filler}3999) from t");
    assert!(cl.classify(&last, true).1);
}

#[test]
fn too_long_goes_to_the_leader() {
    let sql = format!("select {}", "1 + ".repeat(MAX_PARSE_LEN / 4) + "1");
    assert_eq!(c(&sql).reason, Reason::TooLong);
}

/// The whole PostgreSQL 15 regression corpus: no panic, every unparsed
/// statement to the leader, nothing the real grammar calls a write to a replica.
#[test]
fn regression_corpus() {
    let reads = ["SelectStmt", "ExplainStmt", "TransactionStmt"];
    let (mut n, mut parsed, mut replica, mut bad) = (0, 0, 0, Vec::new());
    for e in super::corpus::statements() {
        let (sql, scs, v) = (e.sql.as_str(), e.scs, &e.record);
        let got = classify_uncached(sql, scs, &[]);
        n += 1;
        parsed += usize::from(got.parsed);
        if !got.parsed && got.route != Leader {
            bad.push(format!("unparsed to replica: {sql}"));
        }
        if got.route == Replica {
            replica += 1;
            let stmt = v["pg_stmt"].as_str();
            // An empty statement (only a comment) has no node type and does nothing.
            if v["pg_valid"] == true && stmt.is_some_and(|s| !reads.contains(&s)) {
                bad.push(format!("{stmt:?} to replica: {sql}"));
            }
        }
    }
    eprintln!("corpus: {n} statements, {parsed} parsed, {replica} to replicas");
    assert_eq!(n, 41_562);
    assert!(
        bad.is_empty(),
        "{} misroutes:\n{}",
        bad.len(),
        bad.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// `sql` goes to the leader and its verdict satisfies `must` (`what`).
fn leader_and(sql: &str, must: impl Fn(&Classification) -> bool, what: &str) {
    let v = c(sql);
    assert_eq!(v.route, Leader, "{sql}");
    assert!(must(&v), "{sql} must {what}: {v:?}");
}

/// Issue 7: every statement counts, whatever hides it from a naive lexer.
#[test]
fn pins_cannot_be_smuggled_past_the_lexer() {
    for sql in [
        "select 1 --\r; set role x",
        "select 1; set search_path = a",
        "select 1; create temp table t (x int)",
        "select a$b$ from t; listen c",
        "select /* /* */ ; */ 1; prepare p as select 1",
        "select set_config('a.b', 'c', NOT true)",
        "select set_config('a.b', 'c', $1)",
        "select set_config('a.b', 'c', 't' = 'f')",
        "select set_config('a.b', 'c', false)",
    ] {
        leader_and(sql, |v| v.pin.is_some(), "pin");
    }
    let local = c("select set_config('a.b', 'c', true)");
    assert_eq!((local.route, local.pin), (Leader, None));
}

#[test]
fn unknowable_session_effects_reset_the_backend() {
    for sql in [
        "do $$ begin perform set_config('a.b', 'c', false); end $$",
        "call my_proc()",
        "execute p(1)",
        "select my_func(1)",
        "select * from my_srf(1)",
        "select 1 from (((",
    ] {
        leader_and(sql, |v| v.reset, "reset its backend");
    }
    // A hint may send an unknown function to a replica; the reset stays.
    let v = c("/* pgvane: replica */ select my_func(1)");
    assert_eq!((v.route, v.reset), (Replica, true));
    for sql in ["select 1", "select now()", "insert into t values (1)"] {
        assert!(!c(sql).reset, "{sql}");
    }
}

#[test]
fn node_local_views_go_to_the_leader() {
    for sql in [
        "select * from pg_stat_wal_receiver",
        "select count(*) from pg_stat_activity",
        "select * from pg_catalog.pg_locks",
        "select * from pg_replication_slots",
        "select pg_stat_get_numscans('t'::regclass)",
        "select * from t join pg_statio_user_tables s on true",
    ] {
        let v = c(sql);
        assert_eq!((v.route, v.reason), (Leader, Reason::NodeLocal), "{sql}");
        assert!(!v.reset && v.pin.is_none(), "{sql}");
    }
    let v = c("/* pgvane: replica */ select * from pg_stat_wal_receiver");
    assert_eq!(v.route, Replica);
}

#[test]
fn settings_reads_go_to_replicas() {
    // tests/split_settings.rs relies on this read landing on replicas.
    let sql = "select concat_ws(' | ', current_setting('DateStyle'), '2024-03-04'::date::text, '1 day'::interval::text)";
    assert_eq!(route(sql), Replica);
}

/// A left-deep chain of 9,300 ORs (at the 64 KiB parse limit) is
/// classified on a thread with the default 2 MiB stack, as a worker has:
/// parsing, walking and dropping its tree must not overflow.
#[test]
fn a_deep_expression_does_not_overflow_a_worker_stack() {
    let sql = format!("select 1 from t where {}a=1", "a=1 or ".repeat(9_300));
    assert!(sql.len() < MAX_PARSE_LEN);
    let verdict = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || c(&sql).reason)
        .unwrap()
        .join()
        .unwrap();
    assert!(
        matches!(verdict, Reason::Read | Reason::Unparsed),
        "{verdict:?}"
    );
}

#[test]
fn long_statements_are_never_cached() {
    let cl = Classifier::new(Vec::new());
    let long = format!(
        "select f({}) from t",
        "c, ".repeat(MAX_CACHED_KEY / 3) + "c"
    );
    assert!(!cl.classify(&long, true).1);
    assert!(
        !cl.classify(&long, true).1,
        "a statement over 4 KiB was cached"
    );
    assert!(!cl.classify("select f(c) from t", true).1);
    assert!(cl.classify("select f(c) from t", true).1);
}

#[test]
fn query_texts_over_the_port_limit_go_to_the_leader_unlexed() {
    let cl = Classifier::new(vec![]).with_max_query_len(64);
    let short = "select 1";
    let long = format!("select {}", "1 + ".repeat(20) + "1");
    assert!(long.len() > 64);
    let (c, _) = cl.classify(short, true);
    assert_eq!(c.route, Route::Replica);
    let (c, cached) = cl.classify(&long, true);
    assert_eq!(
        (c.route, c.reason, cached),
        (Route::Leader, Reason::TooLong, false)
    );
    // The default keeps it a read.
    let (c, _) = Classifier::new(vec![]).classify(&long, true);
    assert_eq!(c.route, Route::Replica);
}
