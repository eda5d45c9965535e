//! A tree rendered by `hass-manifests render` run under podman the way a
//! kubelet runs it: each StatefulSet or DaemonSet pod template becomes a
//! `podman pod` whose containers get the template's image, args, env,
//! mounts, user, groups, capabilities, read-only root and limits.
//!
//! `podman kube play` would read the YAML itself, but podman 4.3 sets
//! RLIMIT_NOFILE to 1048576 for every container it plays, above what an
//! unprivileged CI sandbox allows, and has no flag to change that; `podman
//! create` takes the limits from `containers.conf`. Turning the spec into
//! flags here also makes every field we honour explicit: a volume kind, env
//! source, resource, seccomp profile, command override or init container it
//! cannot map is an error. Left out on purpose: probes (the test calls the
//! same endpoints), container ports (every pod shares the host's network) and
//! scheduling (one machine).

// Test helpers: a failure is a test failure.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Every object of a rendered tree.
#[derive(Debug)]
pub struct RenderedTree {
    docs: Vec<Value>,
}

impl RenderedTree {
    /// Reads every `*.yaml` object under `dir` (`kustomization.yaml` aside).
    pub fn load(dir: &Path) -> Self {
        let mut docs = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .filter(|p| !p.ends_with("kustomization.yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let doc: Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            docs.push(doc);
        }
        Self { docs }
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    /// Names of the objects of `kind`.
    pub fn names(&self, kind: &str) -> Vec<String> {
        self.docs
            .iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// What the cluster would provide besides the rendered tree.
#[derive(Debug, Default)]
pub struct Cluster {
    /// The Secrets the operator creates by hand: name -> key -> value.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// What a device plugin hands out per extended resource: the host's
    /// device node and the path it gets in the container.
    pub devices: BTreeMap<String, (PathBuf, String)>,
    /// Containers that are not run (Home Assistant, when a stand-in plays it).
    pub skip_containers: Vec<String>,
    /// Image references replaced, e.g. the registry's by the local build.
    pub images: BTreeMap<String, String>,
    /// Variables added to a container's env (by container name): what the
    /// cluster's network would provide, e.g. a package index's address.
    pub env: BTreeMap<String, Vec<(String, String)>>,
}

/// One pod under podman; removed with its volumes on drop.
#[derive(Debug)]
pub struct PodmanPod {
    pub name: String,
    pub containers: Vec<String>,
    volumes: Vec<String>,
    grace_seconds: u64,
    files_dir: tempfile::TempDir,
}

impl PodmanPod {
    /// Creates (does not start) the pod of workload `kind`/`name`.
    pub fn create(tree: &RenderedTree, kind: &str, name: &str, cluster: &Cluster) -> Self {
        let workload = tree
            .find(kind, name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered tree"));
        let spec = &workload["spec"]["template"]["spec"];
        let files = tempfile::Builder::new()
            .prefix("hass-pod-files-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(files.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut pod = Self {
            name: name.to_owned(),
            containers: Vec::new(),
            volumes: Vec::new(),
            grace_seconds: spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30),
            files_dir: files,
        };
        // A leftover of an aborted run would make `pod create` fail.
        let _ = podman(&["pod", "rm", "--force", "--time", "0", name]);

        let mut args = vec![
            "pod".to_owned(),
            "create".to_owned(),
            "--name".to_owned(),
            name.to_owned(),
        ];
        // Every pod shares the host's network, where a Service name resolves
        // to loopback: podman's bridge networks need netavark and iptables
        // that a CI sandbox may not allow, and on loopback the test reaches
        // every port directly. Distinct ports (DESIGN.md) keep pods apart.
        args.push("--network=host".to_owned());
        run_podman(&args);
        // What cluster DNS does for a Service in front of a host-network pod
        // (per container: podman 4.3 drops a host-network pod's --add-host).
        let hosts: Vec<String> = tree
            .names("Service")
            .iter()
            .map(|service| format!("--add-host={service}:127.0.0.1"))
            .collect();

        assert!(
            spec["initContainers"].is_null(),
            "{name}: init containers are not mapped"
        );
        let pod_security = &spec["securityContext"];
        let volumes = pod.volumes(tree, workload, cluster, pod_security);
        for container in spec["containers"].as_array().unwrap() {
            let container_name = container["name"].as_str().unwrap();
            if cluster.skip_containers.iter().any(|s| s == container_name) {
                continue;
            }
            let full = format!("{name}-{container_name}");
            let mut args = vec![
                "create".to_owned(),
                "--pod".to_owned(),
                name.to_owned(),
                "--name".to_owned(),
                full.clone(),
            ];
            args.extend(hosts.iter().cloned());
            let policy = spec["restartPolicy"].as_str().unwrap_or("Always");
            args.push(format!("--restart={}", restart_flag(policy)));
            security_flags(&mut args, pod_security, &container["securityContext"]);
            resource_flags(&mut args, &container["resources"], cluster);
            env_flags(&mut args, tree, cluster, container);
            for (name, value) in cluster.env.get(container_name).into_iter().flatten() {
                args.push(format!("--env={name}={value}"));
            }
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = mount["name"].as_str().unwrap();
                let target = mount["mountPath"].as_str().unwrap();
                let read_only = mount["readOnly"].as_bool().unwrap_or(false);
                let source = volumes
                    .get(volume)
                    .unwrap_or_else(|| panic!("{full}: volume {volume} is not defined"));
                args.push(source.mount_flag(target, read_only));
            }
            // `command` replaces the image's entrypoint, as in Kubernetes.
            if let Some(command) = container["command"].as_array() {
                args.push(format!(
                    "--entrypoint={}",
                    serde_json::to_string(command).unwrap()
                ));
            }
            let image = container["image"].as_str().unwrap();
            let image = cluster.images.get(image).map_or(image, String::as_str);
            if image.starts_with("127.0.0.1:") {
                // Pulled by digest from images/test's registry on loopback,
                // as a node would (plain HTTP there).
                args.push("--pull=missing".to_owned());
                args.push("--tls-verify=false".to_owned());
            } else {
                // Otherwise from the local build, never a registry.
                args.push("--pull=never".to_owned());
            }
            args.push(image.to_owned());
            for arg in container["args"].as_array().into_iter().flatten() {
                args.push(arg.as_str().unwrap().to_owned());
            }
            run_podman(&args);
            pod.containers.push(full);
        }
        pod
    }

    /// Materialises each pod volume: ConfigMaps and Secrets as files, PVCs
    /// and volumeClaimTemplates as named podman volumes, emptyDir as a host
    /// folder every container mounting it shares, as in a pod.
    fn volumes(
        &mut self,
        tree: &RenderedTree,
        workload: &Value,
        cluster: &Cluster,
        pod_security: &Value,
    ) -> BTreeMap<String, VolumeSource> {
        let fs_group = pod_security["fsGroup"].as_u64().map(|g| g as u32);
        let mut sources = BTreeMap::new();
        for claim in workload["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let claim = claim["metadata"]["name"].as_str().unwrap();
            // StatefulSet claims are named <claim>-<pod>; one replica here.
            let volume = format!("{claim}-{}-0", self.name);
            sources.insert(claim.to_owned(), self.named_volume(&volume, fs_group));
        }
        for volume in workload["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = volume["name"].as_str().unwrap().to_owned();
            let source = if let Some(map) = volume.get("configMap") {
                let config_map = tree
                    .find("ConfigMap", map["name"].as_str().unwrap())
                    .unwrap_or_else(|| panic!("ConfigMap {} is not rendered", map["name"]));
                let data: BTreeMap<String, String> =
                    serde_json::from_value(config_map["data"].clone()).unwrap();
                self.files(&name, map, &data, fs_group)
            } else if let Some(secret) = volume.get("secret") {
                let secret_name = secret["secretName"].as_str().unwrap();
                let data = cluster
                    .secrets
                    .get(secret_name)
                    .unwrap_or_else(|| panic!("Secret {secret_name} is not provided"));
                self.files(&name, secret, data, fs_group)
            } else if let Some(claim) = volume.get("persistentVolumeClaim") {
                let claim = claim["claimName"].as_str().unwrap();
                self.named_volume(claim, fs_group)
            } else if volume.get("emptyDir").is_some() {
                // One folder for the pod, world-writable as the kubelet makes
                // it (its sizeLimit is an eviction threshold, not a mount
                // size, so it is not modelled).
                let dir = self.files_dir.path().join(format!("emptydir-{name}"));
                std::fs::create_dir(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
                VolumeSource::Bind(dir)
            } else if let Some(host) = volume.get("hostPath") {
                VolumeSource::Bind(PathBuf::from(host["path"].as_str().unwrap()))
            } else {
                panic!("volume {name}: its kind is not mapped: {volume}");
            };
            sources.insert(name, source);
        }
        sources
    }

    /// Writes `data` (or the `items` of `spec`) into a folder, with the
    /// mode and group Kubernetes gives projected files.
    fn files(
        &self,
        volume: &str,
        spec: &Value,
        data: &BTreeMap<String, String>,
        fs_group: Option<u32>,
    ) -> VolumeSource {
        let dir = self.files_dir.path().join(volume);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mode = spec["defaultMode"].as_u64().unwrap_or(0o644) as u32;
        let items: Vec<(String, String)> = match spec["items"].as_array() {
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        i["key"].as_str().unwrap().to_owned(),
                        i["path"].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
            None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        };
        for (key, path) in items {
            let value = data
                .get(&key)
                .unwrap_or_else(|| panic!("volume {volume}: no key {key}"));
            let file = dir.join(path);
            std::fs::write(&file, value).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            if let Some(group) = fs_group {
                std::os::unix::fs::chown(&file, None, Some(group)).unwrap();
            }
        }
        VolumeSource::Bind(dir)
    }

    fn named_volume(&mut self, name: &str, fs_group: Option<u32>) -> VolumeSource {
        let _ = podman(&["volume", "rm", "--force", name]);
        run_podman(&["volume", "create", name]);
        let dir = volume_mountpoint(name);
        if let Some(group) = fs_group {
            // What the kubelet does for fsGroup: group-owned, group-writable, setgid.
            std::os::unix::fs::chown(&dir, None, Some(group)).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
        }
        self.volumes.push(name.to_owned());
        // Mounted as its folder: at a volume's first mount podman copies the
        // image's folder there and takes its owner and mode (an image with a
        // root-owned /config undoes fsGroup), which the kubelet never does.
        VolumeSource::Bind(dir)
    }

    pub fn start(&self) {
        run_podman(&["pod", "start", &self.name]);
    }

    /// `podman pod stop` with the pod's grace period; each container's exit code.
    pub fn stop(&self) -> Vec<(String, i64)> {
        run_podman(&[
            "pod",
            "stop",
            "--time",
            &self.grace_seconds.to_string(),
            &self.name,
        ]);
        self.containers
            .iter()
            .map(|c| {
                let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", c])
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                (c.clone(), code)
            })
            .collect()
    }

    /// Replaces one file of a Secret or ConfigMap volume, as the kubelet
    /// updates a projected volume after the object changed.
    pub fn update_file(&self, volume: &str, path: &str, value: &str) {
        let file = self.files_dir.path().join(volume).join(path);
        assert!(file.exists(), "no file {path} in volume {volume}");
        std::fs::write(file, value).unwrap();
    }

    /// `podman restart` of one container, as a rollout restarts it.
    pub fn restart(&self, container: &str) {
        run_podman(&["restart", &self.container(container)]);
    }

    /// The containers' names, as podman arguments.
    pub fn containers_refs(&self) -> Vec<&str> {
        self.containers.iter().map(String::as_str).collect()
    }

    /// `<pod>-<container>`, as created.
    pub fn container(&self, name: &str) -> String {
        let full = format!("{}-{name}", self.name);
        assert!(self.containers.contains(&full), "no container {full}");
        full
    }

    pub fn logs(&self, container: &str) -> String {
        logs(&["logs", &self.container(container)])
    }

    /// Every container's last log lines, for failure messages.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for c in &self.containers {
            let logs = logs(&["logs", "--tail", "30", c]);
            out.push_str(&format!("--- podman logs {c}\n{logs}\n"));
        }
        out
    }
}

impl Drop for PodmanPod {
    fn drop(&mut self) {
        let _ = podman(&["pod", "rm", "--force", "--time", "0", &self.name]);
        for volume in &self.volumes {
            let _ = podman(&["volume", "rm", "--force", volume]);
        }
    }
}

/// Where a pod volume comes from on the host.
#[derive(Debug, Clone)]
enum VolumeSource {
    Bind(PathBuf),
}

impl VolumeSource {
    fn mount_flag(&self, target: &str, read_only: bool) -> String {
        let ro = if read_only { ",ro=true" } else { "" };
        match self {
            Self::Bind(path) => format!(
                "--mount=type=bind,source={},destination={target}{ro}",
                path.display()
            ),
        }
    }
}

/// The host folder of a named volume (where a test edits `/config`).
pub fn volume_mountpoint(name: &str) -> PathBuf {
    PathBuf::from(
        podman(&["volume", "inspect", "--format", "{{.Mountpoint}}", name])
            .unwrap()
            .trim(),
    )
}

fn restart_flag(policy: &str) -> &'static str {
    match policy {
        "Always" => "always",
        "OnFailure" => "on-failure",
        "Never" => "no",
        other => panic!("restartPolicy {other} is not mapped"),
    }
}

/// Pod- and container-level securityContext; the container's wins.
fn security_flags(args: &mut Vec<String>, pod: &Value, container: &Value) {
    let field = |name: &str| {
        if container[name].is_null() {
            pod[name].clone()
        } else {
            container[name].clone()
        }
    };
    if let Some(user) = field("runAsUser").as_u64() {
        let group = field("runAsGroup").as_u64().unwrap_or(user);
        args.push(format!("--user={user}:{group}"));
    }
    for group in pod["supplementalGroups"].as_array().into_iter().flatten() {
        args.push(format!("--group-add={group}"));
    }
    if let Some(group) = pod["fsGroup"].as_u64() {
        args.push(format!("--group-add={group}"));
    }
    if container["readOnlyRootFilesystem"] == Value::Bool(true) {
        args.push("--read-only".to_owned());
        // Kubernetes mounts no tmpfs of its own; only volumes are writable.
        args.push("--read-only-tmpfs=false".to_owned());
    }
    if container["allowPrivilegeEscalation"] == Value::Bool(false) {
        args.push("--security-opt=no-new-privileges".to_owned());
    }
    if container["privileged"] == Value::Bool(true) {
        args.push("--privileged".to_owned());
    }
    let caps = &container["capabilities"];
    for cap in caps["drop"].as_array().into_iter().flatten() {
        args.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in caps["add"].as_array().into_iter().flatten() {
        args.push(format!("--cap-add={}", cap.as_str().unwrap()));
    }
    let seccomp = field("seccompProfile");
    match seccomp["type"].as_str() {
        None | Some("RuntimeDefault") => {} // podman's default profile
        Some(other) => panic!("seccompProfile {other} is not mapped"),
    }
}

/// Limits become cgroup limits; a device plugin's extended resource becomes
/// the device it would hand out.
fn resource_flags(args: &mut Vec<String>, resources: &Value, cluster: &Cluster) {
    let limits = resources["limits"].as_object().cloned().unwrap_or_default();
    for (name, value) in &limits {
        let value = value.as_str().unwrap();
        match name.as_str() {
            "memory" => args.push(format!("--memory={}", quantity_bytes(value))),
            "cpu" => args.push(format!("--cpus={}", cpu_cores(value))),
            resource => {
                let (host, path) = cluster
                    .devices
                    .get(resource)
                    .unwrap_or_else(|| panic!("no device plugin for {resource}"));
                // A bind mount rather than `--device`: the stand-in stick is
                // a pty, and a pty node re-created outside the host's devpts
                // fails to open (EIO). A USB stick's node works either way.
                args.push(format!(
                    "--mount=type=bind,source={},destination={path}",
                    host.display()
                ));
            }
        }
    }
}

/// `env` with `value` (and `$(NAME)` references to earlier entries) and
/// `secretKeyRef`/`configMapKeyRef` sources.
fn env_flags(args: &mut Vec<String>, tree: &RenderedTree, cluster: &Cluster, container: &Value) {
    let mut seen: Vec<(String, String)> = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = entry["value"].as_str() {
            let mut value = value.to_owned();
            for (earlier, v) in &seen {
                value = value.replace(&format!("$({earlier})"), v);
            }
            value
        } else if let Some(secret) = entry["valueFrom"].get("secretKeyRef") {
            let (name, key) = (
                secret["name"].as_str().unwrap(),
                secret["key"].as_str().unwrap(),
            );
            cluster
                .secrets
                .get(name)
                .and_then(|s| s.get(key))
                .unwrap_or_else(|| panic!("Secret {name} key {key} is not provided"))
                .clone()
        } else if let Some(map) = entry["valueFrom"].get("configMapKeyRef") {
            let config_map = tree
                .find("ConfigMap", map["name"].as_str().unwrap())
                .unwrap();
            config_map["data"][map["key"].as_str().unwrap()]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            panic!("env {name}: its source is not mapped: {entry}");
        };
        args.push(format!("--env={name}={value}"));
        seen.push((name, value));
    }
}

/// A Kubernetes memory quantity in bytes (`64Mi`, `1Gi`, `500M`, `1024`).
fn quantity_bytes(quantity: &str) -> u64 {
    const UNITS: [(&str, u64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in UNITS {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    quantity.parse().unwrap()
}

/// A Kubernetes CPU quantity in cores (`500m`, `1`).
fn cpu_cores(quantity: &str) -> String {
    match quantity.strip_suffix('m') {
        Some(milli) => format!("{:.3}", milli.parse::<f64>().unwrap() / 1000.0),
        None => quantity.to_owned(),
    }
}

/// Runs podman; stdout, or stderr as the error.
pub fn podman<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<String, String> {
    let output = Command::new("podman")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run podman: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `podman logs`: the container's stdout and stderr, as podman replays them.
fn logs(args: &[&str]) -> String {
    match Command::new("podman").args(args).output() {
        Ok(output) => format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => format!("cannot run podman: {e}"),
    }
}

fn run_podman<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    podman(args).unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_convert_as_kubernetes_reads_them() {
        assert_eq!(quantity_bytes("64Mi"), 64 << 20);
        assert_eq!(quantity_bytes("1Gi"), 1 << 30);
        assert_eq!(quantity_bytes("256M"), 256_000_000);
        assert_eq!(cpu_cores("500m"), "0.500");
        assert_eq!(cpu_cores("1"), "1");
    }
}
