//! Lexical path cleaning with the rules of Go's `filepath.Clean` (Unix).
//!
//! Docker cleans `.dockerignore` patterns and `COPY` sources this way, so the
//! same spelling rules apply here: repeated separators collapse, `.` elements
//! go away, `x/..` pairs cancel, `..` at the start of a rooted path is
//! dropped, and the empty string becomes `.`.

/// Returns the shortest path equivalent to `path` by purely lexical
/// processing, exactly as Go's `filepath.Clean` does on Unix.
pub(crate) fn clean(path: &str) -> String {
    let bytes = path.as_bytes();
    if bytes.is_empty() {
        return ".".to_owned();
    }
    let rooted = bytes[0] == b'/';
    let n = bytes.len();
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let mut r = 0;
    // Index in `out` below which `..` may not back up.
    let mut dotdot = 0;
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        let at_end_or_sep = |i: usize| i == n || bytes[i] == b'/';
        if bytes[r] == b'/' || (bytes[r] == b'.' && at_end_or_sep(r + 1)) {
            // Empty or `.` element.
            r += 1;
        } else if bytes[r] == b'.' && r + 1 < n && bytes[r + 1] == b'.' && at_end_or_sep(r + 2) {
            r += 2;
            if out.len() > dotdot {
                // Back up over the last element and the separator before it.
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && bytes[r] != b'/' {
                out.push(bytes[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        return ".".to_owned();
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn matches_go_clean_table() {
        let cases = [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("abc", "abc"),
            ("abc/def", "abc/def"),
            ("a/b/c", "a/b/c"),
            ("..", ".."),
            ("../..", "../.."),
            ("../../abc", "../../abc"),
            ("/abc", "/abc"),
            ("abc/", "abc"),
            ("abc/def/", "abc/def"),
            ("a/b/c/", "a/b/c"),
            ("./", "."),
            ("../", ".."),
            ("/abc/", "/abc"),
            ("abc//def//ghi", "abc/def/ghi"),
            ("//abc", "/abc"),
            ("///abc", "/abc"),
            ("//abc//", "/abc"),
            ("abc//", "abc"),
            ("abc/./def", "abc/def"),
            ("/./abc/def", "/abc/def"),
            ("abc/.", "abc"),
            ("abc/def/ghi/../jkl", "abc/def/jkl"),
            ("abc/def/../ghi/../jkl", "abc/jkl"),
            ("abc/def/..", "abc"),
            ("abc/def/../..", "."),
            ("/abc/def/../..", "/"),
            ("abc/def/../../..", ".."),
            ("/abc/def/../../..", "/"),
            ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
            ("/../abc", "/abc"),
            ("abc/./../def", "def"),
            ("abc//./../def", "def"),
            ("abc/../../././../def", "../../def"),
            ("a/../..", ".."),
            ("!a/./b", "!a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }
}
