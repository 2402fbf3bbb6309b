use super::*;

fn texts(src: &str) -> Vec<(usize, String)> {
    logical_lines(src)
        .unwrap()
        .lines
        .into_iter()
        .map(|l| (l.line, l.text))
        .collect()
}

#[test]
fn continuation_with_backslash() {
    let src = "FROM alpine\nRUN apk add \\\n    curl \\\n    git\nCMD x\n";
    let got = texts(src);
    assert_eq!(
        got,
        [
            (1, "FROM alpine".to_string()),
            (2, "RUN apk add     curl     git".to_string()),
            (5, "CMD x".to_string()),
        ]
    );
}

#[test]
fn continuation_with_trailing_whitespace_after_escape() {
    let got = texts("RUN a \\   \t\nb\n");
    assert_eq!(got, [(1, "RUN a b".to_string())]);
}

#[test]
fn continuation_with_backtick_escape() {
    let src = "# escape=`\nFROM w\nRUN dir C:\\ `\n  /s\nCOPY a \\\nb\n";
    let lines = logical_lines(src).unwrap();
    assert_eq!(lines.escape, '`');
    let got: Vec<_> = lines
        .lines
        .iter()
        .map(|l| (l.line, l.text.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "FROM w"),
            (3, "RUN dir C:\\   /s"),
            (5, "COPY a \\"),
            (6, "b"),
        ]
    );
}

#[test]
fn comments_and_empty_lines_inside_continuation() {
    let src = "RUN a \\\n# comment\n   # indented comment\n\n   \\\n  b\n";
    assert_eq!(texts(src), [(1, "RUN a      b".to_string())]);
}

#[test]
fn comments_and_blank_lines_are_dropped() {
    let src = "\n# hello\n   # indented\nFROM x\n\n\nRUN y\n";
    assert_eq!(
        texts(src),
        [(4, "FROM x".to_string()), (7, "RUN y".to_string())]
    );
}

#[test]
fn trailing_continuation_at_end_of_file() {
    assert_eq!(
        texts("FROM x\nRUN a \\"),
        [(1, "FROM x".into()), (2, "RUN a".into())]
    );
    assert_eq!(texts("FROM x\n\\\n"), [(1, "FROM x".to_string())]);
}

#[test]
fn crlf_and_bom() {
    let src = "\u{feff}# escape=`\r\nFROM x\r\nRUN a `\r\n b\r\n";
    let lines = logical_lines(src).unwrap();
    assert_eq!(lines.escape, '`');
    assert_eq!(lines.lines[1].text, "RUN a  b");
}

#[test]
fn escape_directive_only_at_the_top() {
    let src = "FROM x\n# escape=`\nRUN a `\nb\n";
    let lines = logical_lines(src).unwrap();
    assert_eq!(lines.escape, '\\');
    assert_eq!(lines.lines.len(), 3);

    let after_comment = "# hello\n# escape=`\nFROM x\n";
    assert_eq!(logical_lines(after_comment).unwrap().escape, '\\');

    let after_blank = "\n# escape=`\nFROM x\n";
    assert_eq!(logical_lines(after_blank).unwrap().escape, '\\');

    let after_unknown = "# foo=bar\n# escape=`\nFROM x\n";
    assert_eq!(logical_lines(after_unknown).unwrap().escape, '\\');

    let with_syntax = "# syntax=docker/dockerfile:1\n#ESCAPE = `\nFROM x\n";
    assert_eq!(logical_lines(with_syntax).unwrap().escape, '`');

    let explicit = "# escape=\\\nFROM x\n";
    assert_eq!(logical_lines(explicit).unwrap().escape, '\\');
}

#[test]
fn directive_errors() {
    let e = logical_lines("# escape=x\nFROM a\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:1: invalid escape token 'x' does not match ` or \\"
    );
    let e = logical_lines("# escape=`\n# escape=`\nFROM a\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: only one escape parser directive can be used"
    );
}

#[test]
fn keyword_flags_and_args() {
    let lines = logical_lines("copy --from=build --chown=\"a b\" --link  src dst\n").unwrap();
    let l = &lines.lines[0];
    assert_eq!(l.keyword, "copy");
    assert_eq!(
        l.flags,
        [
            Flag {
                name: "from".into(),
                value: Some("build".into())
            },
            Flag {
                name: "chown".into(),
                value: Some("a b".into())
            },
            Flag {
                name: "link".into(),
                value: None
            },
        ]
    );
    assert_eq!(l.args, "src dst");

    let l = &logical_lines("RUN -- --not-a-flag\n").unwrap().lines[0];
    assert!(l.flags.is_empty());
    assert_eq!(l.args, "--not-a-flag");

    let l = &logical_lines("COPY a --from=x b\n").unwrap().lines[0];
    assert!(l.flags.is_empty());
    assert_eq!(l.args, "a --from=x b");

    let l = &logical_lines("CMD\n").unwrap().lines[0];
    assert_eq!((l.keyword.as_str(), l.args.as_str()), ("CMD", ""));
}

#[test]
fn limits_and_bad_bytes() {
    let big = "#".repeat(MAX_DOCKERFILE_BYTES + 1);
    assert_eq!(
        logical_lines(&big).unwrap_err(),
        DockerfileError::TooLarge {
            limit: MAX_DOCKERFILE_BYTES
        }
    );
    assert!(logical_lines_bytes(big.as_bytes()).is_err());

    let many = "RUN x\n".repeat(MAX_LOGICAL_LINES + 1);
    let e = logical_lines(&many).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:10001: more than 10000 instructions"
    );
    assert_eq!(
        logical_lines(&"RUN x\n".repeat(MAX_LOGICAL_LINES))
            .unwrap()
            .lines
            .len(),
        MAX_LOGICAL_LINES
    );

    let e = logical_lines("FROM x\nRUN a\0b\n").unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:2: NUL byte in Dockerfile");

    let e = logical_lines_bytes(b"FROM x\nRUN a\n\xff\xfe\n").unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:3: invalid UTF-8");
}
