//! What a run of an image executes: the image config's defaults with the user's flags on
//! top, by `docker run`'s rules.

use guest_agent::RunSpec;
use serde::{Deserialize, Serialize};

use super::oci::config::RunDefaults;

/// Docker's PATH for images whose config has none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A run that cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("no command: the image has no Entrypoint or Cmd, and none was given")]
    NoCommand,
    #[error("bad environment variable {0:?}: expected NAME=VALUE with a non-empty NAME")]
    BadEnv(String),
    #[error("working dir {0:?} must be an absolute path")]
    RelativeWorkdir(String),
}

/// What the user asked for on top of the image (`--entrypoint`, the command, `-e`, `-w`, `-u`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOverrides {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

fn env_name(kv: &str) -> Option<&str> {
    kv.split_once('=').map(|(k, _)| k).filter(|k| !k.is_empty())
}

/// Merges `o` onto the image's defaults: `--entrypoint` replaces the Entrypoint and drops
/// the image's Cmd; a command replaces Cmd; `-e NAME=…` replaces the image's NAME or adds
/// it (a bare `-e NAME` is refused: there is no host environment to copy from here);
/// PATH is added when neither sets it. The result is the process part of the agent's run
/// spec (argv, env, working dir, user); the caller fills in the rest.
pub fn resolve(d: &RunDefaults, o: &RunOverrides) -> Result<RunSpec, RunError> {
    let (entrypoint, image_cmd) = match &o.entrypoint {
        Some(e) => (e.clone(), Vec::new()),
        None => (
            d.entrypoint.clone().unwrap_or_default(),
            d.cmd.clone().unwrap_or_default(),
        ),
    };
    let mut argv = entrypoint;
    argv.extend(o.cmd.clone().unwrap_or(image_cmd));
    if argv.is_empty() || argv[0].is_empty() {
        return Err(RunError::NoCommand);
    }
    let mut env: Vec<String> = d.env.clone().unwrap_or_default();
    for kv in &o.env {
        let name = env_name(kv).ok_or_else(|| RunError::BadEnv(kv.clone()))?;
        env.retain(|e| env_name(e) != Some(name));
        env.push(kv.clone());
    }
    if !env.iter().any(|e| env_name(e) == Some("PATH")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let working_dir = o
        .working_dir
        .clone()
        .or_else(|| d.working_dir.clone())
        .filter(|w| !w.is_empty());
    let working_dir = working_dir.unwrap_or_else(|| "/".to_string());
    if !working_dir.starts_with('/') {
        return Err(RunError::RelativeWorkdir(working_dir));
    }
    let user = o
        .user
        .clone()
        .or_else(|| d.user.clone())
        .filter(|u| !u.is_empty());
    Ok(RunSpec {
        argv,
        env,
        working_dir,
        user: user.unwrap_or_else(|| "0".to_string()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> RunDefaults {
        RunDefaults {
            entrypoint: Some(s(&["/init", "--"])),
            cmd: Some(s(&["serve"])),
            env: Some(s(&["PATH=/app/bin:/bin", "MODE=prod", "EMPTY="])),
            working_dir: Some("/app".into()),
            user: Some("app".into()),
        }
    }

    #[test]
    fn image_defaults_apply_when_nothing_is_overridden() {
        let r = resolve(&image(), &RunOverrides::default()).unwrap();
        assert_eq!(r.argv, ["/init", "--", "serve"]);
        assert_eq!(r.env, ["PATH=/app/bin:/bin", "MODE=prod", "EMPTY="]);
        assert_eq!((r.working_dir.as_str(), r.user.as_str()), ("/app", "app"));
    }

    #[test]
    fn flags_override_like_docker_run() {
        let o = RunOverrides {
            cmd: Some(s(&["migrate"])),
            env: s(&["MODE=test", "NEW=1"]),
            working_dir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            ..Default::default()
        };
        let r = resolve(&image(), &o).unwrap();
        assert_eq!(r.argv, ["/init", "--", "migrate"]);
        assert_eq!(
            r.env,
            ["PATH=/app/bin:/bin", "EMPTY=", "MODE=test", "NEW=1"]
        );
        assert_eq!(
            (r.working_dir.as_str(), r.user.as_str()),
            ("/tmp", "1000:1000")
        );
        let o = RunOverrides {
            entrypoint: Some(s(&["sh"])),
            ..Default::default()
        };
        assert_eq!(
            resolve(&image(), &o).unwrap().argv,
            ["sh"],
            "--entrypoint drops the image's Cmd"
        );
    }

    #[test]
    fn bare_images_get_defaults_and_bad_input_is_refused() {
        let bare = RunDefaults::default();
        assert_eq!(
            resolve(&bare, &RunOverrides::default()),
            Err(RunError::NoCommand)
        );
        let o = RunOverrides {
            cmd: Some(s(&["true"])),
            ..Default::default()
        };
        let r = resolve(&bare, &o).unwrap();
        assert_eq!(
            (r.env[0].as_str(), r.working_dir.as_str(), r.user.as_str()),
            (DEFAULT_PATH, "/", "0")
        );
        let bad_env = RunOverrides {
            env: s(&["=x"]),
            ..o.clone()
        };
        assert!(matches!(resolve(&bare, &bad_env), Err(RunError::BadEnv(_))));
        let bare_name = RunOverrides {
            env: s(&["HOME"]),
            ..o.clone()
        };
        assert!(matches!(
            resolve(&bare, &bare_name),
            Err(RunError::BadEnv(_))
        ));
        let rel = RunOverrides {
            working_dir: Some("app".into()),
            ..o
        };
        assert_eq!(
            resolve(&bare, &rel),
            Err(RunError::RelativeWorkdir("app".into()))
        );
    }
}
