//! Diagnostics: errors that point at the place in a config file that caused them.
//!
//! Every config error names the file, the line and the column, quotes the offending
//! line with a caret under the offending text, and says what was expected. The format
//! follows rustc's, because data teams read these in terminals and CI logs where that
//! shape is familiar:
//!
//! ```text
//! error: unknown event type `purchse`
//!   --> retail.toml:42:15
//!    |
//! 42 | rule = "count(purchse, 30d) > 0"
//!    |               ^^^^^^^
//!    = help: declared event types: page_view, purchase, ...
//! ```
//!
//! Positions are byte offsets into the source text ([`Span`]); they are turned into
//! line and column (1-based, columns counted in characters) only when rendered.

use std::fmt;
use std::ops::Range;

/// A byte range in a source text.
pub type Span = Range<usize>;

/// One error with its place in a source file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// What is wrong, in one sentence.
    pub message: String,
    /// The file (or name of the embedded source) the error is in.
    pub file: String,
    /// 1-based line; 0 for a setting given on the command line, which has no place in
    /// a file ([`Diagnostic::command_line`]).
    pub line: usize,
    /// 1-based column, in characters (0 with line 0).
    pub column: usize,
    /// The source line, for display.
    pub source_line: String,
    /// Number of characters to underline (at least 1).
    pub width: usize,
    /// What to do about it, when there is something useful to say.
    pub help: Option<String>,
}

impl Diagnostic {
    /// Builds a diagnostic for `span` in `source`.
    pub fn new(source: &Source, span: Span, message: impl Into<String>) -> Self {
        let text = source.text.as_str();
        let start = clamp_to_char_boundary(text, span.start.min(text.len()));
        let end = clamp_to_char_boundary(text, span.end.clamp(start, text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        // A CRLF line's `\r` is not shown, so it is not underlined either.
        let visible_end = if text[..line_end].ends_with('\r') {
            line_end - 1
        } else {
            line_end
        };
        let underlined_end = end.min(visible_end).max(start);
        let width = text[start..underlined_end].chars().count().max(1);
        Diagnostic {
            message: message.into(),
            file: source.name.clone(),
            line,
            column,
            source_line: text[line_start..line_end]
                .trim_end_matches('\r')
                .to_string(),
            width,
            help: None,
        }
    }

    /// An error in a setting given on the command line (`serve --shards`), which
    /// overrides the file's value and is checked by the same rule.
    pub fn command_line(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            file: "the command line".into(),
            line: 0,
            column: 0,
            source_line: String::new(),
            width: 0,
            help: None,
        }
    }

    /// Adds a hint on what to do.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

fn clamp_to_char_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "error: {}\n --> {}", self.message, self.file)?;
            if let Some(help) = &self.help {
                write!(f, "\n  = help: {help}")?;
            }
            return Ok(());
        }
        let gutter = self.line.to_string().len();
        let pad = " ".repeat(gutter);
        writeln!(f, "error: {}", self.message)?;
        writeln!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
        writeln!(f, "{pad} |")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        let lead: String = self
            .source_line
            .chars()
            .take(self.column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "{pad} | {lead}{}", "^".repeat(self.width))?;
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// A named source text: a config file's path and contents.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path or name shown in diagnostics.
    pub name: String,
    /// The whole text.
    pub text: String,
}

impl Source {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// All the errors found in one config, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.diagnostics.len() > 1 {
            write!(f, "\n\n{} errors", self.diagnostics.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_column_and_caret() {
        let src = Source::new("a.toml", "x = 1\nrule = \"count(purchse, 30d)\"\n");
        let start = src.text.find("purchse").unwrap();
        let d = Diagnostic::new(&src, start..start + 7, "unknown event type `purchse`")
            .with_help("declared event types: purchase");
        assert_eq!((d.line, d.column, d.width), (2, 15, 7));
        let shown = d.to_string();
        assert_eq!(
            shown,
            "error: unknown event type `purchse`\n --> a.toml:2:15\n  |\n2 | rule = \"count(purchse, 30d)\"\n  |               ^^^^^^^\n  = help: declared event types: purchase"
        );
    }

    #[test]
    fn a_command_line_error_has_no_line() {
        let d = Diagnostic::command_line("--shards is 12, but it must be a power of two")
            .with_help("for example 16");
        assert_eq!(
            d.to_string(),
            "error: --shards is 12, but it must be a power of two\n --> the command line\n  = help: for example 16"
        );
    }

    #[test]
    fn span_past_the_end_does_not_panic() {
        let src = Source::new("a.toml", "é");
        let d = Diagnostic::new(&src, 1..99, "x");
        assert_eq!(d.line, 1);
        assert!(d.width >= 1);
    }
}
