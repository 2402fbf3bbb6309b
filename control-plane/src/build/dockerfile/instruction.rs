//! Typed instructions: what each Dockerfile line means, its raw (unexpanded)
//! arguments, and how the builder expands them once the variable scope is
//! known.

use super::args::{has_heredoc, is_url, json_array, name_values, raw_words, Flags};
use super::error::DockerfileError;
use super::expand::{ExpandError, Expander, Lookup};
use super::parse::{logical_lines, logical_lines_bytes, Lines, LogicalLine};

/// How a RUN/CMD/ENTRYPOINT command is given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Shell form: the text is passed to the stage's shell as is.
    Shell(String),
    /// Exec (JSON array) form: argv as written.
    Exec(Vec<String>),
}

/// One Dockerfile instruction. Fields hold raw text (variables not yet
/// expanded) as parsed, or expanded text after [`InstructionLine::expand`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Instruction {
    /// `FROM [--platform=p] image [AS alias]`.
    From {
        image: String,
        platform: Option<String>,
        alias: Option<String>,
    },
    /// `RUN command` (never expanded by the builder).
    Run { command: Command },
    /// `CMD command` (never expanded).
    Cmd { command: Command },
    /// `ENTRYPOINT command` (never expanded).
    Entrypoint { command: Command },
    /// `COPY [--from=x] [--chown=u:g] [--chmod=m] src... dest` (`--link` is
    /// accepted and ignored).
    Copy {
        from: Option<String>,
        chown: Option<String>,
        chmod: Option<String>,
        sources: Vec<String>,
        dest: String,
    },
    /// `ADD [--chown] [--chmod] src... dest` from the context only (no URLs).
    Add {
        chown: Option<String>,
        chmod: Option<String>,
        sources: Vec<String>,
        dest: String,
    },
    /// `ENV k=v ...` or legacy `ENV k value`: (name, value) in order.
    Env(Vec<(String, String)>),
    /// `ARG name[=default] ...`: (name, default) in order.
    Arg(Vec<(String, Option<String>)>),
    /// `WORKDIR path`.
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `EXPOSE port[/proto] ...`: raw words; expansion may split them further.
    Expose(Vec<String>),
    /// `LABEL k=v ...`: (key, value) in order.
    Label(Vec<(String, String)>),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `VOLUME ["/a"]` or `VOLUME /a /b`.
    Volume(Vec<String>),
    /// `SHELL ["exe", "arg"]` (JSON form only; never expanded).
    Shell(Vec<String>),
    /// `MAINTAINER text` (deprecated; never expanded).
    Maintainer(String),
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstructionLine {
    /// 1-based line the instruction starts on.
    pub line: usize,
    /// The instruction as written (continuations joined, trimmed).
    pub original: String,
    /// What it means.
    pub instruction: Instruction,
}

/// A parsed Dockerfile: the escape char in force and every instruction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dockerfile {
    /// `\` or `` ` `` (from the `# escape=` directive).
    pub escape: char,
    /// Instructions in file order, ARGs before the first FROM included.
    pub instructions: Vec<InstructionLine>,
}

/// Parse Dockerfile text into typed instructions (no expansion).
pub fn parse(text: &str) -> Result<Dockerfile, DockerfileError> {
    from_lines(logical_lines(text)?)
}

/// Like [`parse`], for raw bytes (rejects invalid UTF-8 cleanly).
pub fn parse_bytes(bytes: &[u8]) -> Result<Dockerfile, DockerfileError> {
    from_lines(logical_lines_bytes(bytes)?)
}

fn from_lines(lines: Lines) -> Result<Dockerfile, DockerfileError> {
    let escape = lines.escape;
    let instructions = lines
        .lines
        .iter()
        .map(|l| parse_instruction(l, escape))
        .collect::<Result<_, _>>()?;
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

impl Instruction {
    /// The keyword in upper case (`COPY`).
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From { .. } => "FROM",
            Instruction::Run { .. } => "RUN",
            Instruction::Cmd { .. } => "CMD",
            Instruction::Entrypoint { .. } => "ENTRYPOINT",
            Instruction::Copy { .. } => "COPY",
            Instruction::Add { .. } => "ADD",
            Instruction::Env(_) => "ENV",
            Instruction::Arg(_) => "ARG",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::User(_) => "USER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Label(_) => "LABEL",
            Instruction::StopSignal(_) => "STOPSIGNAL",
            Instruction::Volume(_) => "VOLUME",
            Instruction::Shell(_) => "SHELL",
            Instruction::Maintainer(_) => "MAINTAINER",
        }
    }

    /// Whether the builder expands variables in this instruction (Docker:
    /// ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR,
    /// ARG; never RUN, CMD, ENTRYPOINT, SHELL, MAINTAINER).
    pub fn is_expanded(&self) -> bool {
        !matches!(
            self,
            Instruction::Run { .. }
                | Instruction::Cmd { .. }
                | Instruction::Entrypoint { .. }
                | Instruction::Shell(_)
                | Instruction::Maintainer(_)
        )
    }
}

impl InstructionLine {
    /// Progress label, e.g. `[2/6] COPY app.jar /app/ (Dockerfile:4)`.
    pub fn label(&self, step: usize, total: usize) -> String {
        format!(
            "[{step}/{total}] {} (Dockerfile:{})",
            self.original, self.line
        )
    }

    /// The instruction with variables expanded via `lookup` where Docker
    /// expands them (see [`Instruction::is_expanded`]).
    pub fn expand(&self, escape: char, lookup: Lookup<'_>) -> Result<Self, DockerfileError> {
        self.expand_with(&mut Expander::new(escape, lookup))
    }

    /// Like [`InstructionLine::expand`] with a caller's expander, which then
    /// knows the variable names used. Within one instruction every field sees
    /// the scope from before it (`ENV A=1 B=$A` does not see the new `A`).
    pub fn expand_with(&self, ex: &mut Expander<'_>) -> Result<Self, DockerfileError> {
        let line = self.line;
        let wrap = |source: ExpandError| DockerfileError::Expand { line, source };
        let mut word = |s: &str| ex.word(s).map_err(wrap);
        use Instruction as I;
        let instruction = match &self.instruction {
            I::From {
                image,
                platform,
                alias,
            } => I::From {
                image: word(image)?,
                platform: platform.as_deref().map(&mut word).transpose()?,
                alias: alias.clone(),
            },
            I::Copy {
                from,
                chown,
                chmod,
                sources,
                dest,
            } => I::Copy {
                from: from.as_deref().map(&mut word).transpose()?,
                chown: chown.as_deref().map(&mut word).transpose()?,
                chmod: chmod.as_deref().map(&mut word).transpose()?,
                sources: sources.iter().map(|s| word(s)).collect::<Result<_, _>>()?,
                dest: word(dest)?,
            },
            I::Add {
                chown,
                chmod,
                sources,
                dest,
            } => {
                let sources: Vec<String> =
                    sources.iter().map(|s| word(s)).collect::<Result<_, _>>()?;
                if sources.iter().any(|s| is_url(s)) {
                    return Err(DockerfileError::AddUrl { line });
                }
                I::Add {
                    chown: chown.as_deref().map(&mut word).transpose()?,
                    chmod: chmod.as_deref().map(&mut word).transpose()?,
                    sources,
                    dest: word(dest)?,
                }
            }
            I::Env(pairs) => I::Env(expand_pairs(pairs, "ENV", line, &mut word)?),
            I::Label(pairs) => I::Label(expand_pairs(pairs, "LABEL", line, &mut word)?),
            I::Arg(pairs) => I::Arg(
                pairs
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.as_deref().map(&mut word).transpose()?)))
                    .collect::<Result<_, DockerfileError>>()?,
            ),
            I::Workdir(s) => I::Workdir(word(s)?),
            I::User(s) => I::User(word(s)?),
            I::StopSignal(s) => I::StopSignal(word(s)?),
            I::Volume(v) => I::Volume(v.iter().map(|s| word(s)).collect::<Result<_, _>>()?),
            I::Expose(v) => {
                let mut ports = Vec::new();
                for raw in v {
                    ports.extend(ex.words(raw).map_err(wrap)?);
                }
                I::Expose(ports)
            }
            other => other.clone(),
        };
        Ok(InstructionLine {
            line,
            original: self.original.clone(),
            instruction,
        })
    }
}

fn expand_pairs(
    pairs: &[(String, String)],
    what: &str,
    line: usize,
    word: &mut impl FnMut(&str) -> Result<String, DockerfileError>,
) -> Result<Vec<(String, String)>, DockerfileError> {
    pairs
        .iter()
        .map(|(k, v)| {
            let key = word(k)?;
            if key.is_empty() {
                return Err(DockerfileError::invalid(
                    line,
                    format!("{what} names can not be blank"),
                ));
            }
            Ok((key, word(v)?))
        })
        .collect()
}

/// Parse one logical line into a typed instruction.
pub fn parse_instruction(
    l: &LogicalLine,
    escape: char,
) -> Result<InstructionLine, DockerfileError> {
    let line = l.line;
    let kw = l.keyword.to_ascii_uppercase();
    let args = l.args.as_str();
    let need = |ok: bool, message: &str| -> Result<(), DockerfileError> {
        if ok {
            Ok(())
        } else {
            Err(DockerfileError::invalid(line, format!("{kw} {message}")))
        }
    };
    if kw == "RUN" {
        if let Some(f) = l.flags.first() {
            return Err(DockerfileError::RunFlag {
                line,
                flag: f.name.clone(),
            });
        }
    }
    let mut flags = Flags::check(l, &kw)?;
    use Instruction as I;
    let instruction = match kw.as_str() {
        "FROM" => {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (image, alias) = match words.as_slice() {
                [image] => (image, None),
                [image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (image, Some(name.to_string()))
                }
                _ => {
                    return Err(DockerfileError::invalid(
                        line,
                        "FROM requires either one or three arguments",
                    ))
                }
            };
            I::From {
                image: image.to_string(),
                platform: flags.take("platform"),
                alias,
            }
        }
        "RUN" | "CMD" | "ENTRYPOINT" => {
            need(!args.is_empty(), "requires at least one argument")?;
            let command = match json_array(args) {
                Some(argv) => Command::Exec(argv),
                None => {
                    if kw == "RUN" && has_heredoc(args) {
                        return Err(DockerfileError::Heredoc { line });
                    }
                    Command::Shell(args.to_string())
                }
            };
            match kw.as_str() {
                "RUN" => I::Run { command },
                "CMD" => I::Cmd { command },
                _ => I::Entrypoint { command },
            }
        }
        "COPY" | "ADD" => {
            let mut words = match json_array(args) {
                Some(list) => list,
                None => {
                    if has_heredoc(args) {
                        return Err(DockerfileError::Heredoc { line });
                    }
                    args.split_whitespace().map(str::to_string).collect()
                }
            };
            need(
                words.len() >= 2,
                "needs at least one source and a destination",
            )?;
            let dest = words.pop().unwrap_or_default();
            let (chown, chmod) = (flags.take("chown"), flags.take("chmod"));
            if kw == "COPY" {
                I::Copy {
                    from: flags.take("from"),
                    chown,
                    chmod,
                    sources: words,
                    dest,
                }
            } else {
                if words.iter().any(|s| is_url(s)) {
                    return Err(DockerfileError::AddUrl { line });
                }
                I::Add {
                    chown,
                    chmod,
                    sources: words,
                    dest,
                }
            }
        }
        "ENV" | "LABEL" => {
            let pairs = name_values(args, escape, &kw, line)?;
            if kw == "ENV" {
                I::Env(pairs)
            } else {
                I::Label(pairs)
            }
        }
        "ARG" => {
            let words = raw_words(args, escape);
            need(!words.is_empty(), "requires at least one argument")?;
            let mut pairs = Vec::new();
            for w in words {
                let pair = match w.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (w, None),
                };
                need(!pair.0.is_empty(), "names can not be blank")?;
                pairs.push(pair);
            }
            I::Arg(pairs)
        }
        "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
            need(!args.is_empty(), "requires exactly one argument")?;
            let s = args.to_string();
            match kw.as_str() {
                "WORKDIR" => I::Workdir(s),
                "USER" => I::User(s),
                "STOPSIGNAL" => I::StopSignal(s),
                _ => I::Maintainer(s),
            }
        }
        "EXPOSE" => {
            need(!args.is_empty(), "requires at least one argument")?;
            I::Expose(args.split_whitespace().map(str::to_string).collect())
        }
        "VOLUME" => {
            need(!args.is_empty(), "requires at least one argument")?;
            let list = match json_array(args) {
                Some(list) => {
                    need(
                        list.iter().all(|v| !v.trim().is_empty()),
                        "specified can not be an empty string",
                    )?;
                    list
                }
                None => args.split_whitespace().map(str::to_string).collect(),
            };
            need(!list.is_empty(), "requires at least one argument")?;
            I::Volume(list)
        }
        "SHELL" => {
            let list = json_array(args);
            need(list.is_some(), "requires the arguments to be in JSON form")?;
            let list = list.unwrap_or_default();
            need(!list.is_empty(), "requires at least one argument")?;
            I::Shell(list)
        }
        "ONBUILD" | "HEALTHCHECK" => {
            return Err(DockerfileError::Unsupported {
                line,
                instruction: kw,
            })
        }
        _ => {
            return Err(DockerfileError::UnknownInstruction {
                line,
                word: l.keyword.clone(),
            })
        }
    };
    Ok(InstructionLine {
        line,
        original: l.text.clone(),
        instruction,
    })
}

#[cfg(test)]
#[path = "instruction_tests.rs"]
mod tests;
