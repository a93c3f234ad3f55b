//! docker-compose.yml checked as a file (no Docker engine here): valid
//! YAML, the lab's services and ports, a pgvane config that passes
//! `--check`, Dockerfiles whose COPY sources exist.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use serde_yaml::Value;

fn compose() -> Value {
    let mut v: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap())
            .unwrap();
    v.apply_merge().unwrap();
    v
}

#[test]
fn services_mirror_the_lab() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, vec!["etcd", "node1", "node2", "node3", "pgvane"]);
    for n in ["node1", "node2", "node3"] {
        // Anchors merged: each node builds the Patroni image and names itself.
        let s = &c["services"][n];
        assert_eq!(s["environment"]["PATRONI_NAME"].as_str(), Some(n));
        assert_eq!(s["environment"]["PATRONI_SCOPE"].as_str(), Some("lab"));
    }
    let ports: Vec<&str> = c["services"]["pgvane"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        vec!["6432:6432", "6433:6433", "6434:6434", "8009:8009"]
    );
    let entry =
        std::fs::read_to_string(root().join("deploy/docker/patroni-entrypoint.sh")).unwrap();
    let lab = std::fs::read_to_string(root().join("deploy/lab/lab.sh")).unwrap();
    for setting in [
        "ttl: 20",
        "loop_wait: 2",
        "retry_timeout: 5",
        "listen: 0.0.0.0:8008",
        "use_pg_rewind: true",
    ] {
        assert!(entry.contains(setting), "{setting}");
        // The lab takes its timing as options, with these defaults.
        let lab_setting = match setting.split_once(": ") {
            Some(("ttl", v)) => format!("TTL=${{LAB_TTL:-{v}}}"),
            Some(("loop_wait", v)) => format!("LOOP_WAIT=${{LAB_LOOP_WAIT:-{v}}}"),
            Some(("retry_timeout", v)) => format!("RETRY_TIMEOUT=${{LAB_RETRY_TIMEOUT:-{v}}}"),
            _ => setting.replace("0.0.0.0", "$ip"),
        };
        assert!(lab.contains(&lab_setting), "lab lacks {lab_setting}");
    }
}

#[test]
fn mounted_pgvane_config_passes_check() {
    let c = compose();
    let volume = c["services"]["pgvane"]["volumes"][0].as_str().unwrap();
    let (host, inside) = volume.split_once(':').unwrap();
    assert!(inside.starts_with("/etc/pgvane/pgvane.yaml"));
    let cmd: Vec<&str> = c["services"]["pgvane"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd, vec!["--config", "/etc/pgvane/pgvane.yaml"]);
    let out = std::process::Command::new(bin())
        .args(["--check", "--config"])
        .arg(root().join(host.trim_start_matches("./")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerfiles_exist_and_copy_existing_files() {
    let c = compose();
    let mut files = vec![
        c["services"]["pgvane"]["build"]["dockerfile"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    files.push(
        c["x-patroni"]["build"]["dockerfile"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    for f in files {
        let text = std::fs::read_to_string(root().join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains("FROM "), "{f}");
        for line in text
            .lines()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            for src in &parts[1..parts.len() - 1] {
                assert!(root().join(src).exists(), "{f}: COPY source {src} missing");
            }
        }
    }
}
