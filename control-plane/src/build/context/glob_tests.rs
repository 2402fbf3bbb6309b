use super::*;

fn go_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    Ok(compile_component(pattern)?.matches(name))
}

#[test]
fn go_filepath_match_table() {
    let ok = [
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", false),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abc", false),
        ("ab[^e-g]", "abc", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "ab", false),
        ("a?b", "a☺b", true),
        ("a[^a]b", "a☺b", true),
        ("a???b", "a☺b", false),
        ("a[^a][^a][^a]b", "a☺b", false),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        ("[\\]a]", "]", true),
        ("[\\-]", "-", true),
        ("[x\\-]", "x", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[\\-x]", "x", true),
        ("[\\-x]", "-", true),
        ("[\\-x]", "a", false),
        ("*x", "xxx", true),
        // Go: `!` does not negate a class; it is a plain member.
        ("[!a]", "!", true),
        ("[!a]", "b", false),
    ];
    for (pattern, name, want) in ok {
        assert_eq!(go_match(pattern, name), Ok(want), "{pattern:?} vs {name:?}");
    }
    let bad = [
        "[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a[", "[]", "[^]", "*[",
        "ab\\",
    ];
    for pattern in bad {
        assert!(validate(pattern).is_err(), "{pattern:?} should be bad");
    }
}

#[test]
fn moby_path_patterns() {
    // (pattern, path, matches), from moby's documented behaviour.
    let cases = [
        ("**", "file", true),
        ("**", "file/", true),
        ("**/", "file", true),
        ("**/", "file/", true),
        ("dir/**", "dir/file", true),
        ("dir/**", "dir/file/", true),
        ("dir/**", "dir/dir2/file", true),
        ("dir/**", "dir", false),
        ("**/file", "file", true),
        ("**/file", "dir/file", true),
        ("**/file", "dir/dir/file", true),
        ("**/file", "dirfile", false),
        ("**/file*", "dir/dir/file", true),
        ("**/file*", "dir/dir/file.txt", true),
        ("**/file*txt", "dir/dir/file.txt", true),
        ("**/file*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt", "dir/dir/file.txt", true),
        ("**/**/*.txt2", "dir/dir/file.txt", false),
        ("**/*.txt", "file.txt", true),
        ("**/**/*.txt", "file.txt", true),
        ("a**/*.txt", "a/file.txt", true),
        ("a**/*.txt", "a/dir/file.txt", true),
        ("a**/*.txt", "a/dir/dir/file.txt", true),
        ("a/*.txt", "a/dir/file.txt", false),
        ("a/*.txt", "a/file.txt", true),
        ("a/*.txt**", "a/file.txt", true),
        ("a[b-d]e", "ae", false),
        ("a[b-d]e", "ace", true),
        ("a[b-d]e", "aae", false),
        ("a[^b-d]e", "aze", true),
        (".*", ".foo", true),
        (".*", "foo", false),
        ("abc.def", "abcdef", false),
        ("abc.def", "abc.def", true),
        ("abc.def", "abcZdef", false),
        ("abc?def", "abcZdef", true),
        ("abc?def", "abcdef", false),
        ("a\\\\", "a\\", true),
        ("a\\\\", "a\\\\", false),
        ("a\\*b", "a*b", true),
        ("a\\*b", "axb", false),
        ("**/foo/bar", "foo/bar", true),
        ("**/foo/bar", "dir/foo/bar", true),
        ("**/foo/bar", "dir/dir2/foo/bar", true),
        ("abc/**", "abc", false),
        ("abc/**", "abc/def", true),
        ("abc/**", "abc/def/ghi", true),
        ("**/.foo", ".foo", true),
        ("**/.foo", "bar.foo", false),
        ("a(b)c/def", "a(b)c/def", true),
        ("a(b)c/def", "a(b)c/xyz", false),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
        // moby's suffix shortcut: `**foo` compares raw text.
        ("**foo", "barfoo", true),
    ];
    for (pattern, path, want) in cases {
        validate(pattern).unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
        let compiled = compile_path(&crate::build::context::clean::clean(pattern))
            .unwrap_or_else(|e| panic!("{pattern:?}: {e}"));
        assert_eq!(compiled.matches(path), want, "{pattern:?} vs {path:?}");
    }
}

#[test]
fn pattern_kinds_follow_moby() {
    assert_eq!(compile_path("a/b"), Ok(PathPattern::Exact("a/b".into())));
    assert_eq!(compile_path("a/**"), Ok(PathPattern::Prefix("a/".into())));
    assert_eq!(compile_path("**/x"), Ok(PathPattern::Suffix("/x".into())));
    assert!(matches!(compile_path("*.go"), Ok(PathPattern::Glob(_))));
}

#[test]
fn may_match_below_is_precise_enough() {
    let p = |s: &str| compile_path(s).expect("valid");
    assert!(p("node_modules/keep.txt").may_match_below("node_modules"));
    assert!(!p("node_modules/keep.txt").may_match_below("vendor"));
    assert!(p("*/keep.txt").may_match_below("vendor"));
    assert!(!p("*/keep.txt").may_match_below("a/b"));
    assert!(p("**/keep.txt").may_match_below("a/b"));
    assert!(p("a/**").may_match_below("a/b"));
    assert!(!p("a/**").may_match_below("b"));
    assert!(p("a**").may_match_below("ab"));
}

#[test]
fn long_hostile_pattern_is_fast() {
    let pattern = "*a".repeat(2000);
    let glob = compile_component(&pattern).expect("valid");
    let name = "a".repeat(1999);
    assert!(!glob.matches(&name));
    assert!(glob.matches(&"a".repeat(4000)));
}
