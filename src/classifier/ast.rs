//! The sqlparser step: parse one statement with the PostgreSQL dialect and
//! walk the AST for locking clauses, `SELECT INTO`, writing CTEs at any
//! depth and every function call. `None` means "could not parse".

use super::functions::{FnClass, class_of};
use super::{Classification, Reason, Route};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Query, Select, SetExpr, Statement,
    TableFactor, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// Nesting limit handed to sqlparser.
const RECURSION_LIMIT: usize = 64;

struct Walk<'a> {
    allow: &'a [String],
    verdict: Classification,
}

impl Walk<'_> {
    fn send_to_leader(&mut self, reason: Reason) {
        // The strongest reason wins: a write beats an unknown function.
        if self.verdict.route == Route::Replica || self.verdict.reason == Reason::UnknownFunction {
            self.verdict.route = Route::Leader;
            self.verdict.reason = reason;
        }
    }

    fn function(&mut self, name: &str, third_arg_true: bool) {
        let short = short_name(name);
        match class_of(&short, third_arg_true, self.allow) {
            FnClass::Read => {}
            FnClass::Write => self.send_to_leader(if short == "pg_is_in_recovery" {
                Reason::Probe
            } else {
                Reason::WriteFunction
            }),
            FnClass::Session(pin) => {
                self.send_to_leader(Reason::WriteFunction);
                self.verdict.pin = self.verdict.pin.or(Some(pin));
            }
            FnClass::NodeLocal => {
                if self.verdict.route == Route::Replica {
                    self.verdict.route = Route::Leader;
                    self.verdict.reason = Reason::NodeLocal;
                }
            }
            FnClass::Unknown => {
                // Its session effects cannot be known: reset the backend.
                self.verdict.reset = true;
                if self.verdict.route == Route::Replica || self.verdict.reason == Reason::NodeLocal
                {
                    self.verdict.route = Route::Leader;
                    self.verdict.reason = Reason::UnknownFunction;
                }
            }
        }
    }

    fn relation(&mut self, name: &str) {
        if is_node_local_view(&short_name(name)) && self.verdict.route == Route::Replica {
            self.verdict.route = Route::Leader;
            self.verdict.reason = Reason::NodeLocal;
        }
    }
}

/// The unqualified, unquoted, lower-case name of `a.b."c"`.
fn short_name(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// System views whose rows describe the node that answers (statistics,
/// locks, replication): the leader's are the ones a client means
/// (CLASSIFIER.md §3.4), so they go there unless a hint says replica.
fn is_node_local_view(name: &str) -> bool {
    name.starts_with("pg_stat_")
        || name.starts_with("pg_statio_")
        || matches!(
            name,
            "pg_locks"
                | "pg_replication_slots"
                | "pg_replication_origin_status"
                | "pg_prepared_xacts"
                | "pg_backend_memory_contexts"
                | "pg_shmem_allocations"
        )
}

/// True only when the third argument is the literal `true`: anything else
/// (`NOT true`, a parameter, an expression) may be false and pins.
fn third_arg_is_literal_true(args: &FunctionArguments) -> bool {
    let FunctionArguments::List(list) = args else {
        return false;
    };
    match list.args.get(2) {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => {
            list.args.len() == 3 && e.to_string().eq_ignore_ascii_case("true")
        }
        _ => false,
    }
}

impl Visitor for Walk<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            self.send_to_leader(Reason::Lock);
        }
        if matches!(
            *q.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
            self.send_to_leader(Reason::Write);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.send_to_leader(Reason::Write);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.function(&f.name.to_string(), third_arg_is_literal_true(&f.args));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                self.function(&name.to_string(), false);
            }
            TableFactor::Table { name, .. } => self.relation(&name.to_string()),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        if !matches!(s, Statement::Query(_)) {
            self.send_to_leader(Reason::Write);
        }
        ControlFlow::Continue(())
    }
}

/// Parses and walks one statement; `None` when sqlparser fails (or panics).
pub(super) fn analyze(sql: &str, allow: &[String]) -> Option<Classification> {
    let parsed = std::panic::catch_unwind(|| {
        Parser::new(&PostgreSqlDialect {})
            .with_recursion_limit(RECURSION_LIMIT)
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statements())
    })
    .ok()?
    .ok()?;
    if parsed.is_empty() {
        return None;
    }
    let mut walk = Walk {
        allow,
        verdict: Classification::new(Route::Replica, Reason::Read),
    };
    for stmt in &parsed {
        let _ = stmt.visit(&mut walk);
    }
    Some(walk.verdict)
}
