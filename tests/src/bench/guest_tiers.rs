//! Section 1c of BENCHMARKS.md: the charge hook's tiers where they all load. This machine has
//! no kprobes and refuses fentry, so inside one Debian guest (TCG, the newest kernel of the
//! matrix: memcg tracepoints, kprobes and fentry) the same fault storm runs untraced and under
//! each tier, interleaved, and each is a ratio to untraced in the same guest. Emulation changes
//! what every instruction costs, so only the ratios mean something, and only within the guest.
use std::{fmt::Write as _, path::Path, process::Command, process::Stdio};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{load_exe, md_cell, stats};
use crate::guest;

const PASSES: usize = 5;
const STORM_MIB: usize = 64;
const TIERS: [&str; 3] = ["tracepoint", "kprobe", "fentry"];

fn init_script(bin: &Path, load: &Path) -> String {
    let tiers = TIERS.join(" ");
    format!(
        r#"{head}mkdir /sys/fs/cgroup/bench
B={bin}; L={load}
storm() {{ $L storm --cgroup /sys/fs/cgroup/bench --mib {STORM_MIB} --rounds 3 | awk '/ns_per_page/{{print $2}}' | sort -n | sed -n 2p; }}
for P in $(seq 1 {PASSES}); do
  echo "TIER_STORM $P untraced $(storm)"
  for T in {tiers}; do
    $B tail --cgroup /bench --json --tier $T > /tmp/$T.out 2> /tmp/$T.err &
    TP=$!
    i=0; while [ $i -lt 300 ] && ! grep -q '"start"' /tmp/$T.out && kill -0 $TP 2>/dev/null; do sleep 0.2; i=$((i+1)); done
    if grep -q '"start"' /tmp/$T.out; then
      [ $P = 1 ] && grep '"start"' /tmp/$T.out | sed "s/^/TIER_START $T /"
      echo "TIER_STORM $P $T $(storm)"
    else
      echo "TIER_FAILED $T $(head -c 300 /tmp/$T.err | tr '\n' ' ')"
    fi
    kill -INT $TP 2>/dev/null; wait $TP
  done
done
echo TIER_DONE
poweroff -f
"#,
        head = guest::MEMCG_V2_INIT_HEAD,
        bin = bin.display(),
        load = load.display(),
    )
}

/// What follows `marker` in `line`, wherever it is: the console's first line starts with the
/// terminal resets the firmware and kernel print (ESC c, ESC [2J).
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// Boots the guest, runs the storms, and writes the section (or why it could not be measured).
pub fn run(md: &mut String, raw: &mut String) -> Result<()> {
    let _ = writeln!(
        md,
        "### The tiers in a Debian guest\n\nThe function tiers cannot load on this machine, so the same storm ({STORM_MIB} MiB × 3 rounds) runs \
         inside one Debian guest (TCG, 1 vCPU) untraced and under each tier of the charge hook (`--tier`), {PASSES} interleaved passes. \
         Emulation changes every absolute cost: read the ratios, within the guest only.\n"
    );
    match measure(raw) {
        Ok(table) => md.push_str(&table),
        Err(e) => {
            let _ = writeln!(md, "Not measured: {}.\n", md_cell(&format!("{e:#}")));
        }
    }
    Ok(())
}

fn measure(raw: &mut String) -> Result<String> {
    guest::ensure_tools()?;
    let kernel = guest::kernel(guest::Series::TrixieBackports)?;
    let bin = crate::dist(false)?.join("oomtrace");
    let load = load_exe()?;
    let initrd = guest::initramfs_with(
        "bench-tiers",
        &init_script(&bin, &load),
        &[bin.as_path(), load.as_path()],
        &[],
    )?;
    let qemu = guest::qemu_command(&kernel.vmlinuz, &initrd, "quiet loglevel=3");
    let out = Command::new("timeout")
        .arg("1200")
        .arg(qemu.get_program())
        .args(qemu.get_args())
        .args(["-m", "1024"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run qemu")?;
    let console = String::from_utf8_lossy(&out.stdout);
    if !console.contains("TIER_DONE") {
        bail!(
            "the guest did not finish ({}): {}",
            out.status,
            console.lines().last().unwrap_or("")
        );
    }
    let release = &kernel.release;
    let mut untraced = Vec::new();
    let mut per_tier: Vec<Vec<f64>> = vec![Vec::new(); TIERS.len()];
    let mut programs: Vec<String> = vec!["-".into(); TIERS.len()];
    let mut failed: Vec<String> = Vec::new();
    for line in console.lines().map(str::trim) {
        if let Some(rest) = after(line, "TIER_STORM ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let Some(ns) = f.get(2).and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let _ = writeln!(raw, "guest storm pass {}: {} {ns:.1} ns/page", f[0], f[1]);
            match TIERS.iter().position(|t| Some(t) == f.get(1)) {
                Some(i) => per_tier[i].push(ns),
                None if f.get(1) == Some(&"untraced") => untraced.push(ns),
                None => {}
            }
        } else if let Some(rest) = after(line, "TIER_START ") {
            let Some((tier, json)) = rest.split_once(' ') else {
                continue;
            };
            let charge = serde_json::from_str::<Value>(json).ok().and_then(|v| {
                let h = v["hooks"]
                    .as_array()?
                    .iter()
                    .find(|h| h["hook"] == "charge")?;
                let p: Vec<String> = h["programs"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| Some(format!("`{}`", p.as_str()?)))
                    .collect();
                Some(p.join(", "))
            });
            if let (Some(i), Some(p)) = (TIERS.iter().position(|t| *t == tier), charge) {
                programs[i] = p;
            }
        } else if let Some(rest) = after(line, "TIER_FAILED ") {
            failed.push(md_cell(rest));
        }
    }
    if untraced.is_empty() {
        bail!("no untraced storm finished in the guest");
    }
    let (umin, umed, umax) = stats(&untraced);
    let mut t = format!(
        "Kernel {release}.\n\n| variant | charge programs | ns per page (min / median / max) | ratio to untraced |\n|---|---|---|---|\n\
         | untraced | | {umin:.0} / {umed:.0} / {umax:.0} | 1.00x |\n"
    );
    for (i, tier) in TIERS.iter().enumerate() {
        if per_tier[i].is_empty() {
            let _ = writeln!(t, "| {tier} tier | {} | did not run | |", programs[i]);
            continue;
        }
        let (min, med, max) = stats(&per_tier[i]);
        let _ = writeln!(
            t,
            "| {tier} tier | {} | {min:.0} / {med:.0} / {max:.0} | {:.2}x |",
            programs[i],
            med / umed
        );
    }
    for f in failed {
        let _ = writeln!(t, "\nA tier that did not start: {f}");
    }
    t.push('\n');
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::after;

    /// The first console line of a real boot, as qemu's serial port gave it.
    #[test]
    fn a_marker_behind_the_consoles_terminal_resets_is_found() {
        let first = "\u{1b}c\u{1b}[?7l\u{1b}[2JTIER_STORM 1 untraced 19430.4";
        assert_eq!(after(first, "TIER_STORM "), Some("1 untraced 19430.4"));
        assert_eq!(after("TIER_DONE", "TIER_STORM "), None);
    }
}
