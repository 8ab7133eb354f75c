//! Values of the kernel enum node_stat_item from the running kernel's BTF. Their
//! numbering changes between kernel versions, and the memcg tracepoints report raw numbers.
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use btf_rs::{Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The numbers the charge program compares against; -1 when this kernel has no such item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChargeItems {
    pub anon: i32,
    pub file: i32,
    pub pagetable: i32,
    pub sec_pagetable: i32,
    pub kernel_stack_kb: i32,
    pub slab_reclaimable_b: i32,
    pub slab_unreclaimable_b: i32,
}

impl ChargeItems {
    /// Parsing the whole kernel BTF takes ~20 MiB for a moment; a short-lived child process
    /// (`oomtrace charge-items`) does it, so the long-running collector never holds that peak.
    /// Falls back to parsing here.
    pub fn load(path: &Path) -> Result<Self> {
        let child = std::env::current_exe().ok().and_then(|exe| {
            let out = std::process::Command::new(exe)
                .arg("charge-items")
                .arg(path)
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            serde_json::from_slice::<Self>(&out.stdout).ok()
        });
        match child {
            Some(items) => Ok(items),
            None => Self::from_btf(path),
        }
    }

    pub fn from_btf(path: &Path) -> Result<Self> {
        let btf = Btf::from_file(path).with_context(|| {
            format!(
                "cannot read kernel BTF at {}; oomtrace needs CONFIG_DEBUG_INFO_BTF",
                path.display()
            )
        })?;
        let node = enum_values(&btf, "node_stat_item")?;
        Ok(Self::from_map(&node))
    }

    /// Pure mapping from enum member names; kept separate so it can be table-tested.
    pub fn from_map(node: &HashMap<String, i64>) -> Self {
        let get = |m: &HashMap<String, i64>, n: &str| m.get(n).map_or(-1, |v| *v as i32);
        Self {
            anon: get(node, "NR_ANON_MAPPED"),
            file: get(node, "NR_FILE_PAGES"),
            pagetable: get(node, "NR_PAGETABLE"),
            sec_pagetable: get(node, "NR_SECONDARY_PAGETABLE"),
            kernel_stack_kb: get(node, "NR_KERNEL_STACK_KB"),
            slab_reclaimable_b: get(node, "NR_SLAB_RECLAIMABLE_B"),
            slab_unreclaimable_b: get(node, "NR_SLAB_UNRECLAIMABLE_B"),
        }
    }
}

fn enum_values(btf: &Btf, name: &str) -> Result<HashMap<String, i64>> {
    let types = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("kernel BTF has no enum {name}"))?;
    let mut out = HashMap::new();
    for t in types {
        if let Type::Enum(e) = t {
            for m in &e.members {
                if let Ok(n) = btf.resolve_name(m) {
                    out.insert(n, m.val() as i32 as i64);
                }
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("kernel BTF enum {name} has no members");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_items_missing_members_become_minus_one() {
        let node: HashMap<String, i64> = [
            ("NR_ANON_MAPPED".to_string(), 17),
            ("NR_FILE_PAGES".to_string(), 18),
        ]
        .into();
        let items = ChargeItems::from_map(&node);
        assert_eq!(items.anon, 17);
        assert_eq!(items.file, 18);
        assert_eq!(items.sec_pagetable, -1);
    }
}
