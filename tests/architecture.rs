//! Guards DESIGN.md's dependency rules: reads `src/` and fails on a
//! forbidden `use crate::…` (or `crate::…` path) between modules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Modules each module may use (besides itself).
fn allowed(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        "protocol" | "classifier" | "telemetry" | "control" | "workers" | "auth" | "admission"
        | "beacon" => &[],
        "gate" => &["beacon"],
        "config" => &["auth"],
        "backend" => &["auth", "protocol", "topology", "config", "tls"],
        "pool" => &["backend", "topology", "tls", "workers"],
        "session" => &[
            "auth",
            "backend",
            "beacon",
            "classifier",
            "config",
            "consistency",
            "gate",
            "pool",
            "protocol",
            "router",
            "telemetry",
            "tls",
            "topology",
            "tracker",
            "workers",
        ],
        "topology" => &["config", "telemetry"],
        "tracker" => &["backend", "config", "telemetry", "tls", "topology"],
        // protocol for the SQLSTATEs of its refusals (a pure leaf).
        "router" => &["topology", "classifier", "config", "protocol"],
        "consistency" => &["topology", "tracker"],
        // The role-port client flow (choose, connect, leader wait) lives in
        // relay beside its engines, as the split flow lives in session.
        "relay" => &[
            "backend",
            "config",
            "consistency",
            "gate",
            "protocol",
            "router",
            "telemetry",
            "topology",
        ],
        "tls" => &["config"],
        "signals" => &["control"],
        "notify" => &[],
        // A client of the admin API over HTTP: it shares no code with pgvane.
        "status" => &[],
        "listener" => &[
            "admission",
            "beacon",
            "consistency",
            "gate",
            "backend",
            "pool",
            "session",
            "classifier",
            "workers",
            "config",
            "protocol",
            "relay",
            "router",
            "telemetry",
            "tls",
            "topology",
        ],
        // relay: its tests build a port, which names the relay engine.
        // protocol, auth: the PostgreSQL-protocol console.
        "admin" => &[
            "auth",
            "protocol",
            "relay",
            "session",
            "tracker",
            "consistency",
            "pool",
            "workers",
            "control",
            "gate",
            "listener",
            "router",
            "telemetry",
            "topology",
            "config",
        ],
        "app" | "main" | "lib" => return None,
        other => {
            panic!("module {other} has no rule: add it to tests/architecture.rs and DESIGN/docs")
        }
    })
}

#[test]
fn dependency_rules_hold() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut violations = Vec::new();
    for f in &all {
        let module = module_of(&src, f);
        let Some(ok) = allowed(&module) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(pos) = rest.find("crate::") {
                let after = &rest[pos + 7..];
                let used: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if used != module && !ok.contains(&used.as_str()) {
                    violations.push(format!(
                        "{}:{}: {module} uses crate::{used}",
                        f.display(),
                        i + 1
                    ));
                }
                rest = after;
            }
        }
    }
    assert!(
        violations.is_empty(),
        "forbidden dependencies:\n{}",
        violations.join("\n")
    );
}
