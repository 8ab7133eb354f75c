//! `oomtrace top`: the node's pod memcgs at a glance, live or from a capture. A view of the
//! same model and views as `tail --by` and `report`: frames are built from the model (at the
//! collector's ticks, or at a replay's position) and drawn by ratatui on its own thread, which
//! never waits on the collector.
mod draw;
mod frame;
mod player;
mod ui;

use std::{
    cell::RefCell,
    io::IsTerminal as _,
    path::PathBuf,
    rc::Rc,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ratatui::crossterm::event::{self, Event};

use crate::{
    collector::{self, Config, Observer, Target, TickInfo},
    model::{Model, OomRow},
    output::Clock,
    replay,
};
use frame::{Frame, FrameBuilder};
use ui::{Action, Ui};

pub struct Options {
    pub target: Target,
    pub from: Option<PathBuf>,
    /// Time between frames.
    pub every: Duration,
    /// With `from`: start this far after the capture's start, paused.
    pub at: Option<Duration>,
}

/// Where frames come from.
trait Source {
    /// A new frame, when there is one; `selected`: the pod whose detail to include.
    fn frame(&mut self, selected: Option<u64>) -> Result<Option<Frame>>;
    fn act(&mut self, action: Action) -> Result<()>;
    /// Nothing more will come (the collector stopped).
    fn ended(&self) -> bool;
}

pub fn run(opts: Options) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "top draws on a terminal and this is not one; for text that scrolls, use \
             `oomtrace tail --by class` (or `report` on a capture)"
        );
    }
    if opts.every < Duration::from_millis(200) {
        bail!("--every must be at least 200ms");
    }
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match &opts.from {
        Some(path) => {
            let mut source = Replay::open(path, &opts)?;
            on_terminal(&mut source, true, color)
        }
        None => live(opts, color),
    }
}

/// Raw mode and the alternate screen for the loop, restored after it however it ends (a
/// panic too: ratatui's hook restores the terminal first).
fn on_terminal(source: &mut dyn Source, replay: bool, color: bool) -> Result<()> {
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = event_loop(&mut terminal, source, replay, draw::Palette { color });
    let _ = terminal.show_cursor();
    let restored = ratatui::try_restore().context("cannot restore the terminal");
    result.and(restored)
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    source: &mut dyn Source,
    replay: bool,
    palette: draw::Palette,
) -> Result<()> {
    let mut ui = Ui::new(replay);
    let mut frame = Frame::default();
    let mut dirty = true;
    loop {
        if let Some(f) = source.frame(ui.selected)? {
            frame = f;
            ui.settle(&frame);
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| draw::draw(f, &frame, &ui, palette))?;
            dirty = false;
        }
        if source.ended() {
            return Ok(());
        }
        if event::poll(Duration::from_millis(100))? {
            match event::read()? {
                Event::Key(key) => {
                    let action = ui.key(key, &frame);
                    if action == Action::Quit {
                        return Ok(());
                    }
                    source.act(action)?;
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

/// What the collector's thread hands the drawing thread.
struct Shared {
    frame: Mutex<Option<Frame>>,
    selected: AtomicU64,
    quit: AtomicBool,
    ended: AtomicBool,
}

/// The collector side: a frame at every `every`, never waiting on the terminal.
struct LiveFrames {
    shared: Arc<Shared>,
    /// Made once tracing is live (it needs the collector's clock and hooks).
    builder: Rc<RefCell<Option<FrameBuilder>>>,
    every: Duration,
    next: Instant,
}

impl Observer for LiveFrames {
    fn kill(&mut self, _: &Model, _: &OomRow, _: &Clock) -> Result<()> {
        // Show it now, not at the next frame.
        self.next = Instant::now();
        Ok(())
    }

    fn tick(&mut self, model: &Model, at: &TickInfo) -> Result<()> {
        let mut builder = self.builder.borrow_mut();
        let Some(builder) = builder.as_mut() else {
            return Ok(());
        };
        if Instant::now() < self.next {
            return Ok(());
        }
        self.next = Instant::now() + self.every;
        let selected = match self.shared.selected.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        };
        let frame = builder.build(model, at.now_ns, selected, "live".into(), true);
        if let Ok(mut slot) = self.shared.frame.lock() {
            *slot = Some(frame);
        }
        Ok(())
    }

    fn wants_stop(&self) -> bool {
        self.shared.quit.load(Ordering::Relaxed)
    }
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.quit.store(true, Ordering::Relaxed);
    }
}

struct LiveSource {
    shared: Arc<Shared>,
}

impl Source for LiveSource {
    fn frame(&mut self, selected: Option<u64>) -> Result<Option<Frame>> {
        self.shared
            .selected
            .store(selected.unwrap_or(0), Ordering::Relaxed);
        Ok(self.shared.frame.lock().ok().and_then(|mut f| f.take()))
    }

    fn act(&mut self, _: Action) -> Result<()> {
        Ok(())
    }

    fn ended(&self) -> bool {
        self.shared.ended.load(Ordering::Relaxed)
    }
}

fn live(opts: Options, color: bool) -> Result<()> {
    let shared = Arc::new(Shared {
        frame: Mutex::new(None),
        selected: AtomicU64::new(0),
        quit: AtomicBool::new(false),
        ended: AtomicBool::new(false),
    });
    let cfg = Config {
        target: opts.target,
        json: true,
        charges: false,
        least_privilege: true,
        ..Config::default()
    };
    let every = opts.every;
    let builder = Rc::new(RefCell::new(None));
    let mut frames = LiveFrames {
        shared: shared.clone(),
        builder: builder.clone(),
        every,
        next: Instant::now(),
    };
    let mut drawing: Option<std::thread::JoinHandle<Result<()>>> = None;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // The collector's thread runs the loop; the drawing thread is started once tracing is
    // live (so it holds only the capabilities kept after start).
    let traced = rt.block_on(async {
        collector::run_observed(
            cfg,
            &mut std::io::sink(),
            |started| {
                *builder.borrow_mut() = Some(FrameBuilder::new(
                    started.clock,
                    kernel.trim(),
                    started.choices.iter().map(|c| (c.hook, c.tier.name())),
                ));
                let shared = shared.clone();
                drawing = Some(std::thread::spawn(move || {
                    // However the drawing ends (q, an error, a panic), the collector stops.
                    let _stop = StopOnDrop(shared.clone());
                    let mut source = LiveSource { shared };
                    on_terminal(&mut source, false, color)
                }));
            },
            &mut frames,
        )
        .await
    });
    shared.ended.store(true, Ordering::Relaxed);
    let drawn = match drawing {
        Some(h) => h
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the drawing thread panicked"))),
        None => Ok(()),
    };
    traced?;
    drawn
}

struct Replay {
    player: player::Player,
    builder: FrameBuilder,
    name: String,
    paused: bool,
    speed: f64,
    /// Wall time of the last move while playing.
    moved_at: Instant,
    every: Duration,
    last_frame: Option<Instant>,
    built_for: Option<Option<u64>>,
}

impl Replay {
    fn open(path: &std::path::Path, opts: &Options) -> Result<Self> {
        let mut player = player::Player::open(path)?;
        let clock = replay::clock(player.header.as_ref());
        let (kernel, hooks) = player.header.as_ref().map_or_else(
            || (String::new(), Vec::new()),
            |h| {
                (
                    h.kernel.clone(),
                    h.hooks
                        .iter()
                        .map(|s| (s.hook.clone(), s.tier.clone()))
                        .collect::<Vec<_>>(),
                )
            },
        );
        let builder = FrameBuilder::new(
            clock,
            &kernel,
            hooks.iter().map(|(h, t)| (h.as_str(), t.as_str())),
        );
        let start = player.start_ns;
        if let Some(at) = opts.at {
            let at_ns = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
            player.seek(start.saturating_add(at_ns))?;
        } else {
            player.seek(start)?;
        }
        Ok(Self {
            player,
            builder,
            name: crate::visible::visible(&path.display().to_string()).into_owned(),
            paused: opts.at.is_some(),
            speed: 1.0,
            moved_at: Instant::now(),
            every: opts.every.min(Duration::from_secs(1)),
            last_frame: None,
            built_for: None,
        })
    }

    fn source_line(&self) -> String {
        let p = &self.player;
        let s = |ns: u64| ns.saturating_sub(p.start_ns) as f64 / 1e9;
        let state = if p.at_end() {
            "at the end".to_string()
        } else if self.paused {
            "paused".to_string()
        } else {
            format!("playing {}x", self.speed)
        };
        format!(
            "capture {} · {:.1} s of {:.1} s · {state} · kills at {}",
            self.name,
            s(p.position_ns()),
            s(p.end_ns),
            if p.kills_ns.is_empty() {
                "-".to_string()
            } else {
                p.kills_ns
                    .iter()
                    .map(|k| format!("{:.1} s", s(*k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )
    }
}

impl Source for Replay {
    fn frame(&mut self, selected: Option<u64>) -> Result<Option<Frame>> {
        let mut moved = false;
        if !self.paused && !self.player.at_end() {
            let step = self.moved_at.elapsed().as_secs_f64() * self.speed;
            if step >= 0.05 {
                let to = self.player.position_ns() + (step * 1e9) as u64;
                self.player.seek(to)?;
                self.moved_at = Instant::now();
                moved = true;
            }
        }
        let due = self.last_frame.is_none_or(|t| t.elapsed() >= self.every);
        if self.built_for == Some(selected) && !(moved && due) {
            return Ok(None);
        }
        self.built_for = Some(selected);
        self.last_frame = Some(Instant::now());
        let source = self.source_line();
        Ok(Some(self.builder.build(
            &self.player.model,
            self.player.now_ns(),
            selected,
            source,
            false,
        )))
    }

    fn act(&mut self, action: Action) -> Result<()> {
        let pos = self.player.position_ns();
        match action {
            Action::Pause => {
                self.paused = !self.paused;
                self.moved_at = Instant::now();
            }
            Action::Step => {
                self.paused = true;
                self.player.seek(pos + 1_000_000_000)?;
            }
            Action::Seek(s) => {
                let to = if s < 0.0 {
                    pos.saturating_sub((-s * 1e9) as u64)
                } else {
                    pos + (s * 1e9) as u64
                };
                self.player.seek(to)?;
            }
            Action::NextKill => {
                let seen = self.player.model.oom_rows().len();
                if let Some(k) = self.player.kills_ns.get(seen).copied() {
                    self.paused = true;
                    self.player.seek(k.max(pos))?;
                    // The kill's row is made from inputs stamped a little after it.
                    while self.player.model.oom_rows().len() <= seen && !self.player.at_end() {
                        self.player.seek(self.player.position_ns() + 100_000_000)?;
                    }
                }
            }
            Action::Faster => self.speed = (self.speed * 2.0).min(64.0),
            Action::Slower => self.speed = (self.speed / 2.0).max(0.25),
            Action::None | Action::Quit => {}
        }
        // Whatever moved, the next frame shows it.
        self.built_for = None;
        Ok(())
    }

    fn ended(&self) -> bool {
        false
    }
}
