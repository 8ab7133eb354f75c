//! Pod and container names without an API server: the container runtime keeps every
//! container's OCI bundle on the node, and the CRI plugin writes the pod's names into its
//! annotations. containerd: `<state>/io.containerd.runtime.v2.task/k8s.io/<id>/config.json`
//! (`/run/containerd`, on RKE2/k3s `/run/k3s/containerd`), annotations
//! `io.kubernetes.cri.sandbox-{uid,name,namespace}` and `io.kubernetes.cri.container-name`;
//! CRI-O: `/run/containers/storage/overlay-containers/<id>/userdata/config.json`, annotations
//! `io.kubernetes.pod.{uid,name,namespace}` and `io.kubernetes.container.name`.
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

/// Where runtimes keep their bundles on a node, by default.
pub const DEFAULT_ROOTS: &[&str] = &[
    "/run/containerd/io.containerd.runtime.v2.task/k8s.io",
    "/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io",
    "/run/containers/storage/overlay-containers",
];

/// A bundle's config.json is read only up to this size (they are a few tens of KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// New bundles read per scan, so that a node with thousands of containers costs little.
const MAX_NEW_PER_SCAN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNames {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
}

/// What one bundle tells: its pod's names, and the container's name unless it is the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub pod: PodNames,
    pub container_name: Option<String>,
}

/// The container's name from an OCI config.json's annotations; None for a pod's sandbox.
pub fn container_name(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let a = v.get("annotations")?;
    let get = |k: &str| a.get(k)?.as_str();
    if get("io.kubernetes.cri.container-type").is_some_and(|t| t != "container") {
        return None;
    }
    get("io.kubernetes.cri.container-name")
        .or_else(|| get("io.kubernetes.container.name"))
        // CRI-O names its sandbox "POD".
        .filter(|n| !n.is_empty() && *n != "POD")
        .map(str::to_string)
}

/// The pod's names from an OCI config.json's annotations (containerd's CRI or CRI-O's).
pub fn parse_config(json: &str) -> Option<PodNames> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let a = v.get("annotations")?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| a.get(*k)?.as_str())
            .map(str::to_string)
    };
    Some(PodNames {
        pod_uid: get(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"])?,
        namespace: get(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ])?,
        name: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"])?,
    })
}

pub struct RuntimeState {
    roots: Vec<PathBuf>,
    /// Bundles already read (by directory).
    seen: HashSet<PathBuf>,
}

impl RuntimeState {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            seen: HashSet::new(),
        }
    }

    /// The bundles that appeared since the last scan, by directory name (the container id, as
    /// the cgroup names it).
    pub fn scan_new(&mut self) -> Vec<(String, Bundle)> {
        let mut out = Vec::new();
        let mut read = 0;
        for root in &self.roots {
            let Ok(dir) = std::fs::read_dir(root) else {
                continue;
            };
            for e in dir.filter_map(|e| e.ok()) {
                let bundle = e.path();
                if read >= MAX_NEW_PER_SCAN || self.seen.contains(&bundle) {
                    continue;
                }
                read += 1;
                self.seen.insert(bundle.clone());
                let config = [
                    bundle.join("config.json"),
                    bundle.join("userdata/config.json"),
                ]
                .into_iter()
                .find(|p| p.is_file());
                let Some(text) = config.and_then(|c| read_small(&c)) else {
                    continue;
                };
                if let Some(pod) = parse_config(&text) {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let container_name = container_name(&text);
                    out.push((
                        id,
                        Bundle {
                            pod,
                            container_name,
                        },
                    ));
                }
            }
        }
        out
    }
}

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(MAX_CONFIG_BYTES).read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_containerd_and_crio_annotations() {
        let containerd = r#"{"ociVersion":"1.1.0","annotations":{
            "io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-id":"4a5b",
            "io.kubernetes.cri.sandbox-name":"virt-launcher-vm1-x7k2p",
            "io.kubernetes.cri.sandbox-namespace":"default",
            "io.kubernetes.cri.sandbox-uid":"5d2e3f4a-6b7c-4d8e-9f0a-1b2c3d4e5f60"}}"#;
        assert_eq!(
            parse_config(containerd),
            Some(PodNames {
                pod_uid: "5d2e3f4a-6b7c-4d8e-9f0a-1b2c3d4e5f60".into(),
                namespace: "default".into(),
                name: "virt-launcher-vm1-x7k2p".into(),
            })
        );
        let crio = r#"{"annotations":{"io.kubernetes.pod.uid":"u","io.kubernetes.pod.name":"p",
            "io.kubernetes.pod.namespace":"ns","io.kubernetes.container.name":"compute"}}"#;
        assert_eq!(parse_config(crio).map(|n| n.name), Some("p".into()));
        assert_eq!(container_name(crio).as_deref(), Some("compute"));
        assert_eq!(container_name(containerd), None, "a sandbox");
        let compute = containerd
            .replace("\"sandbox\"", "\"container\"")
            .replace("{\"ociVersion", "{\"x\":0,\"ociVersion")
            .replace(
                "\"annotations\":{",
                "\"annotations\":{\"io.kubernetes.cri.container-name\":\"compute\",",
            );
        assert_eq!(container_name(&compute).as_deref(), Some("compute"));
        let crio_sandbox = crio.replace("compute", "POD");
        assert_eq!(container_name(&crio_sandbox), None);
        assert_eq!(parse_config(r#"{"annotations":{}}"#), None);
        assert_eq!(parse_config("not json"), None);
    }
}
