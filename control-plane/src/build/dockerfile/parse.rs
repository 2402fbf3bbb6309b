//! From Dockerfile text to logical lines: parser directives, comments,
//! line continuations, and the split into keyword, flags and arguments.

use super::error::DockerfileError;

/// Largest Dockerfile accepted, in bytes (1 MiB).
pub const MAX_DOCKERFILE_BYTES: usize = 1 << 20;
/// Most logical lines (instructions) accepted.
pub const MAX_LOGICAL_LINES: usize = 10_000;

/// One instruction as written, continuations joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalLine {
    /// 1-based number of the physical line the instruction starts on.
    pub line: usize,
    /// The whole joined instruction, trimmed (for messages).
    pub text: String,
    /// The instruction keyword exactly as written (`from`, `FROM`, …).
    pub keyword: String,
    /// `--name[=value]` flags found right after the keyword.
    pub flags: Vec<Flag>,
    /// The rest of the line after keyword and flags, trimmed.
    pub args: String,
}

/// One `--name` or `--name=value` flag (quotes around parts removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The name without the leading dashes.
    pub name: String,
    /// The text after the first `=`, if there was one.
    pub value: Option<String>,
}

/// The logical lines of a Dockerfile and the escape character in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    /// `\` unless a `# escape=` directive chose `` ` ``.
    pub escape: char,
    /// Instructions in file order.
    pub lines: Vec<LogicalLine>,
}

/// Check size, UTF-8 and NUL bytes, then split into logical lines.
pub fn logical_lines_bytes(bytes: &[u8]) -> Result<Lines, DockerfileError> {
    check_size(bytes.len())?;
    let text = std::str::from_utf8(bytes).map_err(|e| DockerfileError::InvalidUtf8 {
        line: line_of(bytes, e.valid_up_to()),
    })?;
    logical_lines(text)
}

/// Split Dockerfile text into logical lines (see the module docs).
pub fn logical_lines(text: &str) -> Result<Lines, DockerfileError> {
    check_size(text.len())?;
    if let Some(at) = text.find('\0') {
        return Err(DockerfileError::NulByte {
            line: line_of(text.as_bytes(), at),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let physical: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();

    let mut escape = '\\';
    let mut directives = Directives::default();
    let mut lines = Vec::new();
    let mut i = 0;
    while i < physical.len() {
        let start = i + 1;
        let raw = physical[i].trim_start();
        i += 1;
        if let Some(chosen) = directives.look(raw, start)? {
            escape = chosen;
            continue;
        }
        if raw.starts_with('#') {
            continue;
        }
        let (first, mut more) = trim_continuation(raw, escape);
        let mut joined = first.to_string();
        while more && i < physical.len() {
            let raw = physical[i];
            i += 1;
            let trimmed = raw.trim_start();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let (part, again) = trim_continuation(raw, escape);
            joined.push_str(part);
            more = again;
        }
        let joined = joined.trim();
        if joined.is_empty() {
            continue;
        }
        if lines.len() >= MAX_LOGICAL_LINES {
            return Err(DockerfileError::TooManyLines {
                line: start,
                limit: MAX_LOGICAL_LINES,
            });
        }
        lines.push(split_line(start, joined));
    }
    Ok(Lines { escape, lines })
}

fn check_size(len: usize) -> Result<(), DockerfileError> {
    if len > MAX_DOCKERFILE_BYTES {
        return Err(DockerfileError::TooLarge {
            limit: MAX_DOCKERFILE_BYTES,
        });
    }
    Ok(())
}

/// 1-based line holding byte `at`.
fn line_of(bytes: &[u8], at: usize) -> usize {
    let end = at.min(bytes.len());
    bytes[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parser directive state: directives are only looked for until the first
/// line that is not a known directive.
#[derive(Default)]
struct Directives {
    done: bool,
    seen: Vec<String>,
}

impl Directives {
    /// `Ok(Some(escape))` when `line` (left-trimmed) is a known directive,
    /// which is then consumed; `Ok(None)` otherwise.
    fn look(&mut self, line: &str, number: usize) -> Result<Option<char>, DockerfileError> {
        if self.done {
            return Ok(None);
        }
        let Some((key, value)) = directive(line) else {
            self.done = true;
            return Ok(None);
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&key) {
            return Err(DockerfileError::Directive {
                line: number,
                message: format!("only one {key} parser directive can be used"),
            });
        }
        self.seen.push(key.clone());
        let mut escape = '\\';
        if key == "escape" {
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(DockerfileError::Directive {
                        line: number,
                        message: format!("invalid escape token '{other}' does not match ` or \\"),
                    })
                }
            };
        }
        Ok(Some(escape))
    }
}

/// `# key = value` → `(key, value)`; key is a letter then letters/digits.
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .char_indices()
        .find(|&(_, c)| !c.is_ascii_alphanumeric())
        .map_or(rest.len(), |(i, _)| i);
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((key, value))
}

/// Strip a trailing escape char (after trailing whitespace): `(text, continues)`.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end().strip_suffix(escape) {
        Some(rest) => (rest, true),
        None => (line, false),
    }
}

/// Split a joined, trimmed instruction into keyword, flags and arguments.
fn split_line(line: usize, text: &str) -> LogicalLine {
    let (keyword, rest) = match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    };
    let (flags, args) = split_flags(rest);
    LogicalLine {
        line,
        text: text.to_string(),
        keyword: keyword.to_string(),
        flags,
        args: args.trim().to_string(),
    }
}

/// Take leading `--name[=value]` words off `rest`. A bare `--` ends the flags.
/// Quotes inside a flag word group whitespace and are removed.
fn split_flags(rest: &str) -> (Vec<Flag>, &str) {
    let mut flags = Vec::new();
    let mut s = rest.trim_start();
    while s.starts_with("--") {
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut end = s.len();
        for (i, c) in s.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => word.push(c),
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '"' || c == '\'' => quote = Some(c),
                None => word.push(c),
            }
        }
        s = s[end..].trim_start();
        let body = word.strip_prefix("--").unwrap_or(&word);
        if body.is_empty() {
            break;
        }
        flags.push(match body.split_once('=') {
            Some((name, value)) => Flag {
                name: name.to_string(),
                value: Some(value.to_string()),
            },
            None => Flag {
                name: body.to_string(),
                value: None,
            },
        });
    }
    (flags, s)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
