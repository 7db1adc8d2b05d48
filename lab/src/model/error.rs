//! One error type for the whole tool, carrying the exit code the command line
//! contract gives each kind of failure (cli.md, "Exit codes").

use std::fmt;
use std::ops::Range;

/// Exit code: a probe, an expectation or an operation failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: invalid input (topology, scenario, arguments).
pub const EXIT_INPUT: i32 = 2;
/// Exit code: the environment cannot run it (not root, missing tool or kernel feature).
pub const EXIT_ENV: i32 = 3;

/// Everything that can go wrong, sorted by who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mistake in an input file, with its place and the fix.
    #[error("{0}")]
    Input(Box<InputError>),
    /// A mistake on the command line.
    #[error("{message}\nfix: {fix}")]
    Usage { message: String, fix: String },
    /// The machine cannot do it: not root, a missing tool or kernel feature.
    /// An empty fix keeps the message to its one line.
    #[error("{message}{}", if fix.is_empty() { String::new() } else { format!("\nfix: {fix}") })]
    Env { message: String, fix: String },
    /// The operation itself failed (a plugin, the kernel, a timeout).
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) | Error::Usage { .. } => EXIT_INPUT,
            Error::Env { .. } => EXIT_ENV,
            Error::Failed(_) => EXIT_FAILED,
        }
    }

    /// A command line mistake and how to fix it.
    pub fn usage(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// An environment problem and how to fix it.
    pub fn env(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Env {
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        // An Error wrapped into anyhow on the way up keeps its kind.
        match e.downcast::<Error>() {
            Ok(inner) => inner,
            Err(e) => Error::Failed(e),
        }
    }
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Self {
        Error::Input(Box::new(e))
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An input file's text, kept to turn byte spans into line:column and to
/// quote the offending line.
#[derive(Debug, Clone)]
pub struct Source {
    /// The path as the user gave it.
    pub path: String,
    /// The whole file.
    pub text: String,
}

impl Source {
    /// A source from its path (for messages) and text.
    pub fn new(path: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// An [`InputError`] at `span` of this file. The quoted line, the
    /// underline, the message and the fix are bounded, so that a huge value
    /// (a 1 MiB string) gives a short error.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>, fix: impl Into<String>) -> InputError {
        let start = floor_char(&self.text, span.start.min(self.text.len()));
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let end = floor_char(&self.text, span.end.clamp(start, line_end));
        let width = self.text[start..end].chars().count().max(1);
        // Quote at most QUOTE_BEFORE characters before the column and
        // QUOTE_AFTER from it, marking what is left out with "...".
        let before: Vec<char> = self.text[line_start..start].chars().collect();
        let skip = before.len().saturating_sub(QUOTE_BEFORE);
        let mut source_line: String = before[skip..].iter().collect();
        if skip > 0 {
            source_line.insert_str(0, "...");
        }
        source_line.push_str(&excerpt(self.text[start..line_end].trim_end(), QUOTE_AFTER));
        InputError {
            file: self.path.as_str().into(),
            line,
            col,
            message: excerpt(&message.into(), MESSAGE_MAX),
            fix: excerpt(&fix.into(), MESSAGE_MAX),
            source_line: source_line.trim_end().to_string(),
            width: width.min(QUOTE_AFTER) as u32,
            omitted: 0,
            more: None,
        }
    }
}

/// Characters of the quoted line shown before the error's column.
const QUOTE_BEFORE: usize = 40;
/// Characters of the quoted line shown from the error's column on.
const QUOTE_AFTER: usize = 80;
/// Longest message or fix, as a last bound for values quoted in them.
const MESSAGE_MAX: usize = 600;

/// `s` cut to at most `max` characters, with "..." when cut: the bounded
/// excerpt every error quotes of what the user wrote.
pub fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}...", &s[..i]),
    }
}

/// The largest char boundary of `s` at or before `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A mistake in an input file: where it is, what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file as the user named it (a `Box<str>` keeps `Result`s small).
    pub file: Box<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
    /// The offending line, quoted under the message.
    pub source_line: String,
    /// How many characters to underline from `col`.
    pub width: u32,
    /// How many further mistakes were found but not listed.
    pub omitted: u32,
    /// Further mistakes in the same file, in file order: a run reports
    /// every independent mistake at once. Boxed to keep `Result`s small.
    pub more: Option<Box<Vec<InputError>>>,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_one(f)?;
        for e in self.more.iter().flat_map(|m| m.iter()) {
            write!(f, "\n\n")?;
            e.fmt_one(f)?;
        }
        if self.omitted > 0 {
            write!(f, "\n\n{}: {} more mistakes not shown", self.file, self.omitted)?;
        }
        Ok(())
    }
}

impl InputError {
    /// Every mistake this error holds: itself, then the others.
    pub fn all(&self) -> impl Iterator<Item = &InputError> {
        std::iter::once(self).chain(self.more.iter().flat_map(|m| m.iter()))
    }

    /// The 1-based column of the underline in `source_line`, which is cut
    /// short (after "...") when the column is far right.
    fn caret_col(&self) -> usize {
        if self.col > QUOTE_BEFORE + 1 {
            QUOTE_BEFORE + 4
        } else {
            self.col
        }
    }

    fn fmt_one(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)?;
        if !self.source_line.is_empty() {
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {}", self.source_line)?;
            let lead: String = self
                .source_line
                .chars()
                .take(self.caret_col() - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(self.width as usize))?;
        }
        write!(f, "fix: {}", self.fix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let src = Source::new("t.toml", "a = 1\n# é\nname = \"x\"\n");
        let e = src.error(18..21, "bad", "do this");
        assert_eq!((e.line, e.col, e.width), (3, 8, 3));
        assert_eq!(e.source_line, "name = \"x\"");
        let text = e.to_string();
        assert!(text.starts_with("t.toml:3:8: bad\n"), "{text}");
        assert!(text.contains("3 | name = \"x\"\n  |        ^^^\n"), "{text}");
        assert!(text.ends_with("fix: do this"));
    }
}
