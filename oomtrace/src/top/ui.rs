//! What the person at `top` is looking at (screen, selection, sort, filter) and what a key
//! asks for. No drawing and no data here: keys change this state or become an `Action` for the
//! source of frames (quit; in a replay: pause, step, seek, speed).
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::frame::{Frame, PodRow};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Pods,
    /// The selected pod's classes, processes and threads.
    Detail,
    /// A kill's post-mortem (index into the frame's kills).
    Kill(usize),
    Help,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Headroom,
    Growth,
    Usage,
    Name,
}

impl SortBy {
    pub fn name(self) -> &'static str {
        match self {
            SortBy::Headroom => "headroom",
            SortBy::Growth => "growth",
            SortBy::Usage => "usage",
            SortBy::Name => "name",
        }
    }

    fn next(self) -> Self {
        match self {
            SortBy::Headroom => SortBy::Growth,
            SortBy::Growth => SortBy::Usage,
            SortBy::Usage => SortBy::Name,
            SortBy::Name => SortBy::Headroom,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    None,
    Quit,
    Pause,
    Step,
    /// Seconds to move (negative: back).
    Seek(f64),
    NextKill,
    Faster,
    Slower,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Focus {
    Pods,
    Kills,
}

pub struct Ui {
    pub screen: Screen,
    pub focus: Focus,
    pub sort: SortBy,
    /// Pods whose name contains this are shown.
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: bool,
    /// The selected pod (by memcg, so it stays selected as rows move).
    pub selected: Option<u64>,
    pub selected_kill: usize,
    pub replay: bool,
    /// Lines scrolled in a text screen.
    pub scroll: u16,
}

impl Ui {
    pub fn new(replay: bool) -> Self {
        Self {
            screen: Screen::Pods,
            focus: Focus::Pods,
            sort: SortBy::Headroom,
            filter: String::new(),
            editing: false,
            selected: None,
            selected_kill: 0,
            replay,
            scroll: 0,
        }
    }

    /// The frame's pods as shown: filtered, then sorted.
    pub fn rows<'a>(&self, frame: &'a Frame) -> Vec<&'a PodRow> {
        let mut rows: Vec<&PodRow> = frame
            .pods
            .iter()
            .filter(|p| self.filter.is_empty() || p.name.contains(&self.filter))
            .collect();
        match self.sort {
            SortBy::Headroom => rows.sort_by_key(|p| (p.headroom.is_none(), p.headroom)),
            SortBy::Growth => rows.sort_by(|a, b| {
                b.rate_10s
                    .unwrap_or(f64::MIN)
                    .total_cmp(&a.rate_10s.unwrap_or(f64::MIN))
            }),
            SortBy::Usage => rows.sort_by_key(|p| std::cmp::Reverse(p.usage)),
            SortBy::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        rows
    }

    /// Keeps a selection that exists: the first row when the selected pod is gone.
    pub fn settle(&mut self, frame: &Frame) {
        let rows = self.rows(frame);
        if !self
            .selected
            .is_some_and(|id| rows.iter().any(|p| p.memcg_id == id))
        {
            self.selected = rows.first().map(|p| p.memcg_id);
        }
        if self.selected_kill >= frame.kills.len() {
            self.selected_kill = frame.kills.len().saturating_sub(1);
        }
        if let Screen::Kill(i) = self.screen
            && i >= frame.kills.len()
        {
            self.screen = Screen::Pods;
        }
    }

    fn move_selection(&mut self, frame: &Frame, by: i64) {
        match self.focus {
            Focus::Pods => {
                let rows = self.rows(frame);
                let at = rows
                    .iter()
                    .position(|p| Some(p.memcg_id) == self.selected)
                    .unwrap_or(0) as i64;
                let to = (at + by).clamp(0, rows.len().saturating_sub(1) as i64) as usize;
                self.selected = rows.get(to).map(|p| p.memcg_id);
            }
            Focus::Kills => {
                let last = frame.kills.len().saturating_sub(1) as i64;
                self.selected_kill = (self.selected_kill as i64 + by).clamp(0, last) as usize;
            }
        }
    }

    pub fn key(&mut self, key: KeyEvent, frame: &Frame) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.len() < 64 => {
                    self.filter.push(c)
                }
                _ => {}
            }
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => self.screen = Screen::Help,
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => {
                self.screen = Screen::Pods;
                self.scroll = 0;
            }
            KeyCode::Up | KeyCode::Char('k') => match self.screen {
                Screen::Pods => self.move_selection(frame, -1),
                _ => self.scroll = self.scroll.saturating_sub(1),
            },
            KeyCode::Down | KeyCode::Char('j') => match self.screen {
                Screen::Pods => self.move_selection(frame, 1),
                _ => self.scroll = self.scroll.saturating_add(1),
            },
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Focus::Pods if !frame.kills.is_empty() => Focus::Kills,
                    _ => Focus::Pods,
                }
            }
            KeyCode::Enter | KeyCode::Right => {
                self.scroll = 0;
                self.screen = match self.focus {
                    Focus::Kills if !frame.kills.is_empty() => Screen::Kill(self.selected_kill),
                    _ if self.selected.is_some() => Screen::Detail,
                    _ => self.screen,
                };
            }
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            _ if !self.replay => {}
            KeyCode::Char(' ') => return Action::Pause,
            KeyCode::Char('.') => return Action::Step,
            KeyCode::Char(']') => return Action::Seek(10.0),
            KeyCode::Char('[') => return Action::Seek(-10.0),
            KeyCode::Char('}') => return Action::Seek(60.0),
            KeyCode::Char('{') => return Action::Seek(-60.0),
            KeyCode::Char('n') => return Action::NextKill,
            KeyCode::Char('+') => return Action::Faster,
            KeyCode::Char('-') => return Action::Slower,
            _ => {}
        }
        Action::None
    }
}

/// The footer: the keys of this screen.
pub fn footer(ui: &Ui) -> &'static str {
    match (ui.editing, ui.replay) {
        (true, _) => "type a name part · Enter keep · Esc clear",
        (false, false) => {
            "q quit · ↑↓ select · Enter open · Esc back · Tab pods/kills · s sort · / filter · ? help"
        }
        (false, true) => {
            "q quit · space pause · . step · [ ] ±10s · n next kill · + - speed · Enter open · Tab · s · / · ?"
        }
    }
}

pub const HELP: &[&str] = &[
    "oomtrace top: the node's pod memory cgroups, closest to their limit first.",
    "",
    "Pods screen: one row per pod memcg (VM, else namespace/pod, else the memcg path).",
    "  USAGE / LIMIT bar: guest RAM (green) and overhead (yellow) of the limit.",
    "  HEADROOM: limit - usage.  10s / 60s: usage growth per second.  ETA: time to the",
    "  limit at the 10 s rate.  LAST MIN: usage over the last minute.  KILLS: OOM kills.",
    "  A killed pod's row flashes red; its kill is listed in the kills pane below.",
    "",
    "Keys:",
    "  ↑ ↓ / j k    select a pod (or a kill, after Tab); scroll a text screen",
    "  Enter        the pod's detail (classes, KubeVirt budget, kinds, processes, threads),",
    "               or the selected kill's post-mortem as `tail` prints it",
    "  Esc          back to the pods",
    "  Tab          move between the pods and the kills pane",
    "  s            sort by headroom, growth, usage, name",
    "  /            filter pods by name (Enter keeps, Esc clears)",
    "  q, Ctrl-C    quit",
    "",
    "Replaying a capture (--from):",
    "  space pause · . one second on · [ ] 10 s back / on · { } 60 s · n next kill · + - speed",
    "",
    "The same numbers as `tail --by class` and `report --at`: one model, one set of views.",
];

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEvent;

    fn row(id: u64, name: &str, headroom: i64) -> PodRow {
        PodRow {
            memcg_id: id,
            name: name.into(),
            usage: Some(100),
            limit: Some(100 + headroom as u64),
            guest: 0,
            headroom: Some(headroom),
            rate_10s: Some(id as f64),
            cells: Default::default(),
            spark: String::new(),
            kills: 0,
            flash: false,
        }
    }

    #[test]
    fn keys_sort_filter_select_and_open() {
        let frame = Frame {
            pods: vec![row(1, "VM default/a", 50), row(2, "VM default/b", 10)],
            ..Frame::default()
        };
        let mut ui = Ui::new(false);
        ui.settle(&frame);
        assert_eq!(ui.selected, Some(2), "least headroom first");
        let press = |c| KeyEvent::from(KeyCode::Char(c));
        ui.key(press('s'), &frame);
        assert_eq!(ui.rows(&frame)[0].memcg_id, 2, "growth: the faster first");
        ui.key(KeyEvent::from(KeyCode::Down), &frame);
        assert_eq!(ui.selected, Some(1));
        ui.key(KeyEvent::from(KeyCode::Enter), &frame);
        assert_eq!(ui.screen, Screen::Detail);
        ui.key(KeyEvent::from(KeyCode::Esc), &frame);
        ui.key(press('/'), &frame);
        for c in "b".chars() {
            ui.key(press(c), &frame);
        }
        ui.key(KeyEvent::from(KeyCode::Enter), &frame);
        assert_eq!(ui.rows(&frame).len(), 1);
        assert_eq!(ui.key(press(' '), &frame), Action::None, "live: no pause");
        assert_eq!(ui.key(press('q'), &frame), Action::Quit);
        let mut replay = Ui::new(true);
        assert_eq!(replay.key(press(']'), &frame), Action::Seek(10.0));
    }
}
