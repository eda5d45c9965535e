//! Properties of what is rendered, checked on the parsed objects.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec};

fn render(text: &str) -> Vec<hass_manifests::Manifest> {
    let values = hass_manifests::values::parse(text).unwrap();
    hass_manifests::render(&values).unwrap()
}

fn example(name: &str) -> Vec<hass_manifests::Manifest> {
    let path = format!(
        "{}/../../examples/{name}.values.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let values = hass_manifests::values::load(std::path::Path::new(&path)).unwrap();
    hass_manifests::render(&values).unwrap()
}

fn parse<T: serde::de::DeserializeOwned>(m: &hass_manifests::Manifest) -> T {
    serde_saphyr::from_str(&m.yaml).unwrap_or_else(|e| panic!("{}: {e}\n{}", m.name, m.yaml))
}

fn find<'a>(
    ms: &'a [hass_manifests::Manifest],
    kind: &str,
    name: &str,
) -> &'a hass_manifests::Manifest {
    ms.iter()
        .find(|m| m.kind == kind && m.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// PyYAML reads YAML 1.1 like Kubernetes' reader: `on` is a bool there,
/// `12:30` a sexagesimal int, `0755` octal. Such strings must come back as
/// the same strings.
#[test]
fn yaml_1_1_lookalike_strings_stay_strings_in_pyyaml() {
    let tricky = [
        "on",
        "off",
        "yes",
        "no",
        "y",
        "n",
        "true",
        "False",
        "NO",
        "~",
        "null",
        "",
        "12:30",
        "0755",
        "1e3",
        "0x1F",
        ".inf",
        "-.5",
        "2024-01-01",
        "@at",
        "a: b",
        "# hash",
        "- dash",
        "'quote",
        "multi\nline\n",
        "  padded",
        "*star",
        "!tag",
        "%pct",
        "{}",
        "[]",
    ];
    let data: std::collections::BTreeMap<String, String> = tricky
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("k{i:02}"), (*s).to_owned()))
        .collect();
    let cm = ConfigMap {
        data: Some(data.clone()),
        ..Default::default()
    };
    let text = hass_manifests::yaml::to_yaml(&cm).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())['data']))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 with PyYAML (pip install -r tests/requirements.txt)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap();
    for (key, want) in &data {
        assert_eq!(
            back[key],
            serde_json::Value::String(want.clone()),
            "{key} in\n{text}"
        );
    }
}

/// Every pod template of a render, by workload: StatefulSets, DaemonSets
/// and the CronJobs' Jobs.
fn pods(ms: &[hass_manifests::Manifest]) -> Vec<(String, PodSpec)> {
    let mut pods = Vec::new();
    for m in ms {
        let spec = match m.kind.as_str() {
            "StatefulSet" => parse::<StatefulSet>(m).spec.unwrap().template.spec,
            "DaemonSet" => parse::<DaemonSet>(m).spec.unwrap().template.spec,
            "CronJob" => {
                parse::<CronJob>(m)
                    .spec
                    .unwrap()
                    .job_template
                    .spec
                    .unwrap()
                    .template
                    .spec
            }
            "Deployment" | "Job" | "Pod" | "ReplicaSet" => {
                panic!(
                    "{} {}: a workload kind this test does not read",
                    m.kind, m.name
                )
            }
            _ => continue,
        };
        pods.push((format!("{} {}", m.kind, m.name), spec.unwrap()));
    }
    pods
}

/// Every container of every workload (the pg_dump CronJob's included):
/// requests and limits, all capabilities dropped, RuntimeDefault seccomp, no
/// privilege escalation, UID 65532 as non-root on a read-only root
/// filesystem. The exceptions are values the user chose, each annotated
/// for checkov: Home Assistant with `run_as: root`, and the bridge with
/// `device_access: privileged`.
#[test]
fn every_pod_is_locked_down_and_has_requests_and_limits() {
    let mut renders = vec![("defaults".to_owned(), hass_manifests::Values::default())];
    for name in ["minimal", "homelab", "everything"] {
        let path = format!(
            "{}/../../examples/{name}.values.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let values = hass_manifests::values::load(std::path::Path::new(&path)).unwrap();
        renders.push((name.to_owned(), values));
    }
    let mut kinds = std::collections::BTreeSet::new();
    for (source, values) in &renders {
        let ms = hass_manifests::render(values).unwrap();
        let pods = pods(&ms);
        assert!(!pods.is_empty());
        for (workload, pod) in pods {
            kinds.insert(workload.split(' ').next().unwrap().to_owned());
            assert_eq!(
                pod.automount_service_account_token,
                Some(false),
                "{source}: {workload}"
            );
            let pod_sc = pod.security_context.clone().unwrap_or_default();
            assert_eq!(
                pod_sc.seccomp_profile.map(|p| p.type_).as_deref(),
                Some("RuntimeDefault"),
                "{source}: {workload}"
            );
            let containers = pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten());
            for c in containers {
                let at = format!("{source}: {workload}/{}", c.name);
                let r = c.resources.as_ref().unwrap();
                for key in ["cpu", "memory"] {
                    assert!(
                        r.requests.as_ref().unwrap().contains_key(key),
                        "{at}: {key}"
                    );
                    assert!(r.limits.as_ref().unwrap().contains_key(key), "{at}: {key}");
                }
                let sc = c.security_context.as_ref().unwrap();
                assert_eq!(
                    sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                    Some("RuntimeDefault"),
                    "{at}"
                );
                let caps = sc.capabilities.as_ref().unwrap();
                assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{at}");

                let root_home_assistant = c.name == "home-assistant"
                    && values.home_assistant.run_as == hass_manifests::values::RunAs::Root;
                let privileged_bridge = c.name == "serial-bridge"
                    && values.serial_bridge.device_access
                        == hass_manifests::values::DeviceAccess::Privileged;
                // Only the bridge may ever be privileged, never Home Assistant's pod.
                assert_eq!(sc.privileged == Some(true), privileged_bridge, "{at}");
                assert_eq!(
                    sc.allow_privilege_escalation,
                    Some(privileged_bridge),
                    "{at}: privileged implies escalation, nothing else may"
                );
                if root_home_assistant {
                    // s6-overlay's init: root, a writable root filesystem and
                    // five capabilities back, nothing more.
                    assert_eq!(
                        caps.add.as_deref().unwrap_or_default(),
                        ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"],
                        "{at}"
                    );
                    continue;
                }
                assert_eq!(caps.add, None, "{at}");
                let uid = sc.run_as_user.or(pod_sc.run_as_user);
                let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root);
                assert_eq!(uid, Some(65532), "{at}");
                assert_eq!(sc.run_as_group.or(pod_sc.run_as_group), Some(65532), "{at}");
                assert_eq!(non_root, Some(true), "{at}");
                assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}");
            }
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["CronJob", "DaemonSet", "StatefulSet"]
    );
}

#[test]
fn home_assistant_probes_go_through_the_exporter_once_a_token_is_set() {
    let ms = example("homelab");
    let sts: StatefulSet = parse(find(&ms, "StatefulSet", "hass"));
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let ha = pod
        .containers
        .iter()
        .find(|c| c.name == "home-assistant")
        .unwrap();
    let startup = ha.startup_probe.as_ref().unwrap();
    let get = startup.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/probe/ha/startup"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9184)
    );
    // 15 minutes of startup budget by default.
    assert_eq!(
        startup.period_seconds.unwrap() * startup.failure_threshold.unwrap(),
        900
    );
    let ready = ha
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/probe/ha/ready"));
    let live = ha
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/probe/ha/live"));

    // Without a token the exporter cannot poll: probes fetch /manifest.json.
    let ms = render("");
    let sts: StatefulSet = parse(find(&ms, "StatefulSet", "home-assistant"));
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let ha = pod
        .containers
        .iter()
        .find(|c| c.name == "home-assistant")
        .unwrap();
    let get = ha
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(get.path.as_deref(), Some("/manifest.json"));
}

#[test]
fn host_network_uses_cluster_first_with_host_net_and_records_why() {
    let ms = render("home_assistant:\n  host_network: true\n");
    let m = find(&ms, "StatefulSet", "home-assistant");
    let sts: StatefulSet = parse(m);
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let annotations = sts.metadata.annotations.unwrap();
    assert!(
        annotations.values().any(|v| v.starts_with("CKV_K8S_19=")),
        "{annotations:?}"
    );
}

#[test]
fn each_node_gets_its_own_bridge_with_only_its_devices() {
    let ms = example("everything");
    for (node, device, other) in [("node-a", "zigbee", "zwave"), ("node-b", "zwave", "zigbee")] {
        let ds: DaemonSet = parse(find(&ms, "DaemonSet", &format!("ha-serial-bridge-{node}")));
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["kubernetes.io/hostname"], node);
        let cm: ConfigMap = parse(find(&ms, "ConfigMap", &format!("ha-serial-bridge-{node}")));
        let config = &cm.data.unwrap()["serial-bridge.yaml"];
        assert!(config.contains(&format!("name: {device}")), "{config}");
        assert!(!config.contains(&format!("name: {other}")), "{config}");
        // A stable name per device.
        find(&ms, "Service", &format!("ha-{device}"));
    }
}

/// mDNS needs the node's network: a device with `zeroconf:` puts its own
/// node's bridge there (and its policy says it no longer holds), no other
/// node's; the bridge itself reads the rendered config.
#[test]
fn a_zeroconf_device_puts_only_its_nodes_bridge_on_the_host_network() {
    let ms = render(
        "serial_bridge:\n  enabled: true\n  devices:\n\
         \x20   - { name: zigbee, node: node-a, path: /dev/ttyUSB0, zeroconf: { radio_type: znp } }\n\
         \x20   - { name: zwave, node: node-b, path: /dev/ttyACM0, port: 6639 }\n\
         network_policy:\n  kubernetes: true\n",
    );
    for (node, announced) in [("node-a", true), ("node-b", false)] {
        let name = format!("home-assistant-serial-bridge-{node}");
        let ds: DaemonSet = parse(find(&ms, "DaemonSet", &name));
        let annotations = ds.metadata.annotations.clone().unwrap_or_default();
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.host_network, announced.then_some(true), "{node}");
        assert_eq!(
            pod.dns_policy.as_deref(),
            announced.then_some("ClusterFirstWithHostNet"),
            "{node}"
        );
        assert_eq!(
            annotations.values().any(|v| v.starts_with("CKV_K8S_19=")),
            announced,
            "{node}: {annotations:?}"
        );
        let policy = &find(&ms, "NetworkPolicy", &name).yaml;
        assert_eq!(policy.contains("DOES NOT APPLY"), announced, "{policy}");
        let cm: ConfigMap = parse(find(&ms, "ConfigMap", &name));
        let text = &cm.data.unwrap()["serial-bridge.yaml"];
        let config: hass_serial_bridge::config::BridgeConfig =
            hass_runtime::config::parse_yaml(text).unwrap();
        let (devices, _) = hass_serial_bridge::config::validate(config).unwrap();
        let radio = devices[0]
            .zeroconf
            .as_ref()
            .and_then(|z| z.radio_type)
            .map(|r| r.name());
        assert_eq!(radio, announced.then_some("znp"), "{node}:\n{text}");
    }
}

#[test]
fn package_wires_the_recorder_through_the_password_secret() {
    let ms = example("homelab");
    let cm: ConfigMap = parse(find(&ms, "ConfigMap", "hass-package"));
    let package = &cm.data.unwrap()["hass_sidecars.yaml"];
    assert!(
        package.contains("db_url: !env_var HASS_RECORDER_DB_URL"),
        "{package}"
    );
    // Today's Home Assistant (the default tag) ignores `http:` in YAML.
    assert!(!package.contains("http:"), "{package}");
    let sts: StatefulSet = parse(find(&ms, "StatefulSet", "hass"));
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let ha = pod
        .containers
        .iter()
        .find(|c| c.name == "home-assistant")
        .unwrap();
    let env = ha.env.as_ref().unwrap();
    let url = env
        .iter()
        .find(|e| e.name == "HASS_RECORDER_DB_URL")
        .unwrap();
    assert_eq!(
        url.value.as_deref(),
        Some(
            "postgresql://homeassistant:$(HASS_RECORDER_DB_PASSWORD)@hass-postgres:5432/homeassistant"
        )
    );
    let password = env
        .iter()
        .find(|e| e.name == "HASS_RECORDER_DB_PASSWORD")
        .unwrap();
    let secret = password
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("postgres", "password")
    );
    // The watcher validates `!env_var` as Home Assistant does, so it has it too,
    // and sees the package folder the ConfigMap updates.
    let watcher = pod
        .containers
        .iter()
        .find(|c| c.name == "config-watcher")
        .unwrap();
    assert!(
        watcher
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "HASS_RECORDER_DB_URL")
    );
    assert!(
        watcher
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/config/packages/hass-sidecars")
    );
}

#[test]
fn no_secret_value_is_ever_rendered() {
    for name in ["minimal", "homelab", "everything"] {
        for m in example(name) {
            assert_ne!(m.kind, "Secret", "{name}: {}", m.name);
        }
    }
}

/// Retention is run for real in tests/pg_dump.rs; here: the password never
/// becomes an env value of the job.
#[test]
fn backup_job_reads_the_password_from_the_secret_file_only() {
    let ms = example("homelab");
    let cron: CronJob = parse(find(&ms, "CronJob", "hass-pg-dump"));
    let pod = cron
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let container = &pod.containers[0];
    for e in container.env.iter().flatten() {
        assert!(!e.name.starts_with("PGPASS"), "{} is in the env", e.name);
        assert!(e.value_from.is_none(), "{} comes from a Secret", e.name);
    }
    let password_file = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "PASSWORD_FILE")
        .and_then(|e| e.value.clone())
        .unwrap();
    let secret_mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| password_file.starts_with(&m.mount_path))
        .unwrap();
    assert_eq!(secret_mount.name, "postgres-password");
    assert_eq!(secret_mount.read_only, Some(true));
}

/// Every sidecar probe of the Home Assistant pod: (container, host).
fn sidecar_probe_hosts(ms: &[hass_manifests::Manifest]) -> Vec<(String, Option<String>)> {
    let sts: StatefulSet = parse(find(ms, "StatefulSet", "home-assistant"));
    let pod = sts.spec.unwrap().template.spec.unwrap();
    pod.containers
        .iter()
        .flat_map(|c| {
            [&c.liveness_probe, &c.readiness_probe, &c.startup_probe]
                .into_iter()
                .flatten()
                .filter_map(|p| p.http_get.as_ref())
                // Home Assistant's own 8123 listens on every address.
                .filter(|get| {
                    get.port != k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8123)
                })
                .map(|get| (c.name.clone(), get.host.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn broker_yaml(ms: &[hass_manifests::Manifest]) -> String {
    let map: ConfigMap = parse(find(ms, "ConfigMap", "home-assistant-broker"));
    map.data.unwrap()["broker.yaml"].clone()
}

/// On the node's network the pod's addresses are the node's (the LAN, past
/// every policy): the sidecars listen on 127.0.0.1, where kubelet probes
/// them, unless `host_network_expose` opens a port; the pod's policy says
/// it does not apply.
#[test]
fn with_host_network_the_sidecars_listen_on_loopback_unless_opened() {
    let base = "home_assistant:\n  token_secret: { name: t, key: token }\n  host_network: true\n\
                broker:\n  websockets: true\nnetwork_policy:\n  kubernetes: true\n";
    let ms = render(base);
    let broker = broker_yaml(&ms);
    for line in [
        "mqtt: 127.0.0.1:1883",
        "ws: 127.0.0.1:1884",
        "listen: 127.0.0.1:9181",
    ] {
        assert!(broker.contains(line), "{line}:\n{broker}");
    }
    let probes = sidecar_probe_hosts(&ms);
    assert!(probes.len() >= 6, "{probes:?}");
    assert!(
        probes
            .iter()
            .all(|(_, host)| host.as_deref() == Some("127.0.0.1")),
        "{probes:?}"
    );
    for name in ["home-assistant-config-watcher", "home-assistant-exporter"] {
        let map: ConfigMap = parse(find(&ms, "ConfigMap", name));
        let text = map.data.unwrap().into_values().next().unwrap();
        assert!(text.contains("listen: 127.0.0.1:918"), "{name}:\n{text}");
    }
    let policy = &find(&ms, "NetworkPolicy", "home-assistant").yaml;
    assert!(policy.contains("DOES NOT APPLY"), "{policy}");

    // Opened ports listen on every address; the rest stay on loopback.
    let ms = render(&base.replace(
        "  host_network: true\n",
        "  host_network: true\n  host_network_expose: [mqtt, admin]\n",
    ));
    let broker = broker_yaml(&ms);
    assert!(broker.contains("mqtt: 0.0.0.0:1883"), "{broker}");
    assert!(broker.contains("ws: 127.0.0.1:1884"), "{broker}");
    assert!(!broker.contains("listen:"), "{broker}");
    assert!(
        sidecar_probe_hosts(&ms)
            .iter()
            .all(|(_, host)| host.is_none())
    );

    // Without host_network nothing changes: the pod's own address.
    let ms = render(&base.replace("  host_network: true\n", ""));
    assert!(broker_yaml(&ms).contains("mqtt: 0.0.0.0:1883"));
    assert!(
        sidecar_probe_hosts(&ms)
            .iter()
            .all(|(_, host)| host.is_none())
    );
    let policy = &find(&ms, "NetworkPolicy", "home-assistant").yaml;
    assert!(!policy.contains("DOES NOT APPLY"), "{policy}");
}

/// `http:` is rendered into the package only for Home Assistant before
/// 2026.8, which still reads it; later releases import it once into
/// `.storage/http` and ignore it (a tag that is no version is current), so
/// the config watcher applies the same settings through Home Assistant's API.
#[test]
fn http_settings_reach_home_assistant_as_its_version_takes_them() {
    let files = |tag: &str| {
        let ms = render(&format!(
            "home_assistant:\n  token_secret: {{ name: t, key: token }}\n  image: {{ repository: ghcr.io/home-assistant/home-assistant, tag: \"{tag}\" }}\ningress:\n  enabled: true\n  trusted_proxies: [10.42.0.0/16]\n"
        ));
        let package: ConfigMap = parse(find(&ms, "ConfigMap", "home-assistant-package"));
        let watcher: ConfigMap = parse(find(&ms, "ConfigMap", "home-assistant-config-watcher"));
        (
            package.data.unwrap()["hass_sidecars.yaml"].clone(),
            watcher.data.unwrap()["config-watcher.yaml"].clone(),
        )
    };
    let through_api =
        "http_settings:\n  use_x_forwarded_for: true\n  trusted_proxies:\n  - 10.42.0.0/16\n";
    for tag in ["2025.1.4", "2026.7.3"] {
        let (package, watcher) = files(tag);
        assert!(
            package.contains("trusted_proxies:\n    - 10.42.0.0/16"),
            "{tag}: {package}"
        );
        assert!(!watcher.contains("http_settings"), "{tag}: {watcher}");
    }
    for tag in ["2026.8.0", "2026.11.0", "2027.1.0b1", "stable", "latest"] {
        let (package, watcher) = files(tag);
        assert!(!package.contains("http:"), "{tag}: {package}");
        assert!(watcher.contains(through_api), "{tag}: {watcher}");
    }
}

/// An RFC 2217 port is a second port of the device's Service and container,
/// open to the same clients as the raw one; the bridge reads it from the
/// rendered config.
#[test]
fn an_rfc2217_port_is_served_like_the_raw_one() {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let ms = render(
        "serial_bridge:\n  enabled: true\n  devices:\n\
         \x20   - { name: zigbee, node: node-a, path: /dev/ttyUSB0, rfc2217_port: 7000 }\n\
         network_policy:\n  kubernetes: true\n",
    );
    let service: Service = parse(find(&ms, "Service", "home-assistant-zigbee"));
    let ports: Vec<(String, i32)> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        [("serial".to_owned(), 6638), ("rfc2217".to_owned(), 7000)]
    );
    let name = "home-assistant-serial-bridge-node-a";
    let ds: DaemonSet = parse(find(&ms, "DaemonSet", name));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let container_ports: Vec<i32> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert!(container_ports.contains(&7000), "{container_ports:?}");
    let policy: NetworkPolicy = parse(find(&ms, "NetworkPolicy", name));
    let ingress = policy.spec.unwrap().ingress.unwrap();
    let device_rule = ingress
        .iter()
        .find(|rule| {
            rule.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::Int(6638)))
        })
        .expect("a rule for the device port");
    let allowed: Vec<_> = device_rule
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port.clone())
        .collect();
    assert_eq!(allowed, [IntOrString::Int(6638), IntOrString::Int(7000)]);
    let cm: ConfigMap = parse(find(&ms, "ConfigMap", name));
    let text = &cm.data.unwrap()["serial-bridge.yaml"];
    let config: hass_serial_bridge::config::BridgeConfig =
        hass_runtime::config::parse_yaml(text).unwrap();
    let (devices, _) = hass_serial_bridge::config::validate(config).unwrap();
    assert_eq!(
        devices[0].rfc2217_listen,
        Some("0.0.0.0:7000".parse().unwrap()),
        "{text}"
    );
}

/// The broker's memory budgets are shares of its container's memory limit,
/// so the broker sheds and refuses before the kernel kills it: together at
/// most 80 % of the limit, whatever the limit, in a config the broker itself
/// accepts, with room for a packet of the broker's largest size (8 MiB).
#[test]
fn the_brokers_budgets_fit_its_memory_limit() {
    for (limit, bytes) in [
        ("128Mi", 128u64 << 20),
        ("512Mi", 512 << 20),
        ("2Gi", 2 << 30),
    ] {
        let ms = render(&format!(
            "broker:\n  resources:\n    cpu_request: 20m\n    memory_request: 64Mi\n    \
             cpu_limit: 500m\n    memory_limit: {limit}\n"
        ));
        let text = broker_yaml(&ms);
        let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let budget = |key: &str| {
            config["limits"][key]
                .as_u64()
                .unwrap_or_else(|| panic!("{key}: {text}"))
        };
        let all = budget("memory_budget")
            + budget("retained_budget")
            + budget("subscription_budget")
            + budget("partial_packet_budget");
        assert!(
            all <= bytes * 8 / 10,
            "{limit}: {all} bytes of budgets\n{text}"
        );
        assert!(budget("partial_packet_budget") > 8 << 20, "{limit}: {text}");
        assert!(budget("subscription_budget_per_client") <= budget("subscription_budget"));
        assert!(
            budget("retained_budget") >= 16 << 20,
            "{limit}: room for discovery"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.yaml");
        // Paths of the pod's mounts, here in a folder of the test's.
        let local = text
            .replace("/data", &dir.path().join("data").display().to_string())
            .replace("/run/secrets/mqtt/", &format!("{}/", dir.path().display()));
        std::fs::write(&path, local).unwrap();
        std::fs::write(dir.path().join("passwd"), "").unwrap();
        std::fs::write(dir.path().join("acl"), "").unwrap();
        let broker = hass_test_support::binary::workspace_binary("hass-broker").unwrap();
        let out = Command::new(broker)
            .arg("--check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{limit}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
