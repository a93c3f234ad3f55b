//! deploy/k8s checked as files (no cluster here): every manifest parses,
//! names and labels agree across them, the container's ports, probes and
//! mounts match the config in the ConfigMap, and that config, with the
//! Secret's files where the pod would mount them, passes `pgvane --check`
//! and answers the probes' paths when started.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;
use common::*;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::time::Duration;

fn manifest(name: &str) -> Value {
    let path = root().join("deploy/k8s").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
}

/// The port number of an `ip:port` listen address.
fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

struct Manifests {
    config_map: Value,
    secret: Value,
    deployment: Value,
    service: Value,
    admin_service: Value,
    pdb: Value,
    monitor: Value,
}

fn load() -> Manifests {
    let m = Manifests {
        config_map: manifest("configmap.yaml"),
        secret: manifest("secret.yaml"),
        deployment: manifest("deployment.yaml"),
        service: manifest("service.yaml"),
        admin_service: manifest("service-admin.yaml"),
        pdb: manifest("poddisruptionbudget.yaml"),
        monitor: manifest("servicemonitor.yaml"),
    };
    for (v, kind) in [
        (&m.config_map, "ConfigMap"),
        (&m.secret, "Secret"),
        (&m.deployment, "Deployment"),
        (&m.service, "Service"),
        (&m.admin_service, "Service"),
        (&m.pdb, "PodDisruptionBudget"),
        (&m.monitor, "ServiceMonitor"),
    ] {
        assert_eq!(s(&v["kind"]), kind);
    }
    m
}

/// The pgvane config the ConfigMap holds.
fn config_text(m: &Manifests) -> String {
    s(&m.config_map["data"]["pgvane.yaml"]).to_owned()
}

/// The config and the Secret's files written where a test can read them:
/// the Secret's mount path replaced by a temporary directory.
fn materialize(m: &Manifests) -> std::path::PathBuf {
    let container = &seq(&m.deployment["spec"]["template"]["spec"]["containers"])[0];
    let secret_mount = seq(&container["volumeMounts"])
        .iter()
        .find(|v| s(&v["name"]) == "secret")
        .map(|v| s(&v["mountPath"]).to_owned())
        .unwrap();
    let dir = temp_path("k8s-secret");
    std::fs::create_dir_all(&dir).unwrap();
    for (k, v) in m.secret["stringData"].as_mapping().unwrap() {
        std::fs::write(dir.join(s(k)), s(v)).unwrap();
    }
    let text = config_text(m).replace(&secret_mount, &dir.display().to_string());
    let path = temp_path("k8s-pgvane.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = manifest("kustomization.yaml");
    let listed: BTreeSet<String> = seq(&k["resources"])
        .iter()
        .map(|r| s(r).to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
    load();
}

#[test]
fn ports_probes_mounts_and_selectors_agree_with_the_config() {
    let m = load();
    let config: Value = serde_yaml::from_str(&config_text(&m)).unwrap();
    let pod = &m.deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    // Every selector picks the pods.
    assert_eq!(&m.deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&m.service["spec"]["selector"], labels);
    assert_eq!(&m.admin_service["spec"]["selector"], labels);
    assert_eq!(&m.pdb["spec"]["selector"]["matchLabels"], labels);
    // The monitor picks the admin Service and not the applications' one.
    let picks = |svc: &Value| {
        m.monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| svc["metadata"]["labels"].get(k) == Some(v))
    };
    assert!(picks(&m.admin_service) && !picks(&m.service));
    // A client's cancel requests reach the pod of its session.
    assert_eq!(s(&m.service["spec"]["sessionAffinity"]), "ClientIP");
    let replicas = m.deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(m.pdb["spec"]["minAvailable"].as_u64().unwrap() < replicas);

    // Container ports: exactly the config's listeners, admin among them.
    let container = &seq(&pod["spec"]["containers"])[0];
    let named: std::collections::BTreeMap<String, u64> = seq(&container["ports"])
        .iter()
        .map(|p| {
            (
                s(&p["name"]).to_owned(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: BTreeSet<u64> = BTreeSet::new();
    for (_, cluster) in config["clusters"].as_mapping().unwrap() {
        for (name, port) in cluster["ports"].as_mapping().unwrap() {
            let n = port_of(s(&port["listen"]));
            assert_eq!(named.get(s(name)), Some(&n), "port {name:?}");
            want.insert(n);
        }
    }
    let admin = port_of(s(&config["listen_address"]));
    assert_eq!(named.get("admin"), Some(&admin));
    want.insert(admin);
    assert_eq!(named.values().copied().collect::<BTreeSet<_>>(), want);

    // Probes on the admin port: /ready for readiness, /health for liveness.
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        assert_eq!(s(&container[probe]["httpGet"]["path"]), path);
        assert_eq!(s(&container[probe]["httpGet"]["port"]), "admin");
    }
    // The Services target named container ports: the applications' one
    // every client port and not admin, the admin one admin alone, which
    // the monitor scrapes.
    let targets = |svc: &Value| -> BTreeSet<String> {
        seq(&svc["spec"]["ports"])
            .iter()
            .map(|p| s(&p["targetPort"]).to_owned())
            .collect()
    };
    let client_ports: BTreeSet<String> = named.keys().filter(|n| *n != "admin").cloned().collect();
    assert_eq!(targets(&m.service), client_ports);
    assert_eq!(
        targets(&m.admin_service),
        BTreeSet::from(["admin".to_owned()])
    );
    let ep = &seq(&m.monitor["spec"]["endpoints"])[0];
    assert_eq!(
        s(&ep["port"]),
        s(&seq(&m.admin_service["spec"]["ports"])[0]["name"])
    );
    assert_eq!(s(&ep["path"]), "/metrics");

    // Mounts: args name a key of the ConfigMap in its mounted directory
    // (no subPath: an edited ConfigMap must reach the pod).
    let mounts = seq(&container["volumeMounts"]);
    let cfg_mount = mounts.iter().find(|v| s(&v["name"]) == "config").unwrap();
    assert!(cfg_mount.get("subPath").is_none());
    let arg = s(&seq(&container["args"])[0]);
    let file = arg
        .strip_prefix(&format!("{}/", s(&cfg_mount["mountPath"])))
        .unwrap_or_else(|| panic!("{arg} is not in the config mount"));
    assert!(m.config_map["data"].get(file).is_some(), "{file}");
    let volumes = seq(&pod["spec"]["volumes"]);
    let vol = |n: &str| volumes.iter().find(|v| s(&v["name"]) == n).unwrap();
    assert_eq!(
        s(&vol("config")["configMap"]["name"]),
        s(&m.config_map["metadata"]["name"])
    );
    assert_eq!(
        s(&vol("secret")["secret"]["secretName"]),
        s(&m.secret["metadata"]["name"])
    );
    // The pod's user can read the Secret's files: they are root-owned, so
    // its group (fsGroup) or everyone must have read access.
    let pod_sc = &pod["spec"]["securityContext"];
    if pod_sc["runAsUser"].as_u64().is_some_and(|u| u != 0) {
        let mode = vol("secret")["secret"]["defaultMode"]
            .as_u64()
            .unwrap_or(0o644);
        let by_group = pod_sc["fsGroup"].as_u64().is_some() && mode & 0o040 != 0;
        assert!(
            by_group || mode & 0o004 != 0,
            "the Secret is unreadable by the pod's user"
        );
    }
    // Every secret file the config names is a key of the Secret.
    let secret_dir = s(&mounts.iter().find(|v| s(&v["name"]) == "secret").unwrap()["mountPath"]);
    let text = config_text(&m);
    for (i, _) in text.match_indices(secret_dir) {
        let file: String = text[i + secret_dir.len() + 1..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        assert!(
            m.secret["stringData"].get(&file).is_some(),
            "{file} not in the Secret"
        );
    }

    // The pod outlives its preStop pause plus the drain.
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pre_stop = seq(&container["lifecycle"]["preStop"]["exec"]["command"])[1]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let drain = config["drain_timeout_ms"]
        .as_u64()
        .unwrap_or(10_000)
        .div_ceil(1000);
    assert!(
        grace > pre_stop + drain,
        "grace {grace} s ≤ {pre_stop} + {drain}"
    );
}

#[test]
fn the_pods_config_passes_check_and_answers_the_probes() {
    let m = load();
    let path = materialize(&m);
    let (ok, out) = check_file(&path, &[]);
    assert!(ok, "{out}");
    // Started on loopback ports (its Patroni hosts do not resolve here):
    // /health is 200 and /ready 503 until a map comes, as the probes need.
    let mut text = std::fs::read_to_string(&path).unwrap();
    for listen in ["0.0.0.0:6432", "0.0.0.0:6433", "0.0.0.0:6435"] {
        text = text.replace(listen, &format!("127.0.0.1:{}", free_port()));
    }
    let admin = free_port();
    text = text.replace("0.0.0.0:8009", &format!("127.0.0.1:{admin}"));
    let pv = Pgvane::start_unready(&text, admin);
    assert_eq!(pv.http("GET", "/health").map(|r| r.0), Some(200));
    let ready = pv.http("GET", "/ready").unwrap();
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(ready.1.contains("main"), "{ready:?}");
    assert!(wait_until(Duration::from_secs(5), || pv
        .http("GET", "/metrics")
        .is_some_and(|r| r.0 == 200)));
}
