//! Argument-level helpers for instruction parsing: flag checks, JSON form,
//! raw word splitting, heredoc and URL detection.

use super::error::DockerfileError;
use super::parse::{Flag, LogicalLine};

/// Flags of one line, checked against what the instruction accepts.
pub(super) struct Flags(Vec<(String, Option<String>)>);

impl Flags {
    pub(super) fn check(l: &LogicalLine, kw: &str) -> Result<Flags, DockerfileError> {
        // (name, takes a value)
        let allowed: &[(&str, bool)] = match kw {
            "FROM" => &[("platform", true)],
            "COPY" => &[
                ("from", true),
                ("chown", true),
                ("chmod", true),
                ("link", false),
            ],
            "ADD" => &[("chown", true), ("chmod", true), ("link", false)],
            "ONBUILD" | "HEALTHCHECK" => return Ok(Flags(Vec::new())),
            _ => &[],
        };
        let line = l.line;
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        for Flag { name, value } in &l.flags {
            let Some(&(_, valued)) = allowed.iter().find(|(n, _)| n == name) else {
                return Err(DockerfileError::UnknownFlag {
                    line,
                    flag: name.clone(),
                    instruction: kw.to_string(),
                });
            };
            if out.iter().any(|(n, _)| n == name) {
                return Err(DockerfileError::invalid(
                    line,
                    format!("duplicate flag --{name} for {kw}"),
                ));
            }
            let ok = if valued {
                value.as_deref().is_some_and(|v| !v.is_empty())
            } else {
                matches!(value.as_deref(), None | Some("true" | "false"))
            };
            if !ok {
                let want = if valued {
                    "needs a value"
                } else {
                    "takes no value"
                };
                return Err(DockerfileError::invalid(
                    line,
                    format!("flag --{name} for {kw} {want}"),
                ));
            }
            out.push((name.clone(), value.clone()));
        }
        Ok(Flags(out))
    }

    pub(super) fn take(&mut self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        self.0.remove(at).1
    }
}

/// The argument as a JSON array of strings, if it is one (else shell form).
pub(super) fn json_array(args: &str) -> Option<Vec<String>> {
    if !args.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(args).ok()
}

/// A source that `ADD` would fetch remotely.
pub(super) fn is_url(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["http://", "https://", "git@", "git://"]
        .iter()
        .any(|p| lower.starts_with(p))
}

/// Whether a shell-form argument list contains a heredoc word (`<<EOF`,
/// `<<-EOF`, `<<"EOF"`).
pub(super) fn has_heredoc(args: &str) -> bool {
    args.split_whitespace().any(|w| {
        let Some(rest) = w.strip_prefix("<<") else {
            return false;
        };
        let rest = rest.strip_prefix('-').unwrap_or(rest);
        let rest = rest.trim_start_matches(['"', '\'']);
        rest.starts_with(|c: char| c.is_alphabetic() || c == '_')
    })
}

/// Split on whitespace outside quotes, keeping quotes and escapes in the
/// words (they are removed later, by expansion).
pub(super) fn raw_words(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '\'' => quote = Some(c),
            _ => {}
        }
        if c == escape && quote != Some('\'') {
            if let Some(n) = chars.next() {
                cur.push(c);
                cur.push(n);
            }
            continue;
        }
        cur.push(c);
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// `ENV`/`LABEL` arguments: `k=v ...`, or legacy `k value with spaces` when
/// the first word has no `=`.
pub(super) fn name_values(
    args: &str,
    escape: char,
    kw: &str,
    line: usize,
) -> Result<Vec<(String, String)>, DockerfileError> {
    let words = raw_words(args, escape);
    let Some(first) = words.first() else {
        return Err(DockerfileError::invalid(
            line,
            format!("{kw} requires at least one argument"),
        ));
    };
    if !first.contains('=') {
        let (key, value) = match args.find(char::is_whitespace) {
            Some(at) => (&args[..at], args[at..].trim_start()),
            None => (args, ""),
        };
        if value.is_empty() {
            return Err(DockerfileError::invalid(
                line,
                format!("{kw} must have two arguments"),
            ));
        }
        return Ok(vec![(key.to_string(), value.to_string())]);
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(DockerfileError::invalid(
                line,
                format!("{kw} names can not be blank"),
            )),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(DockerfileError::invalid(
                line,
                format!("{kw} expects name=value pairs, found \"{w}\""),
            )),
        })
        .collect()
}
