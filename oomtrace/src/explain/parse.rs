//! Find OOM reports in arbitrary log text, one line at a time (memory bounded by one report).
//!
//! A report opens at "X invoked oom-killer:" or, when the log starts mid-report, at any other
//! report line; it closes at the next report's start, at the oom_reaper line of its victim, or
//! after enough unrelated lines once its victim is known.
use std::sync::LazyLock;

use regex::Regex;

use super::{
    prefix::{strip_prefixes, unwrap_json},
    report::{Counter, Invoker, NamedVictim, OomReport, Reaped, Task, Victim},
};

/// Rows kept per task table: a global OOM lists every task on the node.
pub const MAX_TASKS: usize = 100_000;
const MAX_WARNINGS: usize = 20;
/// Unrelated lines after the kill before the report is closed without an oom_reaper line.
const LINES_AFTER_KILL: u32 = 200;

fn re(s: &str) -> Option<Regex> {
    Regex::new(s).ok()
}

static INVOKED: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"^(?P<comm>.*?) invoked oom-killer: gfp_mask=(?P<gfp>0x[0-9a-fA-F]+)(?:\((?P<flags>[^)]*)\))?,\s*(?:nodemask=[^,]*,\s*)?order=(?P<order>-?\d+),\s*(?:oom_adj=-?\d+,\s*)?oom_score_adj=(?P<adj>-?\d+)",
    )
});
static CPU_LINE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"^CPU: (?P<cpu>\d+) (?:UID: \d+ )?PID: (?P<pid>\d+) Comm: (?P<comm>.*?) (?:Kdump: loaded )?(?:Not tainted|Tainted: [A-Z \-]*?) *(?P<ver>\d+\.\d+\S*)",
    )
});
static COUNTER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"^(?P<name>memory|memory\+swap|swap|kmem|kmem\.tcp|tcp): usage (?P<u>\d+)kB, limit (?P<l>\d+)kB, failcnt (?P<f>\d+)",
    )
});
static STATS_FOR: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^Memory cgroup stats for (?P<path>[^:]*):(?P<rest>.*)$"));
static STAT_LINE: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^(?P<k>[a-z][a-z0-9_]*) (?P<v>\d+)$"));
static INLINE_STAT: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"(?P<k>[a-z][a-z0-9_]*):(?P<v>\d+)(?P<u>KB|kB)?"));
static TASK_HEADER: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^\[\s*pid\s*\]\s+(?P<cols>.*)$"));
static TASK_ROW: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^\[\s*(?P<pid>\d+)\]\s+(?P<rest>.*)$"));
static CONSTRAINT: LazyLock<Option<Regex>> = LazyLock::new(|| re(r"^oom-kill:(?P<kv>.*)$"));
static TASK_IN: LazyLock<Option<Regex>> =
    LazyLock::new(|| re(r"^Task in (?P<task>\S+) killed as a result of limit of (?P<oom>\S+)"));
/// "Killed process N (comm) total-vm:..kB, anon-rss:..kB, ..." in every generation's wording
/// (3.10: "(comm), UID 0, total-vm:"), also cut short or wrapped: the pid and comm are the
/// line's head, each figure is read where it is found.
static KILLED: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"^(?:(?P<reason>[^:]*[Oo]ut of memory[^:]*): )?Killed process (?P<pid>\d+) \((?P<rest>.*)$")
});
static KILLED_FIGURE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"(?P<k>total-vm|anon-rss|file-rss|shmem-rss|pgtables|UID|oom_score_adj)[: ](?P<v>-?[\d,]+)")
});
/// memory.oom.group (4.19+; kubelet sets it on cgroup v2 since Kubernetes 1.28): the whole
/// group is killed, one Killed line per task after this one.
static OOM_GROUP: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"^Tasks in (?P<path>.+) are going to be killed due to memory\.oom\.group set")
});
/// Before 4.19 (as "Memory cgroup out of memory: Kill process ..." in memcg OOMs): the task
/// chosen, printed before its Killed line.
static SACRIFICE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(r"^(?:(?P<reason>[^:]*): )?Kill process (?P<pid>\d+) \((?P<comm>.*?)\)(?: score|\s*$)")
});
static REAPED: LazyLock<Option<Regex>> = LazyLock::new(|| {
    re(
        r"^oom_reaper: reaped process (?P<pid>\d+) \((?P<comm>.*)\),? now anon-rss:(?P<anon>\d+)kB, file-rss:(?P<file>\d+)kB(?:, shmem-rss:(?P<shmem>\d+)kB)?",
    )
});

fn caps<'a>(r: &LazyLock<Option<Regex>>, s: &'a str) -> Option<regex::Captures<'a>> {
    r.as_ref().and_then(|r| r.captures(s))
}

fn num<T: std::str::FromStr>(c: &regex::Captures<'_>, name: &str) -> Option<T> {
    c.name(name).and_then(|m| m.as_str().parse().ok())
}

fn text(c: &regex::Captures<'_>, name: &str) -> String {
    c.name(name)
        .map_or(String::new(), |m| m.as_str().to_string())
}

#[derive(Debug, Default)]
enum Section {
    #[default]
    None,
    Stats,
    Tasks(Vec<String>),
}

#[derive(Debug, Default)]
pub struct Assembler {
    current: Option<OomReport>,
    section: Section,
    line_no: u64,
    lines_since_kill: Option<u32>,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one line (with or without its newline). Returns a report that this line completed.
    pub fn push(&mut self, line: &str) -> Option<OomReport> {
        self.line_no += 1;
        match unwrap_json(line) {
            Some(message) => self.push_message(&message),
            None => self.push_message(line),
        }
    }

    fn push_message(&mut self, line: &str) -> Option<OomReport> {
        let msg = strip_prefixes(line);
        let t = msg.text;
        let mut done = None;

        if let Some(c) = caps(&INVOKED, t) {
            done = self.close(true);
            let mut r = self.open(msg.time, false);
            r.invoker = Some(Invoker {
                comm: text(&c, "comm"),
                pid: None,
                cpu: None,
                gfp_mask: c.name("gfp").map(|m| m.as_str().to_string()),
                gfp_flags: c.name("flags").map(|m| m.as_str().to_string()),
                order: num(&c, "order"),
                oom_score_adj: num(&c, "adj"),
            });
            self.current = Some(r);
            return done;
        }
        // Sections continue only while their lines keep coming.
        match &self.section {
            Section::Stats => {
                if let Some(c) = caps(&STAT_LINE, t) {
                    if let (Some(r), Some(v)) = (self.current.as_mut(), num::<u64>(&c, "v")) {
                        r.stats.insert(text(&c, "k"), v);
                    }
                    return None;
                }
                self.section = Section::None;
            }
            Section::Tasks(cols) => {
                if let Some(c) = caps(&TASK_ROW, t) {
                    let cols = cols.clone();
                    // A header alone is not a report; its first row is.
                    self.ensure(msg.time, &mut done);
                    self.section = Section::Tasks(cols.clone());
                    self.task_row(&c, &cols);
                    return done;
                }
                self.section = Section::None;
            }
            Section::None => {}
        }
        if let Some(c) = caps(&CPU_LINE, t) {
            if let Some(r) = self.current.as_mut().filter(|r| r.kernel_version.is_none()) {
                if let Some(inv) = r.invoker.as_mut() {
                    inv.pid = num(&c, "pid");
                    inv.cpu = num(&c, "cpu");
                }
                r.kernel_version = Some(text(&c, "ver"));
            }
            // A CPU line outside a report is a warning or panic dump: not ours.
            return done;
        }
        if let Some(c) = caps(&COUNTER, t) {
            let r = self.ensure(msg.time, &mut done);
            let name = text(&c, "name");
            if r.counter(&name).is_none() {
                r.counters.push(Counter {
                    name,
                    usage_kb: num(&c, "u").unwrap_or(0),
                    limit_kb: num(&c, "l").unwrap_or(0),
                    failcnt: num(&c, "f").unwrap_or(0),
                });
            }
            return done;
        }
        if let Some(c) = caps(&STATS_FOR, t) {
            let r = self.ensure(msg.time, &mut done);
            let rest = c.name("rest").map_or("", |m| m.as_str()).trim();
            if r.stats_memcg.is_none() {
                r.stats_memcg = Some(text(&c, "path"));
                if rest.is_empty() {
                    self.section = Section::Stats;
                } else if let Some(inline) = INLINE_STAT.as_ref() {
                    // Old v1: "cache:0KB rss:123KB ..." on one line, one line per child cgroup.
                    for s in inline.captures_iter(rest) {
                        let mult = if s.name("u").is_some() { 1024 } else { 1 };
                        if let Some(v) = num::<u64>(&s, "v") {
                            r.stats.insert(text(&s, "k"), v.saturating_mul(mult));
                        }
                    }
                }
            }
            return done;
        }
        if let Some(c) = caps(&TASK_HEADER, t) {
            let cols = text(&c, "cols")
                .split_whitespace()
                .map(str::to_string)
                .collect();
            self.section = Section::Tasks(cols);
            return done;
        }
        if let Some(c) = caps(&CONSTRAINT, t) {
            let mut found = OomReport::default();
            parse_constraint(&mut found, &text(&c, "kv"));
            if found.constraint.is_some() || found.oom_memcg.is_some() || found.task_memcg.is_some()
            {
                let r = self.ensure(msg.time, &mut done);
                r.constraint = found.constraint.or(r.constraint.take());
                r.oom_memcg = found.oom_memcg.or(r.oom_memcg.take());
                r.task_memcg = found.task_memcg.or(r.task_memcg.take());
                r.named_victim = found.named_victim.or(r.named_victim.take());
            }
            return done;
        }
        if let Some(c) = caps(&SACRIFICE, t) {
            let r = self.ensure(msg.time, &mut done);
            if r.named_victim.is_none() {
                r.named_victim = Some(NamedVictim {
                    pid: num(&c, "pid").unwrap_or(0),
                    comm: text(&c, "comm"),
                    from: "Kill process",
                    reason: c.name("reason").map(|m| m.as_str().to_string()),
                });
            }
            return done;
        }
        if let Some(c) = caps(&TASK_IN, t) {
            let r = self.ensure(msg.time, &mut done);
            r.task_memcg = Some(text(&c, "task"));
            r.oom_memcg = Some(text(&c, "oom"));
            return done;
        }
        if t.starts_with("Out of memory and no killable processes") {
            let r = self.ensure(msg.time, &mut done);
            r.nothing_killable = true;
            return self.close(false);
        }
        if let Some(c) = caps(&OOM_GROUP, t) {
            let r = self.ensure_for_group(msg.time, &mut done);
            r.oom_group = Some(text(&c, "path"));
            return done;
        }
        if let Some(c) = caps(&KILLED, t) {
            let victim = killed_victim(&c);
            // memory.oom.group: every task of the group is killed after the chosen one, each
            // with its own Killed line, in the same report. The chosen one is in the group too:
            // the kernel prints its Killed line a second time (seen on 5.10), not a new victim.
            if let Some(r) = self
                .current
                .as_mut()
                .filter(|r| r.victim.is_some() && r.oom_group.is_some())
            {
                let again = r.victim.as_ref().is_some_and(|v| v.pid == victim.pid)
                    || r.group_victims.iter().any(|g| g.pid == victim.pid);
                if !again && r.group_victims.len() < MAX_TASKS {
                    r.group_victims.push(victim);
                }
                self.lines_since_kill = Some(0);
                return done;
            }
            let r = self.ensure(msg.time, &mut done);
            if r.victim.is_none() {
                r.victim = Some(victim);
                self.lines_since_kill = Some(0);
            }
            return done;
        }
        if let Some(c) = caps(&REAPED, t) {
            let pid: u32 = num(&c, "pid").unwrap_or(0);
            let ours = self
                .current
                .as_ref()
                .and_then(|r| r.victim.as_ref())
                .is_some_and(|v| v.pid == pid);
            if ours {
                let mut group = false;
                if let Some(r) = self.current.as_mut() {
                    r.reaped = Some(Reaped {
                        pid,
                        anon_rss_kb: num(&c, "anon").unwrap_or(0),
                        file_rss_kb: num(&c, "file").unwrap_or(0),
                        shmem_rss_kb: num(&c, "shmem"),
                    });
                    group = r.oom_group.is_some();
                }
                // A group kill's other Killed lines may still follow (the reaper runs apart).
                if !group {
                    return self.close(false);
                }
            }
            return done;
        }
        if t.contains("mem_cgroup_out_of_memory") || t.contains("mem_cgroup_oom_synchronize") {
            if let Some(r) = self.current.as_mut() {
                r.memcg_in_trace = true;
            }
            return done;
        }
        if let Some(n) = self.lines_since_kill.as_mut() {
            *n += 1;
            if *n > LINES_AFTER_KILL {
                return self.close(false);
            }
        }
        done
    }

    /// End of input: the open report, if any.
    pub fn finish(&mut self) -> Option<OomReport> {
        self.close(true)
    }

    /// Note something about the input (bad bytes, cut lines) on the open report.
    pub fn warn(&mut self, w: String) {
        if let Some(r) = self.current.as_mut() {
            warn(r, w);
        }
    }

    fn open(&mut self, time: Option<&str>, truncated_start: bool) -> OomReport {
        self.section = Section::None;
        self.lines_since_kill = None;
        OomReport {
            first_line: self.line_no,
            time: time.map(str::to_string),
            truncated_start,
            ..Default::default()
        }
    }

    /// The open report, or a new one that lacks its start (the log begins mid-report).
    fn ensure(&mut self, time: Option<&str>, done: &mut Option<OomReport>) -> &mut OomReport {
        if self.current.as_ref().is_some_and(|r| r.victim.is_some()) {
            // A report line after the kill: a new report whose start is missing.
            *done = self.close(false);
        }
        if self.current.is_none() {
            let mut r = self.open(time, true);
            warn(
                &mut r,
                "the log holds no \"invoked oom-killer\" line for this report".into(),
            );
            self.current = Some(r);
        }
        self.current.get_or_insert_with(OomReport::default)
    }

    /// The open report for a memory.oom.group line: it follows the chosen victim's Killed line,
    /// so a report with its victim stays open (`ensure` would start a new one).
    fn ensure_for_group(
        &mut self,
        time: Option<&str>,
        done: &mut Option<OomReport>,
    ) -> &mut OomReport {
        if self.current.as_ref().is_some_and(|r| r.oom_group.is_some()) {
            // A second group line: another OOM's.
            *done = self.close(false);
        }
        if self.current.is_none() {
            return self.ensure(time, done);
        }
        self.current.get_or_insert_with(OomReport::default)
    }

    fn close(&mut self, at_end: bool) -> Option<OomReport> {
        let mut r = self.current.take()?;
        self.section = Section::None;
        self.lines_since_kill = None;
        // A Killed line cut inside its comm: the report's task table still names the pid.
        if let Some(v) = r.victim.as_mut()
            && let Some(why) = v.line_cut
        {
            if why == "inside its name"
                && let Some(t) = r.tasks.iter().find(|t| t.pid == v.pid)
                && t.name.starts_with(v.comm.as_str())
            {
                v.comm = t.name.clone();
            }
            warn(
                &mut r,
                format!("the \"Killed process\" line is cut {why} (a cut log or a wrapped paste)"),
            );
        }
        if r.victim.is_none() && !r.nothing_killable {
            r.truncated_end = true;
            let why = if at_end {
                "the log ends"
            } else {
                "another report starts"
            };
            let named = r.named_victim.as_ref().map_or(String::new(), |n| {
                format!(" (its {} line names the victim)", n.from)
            });
            warn(
                &mut r,
                format!("{why} before this report's \"Killed process\" line{named}"),
            );
        }
        Some(r)
    }

    fn task_row(&mut self, c: &regex::Captures<'_>, cols: &[String]) {
        let Some(r) = self.current.as_mut() else {
            return;
        };
        if r.tasks.len() >= MAX_TASKS {
            r.tasks_dropped += 1;
            return;
        }
        let mut task = Task {
            pid: num(c, "pid").unwrap_or(0),
            ..Default::default()
        };
        // Columns after "[ pid ]" are numbers up to "name"; the name may hold spaces.
        let rest = c.name("rest").map_or("", |m| m.as_str());
        let numeric = cols.iter().take_while(|c| *c != "name").count();
        let mut fields = rest.split_whitespace();
        let mut ok = true;
        for col in cols.iter().take(numeric) {
            let Some(f) = fields.next() else {
                ok = false;
                break;
            };
            let n: Option<i64> = f.parse().ok();
            if n.is_none() {
                ok = false;
            }
            let u = n.and_then(|n| u64::try_from(n).ok());
            match col.as_str() {
                "uid" => task.uid = u.and_then(|v| u32::try_from(v).ok()),
                "tgid" => task.tgid = u.and_then(|v| u32::try_from(v).ok()),
                "total_vm" => task.total_vm_pages = u,
                "rss" => task.rss_pages = u,
                "rss_anon" => task.rss_anon_pages = u,
                "rss_file" => task.rss_file_pages = u,
                "rss_shmem" => task.rss_shmem_pages = u,
                "pgtables_bytes" => task.pgtables_bytes = u,
                // Old kernels count page-table pages.
                "nr_ptes" => task.pgtables_bytes = u.map(|p| p * 4096),
                "swapents" => task.swapents = u,
                "oom_score_adj" => task.oom_score_adj = n.and_then(|v| i32::try_from(v).ok()),
                _ => {}
            }
        }
        task.name = fields.collect::<Vec<_>>().join(" ");
        if !ok {
            warn(
                r,
                format!("task row for pid {} does not match its header", task.pid),
            );
        }
        r.tasks.push(task);
    }
}

/// The victim of a Killed line. The comm sits in parentheses and may hold any byte, ")" too:
/// it ends at the ")" before the figures ("total-vm:", or 3.10's ", UID"), else at the last
/// ")", else (a line cut inside it) where the line ends. Figures may carry thousands
/// separators where a user's tool added them.
fn killed_victim(c: &regex::Captures<'_>) -> Victim {
    let rest = c.name("rest").map_or("", |m| m.as_str());
    let closed = rest
        .find(") total-vm:")
        .or_else(|| rest.find("), UID "))
        .or_else(|| rest.rfind(')'));
    let end = closed.unwrap_or(rest.len());
    let mut v = Victim {
        pid: num(c, "pid").unwrap_or(0),
        comm: rest[..end].to_string(),
        reason: c.name("reason").map(|m| m.as_str().to_string()),
        line_cut: if closed.is_none() {
            Some("inside its name")
        } else if !rest.contains("anon-rss:") {
            Some("before its figures")
        } else {
            None
        },
        ..Victim::default()
    };
    let Some(figures) = KILLED_FIGURE.as_ref() else {
        return v;
    };
    for f in figures.captures_iter(rest.get(end..).unwrap_or("")) {
        let digits = f
            .name("v")
            .map_or(String::new(), |m| m.as_str().replace(',', ""));
        let n: Option<i64> = digits.parse().ok();
        let u = n.and_then(|n| u64::try_from(n).ok());
        match f.name("k").map_or("", |m| m.as_str()) {
            "total-vm" => v.total_vm_kb = u,
            "anon-rss" => v.anon_rss_kb = u,
            "file-rss" => v.file_rss_kb = u,
            "shmem-rss" => v.shmem_rss_kb = u,
            "pgtables" => v.pgtables_kb = u,
            "UID" => v.uid = u.and_then(|u| u32::try_from(u).ok()),
            "oom_score_adj" => v.oom_score_adj = n.and_then(|n| i32::try_from(n).ok()),
            _ => {}
        }
    }
    v
}

fn warn(r: &mut OomReport, w: String) {
    if r.warnings.len() < MAX_WARNINGS && !r.warnings.contains(&w) {
        r.warnings.push(w);
    }
}

/// "constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=..,mems_allowed=0,oom_memcg=/..,
/// task_memcg=/..,task=qemu-system-x86,pid=39079,uid=107". The task name may hold commas, so
/// the tail is taken from the right.
fn parse_constraint(r: &mut OomReport, kv: &str) {
    let (head, task) = match kv.find(",task=") {
        Some(i) => (&kv[..i], Some(&kv[i + 6..])),
        None => (kv, None),
    };
    for part in head.split(',') {
        match part.split_once('=') {
            Some(("constraint", v)) => r.constraint = Some(v.to_string()),
            Some(("oom_memcg", v)) => r.oom_memcg = Some(v.to_string()),
            Some(("task_memcg", v)) => r.task_memcg = Some(v.to_string()),
            _ => {}
        }
    }
    // "NAME,pid=N,uid=U": the victim, named before its Killed line (all a cut report may hold).
    if let Some((comm, rest)) = task.and_then(|t| t.rsplit_once(",pid=")) {
        let pid = rest.split(',').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            r.named_victim = Some(NamedVictim {
                pid,
                comm: comm.to_string(),
                from: "oom-kill",
                reason: None,
            });
        }
    }
}
