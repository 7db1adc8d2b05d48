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

    /// An [`InputError`] at `span` of this file.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>, fix: impl Into<String>) -> InputError {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = self.text[..start].matches('\n').count() + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let width = self.text[start..end].chars().count().max(1);
        InputError {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
            fix: fix.into(),
            source_line: self.text[line_start..line_end].trim_end().to_string(),
            width,
        }
    }
}

/// A mistake in an input file: where it is, what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file as the user named it.
    pub file: String,
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
    pub width: usize,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)?;
        if !self.source_line.is_empty() {
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {}", self.source_line)?;
            let lead: String = self
                .source_line
                .chars()
                .take(self.col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(self.width))?;
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
