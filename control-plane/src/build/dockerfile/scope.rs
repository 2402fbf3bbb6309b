//! Variable scope of a stage: platform and proxy args, ARG values and
//! build-arg overrides, ENV.

use std::collections::BTreeMap;

use super::instruction::Instruction;

/// Automatic platform args and their (fixed) values.
pub const PLATFORM_ARGS: [(&str, &str); 8] = [
    ("BUILDPLATFORM", "linux/amd64"),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
    ("TARGETPLATFORM", "linux/amd64"),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
];

/// Build args usable without an `ARG` line (passed to RUN only).
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The only platform Skiff builds for.
pub const SUPPORTED_PLATFORM: &str = "linux/amd64";
pub(super) fn meta_lookup(meta: &[(String, Option<String>)], name: &str) -> Option<String> {
    match meta.iter().rev().find(|(n, _)| n == name) {
        Some((_, v)) => v.clone(),
        None => platform_value(name).map(str::to_string),
    }
}

pub(super) fn platform_value(name: &str) -> Option<&'static str> {
    PLATFORM_ARGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// The value an `ARG name[=default]` takes (default already expanded).
pub(super) fn arg_value(
    name: &str,
    default: Option<String>,
    build_args: &BTreeMap<String, String>,
    meta: &[(String, Option<String>)],
) -> Option<String> {
    if platform_value(name).is_some() {
        return default.or_else(|| meta_lookup(meta, name));
    }
    if let Some(v) = build_args.get(name) {
        return Some(v.clone());
    }
    default.or_else(|| {
        meta.iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    })
}

/// Variables in force at one point of a stage.
pub(super) struct Scope {
    /// Declared ARGs and their values (None: declared, unset).
    pub(super) args: BTreeMap<String, Option<String>>,
    /// ENV in order (base image's first).
    pub(super) env: Vec<(String, String)>,
}

impl Scope {
    pub(super) fn new(base_env: &[(String, String)]) -> Self {
        let mut scope = Scope {
            args: BTreeMap::new(),
            env: Vec::new(),
        };
        for (k, v) in base_env {
            scope.set_env(k, v);
        }
        scope
    }

    /// ENV first, then ARG.
    pub(super) fn lookup(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.env.iter().find(|(k, _)| k == name) {
            return Some(v.clone());
        }
        self.args.get(name).cloned().flatten()
    }

    pub(super) fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.env.push((key.to_string(), value.to_string())),
        }
    }

    /// Apply an expanded ARG or ENV instruction.
    pub(super) fn apply(
        &mut self,
        instruction: &Instruction,
        build_args: &BTreeMap<String, String>,
        meta: &[(String, Option<String>)],
    ) {
        match instruction {
            Instruction::Arg(pairs) => {
                for (name, default) in pairs {
                    let value = arg_value(name, default.clone(), build_args, meta);
                    self.args.insert(name.clone(), value);
                }
            }
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    self.set_env(k, v);
                }
            }
            _ => {}
        }
    }

    /// Set ARGs, for RUN's environment and cache key.
    pub(super) fn set_args(&self) -> BTreeMap<String, String> {
        self.args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect()
    }
}
