//! Lays a ready `Frame` out on the terminal: header, the pods table (or a pod's detail, a
//! kill's post-mortem, the help), the kills pane and the keys. No I/O and no numbers made here;
//! the text was escaped when the frame was built.
use ratatui::{
    Frame as Screen,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row, Table, TableState},
};

use super::{
    frame::{Frame, PodRow},
    ui::{self, Focus, Screen as Showing, Ui},
};

/// Colours, or none (NO_COLOR).
#[derive(Clone, Copy)]
pub struct Palette {
    pub color: bool,
}

impl Palette {
    fn style(self, fg: Color) -> Style {
        if self.color {
            Style::default().fg(fg)
        } else {
            Style::default()
        }
    }

    fn alert(self) -> Style {
        if self.color {
            Style::default().fg(Color::White).bg(Color::Red)
        } else {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        }
    }
}

/// Usage of the limit as a bar: guest RAM, then overhead, then the rest.
fn bar(p: &PodRow, width: usize, pal: Palette) -> Line<'static> {
    let (Some(usage), Some(limit)) = (p.usage, p.limit.filter(|l| *l > 0)) else {
        return Line::from("");
    };
    let cells = |v: f64| {
        ((v / limit as f64) * width as f64)
            .round()
            .clamp(0.0, width as f64) as usize
    };
    let used = cells(usage as f64);
    let guest = cells(p.guest.max(0) as f64).min(used);
    let overhead = used - guest;
    Line::from(vec![
        Span::styled("█".repeat(guest), pal.style(Color::Green)),
        Span::styled(
            if pal.color { "█" } else { "▒" }.repeat(overhead),
            pal.style(Color::Yellow),
        ),
        Span::styled("░".repeat(width - used), pal.style(Color::DarkGray)),
    ])
}

fn pods_table(f: &mut Screen, area: Rect, frame: &Frame, ui: &Ui, pal: Palette) {
    let wide = area.width >= 120;
    let bar_width = if wide { 20 } else { 10 };
    let rows = ui.rows(frame);
    let selected = rows.iter().position(|p| Some(p.memcg_id) == ui.selected);
    let mut header = vec!["POD", "USAGE / LIMIT", "USAGE", "LIMIT", "HEADROOM", "10s"];
    let mut widths = vec![
        Constraint::Min(16),
        Constraint::Length(bar_width as u16),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(12),
    ];
    if wide {
        header.extend(["60s", "ETA", "LAST MIN"]);
        widths.extend([
            Constraint::Length(12),
            Constraint::Length(7),
            Constraint::Length(20),
        ]);
    }
    header.push("KILLS");
    widths.push(Constraint::Length(5));
    let table_rows = rows.iter().map(|p| {
        let mut cells: Vec<Line> = vec![
            Line::from(p.name.as_str()),
            bar(p, bar_width, pal),
            Line::from(p.cells[0].as_str()),
            Line::from(p.cells[1].as_str()),
            Line::from(p.cells[2].as_str()),
            Line::from(p.cells[3].as_str()),
        ];
        if wide {
            cells.push(Line::from(p.cells[4].as_str()));
            cells.push(Line::from(p.cells[5].as_str()));
            cells.push(Line::styled(p.spark.as_str(), pal.style(Color::Cyan)));
        }
        cells.push(Line::from(p.kills.to_string()));
        let row = Row::new(cells);
        if p.flash { row.style(pal.alert()) } else { row }
    });
    let title = format!(
        " pods ({}) · sort: {}{} ",
        rows.len(),
        ui.sort.name(),
        if ui.filter.is_empty() {
            String::new()
        } else {
            format!(" · filter: {}", ui.filter)
        }
    );
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::TOP).title(title))
        .row_highlight_style(if ui.focus == Focus::Pods {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        })
        .highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(selected);
    f.render_stateful_widget(table, area, &mut state);
}

fn text<S: AsRef<str>>(f: &mut Screen, area: Rect, title: &str, lines: &[S], scroll: u16) {
    let body: Vec<Line> = lines.iter().map(|l| Line::from(l.as_ref())).collect();
    f.render_widget(
        Paragraph::new(body)
            .block(Block::default().borders(Borders::TOP).title(title))
            .scroll((scroll, 0)),
        area,
    );
}

fn kills_pane(f: &mut Screen, area: Rect, frame: &Frame, ui: &Ui, pal: Palette) {
    let shown = area.height.saturating_sub(1) as usize;
    // The newest kills, and the selected one always among them.
    let first = frame
        .kills
        .len()
        .saturating_sub(shown)
        .min(ui.selected_kill);
    let lines: Vec<Line> = frame
        .kills
        .iter()
        .enumerate()
        .skip(first)
        .take(shown)
        .map(|(i, k)| {
            let style = if ui.focus == Focus::Kills && i == ui.selected_kill {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                pal.style(Color::Red)
            };
            Line::styled(k.summary.as_str(), style)
        })
        .collect();
    let title = if frame.kills.is_empty() {
        " kills: none so far ".to_string()
    } else {
        format!(
            " kills ({}) · Tab, then Enter: post-mortem ",
            frame.kills.len()
        )
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)),
        area,
    );
}

pub fn draw(f: &mut Screen, frame: &Frame, ui: &Ui, pal: Palette) {
    let [head, main, kills, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(4),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let drops = if frame.drops > 0 {
        pal.alert()
    } else {
        Style::default()
    };
    f.render_widget(
        Paragraph::new(vec![
            Line::from(vec![
                Span::styled(
                    "oomtrace top",
                    Style::default().add_modifier(Modifier::BOLD),
                ),
                Span::raw(format!(" · {}", frame.source)),
            ]),
            Line::styled(frame.header.as_str(), drops),
        ]),
        head,
    );
    match ui.screen {
        Showing::Pods => pods_table(f, main, frame, ui, pal),
        Showing::Detail => match &frame.detail {
            Some((id, lines)) if Some(*id) == ui.selected => {
                text(f, main, " pod detail · Esc back ", lines, ui.scroll)
            }
            _ => text(f, main, " pod detail ", &["(gone)"], 0),
        },
        Showing::Kill(i) => match frame.kills.get(i) {
            Some(k) => text(f, main, " post-mortem · Esc back ", &k.text, ui.scroll),
            None => text::<&str>(f, main, " post-mortem ", &[], 0),
        },
        Showing::Help => text(f, main, " help · Esc back ", ui::HELP, ui.scroll),
    }
    kills_pane(f, kills, frame, ui, pal);
    f.render_widget(
        Paragraph::new(ui::footer(ui)).style(pal.style(Color::DarkGray)),
        foot,
    );
}
