//! One parser for every name a user hands cnilab: labs, nodes, pods,
//! switches and routers, whether they come from an argument, `--lab`,
//! `CNILAB_LAB`, a scenario file or state read back from disk. Names become
//! namespace names and folder names, so one that could escape its folder
//! (`../../etc`, `/abs`, `""`) or match more than itself (`lab.worker1`)
//! never gets past here.

use crate::model::error::Error;

/// The longest lab name (topology.md: 1-12 characters).
pub const LAB_MAX: usize = 12;
/// The longest node, pod, switch or router name (an interface-sized name).
pub const MEMBER_MAX: usize = 15;

/// What a name names; sets its length limit and the words of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A lab: `cnilab.<lab>.` prefixes its namespaces, `<run dir>/<lab>` is its folder.
    Lab,
    /// A node.
    Node,
    /// A pod, unique within its node.
    Pod,
    /// A switch.
    Switch,
    /// A router.
    Router,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Lab => "lab",
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::Switch => "switch",
            Kind::Router => "router",
        }
    }

    /// The most characters a name of this kind may have.
    pub fn max(self) -> usize {
        match self {
            Kind::Lab => LAB_MAX,
            _ => MEMBER_MAX,
        }
    }
}

/// A bounded, printable excerpt of what the user wrote, for messages: a
/// megabyte of input must not come back as a megabyte of error.
pub fn excerpt(s: &str) -> String {
    const KEEP: usize = 40;
    let shown: String = s.chars().take(KEEP).flat_map(char::escape_debug).collect();
    if s.chars().count() > KEEP {
        format!("{shown}...")
    } else {
        shown
    }
}

/// What is wrong with `name` as a name of `kind`, if anything.
pub fn problem(kind: Kind, name: &str) -> Option<String> {
    problem_within(name, kind.max())
}

/// What is wrong with `name` as a name of at most `max` characters of
/// `a-z`, `0-9` and `-` starting with a letter, if anything.
pub fn problem_within(name: &str, max: usize) -> Option<String> {
    let len = name.chars().count();
    if name.is_empty() {
        return Some("is empty".into());
    }
    if len > max {
        return Some(format!("has {len} characters, more than {max}"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("does not start with a lowercase letter".into());
    }
    name.chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        .map(|c| format!("holds `{}`", c.escape_debug()))
}

/// Checks a name of `kind` that came from `from` (an argument, `--lab`,
/// a file...); a bad one is invalid input (exit 2).
pub fn check(kind: Kind, name: &str, from: &str) -> Result<(), Error> {
    match problem(kind, name) {
        None => Ok(()),
        Some(why) => Err(Error::usage(
            format!("{} name \"{}\" ({from}) {why}", kind.word(), excerpt(name)),
            format!(
                "a {} name is 1-{} characters of a-z, 0-9 and '-', starting with a letter",
                kind.word(),
                kind.max()
            ),
        )),
    }
}

/// Whether `name` is a valid name of `kind`.
pub fn is_valid(kind: Kind, name: &str) -> bool {
    problem(kind, name).is_none()
}

/// Checks a TARGET as typed: `NODE`, `NODE/POD`, a switch or a router.
pub fn check_target(target: &str) -> Result<(), Error> {
    match target.split_once('/') {
        Some((node, pod)) => {
            check(Kind::Node, node, "in a target")?;
            check(Kind::Pod, pod, "in a target")
        }
        // Node, switch and router names share one rule.
        None => check(Kind::Node, target, "target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_widen_are_refused() {
        for bad in [
            "",
            "../../etc",
            "..",
            ".",
            "/etc",
            "a/b",
            "relcc.worker1",
            "Demo",
            "1abc",
            "-a",
            "a b",
            "a\0b",
            "tooooooooolong",
            "é",
        ] {
            assert!(!is_valid(Kind::Lab, bad), "{bad:?} passed as a lab name");
            let e = check(Kind::Lab, bad, "argument").unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        for good in ["a", "demo", "t0a1b2-3", "abcdefghijkl"] {
            assert!(is_valid(Kind::Lab, good), "{good:?} refused");
        }
        assert!(is_valid(Kind::Pod, "abcdefghijklmno"));
        assert!(!is_valid(Kind::Pod, "abcdefghijklmnop"));
    }

    #[test]
    fn messages_quote_a_bounded_excerpt() {
        let huge = "x".repeat(1 << 20);
        let e = check(Kind::Lab, &huge, "argument").unwrap_err().to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
        assert!(e.contains("xxx..."), "{e}");
        assert_eq!(excerpt("a\nb"), "a\\nb");
    }

    #[test]
    fn targets_are_checked_part_by_part() {
        assert!(check_target("worker1/pod-1").is_ok());
        assert!(check_target("tor1").is_ok());
        assert!(check_target("worker1/../../x").is_err());
        assert!(check_target("../x").is_err());
        assert!(check_target("a/b/c").is_err());
    }
}
