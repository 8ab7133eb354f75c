//! Table tests of the report parser and its interpretation, on the seed's three reports and on
//! the shapes other kernels and loggers produce.
use super::{
    interpret::{Hints, explain},
    parse::Assembler,
    report::OomReport,
};
use crate::kubevirt::ThreadClass;

const SEED1: &str = include_str!("../../../tests/data/seed-example1-journal.log");
const SEED2: &str = include_str!("../../../tests/data/seed-example2-dmesg-T.log");
const SEED3: &str = include_str!("../../../tests/data/seed-example3-memhold-dmesg.log");
/// A real group kill, printed by Debian's 5.10 in the kernel matrix (cgroup v2).
const GROUP_KILL_5_10: &str = include_str!("../../../tests/data/matrix-5.10-group-kill.log");

fn reports(text: &str) -> Vec<OomReport> {
    let mut a = Assembler::new();
    let mut out: Vec<OomReport> = text.split('\n').filter_map(|l| a.push(l)).collect();
    out.extend(a.finish());
    out
}

fn one(text: &str) -> OomReport {
    let r = reports(text);
    assert_eq!(r.len(), 1, "{r:#?}");
    r.into_iter().next().unwrap()
}

#[test]
fn seed_example_1_journal_report_without_kill_line_is_read_and_flagged_truncated() {
    let r = one(SEED1);
    let inv = r.invoker.as_ref().unwrap();
    assert_eq!(
        (inv.comm.as_str(), inv.pid, inv.cpu),
        ("virt-launcher", Some(40785), Some(40))
    );
    assert_eq!(inv.gfp_flags.as_deref(), Some("GFP_KERNEL"));
    assert_eq!(inv.oom_score_adj, Some(986));
    assert_eq!(
        r.kernel_version.as_deref(),
        Some("5.14.21-150400.24.60-default")
    );
    assert_eq!(r.time.as_deref(), Some("Feb 03 19:57:08"));
    let mem = r.counter("memory").unwrap();
    assert_eq!(
        (mem.usage_kb, mem.limit_kb, mem.failcnt),
        (17024340, 17024340, 1243)
    );
    assert_eq!(r.counter("kmem").unwrap().usage_kb, 143556);
    assert_eq!(r.cgroup_version(), Some(1));
    assert_eq!(r.tasks.len(), 6);
    assert_eq!(r.tasks[5].name, "qemu-system-x86");
    assert_eq!(r.tasks[5].rss_pages, Some(4201766));
    assert_eq!(r.tasks[5].pgtables_bytes, Some(34439168));
    assert_eq!(r.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
    assert!(
        r.oom_memcg
            .as_deref()
            .unwrap()
            .ends_with("pod968a06fb_9ab9_4819_8caf_0392ddff3d9b.slice")
    );
    assert!(r.task_memcg.as_deref().unwrap().ends_with(".scope"));
    assert!(r.victim.is_none() && r.truncated_end && !r.truncated_start);
    let e = explain(r, &Hints::default());
    assert_eq!(e.invoker_class, Some(ThreadClass::VirtLauncher));
    assert_eq!(e.limit_hit.as_deref(), Some("memory"));
    let pod = e.pod.unwrap();
    assert_eq!(
        pod.pod_uid.as_deref(),
        Some("968a06fb-9ab9-4819-8caf-0392ddff3d9b")
    );
    assert_eq!(pod.container_id, None, "the OOM hit the pod level");
}

#[test]
fn seed_example_2_dmesg_t_report_names_vcpu_invoker_and_qemu_victim() {
    let r = one(SEED2);
    assert_eq!(r.time.as_deref(), Some("Thu May  9 14:52:38 2024"));
    assert_eq!(r.invoker.as_ref().unwrap().comm, "CPU 11/KVM");
    assert_eq!(r.invoker.as_ref().unwrap().pid, Some(70888));
    assert_eq!(
        r.kernel_version.as_deref(),
        Some("5.3.18-150300.59.101-default")
    );
    let v = r.victim.as_ref().unwrap();
    assert_eq!((v.pid, v.comm.as_str()), (70870, "qemu-system-x86"));
    assert_eq!(
        (v.total_vm_kb, v.anon_rss_kb, v.file_rss_kb, v.shmem_rss_kb),
        (Some(73209856), Some(66852088), Some(21948), Some(4))
    );
    assert_eq!(v.reason.as_deref(), Some("Memory cgroup out of memory"));
    assert_eq!(
        r.reaped.as_ref().map(|x| (x.pid, x.file_rss_kb)),
        Some((70870, 132))
    );
    assert!(!r.truncated_end);
    let e = explain(r, &Hints::default());
    assert_eq!(e.invoker_class, Some(ThreadClass::Vcpu));
    assert_eq!(e.guest_ram, Some(66852088 * 1024));
    assert_eq!(e.usage, Some(67579904 * 1024));
}

#[test]
fn seed_example_3_memhold_report_finds_memsw_limit_thp_and_the_foreign_process() {
    let r = one(SEED3);
    assert_eq!(r.stats.get("anon"), Some(&2390548480));
    assert_eq!(r.stats.get("anon_thp"), Some(&1702887424));
    assert_eq!(r.stats.get("thp_collapse_alloc"), Some(&0));
    assert_eq!(r.tasks.len(), 7);
    let v = r.victim.as_ref().unwrap();
    assert_eq!(
        (v.uid, v.pgtables_kb, v.oom_score_adj),
        (Some(107), Some(4272), Some(920))
    );
    let e = explain(r, &Hints::default());
    assert_eq!(e.limit_hit.as_deref(), Some("memory+swap"));
    assert_eq!(
        e.pod
            .as_ref()
            .unwrap()
            .container_id
            .as_deref()
            .map(|c| &c[..12]),
        Some("b545a34b33f1")
    );
    let memhold = e.tasks.iter().find(|t| t.name == "memhold").unwrap();
    assert_eq!(
        (memhold.class, memhold.rss),
        (ThreadClass::Foreign, 103103 * 4096)
    );
    assert!(e.causes.iter().any(|c| c.contains("huge pages")));
    assert!(e.causes.iter().any(|c| c.starts_with("memhold")));
    assert!(e.summary.contains("memhold"), "{}", e.summary);
    assert!(
        e.summary.starts_with("Memory cgroup OOM in pod bc31d215"),
        "{}",
        e.summary
    );
}

#[test]
fn guest_memory_hint_gives_budget_lines_and_advice() {
    let mut hints = Hints::default();
    hints.vm.guest_memory = Some(1948 << 20);
    hints.vm.vcpus = Some(2);
    let e = explain(one(SEED3), &hints);
    let a = e.advice.unwrap();
    // Usage minus guest RAM (qemu anon-rss, below the 1948 MiB guest size).
    assert_eq!(a.observed_overhead, 2355880 * 1024 - 1867320 * 1024);
    assert!(a.ratio_needed > 1.0 && a.limit_needed > 2355880 * 1024);
    let not_reserved = e.budget.iter().find(|l| l.item == "not reserved").unwrap();
    assert!(not_reserved.over && not_reserved.observed >= 103103 * 4096);
}

#[test]
fn prefixes_crlf_and_no_prefix_give_the_same_report() {
    let plain: String = SEED3
        .lines()
        .map(|l| super::prefix::strip_prefixes(l).text.to_string() + "\r\n")
        .collect();
    let a = one(SEED3);
    let b = one(&plain);
    assert_eq!(
        (a.victim, a.tasks, a.counters, a.stats),
        (b.victim, b.tasks, b.counters, b.stats)
    );
}

#[test]
fn reports_in_a_row_and_interleaved_lines_are_kept_apart() {
    let noise = "[ 9000.1] eth0: link up\n[ 9000.2] usb 1-1: new device\n";
    let text = format!("{noise}{SEED3}{noise}{SEED2}{noise}{SEED3}");
    let r = reports(&text);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].victim.as_ref().unwrap().pid, 24790);
    assert_eq!(r[1].victim.as_ref().unwrap().pid, 70870);
    assert_eq!(r[2].tasks.len(), 7);
    assert!(r.iter().all(|r| !r.truncated_start && !r.truncated_end));
}

#[test]
fn a_log_starting_mid_report_gives_a_report_flagged_truncated_start() {
    let tail: String = SEED3
        .lines()
        .skip_while(|l| !l.contains("Tasks state"))
        .map(|l| format!("{l}\n"))
        .collect();
    let r = one(&tail);
    assert!(r.truncated_start && r.invoker.is_none());
    assert_eq!(r.tasks.len(), 7);
    assert_eq!(r.victim.as_ref().unwrap().comm, "qemu-system-x86");
}

#[test]
fn a_report_cut_in_the_middle_of_a_line_keeps_what_came_before() {
    let cut = &SEED3[..SEED3.find("Killed process").unwrap() + 20];
    let r = one(cut);
    assert!(r.truncated_end);
    assert_eq!(r.tasks.len(), 7);
    assert!(!r.warnings.is_empty());
}

const KERNEL_3_10: &str = "\
[ 1234.5] qemu-kvm invoked oom-killer: gfp_mask=0xd0, order=0, oom_score_adj=0
[ 1234.5] qemu-kvm cpuset=/ mems_allowed=0
[ 1234.5] CPU: 3 PID: 4242 Comm: qemu-kvm Not tainted 3.10.0-1160.el7.x86_64 #1
[ 1234.5] Task in /kubepods/burstable/pod1b2c3d4e-0000-1111-2222-333344445555/abcdef killed as a result of limit of /kubepods/burstable/pod1b2c3d4e-0000-1111-2222-333344445555
[ 1234.5] memory: usage 1048576kB, limit 1048576kB, failcnt 77
[ 1234.5] memory+swap: usage 1048576kB, limit 9007199254740988kB, failcnt 0
[ 1234.5] kmem: usage 0kB, limit 9007199254740988kB, failcnt 0
[ 1234.5] Memory cgroup stats for /kubepods/burstable/pod1b2c3d4e-0000-1111-2222-333344445555: cache:0KB rss:0KB rss_huge:0KB
[ 1234.5] Memory cgroup stats for /kubepods/burstable/pod1b2c3d4e-0000-1111-2222-333344445555/abcdef: cache:12KB rss:1040000KB rss_huge:524288KB
[ 1234.5] [ pid ]   uid  tgid total_vm      rss nr_ptes swapents oom_score_adj name
[ 1234.5] [ 4200]     0  4200   300000   255000     600        0             0 qemu-kvm
[ 1234.5] [ 4300]     0  4300     1000      500       4        0             0 my tool
[ 1234.5] Memory cgroup out of memory: Kill process 4200 (qemu-kvm) score 975 or sacrifice child
[ 1234.5] Killed process 4200 (qemu-kvm) total-vm:1200000kB, anon-rss:1019000kB, file-rss:1000kB, shmem-rss:0kB
";

#[test]
fn kernel_3_10_wording_task_in_line_inline_stats_and_nr_ptes_are_read() {
    let r = one(KERNEL_3_10);
    assert_eq!(r.kernel_version.as_deref(), Some("3.10.0-1160.el7.x86_64"));
    assert!(r.constraint.is_none());
    assert!(r.oom_memcg.as_deref().unwrap().ends_with("5555"));
    assert!(r.task_memcg.as_deref().unwrap().ends_with("/abcdef"));
    assert_eq!(
        r.stats.get("rss"),
        Some(&0),
        "first stats line is the oom memcg's"
    );
    assert_eq!(r.tasks[0].pgtables_bytes, Some(600 * 4096));
    assert_eq!(r.tasks[1].name, "my tool");
    assert_eq!(r.victim.as_ref().unwrap().anon_rss_kb, Some(1019000));
    let e = explain(r, &Hints::default());
    assert_eq!(e.oom_kind, "memcg");
    assert_eq!(e.victim_class, Some(ThreadClass::QemuOther));
    assert_eq!(
        e.pod.unwrap().qos,
        Some(crate::kubevirt::identity::Qos::Burstable)
    );
}

const KERNEL_6_V2: &str = "\
<4>[  88.1] memhold invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
<4>[  88.1] CPU: 1 UID: 0 PID: 900 Comm: memhold Not tainted 6.12.9-amd64 #1  Debian 6.12.9-1
<6>[  88.1] memory: usage 262144kB, limit 262144kB, failcnt 12
<6>[  88.1] swap: usage 0kB, limit 9007199254740988kB, failcnt 0
<6>[  88.1] Memory cgroup stats for /kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-aa.scope:
<6>[  88.1] anon 260000000
<6>[  88.1] file 1000000
<6>[  88.1] kernel 3000000
<6>[  88.1] sock 0
<6>[  88.1] Tasks state (memory values in pages):
<6>[  88.1] [  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents oom_score_adj name
<6>[  88.1] [    900]     0   900    70000    63000    62900      100         0   600000        0             0 memhold
<6>[  88.1] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-aa.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-aa.scope,task_memcg=/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-aa.scope,task=memhold,pid=900,uid=0
<3>[  88.1] Memory cgroup out of memory: Killed process 900 (memhold) total-vm:280000kB, anon-rss:251600kB, file-rss:400kB, shmem-rss:0kB, UID:0 pgtables:586kB oom_score_adj:0
";

#[test]
fn kernel_6_cgroup_v2_report_with_rss_columns_is_read() {
    let r = one(KERNEL_6_V2);
    assert_eq!(r.cgroup_version(), Some(2));
    assert_eq!(r.kernel_version.as_deref(), Some("6.12.9-amd64"));
    assert_eq!(r.tasks[0].rss_anon_pages, Some(62900));
    assert_eq!(r.tasks[0].rss_shmem_pages, Some(0));
    assert_eq!(
        r.invoker.as_ref().unwrap().gfp_flags.as_deref(),
        Some("GFP_HIGHUSER_MOVABLE|__GFP_COMP")
    );
    let e = explain(r, &Hints::default());
    assert_eq!(e.limit_hit.as_deref(), Some("memory"));
    assert_eq!(
        e.pod.unwrap().qos,
        Some(crate::kubevirt::identity::Qos::Guaranteed)
    );
    assert_eq!(e.invoker_class, Some(ThreadClass::Foreign));
}

#[test]
fn global_oom_is_told_apart_from_memcg_oom() {
    let text = "\
[  5.0] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[  5.0] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice,task=stress,pid=77,uid=0
[  5.0] Out of memory: Killed process 77 (stress) total-vm:100kB, anon-rss:90kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0
";
    let e = explain(one(text), &Hints::default());
    assert_eq!(e.oom_kind, "global");
    assert!(e.summary.starts_with("System-wide OOM"), "{}", e.summary);
    assert_eq!(
        (e.victim_pid, e.victim_comm.as_deref()),
        (Some(77), Some("stress"))
    );
    assert_eq!(e.victim_anon_rss_kb, Some(90));
}

/// cpuset and mempolicy OOMs, in the kernel's words (mm/oom_kill.c's constraint names and
/// dump_oom_summary's line; the victim line is the global "Out of memory:" one): no public
/// report was found to put in the corpus, so these are written from the source.
#[test]
fn cpuset_and_mempolicy_ooms_are_named_by_their_constraint() {
    for (constraint, nodemask, kind, head) in [
        ("CONSTRAINT_CPUSET", "(null)", "cpuset", "OOM in a cpuset"),
        (
            "CONSTRAINT_MEMORY_POLICY",
            "1",
            "mempolicy",
            "OOM under a NUMA memory policy",
        ),
    ] {
        let text = format!(
            "\
[  7.0] numa-app invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0
[  7.0] CPU: 3 PID: 4242 Comm: numa-app Not tainted 6.1.0-27-cloud-amd64 #1 Debian 6.1.115-1
[  7.0] oom-kill:constraint={constraint},nodemask={nodemask},cpuset=pinned,mems_allowed=1,task_memcg=/system.slice/numa.service,task=numa-app,pid=4240,uid=0
[  7.0] Out of memory: Killed process 4240 (numa-app) total-vm:2100kB, anon-rss:2000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:12kB oom_score_adj:0
"
        );
        let e = explain(one(&text), &Hints::default());
        assert_eq!(e.oom_kind, kind, "{constraint}");
        assert_eq!(
            (e.invoker_pid, e.victim_pid, e.victim_comm.as_deref()),
            (Some(4242), Some(4240), Some("numa-app")),
            "{constraint}"
        );
        assert!(e.summary.starts_with(head), "{}", e.summary);
    }
}

#[test]
fn a_report_cut_before_its_killed_line_still_names_the_victim() {
    // 4.19+: the oom-kill line names it; before: the "Kill process ... or sacrifice child" line.
    for (text, pid, comm) in [
        (
            "\
[  5.0] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[  5.0] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pod,task_memcg=/pod,task=my,odd name,pid=77,uid=0
",
            77,
            "my,odd name",
        ),
        (
            "\
[  5.0] qemu-kvm invoked oom-killer: gfp_mask=0xd0, order=0, oom_score_adj=0
[  5.0] Memory cgroup out of memory: Kill process 4200 (qemu-kvm) score 975 or sacrifice child
",
            4200,
            "qemu-kvm",
        ),
    ] {
        let r = one(text);
        assert!(r.victim.is_none() && r.truncated_end);
        let e = explain(r, &Hints::default());
        assert_eq!((e.victim_pid, e.victim_comm.as_deref()), (Some(pid), Some(comm)));
        assert!(!e.summary.contains("does not say"), "{}", e.summary);
        assert!(e.summary.contains(&format!("{comm} (pid {pid}) was chosen")), "{}", e.summary);
    }
}

#[test]
fn a_group_kill_reports_every_victim_in_one_report() {
    // Kubernetes 1.28+ on cgroup v2 sets memory.oom.group: the kernel kills the chosen task, then
    // every other task of the container, and the reaper's lines interleave.
    let text = "\
[ 90.0] memhold invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
[ 90.0] memory: usage 262144kB, limit 262144kB, failcnt 7
[ 90.0] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/kubepods.slice/pod1/ctr,task_memcg=/kubepods.slice/pod1/ctr,task=qemu-kvm,pid=100,uid=107
[ 90.0] Memory cgroup out of memory: Killed process 100 (qemu-kvm) total-vm:900kB, anon-rss:200000kB, file-rss:0kB, shmem-rss:0kB, UID:107 pgtables:400kB oom_score_adj:0
[ 90.0] Tasks in /kubepods.slice/pod1/ctr are going to be killed due to memory.oom.group set
[ 90.0] oom_reaper: reaped process 100 (qemu-kvm), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB
[ 90.0] Memory cgroup out of memory: Killed process 101 (virt-launcher) total-vm:500kB, anon-rss:30000kB, file-rss:100kB, shmem-rss:0kB, UID:107 pgtables:100kB oom_score_adj:0
[ 90.0] Memory cgroup out of memory: Killed process 102 (memhold) total-vm:300kB, anon-rss:20000kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:60kB oom_score_adj:0
[ 90.1] oom_reaper: reaped process 101 (virt-launcher), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB
";
    let all = reports(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let r = &all[0];
    assert_eq!(r.oom_group.as_deref(), Some("/kubepods.slice/pod1/ctr"));
    assert_eq!(r.victim.as_ref().map(|v| v.pid), Some(100));
    let others: Vec<(u32, &str)> = r
        .group_victims
        .iter()
        .map(|v| (v.pid, v.comm.as_str()))
        .collect();
    assert_eq!(others, [(101, "virt-launcher"), (102, "memhold")]);
    assert!(
        !r.truncated_start && r.warnings.is_empty(),
        "{:?}",
        r.warnings
    );
    let e = explain(r.clone(), &Hints::default());
    assert!(
        e.summary.contains(
            "and with it 2 more tasks of /kubepods.slice/pod1/ctr (memory.oom.group): \
             virt-launcher (pid 101), memhold (pid 102)"
        ),
        "{}",
        e.summary
    );
}

#[test]
fn a_real_group_kill_lists_each_task_once_though_the_kernel_prints_the_chosen_one_twice() {
    let r = one(GROUP_KILL_5_10);
    assert_eq!(r.victim.as_ref().map(|v| v.pid), Some(942));
    assert_eq!(
        r.oom_group.as_deref(),
        Some("/groupkill/kubepods/pod9e8d7c6b-5a49-4838-a726-150000000001/ctr")
    );
    let others: Vec<(u32, &str)> = r
        .group_victims
        .iter()
        .map(|g| (g.pid, g.comm.as_str()))
        .collect();
    assert_eq!(
        others,
        vec![(935, "sidecar-a"), (937, "sidecar-c"), (936, "sidecar-b")]
    );
    let e = explain(r, &Hints::default());
    assert!(e.summary.contains("3 more tasks"), "{}", e.summary);
}

#[test]
fn an_oom_with_nothing_to_kill_says_so() {
    let text = "\
[  5.0] stress invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=-1000
[  5.0] Out of memory and no killable processes...
[  6.0] unrelated line
";
    let r = one(text);
    assert!(r.nothing_killable && !r.truncated_end, "{r:?}");
    let e = explain(r, &Hints::default());
    assert!(
        e.summary
            .contains("the OOM killer found no process it could kill"),
        "{}",
        e.summary
    );
}

#[test]
fn dmesg_x_and_json_logs_read_like_plain_dmesg() {
    let plain = SEED3;
    let dmesg_x: String = plain
        .lines()
        .map(|l| format!("kern  :warn  : {l}\n"))
        .collect();
    let journal_json: String = plain
        .lines()
        .map(|l| {
            let msg = crate::explain::prefix::strip_prefixes(l).text.to_string();
            format!(
                "{}\n",
                serde_json::json!({"_TRANSPORT": "kernel", "MESSAGE": msg})
            )
        })
        .collect();
    let container: String = plain
        .lines()
        .map(|l| {
            format!(
                "{}\n",
                serde_json::json!({"log": format!("{l}\n"), "stream": "stdout"})
            )
        })
        .collect();
    let want = explain(one(plain), &Hints::default());
    for log in [dmesg_x, journal_json, container] {
        let e = explain(one(&log), &Hints::default());
        assert_eq!(
            (&e.invoker_comm, e.victim_pid, &e.memcg, e.limit),
            (&want.invoker_comm, want.victim_pid, &want.memcg, want.limit),
            "{log}"
        );
    }
}

#[test]
fn garbage_and_elisions_never_make_a_report_or_panic() {
    let junk = "...\n\u{0}\u{1}\u{fffd}\n[ 1.0] [  12]\n[  pid  ] uid\nmemory: usage xkB\nKilled process x\n";
    assert!(reports(junk).is_empty(), "{:?}", reports(junk));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any sequence of lines, made of report lines, their fragments and noise, parses
        /// without panicking, and every report it yields has at least one thing it read.
        #[test]
        fn any_line_soup_parses_without_panic(
            picks in proptest::collection::vec((0usize..200, 0usize..400), 0..150)
        ) {
            let lines: Vec<&str> = SEED3.lines().chain(SEED1.lines()).chain(KERNEL_3_10.lines()).collect();
            let mut a = Assembler::new();
            let mut out = Vec::new();
            for (i, cut) in picks {
                let l = lines[i % lines.len()];
                let end = (0..=cut.min(l.len())).rev().find(|e| l.is_char_boundary(*e)).unwrap_or(0);
                out.extend(a.push(&l[..end]));
            }
            out.extend(a.finish());
            for r in out {
                prop_assert!(r.invoker.is_some() || !r.counters.is_empty() || !r.tasks.is_empty()
                    || r.victim.is_some() || r.oom_memcg.is_some() || r.stats_memcg.is_some()
                    || r.constraint.is_some() || r.task_memcg.is_some() || r.named_victim.is_some());
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let mut a = Assembler::new();
            for l in s.split('\n') {
                let _ = a.push(l);
            }
            let _ = a.finish();
        }
    }
}

#[test]
fn names_quoted_from_a_log_reach_the_text_output_escaped() {
    let log = SEED3.replace("memhold", "mem\x1b[2Jhold\u{202e}");
    let dir = std::env::temp_dir().join(format!("oomtrace-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("evil.log");
    std::fs::write(&file, log).unwrap();
    let opts = super::Options {
        source: super::Source::File(file.display().to_string()),
        json: false,
        hints: Hints::default(),
    };
    let mut out = Vec::new();
    super::run(&opts, &mut out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(r"mem\x1b[2Jhold\u{202e}"), "{text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\u{202e}'),
        "{text}"
    );
    assert!(text.lines().count() > 5, "its own line ends kept: {text}");
}

#[test]
fn the_reports_memory_stats_say_what_kind_of_memory_the_memcg_held() {
    // 6.x prints memory.stat's v2 keys on cgroup v1 too (seed 3 is v1: memory+swap counters).
    let e = explain(one(SEED3), &Hints::default());
    let k = e.kinds.as_ref().expect("kinds from the report's stats");
    assert_eq!(k.source, "OOM report");
    assert_eq!(k.bytes("anon"), Some(2_390_548_480));
    assert_eq!(k.bytes("page_cache"), Some(69_632));
    assert!(
        e.summary
            .contains("At the kill the memcg held anon 2.23 GiB, page cache 68.0 KiB"),
        "{}",
        e.summary
    );
    // A report whose stats were elided says nothing of kinds.
    assert!(explain(one(SEED1), &Hints::default()).kinds.is_none());
}
