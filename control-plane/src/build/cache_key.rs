//! Build cache keys, in BuildKit's shape: a step's key hashes its parent's key, the
//! instruction after variable expansion (canonical JSON), the build args and environment
//! the step sees, and for `COPY`/`ADD` the checksum of the context files it reads. The
//! chain starts at the base image's manifest digest, so a tag that moved misses.
//!
//! Every field is length-prefixed, so no two different inputs hash the same bytes.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::images::digest::Digest;

/// A step's cache key.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct CacheKey(Digest);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a step's key is made of, besides its parent's key.
#[derive(Debug, Clone, Default)]
pub struct StepInputs<'a> {
    /// The instruction after expansion, as canonical JSON (keys sorted).
    pub instruction: &'a [u8],
    /// Build args the step sees (`ARG`s declared before it in its stage, with values).
    pub args: BTreeMap<String, String>,
    /// The environment the step sees, in order.
    pub env: &'a [(String, String)],
    /// The checksum of the context files a `COPY`/`ADD` reads, or of the stage or image
    /// files a `COPY --from` reads.
    pub files: Option<&'a str>,
}

fn field(h: &mut Sha256, tag: &[u8], value: &[u8]) {
    h.update((tag.len() as u64).to_le_bytes());
    h.update(tag);
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

impl CacheKey {
    /// The key a stage starts from: its base image's manifest digest (`FROM scratch`: none).
    pub fn base(manifest: Option<&Digest>) -> Self {
        let mut h = Sha256::new();
        field(&mut h, b"skiff-build-cache-v1", b"");
        field(
            &mut h,
            b"base",
            manifest
                .map(|d| d.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        CacheKey(Digest::from_hasher(h))
    }

    /// The key of a step on top of this one.
    pub fn step(&self, inputs: &StepInputs<'_>) -> Self {
        let mut h = Sha256::new();
        field(&mut h, b"parent", self.0.to_string().as_bytes());
        field(&mut h, b"instruction", inputs.instruction);
        for (k, v) in &inputs.args {
            field(&mut h, b"arg", k.as_bytes());
            field(&mut h, b"value", v.as_bytes());
        }
        for (k, v) in inputs.env {
            field(&mut h, b"env", k.as_bytes());
            field(&mut h, b"value", v.as_bytes());
        }
        if let Some(files) = inputs.files {
            field(&mut h, b"files", files.as_bytes());
        }
        CacheKey(Digest::from_hasher(h))
    }

    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_key_and_nothing_else_does() {
        let base = CacheKey::base(Some(&Digest::of(b"manifest")));
        assert_ne!(base, CacheKey::base(Some(&Digest::of(b"moved tag"))));
        assert_ne!(base, CacheKey::base(None));
        let env = [("PATH".to_string(), "/bin".to_string())];
        let inputs = StepInputs {
            instruction: br#"{"run":"make"}"#,
            args: BTreeMap::from([("V".into(), "1".into())]),
            env: &env,
            files: None,
        };
        let k = base.step(&inputs);
        assert_eq!(
            k,
            base.step(&inputs.clone()),
            "the same inputs, the same key"
        );
        let other_env = [("PATH".to_string(), "/usr/bin".to_string())];
        for changed in [
            StepInputs {
                instruction: br#"{"run":"make all"}"#,
                ..inputs.clone()
            },
            StepInputs {
                args: BTreeMap::from([("V".into(), "2".into())]),
                ..inputs.clone()
            },
            StepInputs {
                env: &other_env,
                ..inputs.clone()
            },
            StepInputs {
                files: Some("abc"),
                ..inputs.clone()
            },
        ] {
            assert_ne!(k, base.step(&changed), "{changed:?}");
        }
        assert_ne!(k, CacheKey::base(None).step(&inputs), "another parent");
        // Length prefixes: moving a byte from one field to the next changes the key.
        let a = StepInputs {
            args: BTreeMap::from([("AB".into(), "C".into())]),
            ..inputs.clone()
        };
        let b = StepInputs {
            args: BTreeMap::from([("A".into(), "BC".into())]),
            ..inputs.clone()
        };
        assert_ne!(base.step(&a), base.step(&b));
    }
}
