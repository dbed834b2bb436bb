//! Progress of a long offline operation (backup, restore): a bar redrawn in place when
//! stderr is a terminal, a log line every tenth of the way otherwise.

use std::io::{IsTerminal, Write};

pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    shown_tenths: u64,
    terminal: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Self {
        Self {
            label,
            total,
            done: 0,
            shown_tenths: 0,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn advance(&mut self, n: u64) {
        self.done = (self.done + n).min(self.total);
        let tenths = (self.done * 10).checked_div(self.total).unwrap_or(10);
        if self.terminal {
            if self.done == self.total || self.done.is_multiple_of(256) {
                let filled = (self.done * 30).checked_div(self.total).unwrap_or(30) as usize;
                let mut err = std::io::stderr();
                let _ = write!(
                    err,
                    "\r{} [{}{}] {}/{}",
                    self.label,
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    self.done,
                    self.total
                );
                let _ = err.flush();
            }
        } else if tenths > self.shown_tenths {
            self.shown_tenths = tenths;
            tracing::info!(
                operation = self.label,
                done = self.done,
                total = self.total,
                "{}% done",
                tenths * 10
            );
        }
    }

    pub fn finish(&mut self) {
        self.advance(self.total - self.done);
        if self.terminal {
            eprintln!();
        }
    }
}
