//! Logging set-up: text or JSON lines on stderr, filtered by `RUST_LOG` or the config.

use std::{fmt::Write, io::IsTerminal};

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: files and pipes get plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    // A second init (tests starting several servers) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A request's text as a log field: as it is (no quotes added, so JSON logs show
/// `"provider":"pixverse"`), control characters escaped so that no input can forge a
/// line, cut at 64 characters.
pub struct Plain<'a>(pub &'a str);

impl std::fmt::Display for Plain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 64;
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX {
                return f.write_char('…');
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Plain;

    #[test]
    fn plain_fields_escape_control_characters_and_are_cut() {
        assert_eq!(Plain("pixverse").to_string(), "pixverse");
        assert_eq!(Plain("a\nb\u{1b}[31m").to_string(), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(100);
        assert_eq!(Plain(&long).to_string(), format!("{}…", "x".repeat(64)));
    }
}
