//! Who a memory cgroup belongs to, from its path alone: kubepods QoS class, pod UID, container.
//!
//! Both kubelet cgroup drivers, cgroup v1 and v2, with or without a mount prefix:
//! - systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//! - cgroupfs: /kubepods/burstable/pod<uid>/<id>
//!
//! Guaranteed pods sit directly under kubepods. Anything else is "not a pod", never an error.
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The kubepods tree or a QoS slice: many pods.
    Node,
    Pod,
    Container,
    /// Below a container (nested cgroups made inside it).
    InsideContainer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub qos: Option<Qos>,
    /// With dashes, as Kubernetes prints it (systemd paths carry underscores).
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// containerd, crio, docker, ... when the path says.
    pub runtime: Option<String>,
    pub level: Level,
    /// The pod-level cgroup path (the given path cut after the pod component).
    pub pod_path: Option<String>,
}

/// Parse a memcg path. None when the path is not under a kubepods tree.
pub fn parse(path: &str) -> Option<PodIdentity> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let root = comps
        .iter()
        .position(|c| *c == "kubepods.slice" || *c == "kubepods")?;
    let systemd = comps[root].ends_with(".slice");
    let mut id = PodIdentity {
        qos: None,
        pod_uid: None,
        container_id: None,
        runtime: None,
        level: Level::Node,
        pod_path: None,
    };
    let mut i = root + 1;
    // QoS level (absent for Guaranteed pods).
    if let Some(c) = comps.get(i) {
        let qos = if systemd {
            match *c {
                "kubepods-burstable.slice" => Some(Qos::Burstable),
                "kubepods-besteffort.slice" => Some(Qos::BestEffort),
                _ => None,
            }
        } else {
            match *c {
                "burstable" => Some(Qos::Burstable),
                "besteffort" => Some(Qos::BestEffort),
                _ => None,
            }
        };
        if qos.is_some() {
            id.qos = qos;
            i += 1;
        }
    }
    let Some(pod) = comps.get(i) else {
        return Some(id);
    };
    let uid = if systemd {
        pod.strip_suffix(".slice")
            .and_then(|s| s.rsplit_once("-pod"))
            .map(|(_, u)| u.replace('_', "-"))
    } else {
        pod.strip_prefix("pod").map(str::to_string)
    };
    let uid = uid.filter(|u| looks_like_uid(u))?;
    id.qos = Some(id.qos.unwrap_or(Qos::Guaranteed));
    id.pod_uid = Some(uid);
    id.level = Level::Pod;
    id.pod_path = Some(cut_after(path, pod));
    i += 1;
    if let Some(ctr) = comps.get(i) {
        let (runtime, cid) = container(ctr, systemd);
        id.runtime = runtime;
        id.container_id = Some(cid);
        id.level = if comps.len() > i + 1 {
            Level::InsideContainer
        } else {
            Level::Container
        };
    }
    Some(id)
}

/// `path` up to the end of `comp`, a slice of it (keeps any mount prefix exactly as given).
fn cut_after(path: &str, comp: &str) -> String {
    let end = comp.as_ptr() as usize - path.as_ptr() as usize + comp.len();
    path.get(..end).unwrap_or(path).to_string()
}

fn looks_like_uid(u: &str) -> bool {
    !u.is_empty() && u.len() <= 64 && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// "cri-containerd-<id>.scope" → (containerd, id); cgroupfs: the bare id.
fn container(comp: &str, systemd: bool) -> (Option<String>, String) {
    // The runtime's scope name, also seen under cgroupfs-named pods (mixed set-ups); the bare id
    // is what the runtime's state calls the container.
    let base = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "crio"),
        ("docker-", "docker"),
        ("containerd-", "containerd"),
    ] {
        if let Some(id) = base.strip_prefix(prefix) {
            return (Some(runtime.to_string()), id.to_string());
        }
    }
    (None, if systemd { base } else { comp }.to_string())
}

/// A short human name: "pod 968a06fb (burstable), container 0f32894de86e".
pub fn describe(id: &PodIdentity) -> String {
    let qos = id
        .qos
        .map(|q| match q {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        })
        .unwrap_or("?");
    match (&id.pod_uid, &id.container_id) {
        (None, _) => format!("kubepods ({qos} level)"),
        (Some(u), None) => format!("pod {} ({qos})", short(u, 8)),
        (Some(u), Some(c)) => format!("pod {} ({qos}), container {}", short(u, 8), short(c, 12)),
    }
}

fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "968a06fb-9ab9-4819-8caf-0392ddff3d9b";
    const CID: &str = "0f32894de86edf3d3832702af794874ef8d400b4969acdea4976b12040756e0d";

    #[test]
    fn every_kubepods_path_shape_yields_qos_pod_and_container() {
        let sd_pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice";
        type Case<'a> = (String, Option<Qos>, Level, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (sd_pod.into(), Some(Qos::Burstable), Level::Pod, None, None),
            (format!("{sd_pod}/cri-containerd-{CID}.scope"), Some(Qos::Burstable), Level::Container, Some(CID), Some("containerd")),
            (format!("/sys/fs/cgroup/memory{sd_pod}/cri-containerd-{CID}.scope"), Some(Qos::Burstable), Level::Container, Some(CID), Some("containerd")),
            (format!("/sys/fs/cgroup{sd_pod}/crio-{CID}.scope"), Some(Qos::Burstable), Level::Container, Some(CID), Some("crio")),
            ("/kubepods.slice/kubepods-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice".into(), Some(Qos::Guaranteed), Level::Pod, None, None),
            ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice/docker-abc.scope".into(), Some(Qos::BestEffort), Level::Container, Some("abc"), Some("docker")),
            (format!("/kubepods/burstable/pod{UID}/{CID}"), Some(Qos::Burstable), Level::Container, Some(CID), None),
            (format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}/{CID}"), Some(Qos::Burstable), Level::Container, Some(CID), None),
            (format!("/kubepods/pod{UID}"), Some(Qos::Guaranteed), Level::Pod, None, None),
            (format!("/kubepods/besteffort/pod{UID}/{CID}/"), Some(Qos::BestEffort), Level::Container, Some(CID), None),
            (format!("/kubepods/burstable/pod{UID}/{CID}/nested"), Some(Qos::Burstable), Level::InsideContainer, Some(CID), None),
            ("/kubepods.slice/kubepods-burstable.slice".into(), Some(Qos::Burstable), Level::Node, None, None),
            ("/kubepods".into(), None, Level::Node, None, None),
        ];
        for (path, qos, level, cid, runtime) in cases {
            let id = parse(&path).unwrap_or_else(|| panic!("no identity for {path}"));
            assert_eq!(id.qos, qos, "{path}");
            assert_eq!(id.level, level, "{path}");
            assert_eq!(id.container_id.as_deref(), cid, "{path}");
            assert_eq!(id.runtime.as_deref(), runtime, "{path}");
            if level != Level::Node {
                assert_eq!(id.pod_uid.as_deref(), Some(UID), "{path}");
            }
        }
    }

    #[test]
    fn pod_path_keeps_the_given_prefix_and_stops_at_the_pod() {
        let p = format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}/{CID}");
        assert_eq!(
            parse(&p).and_then(|i| i.pod_path),
            Some(format!("/sys/fs/cgroup/memory/kubepods/burstable/pod{UID}"))
        );
        let q = format!("/process_api/7/kubepods/pod{UID}/x");
        assert_eq!(
            parse(&q).and_then(|i| i.pod_path),
            Some(format!("/process_api/7/kubepods/pod{UID}"))
        );
    }

    #[test]
    fn paths_outside_kubepods_or_malformed_are_not_pods() {
        for p in [
            "",
            "/",
            "/system.slice/containerd.service",
            "/machine.slice/machine-qemu\\x2d1\\x2dharv41.scope",
            "/kubepods/burstable/notapod/x",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podZZZ.slice",
            "/kubepods.slice/kubepods-burstable.slice/weird.slice",
            "kubepods-foo",
            "//kubepods.slice//",
        ] {
            let id = parse(p);
            assert!(
                id.as_ref().is_none_or(|i| i.pod_uid.is_none()),
                "{p:?} gave {id:?}"
            );
        }
    }

    #[test]
    fn describe_is_short() {
        let id = parse(&format!("/kubepods/burstable/pod{UID}/{CID}")).unwrap();
        assert_eq!(
            describe(&id),
            "pod 968a06fb (burstable), container 0f32894de86e"
        );
    }
}
