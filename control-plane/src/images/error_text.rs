//! Error text for people: the error and its causes on one line, each said once.
//!
//! Our error enums put their cause in their own message (so `to_string()` alone, as an
//! HTTP error body, tells the whole story) and also return it from `source()`; printing the
//! chain the usual way (`{:#}` of anyhow) therefore says each cause twice. `one_line` walks
//! the chain and adds a cause only when the text so far does not already say it.

use std::error::Error;

/// `err` and its causes as one line: `a: b: c`, with repeated causes left out.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::store::StoreError;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the image store")]
    struct Outer(#[source] StoreError);

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such\nfile");
        let err = Outer(StoreError::Io {
            path: "/x".into(),
            source: io,
        });
        assert_eq!(
            one_line(&err),
            "cannot open the image store: store I/O on /x: no such file"
        );
    }

    #[test]
    fn works_on_anyhow_errors_with_context() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let err = anyhow::Error::new(StoreError::Io {
            path: "/x".into(),
            source: io,
        })
        .context("cannot open the image store");
        assert_eq!(
            one_line(&*err),
            "cannot open the image store: store I/O on /x: gone"
        );
    }
}
