//! Hostile inputs: nothing may panic, errors must be clean.

use std::collections::BTreeMap;

use super::*;

fn full(src: &[u8]) -> Result<(), DockerfileError> {
    let df = parse_bytes(src)?;
    let p = plan(&df, &BTreeMap::new())?;
    for i in 0..p.stages.len() {
        p.steps(i, &[])?;
    }
    Ok(())
}

#[test]
fn oversized_file_is_rejected() {
    let mut big = b"FROM a\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', MAX_DOCKERFILE_BYTES));
    assert_eq!(
        full(&big).unwrap_err(),
        DockerfileError::TooLarge {
            limit: MAX_DOCKERFILE_BYTES
        }
    );
}

#[test]
fn deeply_nested_substitution_is_capped() {
    let mut word = String::new();
    for _ in 0..10_000 {
        word.push_str("${a:-");
    }
    word.push('x');
    word.push_str(&"}".repeat(10_000));
    let src = format!("FROM a\nWORKDIR {word}\n");
    let e = full(src.as_bytes()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: variable substitutions nested deeper than 64"
    );
    let from = format!("ARG X={word}\nFROM a\n");
    assert_eq!(full(from.as_bytes()).unwrap_err().line(), Some(1));
}

#[test]
fn nul_bytes_and_invalid_utf8() {
    assert_eq!(
        full(b"FROM a\nRUN \0\n").unwrap_err().to_string(),
        "Dockerfile:2: NUL byte in Dockerfile"
    );
    assert_eq!(
        full(b"FROM a\n\nRUN \xc3\x28\n").unwrap_err().to_string(),
        "Dockerfile:3: invalid UTF-8"
    );
    assert!(full(&[0xff; 64]).is_err());
}

#[test]
fn assorted_garbage_does_not_panic() {
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\\".to_vec(),
        b"FROM a\n\\\n\\\n\\".to_vec(),
        b"FROM\tx\x0bAS\x0cy".to_vec(),
        "FROM a\nCOPY [\u{1F600}".as_bytes().to_vec(),
        format!("FROM a\nCMD {}", "[".repeat(100_000)).into_bytes(),
        format!("FROM a\nENV {}", "\"".repeat(10_001)).into_bytes(),
        format!("FROM a\nLABEL {}", "a=\\".repeat(1000)).into_bytes(),
        b"FROM a\nCOPY --from=99999999999999999999999 a b".to_vec(),
        b"FROM a\nCOPY --\"from=x a b".to_vec(),
        b"FROM a\nEXPOSE ${\nUSER '\nVOLUME \"\n".to_vec(),
        b"# escape=`\nFROM a`\n`\n".to_vec(),
        "FROM a\nUSER ${\u{e9}:-\u{e9}}".as_bytes().to_vec(),
        "ARG é=1\nFROM a:$é".as_bytes().to_vec(),
        b"FROM a\n".repeat(5_000),
    ];
    for case in cases {
        // Either outcome is fine; it must not panic.
        let _ = full(&case);
    }
    // And the ones that must fail do so with a line.
    let e = full(b"FROM a\nUSER '\n").unwrap_err();
    assert_eq!(e.line(), Some(2));
}
