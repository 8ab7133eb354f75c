//! The VM behind a pod, read from its processes' command lines (no API server needed):
//! virt-launcher's `--name`/`--namespace`, qemu's `-name guest=<ns>_<vm>`, `-m`, `-smp` and
//! iothread objects.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFacts {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Guest RAM size from qemu's -m.
    pub guest_memory: Option<u64>,
    pub vcpus: Option<u32>,
    pub iothreads: Option<u32>,
}

impl VmFacts {
    /// Fill what `other` knows and we don't.
    pub fn merge(&mut self, other: VmFacts) {
        self.namespace = self.namespace.take().or(other.namespace);
        self.name = self.name.take().or(other.name);
        self.guest_memory = self.guest_memory.or(other.guest_memory);
        self.vcpus = self.vcpus.or(other.vcpus);
        self.iothreads = self.iothreads.or(other.iothreads);
    }

    /// "default/vm1", "vm1" or None.
    pub fn display_name(&self) -> Option<String> {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            _ => None,
        }
    }
}

/// Split /proc/<pid>/cmdline (NUL separated).
pub fn split_proc_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Option value: "--name vm", "--name=vm", "-name vm".
fn values<'a>(argv: &'a [String], flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    argv.iter().enumerate().filter_map(move |(i, a)| {
        if a == flag {
            argv.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}

/// Facts from any process's argv; only virt-launcher(-monitor) and qemu say anything.
pub fn parse(argv: &[String]) -> VmFacts {
    let Some(exe) = argv.first() else {
        return VmFacts::default();
    };
    let base = exe.rsplit('/').next().unwrap_or(exe);
    if base.starts_with("virt-launcher") {
        return VmFacts {
            name: values(argv, "--name").next().map(str::to_string),
            namespace: values(argv, "--namespace").next().map(str::to_string),
            ..Default::default()
        };
    }
    if base.starts_with("qemu-system-") || base == "qemu-kvm" {
        return parse_qemu(argv);
    }
    VmFacts::default()
}

fn parse_qemu(argv: &[String]) -> VmFacts {
    let mut f = VmFacts::default();
    if let Some(name) = values(argv, "-name").next() {
        let guest = name
            .split(',')
            .find_map(|kv| kv.strip_prefix("guest="))
            .unwrap_or_else(|| name.split(',').next().unwrap_or(""));
        // libvirt names KubeVirt domains "<namespace>_<vm>"; namespaces cannot hold '_'.
        match guest.split_once('_') {
            Some((ns, vm)) if !ns.is_empty() && !vm.is_empty() => {
                f.namespace = Some(ns.to_string());
                f.name = Some(vm.to_string());
            }
            _ if !guest.is_empty() => f.name = Some(guest.to_string()),
            _ => {}
        }
    }
    f.guest_memory = values(argv, "-m").next().and_then(parse_qemu_memory);
    f.vcpus = values(argv, "-smp").next().and_then(parse_smp);
    let iothreads = values(argv, "-object")
        .filter(|o| {
            o.starts_with("iothread,")
                || o.contains("\"qom-type\":\"iothread\"")
                || o.contains("\"qom-type\": \"iothread\"")
        })
        .count();
    if iothreads > 0 {
        f.iothreads = u32::try_from(iothreads).ok();
    }
    f
}

/// qemu -m: "2048" (MiB), "1948M", "2G", "size=1994752k,slots=16,maxmem=..".
pub fn parse_qemu_memory(v: &str) -> Option<u64> {
    let size = v
        .split(',')
        .find_map(|kv| kv.strip_prefix("size="))
        .or_else(|| v.split(',').next().filter(|s| !s.contains('=')))?;
    parse_size(size, 1 << 20)
}

/// "1948M", "2G", "1994752k", "1024" (in `default_unit` bytes).
pub fn parse_size(s: &str, default_unit: u64) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s.get(..digits)?.parse().ok()?;
    let unit = match s.get(digits..)?.trim_end_matches(['i', 'B', 'b']) {
        "" => default_unit,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// qemu -smp: "2", "2,sockets=1,cores=2,threads=1", "cpus=2,maxcpus=4", "sockets=1,cores=4".
fn parse_smp(v: &str) -> Option<u32> {
    let mut cpus = None;
    let (mut sockets, mut cores, mut threads, mut dies) = (None, None, None, None);
    for (i, part) in v.split(',').enumerate() {
        let (k, val) =
            part.split_once('=')
                .unwrap_or(if i == 0 { ("cpus", part) } else { ("", "") });
        let n: Option<u32> = val.parse().ok();
        match k {
            "cpus" => cpus = n,
            "sockets" => sockets = n,
            "cores" => cores = n,
            "threads" => threads = n,
            "dies" => dies = n,
            _ => {}
        }
    }
    cpus.or_else(|| {
        let t =
            sockets.unwrap_or(1) * dies.unwrap_or(1) * cores.unwrap_or(1) * threads.unwrap_or(1);
        (sockets.or(cores).or(threads).is_some()).then_some(t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn virt_launcher_names_the_vm_and_namespace() {
        let f = parse(&argv(
            "/usr/bin/virt-launcher --qemu-timeout 301s --name vm2 --uid 2ce --namespace default",
        ));
        assert_eq!(f.display_name().as_deref(), Some("default/vm2"));
        let g = parse(&argv(
            "/usr/bin/virt-launcher-monitor --name=vm3 --namespace=prod",
        ));
        assert_eq!(g.display_name().as_deref(), Some("prod/vm3"));
    }

    #[test]
    fn qemu_command_line_gives_name_memory_vcpus_and_iothreads() {
        let f = parse(&argv(
            "/usr/bin/qemu-system-x86_64 -name guest=default_vm2,debug-threads=on -S \
             -m size=1994752k,slots=16,maxmem=8G -smp 2,sockets=1,dies=1,cores=2,threads=1 \
             -object {\"qom-type\":\"iothread\",\"id\":\"iothread1\"} -object iothread,id=io2",
        ));
        assert_eq!(f.namespace.as_deref(), Some("default"));
        assert_eq!(f.name.as_deref(), Some("vm2"));
        assert_eq!(f.guest_memory, Some(1994752 << 10));
        assert_eq!(f.vcpus, Some(2));
        assert_eq!(f.iothreads, Some(2));
    }

    #[test]
    fn qemu_memory_and_smp_forms() {
        for (m, want) in [
            ("2048", Some(2048u64 << 20)),
            ("1948M", Some(1948 << 20)),
            ("2G", Some(2 << 30)),
            ("size=512M", Some(512 << 20)),
            ("slots=4,size=1G", Some(1 << 30)),
            ("lots", None),
            ("", None),
            ("99999999999999999999G", None),
        ] {
            assert_eq!(parse_qemu_memory(m), want, "{m}");
        }
        for (s, want) in [
            ("4", Some(4)),
            ("cpus=3,maxcpus=8", Some(3)),
            ("sockets=2,cores=2", Some(4)),
            ("x", None),
        ] {
            assert_eq!(parse_smp(s), want, "{s}");
        }
    }

    #[test]
    fn other_processes_and_odd_names_say_nothing_or_only_a_name() {
        assert_eq!(parse(&argv("/bin/sh -c x")), VmFacts::default());
        assert_eq!(parse(&[]), VmFacts::default());
        let f = parse(&argv("qemu-system-x86_64 -name plainvm"));
        assert_eq!((f.namespace, f.name.as_deref()), (None, Some("plainvm")));
        let g = parse(&argv("qemu-system-x86_64 -name"));
        assert_eq!(g.name, None);
    }

    #[test]
    fn proc_cmdline_splits_on_nul() {
        assert_eq!(split_proc_cmdline(b"a\0-m\0\x32\0"), vec!["a", "-m", "2"]);
    }
}
