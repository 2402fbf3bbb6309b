use super::*;

fn rules(text: &str) -> IgnoreMatcher {
    IgnoreMatcher::parse(".dockerignore", text.as_bytes()).expect("valid rules")
}

fn excluded(m: &IgnoreMatcher, path: &str) -> bool {
    m.decide(path).excluded
}

#[test]
fn comments_blank_lines_and_trimming() {
    let m = rules("# comment\n\n   \n  *.log  \r\n#*.txt\n  # not-a-comment\n");
    assert_eq!(m.len(), 2);
    assert!(excluded(&m, "a.log"));
    assert!(!excluded(&m, "a.txt"));
    // The `#` test runs before trimming, so this is a pattern.
    assert!(excluded(&m, "# not-a-comment"));
}

#[test]
fn bom_is_dropped_on_first_line_only() {
    let m = IgnoreMatcher::parse(".dockerignore", b"\xEF\xBB\xBFsecret\n").expect("valid");
    assert!(excluded(&m, "secret"));
}

#[test]
fn patterns_are_cleaned_and_rooted() {
    let m = rules("/a/./b//c\nd/e/..\n./f\n");
    assert!(excluded(&m, "a/b/c"));
    assert!(excluded(&m, "d"));
    assert!(excluded(&m, "d/x"));
    assert!(excluded(&m, "f"));
    assert!(!excluded(&m, "a/b"));
}

#[test]
fn dot_pattern_matches_nothing() {
    let m = rules(".\n");
    assert_eq!(m.len(), 1);
    assert!(!excluded(&m, "a"));
    assert!(!excluded(&m, "a/b"));
    assert_eq!(m.decide("."), Decision::UNMATCHED);
}

#[test]
fn parent_directory_match_excludes_children() {
    let m = rules("node_modules\n");
    assert!(excluded(&m, "node_modules"));
    assert!(excluded(&m, "node_modules/x/y"));
    assert!(!excluded(&m, "src/node_modules"));
    assert!(!excluded(&m, "node_modules2"));
}

#[test]
fn last_matching_line_wins_and_is_reported() {
    let m = rules("# header\n*.md\n!README.md\n\nREADME.md\n!docs\n");
    let d = m.decide("CHANGES.md");
    assert!(d.excluded);
    assert_eq!(d.line, Some(2));
    let d = m.decide("README.md");
    assert!(d.excluded);
    assert_eq!(d.line, Some(5));
    assert_eq!(
        m.explain(&d).as_deref(),
        Some("excluded by .dockerignore line 5")
    );
    let d = m.decide("docs");
    assert!(!d.excluded);
    assert_eq!(d.line, Some(6));
    assert_eq!(m.explain(&d), None);
    let d = m.decide("src/main.rs");
    assert_eq!(d, Decision::UNMATCHED);
}

#[test]
fn exception_reincludes_under_excluded_directory() {
    let m = rules("node_modules\n!node_modules/keep.txt\n");
    assert!(excluded(&m, "node_modules/other.txt"));
    let d = m.decide("node_modules/keep.txt");
    assert!(!d.excluded);
    assert_eq!(d.line, Some(2));
    let dir = m.decide("node_modules");
    assert!(dir.excluded);
    assert!(m.may_reinclude_below("node_modules", dir));
    assert!(!m.may_reinclude_below("vendor", m.decide("vendor")));
}

#[test]
fn earlier_exceptions_cannot_reinclude() {
    let m = rules("!a/keep\na\n");
    let d = m.decide("a");
    assert!(d.excluded);
    assert!(!m.may_reinclude_below("a", d));
    assert!(excluded(&m, "a/keep"));
}

#[test]
fn wildcard_exception_reincludes() {
    let m = rules("*\n!*/keep.txt\n");
    assert!(excluded(&m, "a"));
    assert!(!excluded(&m, "a/keep.txt"));
    assert!(m.may_reinclude_below("a", m.decide("a")));
}

#[test]
fn double_star_patterns() {
    let m = rules("**/*.pyc\n!keep/**\n");
    assert!(excluded(&m, "x.pyc"));
    assert!(excluded(&m, "a/b/c.pyc"));
    assert!(!excluded(&m, "keep/c.pyc"));
    assert!(!excluded(&m, "a.py"));
}

#[test]
fn exception_with_spaces_after_bang() {
    let m = rules("*.txt\n!   /keep.txt\n");
    assert!(!excluded(&m, "keep.txt"));
    assert!(excluded(&m, "other.txt"));
}

#[test]
fn lone_bang_is_an_error_naming_the_line() {
    let err = IgnoreMatcher::parse(".dockerignore", b"a\n\n!\n").expect_err("lone !");
    assert!(
        matches!(err, IgnoreError::BadPattern { line: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn bad_pattern_is_an_error_naming_the_line() {
    let err = IgnoreMatcher::parse("app.Dockerfile.dockerignore", b"ok\n# c\nsrc/[abc\n")
        .expect_err("unterminated class");
    let text = err.to_string();
    assert!(
        text.starts_with("app.Dockerfile.dockerignore line 3: "),
        "{text}"
    );
    let err = IgnoreMatcher::parse(".dockerignore", b"a\\").expect_err("trailing backslash");
    assert!(matches!(err, IgnoreError::BadPattern { line: 1, .. }));
}

#[test]
fn non_utf8_line_is_an_error_but_comment_is_not() {
    assert!(IgnoreMatcher::parse(".dockerignore", b"#\xff\xfe\n").is_ok());
    let err = IgnoreMatcher::parse(".dockerignore", b"a\nb\xff\n").expect_err("bad utf-8");
    assert!(matches!(err, IgnoreError::NotUtf8 { line: 2, .. }));
}

#[test]
fn size_and_pattern_caps() {
    let big = vec![b'#'; (MAX_IGNORE_FILE_BYTES + 1) as usize];
    assert!(matches!(
        IgnoreMatcher::parse(".dockerignore", &big),
        Err(IgnoreError::TooLarge { .. })
    ));
    let many = "a\n".repeat(MAX_IGNORE_PATTERNS + 1);
    assert!(matches!(
        IgnoreMatcher::parse(".dockerignore", many.as_bytes()),
        Err(IgnoreError::TooManyPatterns { .. })
    ));
    let just_enough = "a\n".repeat(MAX_IGNORE_PATTERNS);
    assert_eq!(rules(&just_enough).len(), MAX_IGNORE_PATTERNS);
}

#[test]
fn decide_below_agrees_with_decide() {
    let m = rules("a\n!a/b\na/b/c*\n!**/keep\n");
    for path in [
        "a",
        "a/b",
        "a/b/c1",
        "a/b/c1/keep",
        "a/b/c1/x",
        "a/x",
        "z/keep",
    ] {
        let mut d = Decision::UNMATCHED;
        let mut prefix = String::new();
        for part in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            d = m.decide_below(&prefix, d);
        }
        assert_eq!(d, m.decide(path), "{path}");
    }
    assert!(excluded(&m, "a/b/c1/x"));
    assert!(!excluded(&m, "a/b/c1/keep"));
    assert!(!excluded(&m, "a/b"));
}

#[test]
fn select_prefers_dockerfile_specific_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path();
    fs::create_dir(ctx.join("build")).expect("mkdir");
    assert_eq!(
        select_ignore_file(ctx, Path::new("build/app.Dockerfile")).expect("select"),
        None
    );
    fs::write(ctx.join(".dockerignore"), "general\n").expect("write");
    let chosen = select_ignore_file(ctx, Path::new("build/app.Dockerfile"))
        .expect("select")
        .expect("some");
    assert_eq!(chosen.kind, IgnoreFileKind::Context);
    assert_eq!(chosen.display_name, ".dockerignore");
    fs::write(ctx.join("build/app.Dockerfile.dockerignore"), "specific\n").expect("write");
    let chosen = select_ignore_file(ctx, Path::new("build/app.Dockerfile"))
        .expect("select")
        .expect("some");
    assert_eq!(chosen.kind, IgnoreFileKind::DockerfileSpecific);
    assert_eq!(chosen.display_name, "build/app.Dockerfile.dockerignore");
    assert_eq!(
        chosen.context_relative.as_deref(),
        Some("build/app.Dockerfile.dockerignore")
    );
    let (m, file) = IgnoreMatcher::load(ctx, &ctx.join("build/app.Dockerfile")).expect("load");
    assert_eq!(
        file.map(|f| f.kind),
        Some(IgnoreFileKind::DockerfileSpecific)
    );
    assert!(excluded(&m, "specific"));
    assert!(!excluded(&m, "general"));
    let d = m.decide("specific");
    assert_eq!(
        m.explain(&d).as_deref(),
        Some("excluded by build/app.Dockerfile.dockerignore line 1")
    );
}

#[test]
fn dockerfile_outside_context_uses_file_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path().join("ctx");
    fs::create_dir(&ctx).expect("mkdir");
    fs::write(dir.path().join("Dockerfile.dockerignore"), "x\n").expect("write");
    let chosen = select_ignore_file(&ctx, &dir.path().join("Dockerfile"))
        .expect("select")
        .expect("some");
    assert_eq!(chosen.display_name, "Dockerfile.dockerignore");
    assert_eq!(chosen.context_relative, None);
}

#[test]
fn symlinked_ignore_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path();
    fs::write(ctx.join("real"), "x\n").expect("write");
    std::os::unix::fs::symlink("real", ctx.join(".dockerignore")).expect("symlink");
    let err = IgnoreMatcher::load(ctx, Path::new("Dockerfile")).expect_err("symlink");
    assert!(matches!(err, IgnoreError::NotRegularFile { .. }), "{err}");
}
