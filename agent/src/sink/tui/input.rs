//! Keys to [`Action`]s. Pure: what a key means depends only on the state it is pressed in
//! (editing the filter, help shown, drilled in), never on the terminal.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{Action, App, Flow, View};

/// One line per key, for the help overlay.
pub const HELP: &[(&str, &str)] = &[
    ("↑ ↓  j k", "move the selection"),
    ("PgUp PgDn  g G", "page, first, last"),
    (
        "Enter  →",
        "drill into the process (from a peer: its first process)",
    ),
    (
        "Esc  Backspace  ←",
        "back; Esc at the top clears the filter, then quits",
    ),
    ("Tab  p", "processes / peers"),
    ("s", "next sort column"),
    ("S  r", "reverse the sort"),
    (
        "1-9  0",
        "sort on that column (again: reverse; CONTAINER not counted; s reaches FAILED)",
    ),
    ("c", "show / hide the CONTAINER column (see below)"),
    (
        "/",
        "filter: comm, command, pid, port, address, container, netns",
    ),
    ("space", "pause / resume (the picture stays frozen)"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];

/// What `key` means in `app`'s current state; `None` for keys that mean nothing there.
pub fn action(app: &App, key: KeyEvent) -> Option<Action> {
    // Terminals that report releases (Windows, the kitty protocol) would double every key.
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    // Raw mode turns Ctrl-C into a key instead of SIGINT, so it has to quit from here.
    if ctrl && matches!(key.code, KeyCode::Char('c' | 'C')) {
        return Some(Action::Quit);
    }
    if app.editing_filter() {
        return match key.code {
            KeyCode::Enter => Some(Action::FilterAccept),
            KeyCode::Esc => Some(Action::FilterClear),
            KeyCode::Backspace => Some(Action::FilterDelete),
            KeyCode::Up => Some(Action::Up),
            KeyCode::Down => Some(Action::Down),
            KeyCode::PageUp => Some(Action::PageUp),
            KeyCode::PageDown => Some(Action::PageDown),
            KeyCode::Char(c) if !ctrl => Some(Action::FilterInput(c)),
            _ => None,
        };
    }
    let drilled = matches!(app.view(), View::Process(_));
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Esc if app.help_shown() => Action::CloseHelp,
        KeyCode::Esc if drilled => Action::Back,
        // A stray Esc after filtering should not end the session.
        KeyCode::Esc if !app.filter().is_empty() => Action::FilterClear,
        KeyCode::Esc => Action::Quit,
        KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h') => Action::Back,
        KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => Action::Drill,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Home,
        KeyCode::End | KeyCode::Char('G') => Action::End,
        KeyCode::Tab | KeyCode::BackTab | KeyCode::Char('p') => Action::SwitchView,
        KeyCode::Char('s') => Action::CycleSort,
        KeyCode::Char('S' | 'r') => Action::ReverseSort,
        KeyCode::Char('0') => Action::SortBy(9),
        KeyCode::Char(c @ '1'..='9') => Action::SortBy(usize::from(c as u8 - b'1')),
        KeyCode::Char('/') => Action::FilterStart,
        KeyCode::Char(' ') => Action::TogglePause,
        KeyCode::Char('c') => Action::ToggleContainers,
        KeyCode::Char('?') | KeyCode::F(1) => Action::ToggleHelp,
        _ => return None,
    })
}

/// Applies what `key` means to `app`.
pub fn handle(app: &mut App, key: KeyEvent) -> Flow {
    match action(app, key) {
        Some(a) => app.apply(a),
        None => Flow::Continue,
    }
}
