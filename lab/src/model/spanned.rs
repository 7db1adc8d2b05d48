//! Reading TOML with every value's place kept, so that every mistake in a
//! topology or scenario file is reported at its line and column with a fix.
//! Unknown keys are errors, with a "did you mean" where one is close.

use std::cell::RefCell;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::model::error::{InputError, Source, excerpt};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    /// The value.
    pub v: T,
    /// Byte range in the source.
    pub span: Range<usize>,
}

impl<T> Sp<T> {
    /// A value at a span.
    pub fn new(v: T, span: Range<usize>) -> Self {
        Sp { v, span }
    }
}

pub type R<T> = Result<T, InputError>;

/// Most mistakes of one file listed in one run; the rest are counted.
const MAX_LISTED: usize = 30;

/// The mistakes found in one file so far. Reading goes on after a mistake
/// that later checks do not depend on, so one run reports them all.
#[derive(Debug, Default)]
pub struct Errors(RefCell<Vec<InputError>>);

impl Errors {
    /// Records a mistake (and the further ones it carries).
    pub fn push(&self, mut e: InputError) {
        let more = e.more.take();
        let mut v = self.0.borrow_mut();
        v.push(e);
        v.extend(more.into_iter().flat_map(|m| *m));
    }

    /// The value, or `None` once its mistake is recorded.
    pub fn ok<T>(&self, r: R<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    /// Whether no mistake was found.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    /// How many mistakes were found.
    pub fn count(&self) -> usize {
        self.0.borrow().len()
    }

    /// `v` when no mistake was found; otherwise every mistake in file order,
    /// the first carrying the others.
    pub fn finish<T>(self, v: Option<T>) -> R<T> {
        let mut all = self.0.into_inner();
        all.sort_by_key(|e| (e.line, e.col));
        all.dedup();
        if all.is_empty() {
            return v.ok_or_else(|| Source::new("", "").error(0..0, "invalid input", "correct the file"));
        }
        let omitted = all.len().saturating_sub(MAX_LISTED);
        all.truncate(MAX_LISTED);
        let mut first = all.remove(0);
        first.more = (!all.is_empty()).then(|| Box::new(all));
        first.omitted = omitted as u32;
        Err(first)
    }
}

/// Parses a whole document, turning syntax errors into [`InputError`]s.
pub fn parse_document<'i>(src: &Source, text: &'i str) -> R<(DeTable<'i>, Range<usize>)> {
    match DeTable::parse(text) {
        Ok(t) => {
            let span = t.span();
            Ok((t.into_inner(), span))
        }
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            Err(src.error(
                span,
                format!("this is not valid TOML: {msg}"),
                "check quotes, brackets and `key = value` pairs on this line (https://toml.io)",
            ))
        }
    }
}

/// A TOML table being read: its place, its name for messages, and the keys
/// it may hold.
pub struct Table<'a, 'i> {
    src: &'a Source,
    table: &'a DeTable<'i>,
    span: Range<usize>,
    /// How the table is called in messages, e.g. `[[switch]]`.
    pub ctx: String,
}

/// What kind of TOML value something is, for messages.
fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a, 'i> Table<'a, 'i> {
    /// The document's top-level table.
    pub fn root(src: &'a Source, table: &'a DeTable<'i>, span: Range<usize>) -> Self {
        Table {
            src,
            table,
            span,
            ctx: "the top level".into(),
        }
    }

    /// The source, for making errors.
    pub fn source(&self) -> &'a Source {
        self.src
    }

    /// Where the table is.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// An error at `span`.
    pub fn err(&self, span: Range<usize>, msg: impl Into<String>, fix: impl Into<String>) -> InputError {
        self.src.error(span, msg, fix)
    }

    /// Rejects every key not in `allowed`, suggesting the closest allowed
    /// one; the error carries all of them.
    pub fn allow(&self, allowed: &[&str]) -> R<()> {
        let errs = Errors::default();
        for (k, _) in self.table.iter() {
            let key: &str = k.get_ref();
            if allowed.contains(&key) {
                continue;
            }
            let fix = match closest(key, allowed) {
                Some(near) => format!("did you mean `{near}`? {} takes: {}", self.ctx, allowed.join(", ")),
                None => format!("remove it; {} takes: {}", self.ctx, allowed.join(", ")),
            };
            errs.push(self.err(
                k.span(),
                format!("unknown key `{}` in {}", excerpt(key, 60), self.ctx),
                fix,
            ));
        }
        errs.finish(Some(()))
    }

    fn get(&self, key: &str) -> Option<(Range<usize>, &'a toml::Spanned<DeValue<'i>>)> {
        self.table
            .iter()
            .find(|(k, _)| {
                let s: &str = k.get_ref();
                s == key
            })
            .map(|(k, v)| (k.span(), v))
    }

    /// The span of a key's value, if present.
    pub fn value_span(&self, key: &str) -> Option<Range<usize>> {
        self.get(key).map(|(_, v)| v.span())
    }

    /// The span of the key itself, if present.
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.get(key).map(|(k, _)| k)
    }

    /// Whether a key is present.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn type_error(&self, key: &str, v: &toml::Spanned<DeValue<'i>>, want: &str, example: &str) -> InputError {
        self.err(
            v.span(),
            format!("`{key}` in {} must be {want}, not {}", self.ctx, kind(v.get_ref())),
            format!("write it as {example}"),
        )
    }

    /// An optional string.
    pub fn string(&self, key: &str, example: &str) -> R<Option<Sp<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some((_, v)) => match v.get_ref() {
                DeValue::String(s) => Ok(Some(Sp::new(s.to_string(), v.span()))),
                _ => Err(self.type_error(key, v, "a string", example)),
            },
        }
    }

    /// An optional boolean.
    pub fn bool(&self, key: &str, example: &str) -> R<Option<Sp<bool>>> {
        match self.get(key) {
            None => Ok(None),
            Some((_, v)) => match v.get_ref() {
                DeValue::Boolean(b) => Ok(Some(Sp::new(*b, v.span()))),
                _ => Err(self.type_error(key, v, "true or false", example)),
            },
        }
    }

    /// A string that must be present.
    pub fn required_string(&self, key: &str, example: &str) -> R<Sp<String>> {
        self.string(key, example)?.ok_or_else(|| {
            self.err(
                self.span.start..self.span.start,
                format!("{} has no `{key}`", self.ctx),
                format!("add {example}"),
            )
        })
    }

    /// An optional integer within `min..=max`.
    pub fn int(&self, key: &str, min: i64, max: i64, example: &str) -> R<Option<Sp<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some((_, v)) => match v.get_ref() {
                DeValue::Integer(i) => {
                    let n = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                        .ok()
                        .filter(|n| (min..=max).contains(n));
                    match n {
                        Some(n) => Ok(Some(Sp::new(n, v.span()))),
                        None => Err(self.err(
                            v.span(),
                            format!("`{key}` = {} is out of range", i.as_str()),
                            format!("use a value from {min} to {max}, e.g. {example}"),
                        )),
                    }
                }
                _ => Err(self.type_error(key, v, "an integer", example)),
            },
        }
    }

    /// The raw value of a key, for keys that take more than one type.
    pub fn raw(&self, key: &str) -> Option<&'a toml::Spanned<DeValue<'i>>> {
        self.get(key).map(|(_, v)| v)
    }

    /// An optional array of strings.
    pub fn strings(&self, key: &str, example: &str) -> R<Option<Sp<Vec<Sp<String>>>>> {
        match self.get(key) {
            None => Ok(None),
            Some((_, v)) => match v.get_ref() {
                DeValue::Array(items) => {
                    let mut out = Vec::new();
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::String(s) => out.push(Sp::new(s.to_string(), item.span())),
                            _ => {
                                return Err(self.err(
                                    item.span(),
                                    format!(
                                        "`{key}` in {} must hold strings, not {}",
                                        self.ctx,
                                        kind(item.get_ref())
                                    ),
                                    format!("write it as {example}"),
                                ));
                            }
                        }
                    }
                    Ok(Some(Sp::new(out, v.span())))
                }
                _ => Err(self.type_error(key, v, "an array of strings", example)),
            },
        }
    }

    /// An optional sub-table (`[network]` or a profile's `[network.<cni>]`).
    pub fn table(&self, key: &str, ctx: &str) -> R<Option<Table<'a, 'i>>> {
        match self.get(key) {
            None => Ok(None),
            Some((kspan, v)) => match v.get_ref() {
                DeValue::Table(t) => Ok(Some(Table {
                    src: self.src,
                    table: t,
                    span: kspan.start..v.span().end.max(kspan.end),
                    ctx: ctx.to_string(),
                })),
                _ => Err(self.err(
                    v.span(),
                    format!("`{key}` must be a table {ctx}, not {}", kind(v.get_ref())),
                    format!("write it as a {ctx} section"),
                )),
            },
        }
    }

    /// An array of tables (`[[node]]`), empty when absent.
    pub fn tables(&self, key: &str, ctx: &str) -> R<Vec<Table<'a, 'i>>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some((_, v)) => match v.get_ref() {
                DeValue::Array(items) => items
                    .iter()
                    .map(|item| match item.get_ref() {
                        DeValue::Table(t) => Ok(Table {
                            src: self.src,
                            table: t,
                            span: item.span(),
                            ctx: ctx.to_string(),
                        }),
                        _ => Err(self.err(
                            item.span(),
                            format!("each `{key}` must be a table, not {}", kind(item.get_ref())),
                            format!("write a {ctx} section for each {key}"),
                        )),
                    })
                    .collect(),
                _ => Err(self.err(
                    v.span(),
                    format!("`{key}` must be written as {ctx} sections, not {}", kind(v.get_ref())),
                    format!("write one {ctx} section for each {key}"),
                )),
            },
        }
    }
}

/// One element of an array that may mix strings and inline tables
/// (`pods = ["web", { name = "api", namespace = "prod" }]`).
pub enum Item<'a, 'i> {
    /// A string.
    Str(Sp<String>),
    /// A table.
    Table(Table<'a, 'i>),
}

impl<'a, 'i> Table<'a, 'i> {
    /// An optional array whose elements are strings or tables; anything
    /// else in it is a mistake.
    pub fn items(&self, key: &str, ctx: &str, example: &str) -> R<Option<Vec<Item<'a, 'i>>>> {
        let Some((_, v)) = self.get(key) else {
            return Ok(None);
        };
        let DeValue::Array(items) = v.get_ref() else {
            return Err(self.type_error(key, v, "an array", example));
        };
        let errs = Errors::default();
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Item::Str(Sp::new(s.to_string(), item.span()))),
                DeValue::Table(t) => out.push(Item::Table(Table {
                    src: self.src,
                    table: t,
                    span: item.span(),
                    ctx: ctx.to_string(),
                })),
                other => errs.push(self.err(
                    item.span(),
                    format!("`{key}` in {} holds {}", self.ctx, kind(other)),
                    format!("write it as {example}"),
                )),
            }
        }
        errs.finish(Some(Some(out)))
    }

    /// An optional table of strings (`labels = { app = "web" }`), in the
    /// order written, each key and value with its place.
    #[allow(clippy::type_complexity)]
    pub fn string_map(&self, key: &str, example: &str) -> R<Option<Vec<(Sp<String>, Sp<String>)>>> {
        let Some((_, v)) = self.get(key) else {
            return Ok(None);
        };
        let DeValue::Table(t) = v.get_ref() else {
            return Err(self.type_error(key, v, "a table of strings", example));
        };
        let errs = Errors::default();
        let mut out = Vec::new();
        for (k, val) in t.iter() {
            match val.get_ref() {
                DeValue::String(s) => out.push((
                    Sp::new(k.get_ref().to_string(), k.span()),
                    Sp::new(s.to_string(), val.span()),
                )),
                other => errs.push(self.err(
                    val.span(),
                    format!("`{key}` in {} must hold strings, not {}", self.ctx, kind(other)),
                    format!("quote the value: {example}"),
                )),
            }
        }
        errs.finish(Some(Some(out)))
    }
}

/// The allowed word closest to `word`, when it is close enough to be a typo.
pub fn closest<'w>(word: &str, allowed: &[&'w str]) -> Option<&'w str> {
    // Far longer words are no typos, and comparing them costs time.
    if word.chars().count() > 64 {
        return None;
    }
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(closest("mtux", &["name", "subnet", "mtu"]), Some("mtu"));
        assert_eq!(closest("sbunet", &["name", "subnet", "mtu"]), Some("subnet"));
        assert_eq!(closest("colour", &["name", "subnet", "mtu"]), None);
    }
}
