//! Wildcard patterns: Go's `filepath.Match` syntax, plus the `**` extension
//! that Docker's `.dockerignore` matcher (moby `patternmatcher`) adds.
//!
//! Syntax (Go): `*` matches any run of non-`/` characters, `?` one non-`/`
//! character, `[...]` a character class (`[^...]` negates it; ranges `a-z`;
//! `\` escapes inside), `\c` matches `c` literally. A trailing `\`, an empty
//! or unterminated class and a range missing an end are syntax errors.
//!
//! Matching is done by simulating a small automaton over the pattern tokens,
//! so time is bounded by `pattern length x path length` whatever the input.

use std::fmt;

/// Why a pattern is malformed (Go's `filepath.ErrBadPattern`, with detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub &'static str);

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One inclusive range of a character class.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    lo: char,
    hi: char,
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// This exact character.
    Lit(char),
    /// `*`: any run (possibly empty) of characters other than `/`.
    Star,
    /// `?`: one character other than `/`.
    One,
    /// `[...]`: one character in (or, when negated, not in) the ranges.
    Class { negated: bool, ranges: Vec<Range> },
    /// `**` followed by more pattern: nothing, or anything ending in `/`
    /// (moby's `(.*/)?`).
    DirStar,
    /// `**` at the end of the pattern: anything at all (moby's `.*`).
    Rest,
}

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    toks: Vec<Tok>,
}

/// Reads one (possibly escaped) class character, Go's `getEsc`.
fn class_char(chars: &[char], pos: &mut usize) -> Result<char, BadPattern> {
    const UNTERMINATED: BadPattern = BadPattern("unterminated character class");
    let first = *chars.get(*pos).ok_or(UNTERMINATED)?;
    if first == '-' || first == ']' {
        return Err(BadPattern("character class range is missing a character"));
    }
    if first == '\\' {
        *pos += 1;
    }
    let c = *chars.get(*pos).ok_or(UNTERMINATED)?;
    *pos += 1;
    if *pos >= chars.len() {
        return Err(UNTERMINATED);
    }
    Ok(c)
}

/// Parses a class whose `[` was just consumed, with Go's rules.
fn parse_class(chars: &[char], pos: &mut usize) -> Result<Tok, BadPattern> {
    let mut negated = false;
    if chars.get(*pos) == Some(&'^') {
        negated = true;
        *pos += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(*pos) == Some(&']') && !ranges.is_empty() {
            *pos += 1;
            break;
        }
        let lo = class_char(chars, pos)?;
        let mut hi = lo;
        if chars.get(*pos) == Some(&'-') {
            *pos += 1;
            hi = class_char(chars, pos)?;
        }
        ranges.push(Range { lo, hi });
    }
    Ok(Tok::Class { negated, ranges })
}

/// Checks `pattern` against Go's `filepath.Match` syntax.
pub(crate) fn validate(pattern: &str) -> Result<(), BadPattern> {
    compile_component(pattern).map(|_| ())
}

/// Compiles a pattern with plain `filepath.Match` semantics (`**` is just
/// two stars), for matching one path component.
pub(crate) fn compile_component(pattern: &str) -> Result<Glob, BadPattern> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::with_capacity(chars.len());
    let mut pos = 0;
    while let Some(&ch) = chars.get(pos) {
        pos += 1;
        match ch {
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::One),
            '[' => toks.push(parse_class(&chars, &mut pos)?),
            '\\' => {
                let c = *chars
                    .get(pos)
                    .ok_or(BadPattern("pattern ends with a lone backslash"))?;
                pos += 1;
                toks.push(Tok::Lit(c));
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(Glob { toks })
}

/// How moby decides to evaluate a `.dockerignore` pattern. The shortcuts
/// compare the cleaned pattern text; they never contain an escape, since a
/// `\` makes moby fall back to its regular expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathPattern {
    /// No wildcard at all: the path must equal the text.
    Exact(String),
    /// `text**`: the path must start with `text`.
    Prefix(String),
    /// `**text` with no other wildcard: the path must end with `text`, or
    /// equal it minus a leading `/`.
    Suffix(String),
    /// Anything else: full match of the token automaton.
    Glob(Glob),
}

/// Compiles a cleaned `.dockerignore` pattern (without its `!`) the way
/// moby's `Pattern.compile` does. The pattern must have passed [`validate`].
pub(crate) fn compile_path(pattern: &str) -> Result<PathPattern, BadPattern> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regexp,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::with_capacity(chars.len());
    let mut kind = Kind::Exact;
    let mut pos = 0;
    let mut first = true;
    while let Some(&ch) = chars.get(pos) {
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos == chars.len() {
                    kind = if kind == Kind::Exact {
                        Kind::Prefix
                    } else {
                        Kind::Regexp
                    };
                    toks.push(Tok::Rest);
                } else {
                    kind = Kind::Regexp;
                    toks.push(Tok::DirStar);
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                kind = Kind::Regexp;
                toks.push(Tok::Star);
            }
            '?' => {
                kind = Kind::Regexp;
                toks.push(Tok::One);
            }
            '\\' => match chars.get(pos) {
                Some(&c) => {
                    pos += 1;
                    kind = Kind::Regexp;
                    toks.push(Tok::Lit(c));
                }
                None => toks.push(Tok::Lit('\\')),
            },
            '[' => {
                kind = Kind::Regexp;
                toks.push(parse_class(&chars, &mut pos)?);
            }
            ']' => {
                kind = Kind::Regexp;
                toks.push(Tok::Lit(']'));
            }
            c => toks.push(Tok::Lit(c)),
        }
        first = false;
    }
    Ok(match kind {
        Kind::Exact => PathPattern::Exact(pattern.to_owned()),
        Kind::Prefix => {
            let cut = pattern.len().saturating_sub(2);
            PathPattern::Prefix(pattern.get(..cut).unwrap_or_default().to_owned())
        }
        Kind::Suffix => PathPattern::Suffix(pattern.get(2..).unwrap_or_default().to_owned()),
        Kind::Regexp => PathPattern::Glob(Glob { toks }),
    })
}

impl PathPattern {
    /// True when the whole of `path` matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(text) => path == text,
            PathPattern::Prefix(text) => path.starts_with(text.as_str()),
            PathPattern::Suffix(text) => {
                path.ends_with(text.as_str())
                    || text.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            PathPattern::Glob(glob) => glob.matches(path),
        }
    }

    /// True when some path strictly below directory `dir` could match.
    /// May say yes when the answer is no (never the reverse).
    pub(crate) fn may_match_below(&self, dir: &str) -> bool {
        let dir_slash = format!("{dir}/");
        match self {
            PathPattern::Exact(text) => text.starts_with(&dir_slash),
            PathPattern::Prefix(text) => {
                dir_slash.starts_with(text.as_str()) || text.starts_with(&dir_slash)
            }
            PathPattern::Suffix(_) => true,
            PathPattern::Glob(glob) => glob.alive_after(&dir_slash),
        }
    }
}

/// The set of automaton states: for token `i`, slot `2i` is "before token
/// `i`" and slot `2i+1` is "inside the `.*` of a `DirStar` at `i`".
struct States(Vec<bool>);

impl Glob {
    fn start(&self) -> States {
        let mut states = States(vec![false; 2 * (self.toks.len() + 1)]);
        states.0[0] = true;
        self.close(&mut states);
        states
    }

    /// Follows the empty moves; they only go forward, so one pass suffices.
    fn close(&self, states: &mut States) {
        for (i, tok) in self.toks.iter().enumerate() {
            if !states.0[2 * i] {
                continue;
            }
            match tok {
                Tok::Star | Tok::Rest => states.0[2 * (i + 1)] = true,
                Tok::DirStar => {
                    states.0[2 * i + 1] = true;
                    states.0[2 * (i + 1)] = true;
                }
                _ => {}
            }
        }
    }

    /// Moves every state in `states` over `c`, into `next`.
    fn step(&self, states: &States, c: char, next: &mut States) {
        next.0.iter_mut().for_each(|s| *s = false);
        for (i, tok) in self.toks.iter().enumerate() {
            if states.0[2 * i] {
                let advance = match tok {
                    Tok::Lit(l) => *l == c,
                    Tok::One => c != '/',
                    Tok::Class { negated, ranges } => {
                        ranges.iter().any(|r| r.lo <= c && c <= r.hi) != *negated
                    }
                    Tok::Star => {
                        if c != '/' {
                            next.0[2 * i] = true;
                        }
                        false
                    }
                    Tok::Rest => {
                        next.0[2 * i] = true;
                        false
                    }
                    Tok::DirStar => false,
                };
                if advance {
                    next.0[2 * (i + 1)] = true;
                }
            }
            if states.0[2 * i + 1] {
                next.0[2 * i + 1] = true;
                if c == '/' {
                    next.0[2 * (i + 1)] = true;
                }
            }
        }
        self.close(next);
    }

    fn run(&self, text: &str) -> States {
        let mut states = self.start();
        let mut next = States(vec![false; states.0.len()]);
        for c in text.chars() {
            self.step(&states, c, &mut next);
            std::mem::swap(&mut states, &mut next);
            if !states.0.iter().any(|s| *s) {
                break;
            }
        }
        states
    }

    /// True when all of `text` matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let states = self.run(text);
        states.0[2 * self.toks.len()]
    }

    /// True when `text` is a prefix of some string the pattern matches
    /// (approximately: any live state counts).
    fn alive_after(&self, text: &str) -> bool {
        self.run(text).0.iter().any(|s| *s)
    }
}

#[cfg(test)]
#[path = "glob_tests.rs"]
mod tests;
