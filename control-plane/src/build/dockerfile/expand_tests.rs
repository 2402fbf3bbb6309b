use super::*;
use std::collections::HashMap;

fn vars() -> HashMap<String, String> {
    [
        ("A", "alpha"),
        ("E", ""),
        ("SP", "one two  three"),
        ("P", "/usr/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn w(s: &str) -> Result<String, ExpandError> {
    let v = vars();
    expand_word(s, '\\', &|n| v.get(n).cloned())
}

fn ws(s: &str) -> Result<Vec<String>, ExpandError> {
    let v = vars();
    expand_words(s, '\\', &|n| v.get(n).cloned())
}

#[test]
fn plain_and_braced_variables() {
    assert_eq!(w("$A").unwrap(), "alpha");
    assert_eq!(w("${A}").unwrap(), "alpha");
    assert_eq!(w("x$A-y").unwrap(), "xalpha-y");
    assert_eq!(w("${A}_x").unwrap(), "alpha_x");
    assert_eq!(w("$A_x").unwrap(), "", "A_x is one (unset) name");
    assert_eq!(w("$UNSET").unwrap(), "");
    assert_eq!(w("a${UNSET}b").unwrap(), "ab");
    assert_eq!(w("$P:/bin").unwrap(), "/usr/bin:/bin");
}

#[test]
fn lone_dollar_and_special_parameters() {
    assert_eq!(w("$").unwrap(), "$");
    assert_eq!(w("a$ b").unwrap(), "a$ b");
    assert_eq!(w("$/x").unwrap(), "$/x");
    assert_eq!(w("$1x").unwrap(), "x", "positional $1 is unset");
    assert_eq!(w("$$").unwrap(), "", "$$ is a special parameter, unset");
}

#[test]
fn default_operators() {
    assert_eq!(w("${A:-d}").unwrap(), "alpha");
    assert_eq!(w("${E:-d}").unwrap(), "d");
    assert_eq!(w("${U:-d}").unwrap(), "d");
    assert_eq!(w("${A-d}").unwrap(), "alpha");
    assert_eq!(w("${E-d}").unwrap(), "", "set but empty keeps the value");
    assert_eq!(w("${U-d}").unwrap(), "d");
    assert_eq!(w("${U:-}").unwrap(), "");
}

#[test]
fn alternative_operators() {
    assert_eq!(w("${A:+x}").unwrap(), "x");
    assert_eq!(w("${E:+x}").unwrap(), "");
    assert_eq!(w("${U:+x}").unwrap(), "");
    assert_eq!(w("${A+x}").unwrap(), "x");
    assert_eq!(w("${E+x}").unwrap(), "x");
    assert_eq!(w("${U+x}").unwrap(), "");
}

#[test]
fn required_operators() {
    assert_eq!(w("${A:?boom}").unwrap(), "alpha");
    assert_eq!(w("${E?boom}").unwrap(), "");
    let e = w("${E:?must be set}").unwrap_err();
    assert_eq!(e.to_string(), "E: must be set");
    let e = w("${U?gone}").unwrap_err();
    assert_eq!(e.to_string(), "U: gone");
    let e = w("${U:?}").unwrap_err();
    assert_eq!(e.to_string(), "U: parameter null or not set");
    let e = w("${U?}").unwrap_err();
    assert_eq!(e.to_string(), "U: parameter not set");
}

#[test]
fn word_is_expanded_recursively() {
    assert_eq!(w("${U:-$A}").unwrap(), "alpha");
    assert_eq!(w("${U:-${V:-${A}}}").unwrap(), "alpha");
    assert_eq!(w("${A:+<$A>}").unwrap(), "<alpha>");
    assert_eq!(w("${U:-'a}b'}").unwrap(), "a}b", "quotes protect the brace");
    assert_eq!(
        w("${U:-a\\}b}").unwrap(),
        "a}b",
        "escape protects the brace"
    );
    assert_eq!(w("${U:-\"$A x\"}").unwrap(), "alpha x");
}

#[test]
fn single_quotes_are_literal() {
    assert_eq!(w("'$A'").unwrap(), "$A");
    assert_eq!(w("'a\\b'").unwrap(), "a\\b");
    assert_eq!(w("x'y z'w").unwrap(), "xy zw");
    assert_eq!(w("''").unwrap(), "");
}

#[test]
fn double_quotes_expand_and_escape() {
    assert_eq!(w("\"$A\"").unwrap(), "alpha");
    assert_eq!(w("\"a \\\" b\"").unwrap(), "a \" b");
    assert_eq!(w("\"\\$A\"").unwrap(), "$A");
    assert_eq!(w("\"a\\\\b\"").unwrap(), "a\\b");
    assert_eq!(w("\"a\\nb\"").unwrap(), "a\\nb", "other escapes stay");
    assert_eq!(w("\"'$A'\"").unwrap(), "'alpha'");
}

#[test]
fn escape_outside_quotes() {
    assert_eq!(w("\\$A").unwrap(), "$A");
    assert_eq!(w("a\\ b").unwrap(), "a b");
    assert_eq!(w("\\'x").unwrap(), "'x");
    assert_eq!(w("\\\\").unwrap(), "\\");
    assert_eq!(w("ab\\").unwrap(), "ab", "a trailing escape is dropped");
}

#[test]
fn backtick_escape() {
    let v = vars();
    let l = |n: &str| v.get(n).cloned();
    assert_eq!(
        expand_word("C:\\dir\\$A", '`', &l).unwrap(),
        "C:\\dir\\alpha"
    );
    assert_eq!(expand_word("`$A", '`', &l).unwrap(), "$A");
    assert_eq!(expand_word("\"a`\"b\"", '`', &l).unwrap(), "a\"b");
}

#[test]
fn splitting_into_words() {
    assert_eq!(ws("a  b\tc").unwrap(), ["a", "b", "c"]);
    assert_eq!(ws("$SP").unwrap(), ["one", "two", "three"]);
    assert_eq!(ws("\"$SP\"").unwrap(), ["one two  three"]);
    assert_eq!(ws("x$SP").unwrap(), ["xone", "two", "three"]);
    assert_eq!(ws("'a b' c").unwrap(), ["a b", "c"]);
    assert_eq!(ws("a\\ b c").unwrap(), ["a b", "c"]);
    assert_eq!(ws("\"\" x").unwrap(), ["", "x"]);
    assert_eq!(ws("$U").unwrap(), Vec::<String>::new());
    assert_eq!(ws("  ").unwrap(), Vec::<String>::new());
    assert_eq!(ws("${U:-8080 9090}").unwrap(), ["8080", "9090"]);
}

#[test]
fn syntax_errors() {
    assert_eq!(w("'abc"), Err(ExpandError::UnterminatedSingleQuote));
    assert_eq!(w("\"abc"), Err(ExpandError::UnterminatedDoubleQuote));
    assert_eq!(w("${A"), Err(ExpandError::UnterminatedBrace));
    assert_eq!(w("${A:-x"), Err(ExpandError::UnterminatedBrace));
    assert_eq!(w("${"), Err(ExpandError::UnterminatedBrace));
    assert_eq!(w("${A:"), Err(ExpandError::UnterminatedBrace));
    let e = w("${A:x}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bad substitution: unsupported modifier \":x\" in ${A}"
    );
    let e = w("${A#x}").unwrap_err();
    assert!(matches!(e, ExpandError::BadSubstitution(_)), "{e}");
    let e = w("${}").unwrap_err();
    assert!(matches!(e, ExpandError::BadSubstitution(_)), "{e}");
    assert_eq!(
        ExpandError::UnterminatedBrace.to_string(),
        "missing '}' in variable substitution"
    );
}

#[test]
fn nesting_depth_is_capped() {
    let depth = 10_000;
    let mut s = String::new();
    for i in 0..depth {
        s.push_str(&format!("${{v{i}:-"));
    }
    s.push('x');
    s.push_str(&"}".repeat(depth));
    assert_eq!(w(&s), Err(ExpandError::TooDeep { limit: 64 }));

    let mut ok = String::new();
    for i in 0..MAX_EXPANSION_DEPTH {
        ok.push_str(&format!("${{v{i}:-"));
    }
    ok.push('x');
    ok.push_str(&"}".repeat(MAX_EXPANSION_DEPTH));
    assert_eq!(w(&ok).unwrap(), "x");
}

#[test]
fn records_used_names() {
    let v = vars();
    let l = |n: &str| v.get(n).cloned();
    let mut ex = Expander::new('\\', &l);
    ex.word("$A ${B:-$C} '$D' \\$E \"$F\"").unwrap();
    let used: Vec<&str> = ex.used().iter().map(String::as_str).collect();
    assert_eq!(used, ["A", "B", "C", "F"]);
    assert_eq!(ex.take_used().len(), 4);
    assert!(ex.used().is_empty());
}

#[test]
fn hostile_inputs_do_not_panic() {
    let many = "$".repeat(100_000);
    assert!(w(&many).is_ok());
    let braces = "${".repeat(100);
    assert!(w(&braces).is_err());
    assert!(w("\0${A}\0").is_ok());
    assert!(w("${A:-\u{1F600}}é").is_ok());
}
