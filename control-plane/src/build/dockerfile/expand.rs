//! Docker's word expansion: variables, quotes and escapes, the way BuildKit's
//! Dockerfile shell lexer treats instruction arguments.
//!
//! Supported: `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`,
//! `${V:?msg}`, `${V?msg}`; single quotes (literal), double quotes (`$`
//! expands; the escape char escapes `"`, `$` and itself), and the escape char
//! outside quotes (escapes any next char). Unset variables expand to nothing.
//! Like BuildKit, the `w` of a `${V…w}` form is always expanded, even when it
//! is not used. Pattern forms (`${V#p}`, `${V%p}`, `${V/p/r}`) are rejected.

use std::collections::BTreeSet;

/// How deeply `${…}` forms may nest before expansion gives up.
pub const MAX_EXPANSION_DEPTH: usize = 64;

/// Why a word could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A `'` without its closing `'`.
    #[error("unterminated single-quoted string")]
    UnterminatedSingleQuote,
    /// A `"` without its closing `"`.
    #[error("unterminated double-quoted string")]
    UnterminatedDoubleQuote,
    /// A `${` without its closing `}`.
    #[error("missing '}}' in variable substitution")]
    UnterminatedBrace,
    /// A malformed `${…}` form; the text says what was found.
    #[error("bad substitution: {0}")]
    BadSubstitution(String),
    /// `${V:?msg}` / `${V?msg}` with `V` empty or unset; `message` is `msg`
    /// or a default.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    /// `${…}` nested deeper than [`MAX_EXPANSION_DEPTH`].
    #[error("variable substitutions nested deeper than {limit}")]
    TooDeep { limit: usize },
}

/// A variable lookup: `Some(value)` when the variable is set (maybe empty).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands words against a variable lookup and remembers which variable names
/// were looked up (set or not), for cache keys.
pub struct Expander<'a> {
    escape: char,
    lookup: Lookup<'a>,
    used: BTreeSet<String>,
}

/// Expand one word (quotes removed, whitespace kept) with `escape` as the
/// escape character.
pub fn expand_word(word: &str, escape: char, lookup: Lookup<'_>) -> Result<String, ExpandError> {
    Expander::new(escape, lookup).word(word)
}

/// Expand and split into words: whitespace outside quotes separates words,
/// including whitespace that comes out of an unquoted variable.
pub fn expand_words(
    word: &str,
    escape: char,
    lookup: Lookup<'_>,
) -> Result<Vec<String>, ExpandError> {
    Expander::new(escape, lookup).words(word)
}

impl<'a> Expander<'a> {
    /// An expander using `escape` (`\` or `` ` ``) and `lookup`.
    pub fn new(escape: char, lookup: Lookup<'a>) -> Self {
        Expander {
            escape,
            lookup,
            used: BTreeSet::new(),
        }
    }

    /// Expand one word: quotes removed, whitespace kept as is.
    pub fn word(&mut self, word: &str) -> Result<String, ExpandError> {
        let mut scan = Scan::new(word);
        Ok(self.until(&mut scan, false, 0)?.0)
    }

    /// Expand and split on whitespace outside quotes. An empty quoted string
    /// (`""`) is kept as an empty word.
    pub fn words(&mut self, word: &str) -> Result<Vec<String>, ExpandError> {
        let mut scan = Scan::new(word);
        Ok(self.until(&mut scan, false, 0)?.1.finish())
    }

    /// The variable names looked up so far.
    pub fn used(&self) -> &BTreeSet<String> {
        &self.used
    }

    /// Forget the names looked up so far and return them.
    pub fn take_used(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.used)
    }

    fn get(&mut self, name: &str) -> Option<String> {
        if !self.used.contains(name) {
            self.used.insert(name.to_string());
        }
        (self.lookup)(name)
    }

    /// Read up to the end of input, or up to an unescaped, unquoted `}` when
    /// `brace` (consumed; its absence is an error).
    fn until(
        &mut self,
        scan: &mut Scan,
        brace: bool,
        depth: usize,
    ) -> Result<(String, Words), ExpandError> {
        let mut out = String::new();
        let mut words = Words::default();
        while let Some(ch) = scan.peek() {
            if brace && ch == '}' {
                scan.bump();
                return Ok((out, words));
            }
            match ch {
                '\'' => {
                    let s = single_quoted(scan)?;
                    words.add_raw_str(&s);
                    out.push_str(&s);
                }
                '"' => {
                    let s = self.double_quoted(scan, depth)?;
                    words.add_raw_str(&s);
                    out.push_str(&s);
                }
                '$' => {
                    let s = self.dollar(scan, depth)?;
                    words.add_str(&s);
                    out.push_str(&s);
                }
                _ => {
                    scan.bump();
                    if ch == self.escape {
                        let Some(next) = scan.bump() else { break };
                        words.add_raw_char(next);
                        out.push(next);
                    } else {
                        words.add_char(ch);
                        out.push(ch);
                    }
                }
            }
        }
        if brace {
            return Err(ExpandError::UnterminatedBrace);
        }
        Ok((out, words))
    }

    fn double_quoted(&mut self, scan: &mut Scan, depth: usize) -> Result<String, ExpandError> {
        scan.bump(); // the opening quote
        let mut out = String::new();
        loop {
            match scan.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    scan.bump();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar(scan, depth)?),
                Some(ch) => {
                    scan.bump();
                    if ch == self.escape {
                        match scan.peek() {
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                scan.bump();
                                out.push(n);
                            }
                            // Any other escape char stays as written.
                            _ => out.push(ch),
                        }
                    } else {
                        out.push(ch);
                    }
                }
            }
        }
    }

    /// At a `$`: a variable, a `${…}` form, or a literal `$`.
    fn dollar(&mut self, scan: &mut Scan, depth: usize) -> Result<String, ExpandError> {
        scan.bump(); // '$'
        if scan.peek() != Some('{') {
            let name = read_name(scan);
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.get(&name).unwrap_or_default());
        }
        if depth >= MAX_EXPANSION_DEPTH {
            return Err(ExpandError::TooDeep {
                limit: MAX_EXPANSION_DEPTH,
            });
        }
        scan.bump(); // '{'
        let name = read_name(scan);
        let Some(ch) = scan.peek() else {
            return Err(ExpandError::UnterminatedBrace);
        };
        if name.is_empty() {
            return Err(ExpandError::BadSubstitution(format!(
                "no variable name before {ch:?}"
            )));
        }
        let (colon, op) = match ch {
            '}' => {
                scan.bump();
                return Ok(self.get(&name).unwrap_or_default());
            }
            ':' => {
                scan.bump();
                match scan.bump() {
                    None => return Err(ExpandError::UnterminatedBrace),
                    Some(m @ ('-' | '+' | '?')) => (true, m),
                    Some(m) => {
                        return Err(ExpandError::BadSubstitution(format!(
                            "unsupported modifier \":{m}\" in ${{{name}}}"
                        )))
                    }
                }
            }
            '-' | '+' | '?' => {
                scan.bump();
                (false, ch)
            }
            other => {
                return Err(ExpandError::BadSubstitution(format!(
                    "unsupported modifier \"{other}\" in ${{{name}}}"
                )))
            }
        };
        let word = self.until(scan, true, depth + 1)?.0;
        let value = self.get(&name);
        let present = match &value {
            Some(v) => !colon || !v.is_empty(),
            None => false,
        };
        match op {
            '-' if present => Ok(value.unwrap_or_default()),
            '-' => Ok(word),
            '+' if present => Ok(word),
            '+' => Ok(String::new()),
            _ if present => Ok(value.unwrap_or_default()),
            _ => {
                let message = if !word.is_empty() {
                    word
                } else if colon {
                    "parameter null or not set".to_string()
                } else {
                    "parameter not set".to_string()
                };
                Err(ExpandError::Required { name, message })
            }
        }
    }
}

/// Read a `'…'` string (no escapes inside).
fn single_quoted(scan: &mut Scan) -> Result<String, ExpandError> {
    scan.bump();
    let mut out = String::new();
    loop {
        match scan.bump() {
            None => return Err(ExpandError::UnterminatedSingleQuote),
            Some('\'') => return Ok(out),
            Some(c) => out.push(c),
        }
    }
}

/// A variable name: a run of digits, one special parameter character, or
/// letters, digits and `_`. Empty when none of these follows.
fn read_name(scan: &mut Scan) -> String {
    let mut name = String::new();
    match scan.peek() {
        Some(c) if c.is_ascii_digit() => {
            while let Some(d) = scan.peek().filter(char::is_ascii_digit) {
                scan.bump();
                name.push(d);
            }
            return name;
        }
        Some(c @ ('@' | '*' | '#' | '?' | '-' | '$' | '!')) => {
            scan.bump();
            name.push(c);
            return name;
        }
        _ => {}
    }
    while let Some(c) = scan.peek() {
        if !(c.is_alphanumeric() || c == '_') {
            break;
        }
        scan.bump();
        name.push(c);
    }
    name
}

/// A cursor over the characters of a word.
struct Scan {
    chars: Vec<char>,
    pos: usize,
}

impl Scan {
    fn new(s: &str) -> Self {
        Scan {
            chars: s.chars().collect(),
            pos: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }
}

/// Word splitting state: quoted or escaped text never splits, unquoted text
/// (including variable values) splits on whitespace.
#[derive(Default)]
struct Words {
    done: Vec<String>,
    current: String,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word {
                self.done.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.current.push(c);
        self.in_word = true;
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_str(&mut self, s: &str) {
        self.current.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if self.in_word {
            self.done.push(self.current);
        }
        self.done
    }
}

#[cfg(test)]
#[path = "expand_tests.rs"]
mod tests;
