//! Captures end to end: `record` a real OOM scenario, then `report` replays it to exactly the
//! live run's totals (and to the same bytes, 100 times over), `export` gives JSON Lines, CSV and a Perfetto trace that Perfetto's own
//! protobuf bindings decode, and damaged or foreign files get warnings or one clear error.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use oomtrace::{cgroupfs::MemoryController, scratch_cgroup::ScratchCgroup};
use serde_json::Value;
use tests::{oomtrace_bin, require_root, serial, touched, workload};

fn scratch_dir(name: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("oomtrace-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn run(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(oomtrace_bin()?).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn last_json(stdout: &str) -> Result<Value> {
    let line = stdout.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// Records a memhold sidecar and a qemu-named process growing into a 128 MiB limit.
fn record_scenario(dir: &Path) -> Result<(PathBuf, Value)> {
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-cap-{}", std::process::id()),
        128 << 20,
    )?;
    let path = cg.path.display().to_string();
    let file = dir.join("scenario.otr");
    let rec = Command::new(oomtrace_bin()?)
        .args(["record", "-o"])
        .arg(&file)
        .args(["--cgroup", &path, "--duration", "8", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let mut memhold = workload(&path, "memhold", &["memhold=32@64"], 60)?;
    touched(&mut memhold, 1)?;
    let mut qemu = workload(
        &path,
        "qemu-system-x86",
        &["CPU 0/KVM=0@64", "IO iothread1=8@8"],
        60,
    )?;
    let _ = qemu.wait();
    let _ = (memhold.kill(), memhold.wait());
    let out = rec.wait_with_output()?;
    if !out.status.success() {
        bail!("record failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(cg);
    let live = last_json(&String::from_utf8_lossy(&out.stdout))?;
    Ok((file, live))
}

fn by_tid(summary: &Value) -> Vec<(u64, i64, i64, i64, i64, i64)> {
    let mut v: Vec<_> = summary["threads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["tid"].as_u64().unwrap_or(0),
                        t["total"].as_i64().unwrap_or(0),
                        t["anon"].as_i64().unwrap_or(0),
                        t["file"].as_i64().unwrap_or(0),
                        t["kernel"].as_i64().unwrap_or(0),
                        t["guest"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const PERFETTO_CHECK: &str = r#"
import json, sys
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent
t = Trace.FromString(open(sys.argv[1], 'rb').read())
names = {}
values = {}
instants = []
for p in t.packet:
    if p.HasField('track_descriptor'):
        d = p.track_descriptor
        names[d.uuid] = d.name
    if p.HasField('track_event'):
        e = p.track_event
        if e.type == TrackEvent.TYPE_COUNTER:
            values.setdefault(names[e.track_uuid], []).append(e.counter_value)
        elif e.type == TrackEvent.TYPE_INSTANT:
            instants.append((names[e.track_uuid], e.name))
print(json.dumps({"tracks": sorted(names.values()), "counters": values, "instants": instants}))
"#;

fn python_with_perfetto() -> Result<()> {
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    let import = "import perfetto.protos.perfetto.trace.perfetto_trace_pb2";
    if ok(Command::new("python3")
        .args(["-c", import])
        .stderr(Stdio::null()))
    {
        return Ok(());
    }
    if !ok(Command::new("python3").args(["-m", "pip", "install", "--quiet", "perfetto", "protobuf"]))
        || !ok(Command::new("python3").args(["-c", import]))
    {
        bail!("cannot install the PyPI package perfetto (Perfetto's protobuf bindings)");
    }
    Ok(())
}

#[test]
fn recorded_oom_replays_to_the_live_totals_and_exports_to_perfetto() -> Result<()> {
    if !require_root("recorded_oom_replays_to_the_live_totals_and_exports_to_perfetto") {
        return Ok(());
    }
    let _serial = serial();
    let dir = scratch_dir("capture")?;
    let (file, live) = record_scenario(&dir)?;
    let f = file.display().to_string();

    // report replays to exactly what the live run ended with.
    let (code, stdout, stderr) = run(&["report", &f, "--json"])?;
    assert_eq!(code, 0, "{stderr}");
    let replayed = last_json(&stdout)?;
    assert_eq!(replayed["type"], "summary");
    assert!(!by_tid(&live).is_empty());
    assert_eq!(by_tid(&replayed), by_tid(&live), "per-thread totals");
    assert_eq!(replayed["processes"], live["processes"]);
    assert_eq!(replayed["ooms"], live["ooms"]);
    assert_eq!(replayed["counters"], live["counters"]);
    let oom = &live["ooms"][0];
    assert_eq!(oom["victim_comm"], "qemu-system-x86");
    // One capture replayed 100 times gives byte-identical output: nothing in the model or the
    // views depends on hash order (snapshots every second, by thread, with the post-mortem).
    let replay = [
        "report",
        f.as_str(),
        "--json",
        "--every",
        "1",
        "--by",
        "thread",
    ];
    let (code, first, stderr) = run(&replay)?;
    assert_eq!(code, 0, "{stderr}");
    assert!(first.lines().count() > 5, "{first}");
    for i in 1..100 {
        let (code, again, stderr) = run(&replay)?;
        assert_eq!(code, 0, "{stderr}");
        assert!(again == first, "replay {i} differs from the first");
    }
    // The text report shows the post-mortem.
    let (code, text, _) = run(&["report", &f])?;
    assert_eq!(code, 0);
    assert!(
        text.contains("*** OOM KILL") && text.contains("grew"),
        "{text}"
    );

    // JSON Lines and CSV: one row per change, tail --json's names.
    let (code, jsonl, _) = run(&["export", &f, "--format", "jsonl"])?;
    assert_eq!(code, 0);
    let rows: Vec<Value> = jsonl
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(
        rows.iter()
            .any(|r| r["type"] == "charge" && r["class"] == "vcpu")
    );
    assert_eq!(rows.iter().filter(|r| r["type"] == "oom").count(), 1);
    let (code, csv, _) = run(&["export", &f, "--format", "csv"])?;
    assert_eq!(code, 0);
    assert!(csv.starts_with("type,time,ts_ns,memcg,memcg_id,pid,tid,comm,process,class,"));
    assert_eq!(
        csv.lines().count() - 1,
        rows.len() - 1,
        "every change but the summary"
    );

    // Perfetto: decoded by Perfetto's own generated bindings.
    python_with_perfetto()?;
    let pb = dir.join("scenario.perfetto-trace");
    let export_to = |to: &Path| {
        let to = to.display().to_string();
        run(&["export", &f, "--format", "perfetto", "-o", &to])
    };
    let (code, _, stderr) = export_to(&pb)?;
    assert_eq!(code, 0, "{stderr}");
    // Files that hold other tenants' names: 0600, and never written through a planted symlink.
    for made in [Path::new(&f), pb.as_path()] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(made)?.permissions());
        assert_eq!(mode & 0o777, 0o600, "{} is {mode:o}", made.display());
    }
    let victim = dir.join("not-yours");
    std::fs::write(&victim, "precious")?;
    let planted = dir.join("planted.perfetto-trace");
    std::os::unix::fs::symlink(&victim, &planted)?;
    let (code, _, stderr) = export_to(&planted)?;
    assert_eq!(code, 1, "a symlink at -o is refused: {stderr}");
    assert!(
        stderr.contains("symlink") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&victim)?, "precious");
    // Another user's file at -o (planted in a shared directory): refused, not overwritten.
    std::os::unix::fs::chown(&victim, Some(65534), Some(65534))?;
    let (code, _, stderr) = export_to(&victim)?;
    assert_eq!(code, 1, "another user's file at -o is refused: {stderr}");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim)?, "precious");
    // -o -: the same bytes on standard output (a pipe here).
    let piped = Command::new(oomtrace_bin()?)
        .args(["export", &f, "--format", "perfetto", "-o", "-"])
        .output()?;
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(
        piped.stdout,
        std::fs::read(&pb)?,
        "-o - writes what -o FILE writes"
    );
    let check = Command::new("python3")
        .args(["-c", PERFETTO_CHECK])
        .arg(&pb)
        .output()?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let p: Value = serde_json::from_slice(&check.stdout)?;
    let memcg = oom["memcg"].as_str().unwrap_or("");
    let limit_track = format!("memcg {memcg} limit");
    assert_eq!(
        p["counters"][&limit_track]
            .as_array()
            .and_then(|v| v.last())
            .and_then(Value::as_i64),
        Some(128 << 20),
        "{limit_track} in {}",
        p["tracks"]
    );
    let usage = p["counters"][format!("memcg {memcg} usage")]
        .as_array()
        .context("usage counter")?;
    assert!(usage.iter().filter_map(Value::as_i64).max() >= Some((120 << 20) as i64));
    assert!(p["tracks"].as_array().is_some_and(|t| {
        t.iter()
            .any(|n| n == &Value::from(format!("memcg {memcg} class vcpu")))
    }));
    let instants = p["instants"].as_array().context("instants")?;
    let kills: Vec<&Value> = instants.iter().filter(|i| i[0] == "OOM kills").collect();
    assert_eq!(kills.len(), 1, "{instants:?}");
    // The only other instants: the test's own SIGKILLs to its workloads, on their own track.
    assert!(
        instants
            .iter()
            .all(|i| i[0] == "OOM kills" || i[0] == "kill signals"),
        "{instants:?}"
    );
    let name = kills[0][1].as_str().unwrap_or("");
    assert!(
        name.contains(&format!("(pid {})", oom["victim_pid"])) && name.contains("qemu-system-x86"),
        "{name}"
    );

    // A capture cut mid-frame (the recorder was SIGKILLed) still reports, with a warning.
    let bytes = std::fs::read(&file)?;
    let cut = dir.join("cut.otr");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3])?;
    let (code, out, _) = run(&["report", &cut.display().to_string()])?;
    assert_eq!(code, 0);
    assert!(out.contains("warning") && out.contains("torn"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn files_that_are_not_captures_get_one_clear_error() -> Result<()> {
    let dir = scratch_dir("notcap")?;
    let text = dir.join("kernel.log");
    std::fs::write(&text, "[ 1.0] hello\n")?;
    for (args, needle) in [
        (
            vec!["report".to_string(), text.display().to_string()],
            "not an oomtrace capture",
        ),
        (
            vec!["report".to_string(), "/no/such.otr".into()],
            "cannot open",
        ),
        (
            vec![
                "export".to_string(),
                text.display().to_string(),
                "--format".into(),
                "perfetto".into(),
            ],
            "give -o FILE",
        ),
        (
            vec![
                "tail".to_string(),
                "--from".into(),
                text.display().to_string(),
            ],
            "not an oomtrace capture",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = run(&args)?;
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `record -o -`: the capture on standard output (redirected to a file here), the summary on
/// standard error; `report` reads it like any capture. A terminal is refused.
#[test]
fn record_to_standard_output_writes_a_capture_and_its_summary_to_stderr() -> Result<()> {
    if !require_root("record_to_standard_output_writes_a_capture_and_its_summary_to_stderr") {
        return Ok(());
    }
    let _serial = serial();
    let dir = scratch_dir("capture-stdout")?;
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-cap-stdout-{}", std::process::id()),
        128 << 20,
    )?;
    let path = cg.path.display().to_string();
    let file = dir.join("piped.otr");
    let rec = Command::new(oomtrace_bin()?)
        .args([
            "record",
            "-o",
            "-",
            "--cgroup",
            &path,
            "--duration",
            "4",
            "--json",
        ])
        .stdout(std::fs::File::create(&file)?)
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let mut memhold = workload(&path, "memhold", &["memhold=16@32"], 60)?;
    touched(&mut memhold, 1)?;
    let out = rec.wait_with_output()?;
    let _ = (memhold.kill(), memhold.wait());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &Value| v["type"] == "summary")
        .context("the summary on standard error")?;
    let (code, stdout, err) = run(&["report", &file.display().to_string(), "--json"])?;
    assert_eq!(code, 0, "{err}");
    let replayed = last_json(&stdout)?;
    assert_eq!(replayed["processes"], summary["processes"]);
    assert!(
        replayed["processes"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["process"] == "memhold")),
        "{replayed}"
    );
    // Rotation needs a file.
    let (code, _, err) = run(&["record", "-o", "-", "--max-size", "1M", "--duration", "1"])?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot rotate"), "{err}");
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `record` SIGKILLed at 20 moments under thread churn (during start-up, mid-block, mid-write):
/// every file it left is read by `report`, at most its torn last frame lost, with a warning
/// saying so, never another.
#[test]
fn record_killed_at_20_random_moments_leaves_files_report_reads() -> Result<()> {
    if !require_root("record_killed_at_20_random_moments_leaves_files_report_reads") {
        return Ok(());
    }
    let _serial = serial();
    let dir = scratch_dir("capture-sigkill")?;
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-cap-kill-{}", std::process::id()),
        512 << 20,
    )?;
    let path = cg.path.display().to_string();
    let mut load = Command::new(env!("CARGO_BIN_EXE_oomtrace-bench"))
        .args([
            "churn",
            "--cgroup",
            &path,
            "--threads",
            "100000000",
            "--parallel",
            "8",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let (mut read, mut torn) = (0, 0);
    for i in 0..20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = Duration::from_millis(300 + x % 3200);
        let file = dir.join(format!("killed-{i}.otr"));
        let mut rec = Command::new(oomtrace_bin()?)
            .args(["record", "--cgroup", &path, "-o"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(after);
        rec.kill()?;
        rec.wait()?;
        if !file.exists() {
            // Killed while loading: nothing was written, nothing to read.
            continue;
        }
        let (head, summary) =
            tests::report_capture(&file).with_context(|| format!("killed after {after:?}"))?;
        let torn_here = tests::torn_tail_warnings(&head);
        assert!(
            torn_here.is_some_and(|n| n <= 1),
            "killed after {after:?}: {}",
            head["warnings"]
        );
        torn += torn_here.unwrap_or(0);
        assert_eq!(summary["type"], "summary");
        read += 1;
    }
    let _ = (load.kill(), load.wait());
    println!("{read} of 20 killed recordings had written a file; {torn} ended in a torn frame");
    assert!(
        read >= 10,
        "most kills came after the file was made: {read}"
    );
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `record` onto a file system that fills up: the capture stops with one clear line, tracing
/// goes on to the end, the summary is still printed, the exit says the file is incomplete, and
/// what was written reads back.
#[test]
fn record_on_a_full_disk_stops_the_capture_in_one_line_and_keeps_the_summary() -> Result<()> {
    if !require_root("record_on_a_full_disk_stops_the_capture_in_one_line_and_keeps_the_summary") {
        return Ok(());
    }
    let _serial = serial();
    let dir = scratch_dir("capture-full")?;
    let mnt = dir.join("small");
    std::fs::create_dir_all(&mnt)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()?
        .success();
    assert!(mounted, "mount tmpfs");
    let ctl = MemoryController::detect()?;
    let cg = ScratchCgroup::create(
        &ctl,
        &format!("oomtrace-test-cap-full-{}", std::process::id()),
        512 << 20,
    )?;
    let path = cg.path.display().to_string();
    let file = mnt.join("full.otr");
    let rec = Command::new(oomtrace_bin()?)
        .args([
            "record",
            "--cgroup",
            &path,
            "--duration",
            "8",
            "--json",
            "-o",
        ])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let mut load = Command::new(env!("CARGO_BIN_EXE_oomtrace-bench"))
        .args([
            "churn",
            "--cgroup",
            &path,
            "--threads",
            "100000000",
            "--parallel",
            "8",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let out = rec.wait_with_output()?;
    let _ = (load.kill(), load.wait());
    let stderr = String::from_utf8_lossy(&out.stderr).replace('\r', "\n");
    let result = (|| -> Result<()> {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let summary = last_json(&String::from_utf8_lossy(&out.stdout))?;
        assert_eq!(summary["type"], "summary");
        assert!(
            summary["capture_error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left")),
            "{summary}"
        );
        assert!(summary["counters"]["events"].as_u64().unwrap_or(0) > 0);
        let stopped = stderr.matches("capture stopped").count();
        assert_eq!(stopped, 1, "one line says the capture stopped: {stderr}");
        assert!(
            stderr.contains("the capture file is incomplete"),
            "{stderr}"
        );
        let (head, _) = tests::report_capture(&file)?;
        assert!(
            tests::torn_tail_warnings(&head).is_some(),
            "{}",
            head["warnings"]
        );
        assert!(head["records"].as_u64().unwrap_or(0) > 0, "{head}");
        Ok(())
    })();
    let _ = Command::new("umount").arg(&mnt).status();
    drop(cg);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A capture format v1 file as an earlier oomtrace wrote it (e3a1244, before memory.oom.group
/// facts were stored; tests/data/README.md): every later reader must read it to the same OOM,
/// the same records and the same totals. A field added in the middle of a stored struct, or a
/// variant inserted instead of appended, changes what this file decodes to.
#[test]
fn a_capture_of_format_v1_written_before_reads_back_the_same() -> Result<()> {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/data/golden-capture-v1.otr");
    let (code, stdout, stderr) = run(&["report", "--json", golden])?;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let of = |t: &str| {
        lines
            .iter()
            .find(|l| l["type"] == t)
            .cloned()
            .unwrap_or_default()
    };
    let capture = of("capture");
    assert_eq!(capture["records"], 377, "{capture}");
    assert_eq!(
        capture["warnings"].as_array().map(Vec::len),
        Some(0),
        "{capture}"
    );
    let oom = of("oom");
    for (field, want) in [
        ("invoker_tid", serde_json::json!(6434)),
        ("invoker_pid", serde_json::json!(6431)),
        ("invoker_comm", serde_json::json!("memhog")),
        ("victim_pid", serde_json::json!(6431)),
        ("victim_comm", serde_json::json!("memhog")),
        ("victim_anon_rss_kb", serde_json::json!(33280)),
        ("memcg", serde_json::json!("/oomtrace-compat")),
        ("limit", serde_json::json!(32 << 20)),
        ("group", Value::Null),
    ] {
        assert_eq!(oom[field], want, "{field} in {oom}");
    }
    let summary = of("summary");
    assert_eq!(summary["counters"]["events"], 305, "{summary}");
    // Written before shmem was counted: no thread shows a shmem figure (unknown, not zero).
    let threads = summary["threads"].as_array().context("threads")?;
    assert!(!threads.is_empty(), "{summary}");
    assert!(threads.iter().all(|t| t["shmem"].is_null()), "{summary}");
    // What the capture holds of the victim's charges before the kill: as the kernel counted.
    let charged = oom["victim_charged_anon"].as_i64().unwrap_or(0);
    assert!(
        tests::within(charged / 1024, 33280, 5.0),
        "memhog charged {charged} bytes anon before the kill"
    );
    Ok(())
}
