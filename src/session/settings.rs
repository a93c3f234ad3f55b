//! Session settings without a pool per value: a session's startup
//! parameters and the `SET`s it ran in autocommit are kept as an ordered
//! list and applied to each backend it checks out (when that backend's
//! settings differ), with PostgreSQL's meaning of `DEFAULT`, `RESET x`,
//! `RESET ALL`, lists and quoting. Pure: the session feeds it.

use crate::backend::{Setting, Settings};
use crate::classifier::lexer;
use std::sync::Arc;

/// Settings a `SET` of which is replayed instead of pinning: client
/// formatting and timeouts that drivers set at connect (pgJDBC sends
/// `SET extra_float_digits = 3`). Anything else pins the session.
pub(super) const REPLAYABLE: &[&str] = &[
    "application_name",
    "extra_float_digits",
    "datestyle",
    "timezone",
    "intervalstyle",
    "client_encoding",
    "bytea_output",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
    "client_min_messages",
];

/// What a successful `SET`/`RESET` statement does to the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Replay {
    /// `SET [SESSION] name {=|TO} value`: replay the text.
    Set(String),
    /// `RESET name` or `SET name {=|TO} DEFAULT`: back to the startup value.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
}

/// Reads a single `SET`/`RESET` statement pgvane can replay; `scs` is the
/// session's `standard_conforming_strings`.
pub(super) fn replay_of(stmt: &str, scs: bool) -> Option<Replay> {
    let words = lexer::words(stmt, scs);
    let w = |i: usize| words.get(i).map_or("", String::as_str);
    let (verb, mut at) = (w(0), 1);
    if verb == "SET" && w(1) == "SESSION" && w(2) != "AUTHORIZATION" && w(2) != "CHARACTERISTICS" {
        at = 2;
    }
    let (name, next) = if w(at) == "TIME" && w(at + 1) == "ZONE" {
        ("timezone".to_owned(), at + 2)
    } else {
        (w(at).to_ascii_lowercase(), at + 1)
    };
    match verb {
        "RESET" if name == "all" && words.len() == 2 => Some(Replay::ResetAll),
        "RESET" if REPLAYABLE.contains(&name.as_str()) && words.len() == next => {
            Some(Replay::Reset(name))
        }
        "SET" if REPLAYABLE.contains(&name.as_str()) => {
            let rest: Vec<&str> = words[next.min(words.len())..]
                .iter()
                .map(String::as_str)
                .filter(|w| *w != "TO")
                .collect();
            if rest == ["DEFAULT"] && !stmt.contains('\'') {
                Some(Replay::Reset(name))
            } else if rest.first() == Some(&"LOCAL") {
                None
            } else {
                Some(Replay::Set(name))
            }
        }
        _ => None,
    }
}

/// A session's settings: its startup parameters and the replayed `SET`s.
#[derive(Debug, Clone)]
pub(super) struct SessionSettings {
    startup: Vec<Setting>,
    /// The whole ordered list applied to backends.
    pub(super) wanted: Settings,
}

impl SessionSettings {
    /// From startup parameters (lower-cased names, in the client's order).
    pub(super) fn new(startup: Vec<(String, String)>) -> Self {
        let startup: Vec<Setting> = startup
            .into_iter()
            .map(|(k, v)| Setting::Startup(k.to_ascii_lowercase(), v))
            .collect();
        Self {
            wanted: Arc::new(startup.clone()),
            startup,
        }
    }

    /// Whether a startup parameter sets `name`.
    fn has_startup(&self, name: &str) -> bool {
        self.startup.iter().any(|s| s.name() == name)
    }

    /// Records a replayed statement that succeeded. Returns whether the
    /// backend that ran it now has exactly [`Self::wanted`] (else its
    /// settings must be re-applied before it serves this session again).
    pub(super) fn record(&mut self, replay: &Replay, stmt: &str) -> bool {
        let mut list: Vec<Setting> = (*self.wanted).clone();
        let exact = match replay {
            Replay::Set(name) => {
                list.retain(|s| !matches!(s, Setting::Set(n, _) if n == name));
                list.push(Setting::Set(
                    name.clone(),
                    Arc::from(stmt.trim().trim_end_matches(';')),
                ));
                true
            }
            Replay::Reset(name) => {
                list.retain(|s| !matches!(s, Setting::Set(n, _) if n == name));
                // RESET on the backend went to the server's default, not
                // to this client's startup value.
                !self.has_startup(name)
            }
            Replay::ResetAll => {
                list.retain(|s| matches!(s, Setting::Startup(..)));
                self.startup.is_empty()
            }
        };
        self.wanted = Arc::new(list);
        exact
    }

    /// The startup values that the statements of `sql`, run successfully
    /// on a backend, left at the server's defaults: each `RESET` of a
    /// startup parameter (or `RESET ALL`) not followed by a `SET` of it.
    pub(super) fn reset_by(&self, sql: &str, scs: bool) -> Vec<Setting> {
        let mut reset: Vec<&Setting> = Vec::new();
        for stmt in lexer::split(sql, scs) {
            match replay_of(stmt, scs) {
                Some(Replay::ResetAll) => reset = self.startup.iter().collect(),
                Some(Replay::Reset(name)) => {
                    reset.retain(|s| s.name() != name);
                    reset.extend(self.startup.iter().filter(|s| s.name() == name));
                }
                Some(Replay::Set(name)) => reset.retain(|s| s.name() != name),
                None => {}
            }
        }
        reset.into_iter().cloned().collect()
    }

    /// `DISCARD ALL` succeeded: back to the startup parameters.
    pub(super) fn discard_all(&mut self) {
        self.wanted = Arc::new(self.startup.clone());
    }
}

/// Splits libpq's `options` startup parameter (`-c name=value`,
/// `--name=value`, backslash escapes) into settings.
///
/// # Errors
/// The option pgvane cannot apply.
pub(super) fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    let mut any = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    any = true;
                }
            }
            c if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let pair = if w == "-c" {
            it.next()
                .ok_or_else(|| "option -c needs name=value".to_owned())?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(format!(
                "pgvane does not support the startup option \"{w}\""
            ));
        };
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("startup option \"{pair}\" has no value"))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays() {
        let r = |s: &str| replay_of(s, true);
        assert_eq!(
            r("SET extra_float_digits = 3"),
            Some(Replay::Set("extra_float_digits".into()))
        );
        assert_eq!(
            r("set session TimeZone to 'Europe/Berlin';"),
            Some(Replay::Set("timezone".into()))
        );
        assert_eq!(
            r("SET TIME ZONE 'UTC'"),
            Some(Replay::Set("timezone".into()))
        );
        assert_eq!(
            r("set search_path = a, b"),
            Some(Replay::Set("search_path".into()))
        );
        assert_eq!(
            r("SET DateStyle = 'Postgres, MDY'"),
            Some(Replay::Set("datestyle".into()))
        );
        assert_eq!(
            r("set search_path to default"),
            Some(Replay::Reset("search_path".into()))
        );
        assert_eq!(
            r("SET statement_timeout = DEFAULT"),
            Some(Replay::Reset("statement_timeout".into()))
        );
        assert_eq!(
            r("SET search_path = 'default'"),
            Some(Replay::Set("search_path".into()))
        );
        assert_eq!(
            r("RESET search_path"),
            Some(Replay::Reset("search_path".into()))
        );
        assert_eq!(r("reset all"), Some(Replay::ResetAll));
        assert_eq!(r("set local statement_timeout = 5"), None);
        assert_eq!(r("set role x"), None);
        assert_eq!(r("set session authorization x"), None);
        assert_eq!(
            r("set maintenance_work_mem = '1GB'"),
            None,
            "not in the list"
        );
        assert_eq!(r("reset role"), None);
    }

    #[test]
    fn resets_left_at_the_server_default_are_found_in_order() {
        let s = SessionSettings::new(vec![
            ("datestyle".into(), "SQL, DMY".into()),
            ("search_path".into(), "x".into()),
        ]);
        let names = |sql: &str| -> Vec<String> {
            s.reset_by(sql, true)
                .iter()
                .map(|x| x.name().to_owned())
                .collect()
        };
        assert_eq!(names("reset datestyle"), ["datestyle"]);
        assert_eq!(
            names("begin; reset all; commit"),
            ["datestyle", "search_path"]
        );
        assert_eq!(names("reset all; set search_path = y"), ["datestyle"]);
        assert_eq!(
            names("reset datestyle; set datestyle = iso"),
            Vec::<String>::new()
        );
        assert_eq!(names("set search_path to default"), ["search_path"]);
        assert_eq!(names("reset work_mem"), Vec::<String>::new());
    }

    #[test]
    fn reset_returns_to_the_startup_value() {
        let mut s = SessionSettings::new(vec![("search_path".into(), "a".into())]);
        assert!(s.record(&Replay::Set("search_path".into()), "set search_path = b"));
        assert_eq!(s.wanted.len(), 2);
        assert!(!s.record(&Replay::Reset("search_path".into()), "reset search_path"));
        assert_eq!(
            *s.wanted,
            vec![Setting::Startup("search_path".into(), "a".into())]
        );
        assert!(s.record(&Replay::Set("work_mem".into()), "set work_mem = '8MB'"));
        assert!(s.record(&Replay::Set("work_mem".into()), "set work_mem = '9MB'"));
        assert_eq!(s.wanted.len(), 2, "a later SET replaces the earlier one");
        assert!(!s.record(&Replay::ResetAll, "reset all"));
        assert_eq!(s.wanted.len(), 1);
        s.discard_all();
        assert_eq!(s.wanted.len(), 1);
    }

    #[test]
    fn options_are_split_like_libpq() {
        assert_eq!(
            parse_options("-c search_path=a,\\ b --work-mem=8MB -cstatement_timeout=5").unwrap(),
            vec![
                ("search_path".to_owned(), "a, b".to_owned()),
                ("work_mem".to_owned(), "8MB".to_owned()),
                ("statement_timeout".to_owned(), "5".to_owned()),
            ]
        );
        assert!(parse_options("-d 5").is_err());
        assert!(parse_options("-c").is_err());
    }
}
