use super::*;
use std::collections::HashMap;

fn one(src: &str) -> Instruction {
    let df = parse(src).unwrap();
    assert_eq!(df.instructions.len(), 1, "{src}");
    df.instructions[0].instruction.clone()
}

fn err(src: &str) -> String {
    parse(src).unwrap_err().to_string()
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn from_forms() {
    assert_eq!(
        one("FROM alpine:3.20"),
        Instruction::From {
            image: s("alpine:3.20"),
            platform: None,
            alias: None
        }
    );
    assert_eq!(
        one("from --platform=$BUILDPLATFORM golang:1.22 as Build"),
        Instruction::From {
            image: s("golang:1.22"),
            platform: Some(s("$BUILDPLATFORM")),
            alias: Some(s("Build")),
        }
    );
    assert_eq!(
        err("FROM a b"),
        "Dockerfile:1: FROM requires either one or three arguments"
    );
    assert_eq!(
        err("FROM a AT b"),
        "Dockerfile:1: FROM requires either one or three arguments"
    );
    assert_eq!(
        err("FROM"),
        "Dockerfile:1: FROM requires either one or three arguments"
    );
    assert_eq!(
        err("FROM --foo=1 a"),
        "Dockerfile:1: unknown flag --foo for FROM"
    );
    assert_eq!(
        err("FROM --platform a"),
        "Dockerfile:1: flag --platform for FROM needs a value"
    );
}

#[test]
fn run_cmd_entrypoint_json_and_shell() {
    assert_eq!(
        one("RUN [\"sh\", \"-c\", \"echo hi\"]"),
        Instruction::Run {
            command: Command::Exec(vec![s("sh"), s("-c"), s("echo hi")])
        }
    );
    assert_eq!(
        one("RUN echo $HOME && ls"),
        Instruction::Run {
            command: Command::Shell(s("echo $HOME && ls"))
        }
    );
    assert_eq!(
        one("CMD [\"nginx\", \"-g\", \"daemon off;\"]"),
        Instruction::Cmd {
            command: Command::Exec(vec![s("nginx"), s("-g"), s("daemon off;")])
        }
    );
    assert_eq!(
        one("CMD []"),
        Instruction::Cmd {
            command: Command::Exec(vec![])
        }
    );
    assert_eq!(
        one("entrypoint /bin/app --flag"),
        Instruction::Entrypoint {
            command: Command::Shell(s("/bin/app --flag"))
        }
    );
    assert_eq!(
        err("RUN"),
        "Dockerfile:1: RUN requires at least one argument"
    );
    assert_eq!(
        err("CMD"),
        "Dockerfile:1: CMD requires at least one argument"
    );
}

#[test]
fn invalid_json_falls_back_to_shell_form() {
    for text in [
        "[\"a\", 1]",
        "['a']",
        "[\"a\" \"b\"]",
        "[\"a\"] trailing",
        "[",
        "[[\"a\"]]",
    ] {
        assert_eq!(
            one(&format!("CMD {text}")),
            Instruction::Cmd {
                command: Command::Shell(s(text))
            },
            "{text}"
        );
    }
}

#[test]
fn run_flags_heredocs_and_unsupported() {
    assert_eq!(
        err("FROM a\nRUN --mount=type=cache,target=/x make"),
        "Dockerfile:2: RUN --mount is not supported"
    );
    assert_eq!(
        err("RUN --network=none make"),
        "Dockerfile:1: RUN --network is not supported"
    );
    assert_eq!(
        err("RUN --security=insecure make"),
        "Dockerfile:1: RUN --security is not supported"
    );
    assert_eq!(
        err("RUN <<EOF\necho\nEOF"),
        "Dockerfile:1: heredocs are not supported"
    );
    assert_eq!(
        err("RUN cat <<-'EOT' > /x"),
        "Dockerfile:1: heredocs are not supported"
    );
    assert_eq!(
        err("COPY <<EOF /dst\n"),
        "Dockerfile:1: heredocs are not supported"
    );
    assert_eq!(
        one("RUN cat <<< here"),
        Instruction::Run {
            command: Command::Shell(s("cat <<< here"))
        }
    );
    assert_eq!(
        err("FROM a\n\nHEALTHCHECK CMD true"),
        "Dockerfile:3: HEALTHCHECK is not supported"
    );
    assert_eq!(
        err("onbuild RUN x"),
        "Dockerfile:1: ONBUILD is not supported"
    );
    assert_eq!(
        err("FROM a\nRUN x\nFROMM b"),
        "Dockerfile:3: unknown instruction \"FROMM\""
    );
    assert_eq!(
        err("cOpYy a b"),
        "Dockerfile:1: unknown instruction \"cOpYy\""
    );
}

#[test]
fn copy_forms() {
    assert_eq!(
        one("COPY --from=build --chown=app:app --chmod=0755 --link a b /dst/"),
        Instruction::Copy {
            from: Some(s("build")),
            chown: Some(s("app:app")),
            chmod: Some(s("0755")),
            sources: vec![s("a"), s("b")],
            dest: s("/dst/"),
        }
    );
    assert_eq!(
        one("COPY [\"a b\", \"c\", \"/dst/\"]"),
        Instruction::Copy {
            from: None,
            chown: None,
            chmod: None,
            sources: vec![s("a b"), s("c")],
            dest: s("/dst/"),
        }
    );
    let need = "Dockerfile:1: COPY needs at least one source and a destination";
    assert_eq!(err("COPY"), need);
    assert_eq!(err("COPY onlyone"), need);
    assert_eq!(err("COPY [\"/dst\"]"), need);
    assert_eq!(
        err("COPY --foo a b"),
        "Dockerfile:1: unknown flag --foo for COPY"
    );
    assert_eq!(
        err("COPY --from a b"),
        "Dockerfile:1: flag --from for COPY needs a value"
    );
    assert_eq!(
        err("COPY --link=maybe a b"),
        "Dockerfile:1: flag --link for COPY takes no value"
    );
    assert_eq!(
        err("COPY --from=a --from=b x y"),
        "Dockerfile:1: duplicate flag --from for COPY"
    );
}

#[test]
fn add_forms() {
    assert_eq!(
        one("ADD --chown=1:1 app.tar.gz /opt/"),
        Instruction::Add {
            chown: Some(s("1:1")),
            chmod: None,
            sources: vec![s("app.tar.gz")],
            dest: s("/opt/"),
        }
    );
    for src in ["https://x.io/a.tgz", "HTTP://x/a", "git@github.com:a/b.git"] {
        assert_eq!(
            err(&format!("ADD {src} /x")),
            "Dockerfile:1: ADD of URLs is not supported"
        );
    }
    assert_eq!(
        err("ADD --from=x a b"),
        "Dockerfile:1: unknown flag --from for ADD"
    );
    assert_eq!(
        err("ADD a"),
        "Dockerfile:1: ADD needs at least one source and a destination"
    );
}

#[test]
fn env_and_label_forms() {
    assert_eq!(
        one("ENV K=V K2=\"v 2\" K3=a\\ b"),
        Instruction::Env(vec![
            (s("K"), s("V")),
            (s("K2"), s("\"v 2\"")),
            (s("K3"), s("a\\ b")),
        ])
    );
    assert_eq!(
        one("ENV K value with  spaces"),
        Instruction::Env(vec![(s("K"), s("value with  spaces"))])
    );
    assert_eq!(
        one("LABEL \"com.x\"=\"a b\" v=1"),
        Instruction::Label(vec![(s("\"com.x\""), s("\"a b\"")), (s("v"), s("1"))])
    );
    assert_eq!(
        one("LABEL maintainer me"),
        Instruction::Label(vec![(s("maintainer"), s("me"))])
    );
    assert_eq!(
        err("ENV"),
        "Dockerfile:1: ENV requires at least one argument"
    );
    assert_eq!(err("ENV K"), "Dockerfile:1: ENV must have two arguments");
    assert_eq!(err("ENV =v"), "Dockerfile:1: ENV names can not be blank");
    assert_eq!(
        err("ENV A=1 B"),
        "Dockerfile:1: ENV expects name=value pairs, found \"B\""
    );
}

#[test]
fn arg_forms() {
    assert_eq!(
        one("ARG A B=2 C=\"x y\" D="),
        Instruction::Arg(vec![
            (s("A"), None),
            (s("B"), Some(s("2"))),
            (s("C"), Some(s("\"x y\""))),
            (s("D"), Some(s(""))),
        ])
    );
    assert_eq!(
        err("ARG"),
        "Dockerfile:1: ARG requires at least one argument"
    );
    assert_eq!(err("ARG =1"), "Dockerfile:1: ARG names can not be blank");
}

#[test]
fn single_value_forms() {
    assert_eq!(one("WORKDIR /app dir"), Instruction::Workdir(s("/app dir")));
    assert_eq!(one("USER app:app"), Instruction::User(s("app:app")));
    assert_eq!(
        one("STOPSIGNAL SIGTERM"),
        Instruction::StopSignal(s("SIGTERM"))
    );
    assert_eq!(
        one("MAINTAINER Jo <jo@x>"),
        Instruction::Maintainer(s("Jo <jo@x>"))
    );
    assert_eq!(
        err("WORKDIR"),
        "Dockerfile:1: WORKDIR requires exactly one argument"
    );
    assert_eq!(
        err("USER --x=1 a"),
        "Dockerfile:1: unknown flag --x for USER"
    );
}

#[test]
fn expose_volume_shell_forms() {
    assert_eq!(
        one("EXPOSE 80 443/tcp"),
        Instruction::Expose(vec![s("80"), s("443/tcp")])
    );
    assert_eq!(
        one("VOLUME [\"/a\", \"/b c\"]"),
        Instruction::Volume(vec![s("/a"), s("/b c")])
    );
    assert_eq!(
        one("VOLUME /a /b"),
        Instruction::Volume(vec![s("/a"), s("/b")])
    );
    assert_eq!(
        one("SHELL [\"bash\", \"-c\"]"),
        Instruction::Shell(vec![s("bash"), s("-c")])
    );
    assert_eq!(
        err("EXPOSE"),
        "Dockerfile:1: EXPOSE requires at least one argument"
    );
    assert_eq!(
        err("VOLUME [\"\"]"),
        "Dockerfile:1: VOLUME specified can not be an empty string"
    );
    assert_eq!(
        err("SHELL bash -c"),
        "Dockerfile:1: SHELL requires the arguments to be in JSON form"
    );
    assert_eq!(
        err("SHELL []"),
        "Dockerfile:1: SHELL requires at least one argument"
    );
}

#[test]
fn keeps_line_and_original_text() {
    let df = parse("FROM a\n\n# c\nCOPY   app.jar \\\n  /app/\n").unwrap();
    let il = &df.instructions[1];
    assert_eq!(il.line, 4);
    assert_eq!(il.original, "COPY   app.jar   /app/");
    assert_eq!(
        il.label(2, 6),
        "[2/6] COPY   app.jar   /app/ (Dockerfile:4)"
    );
}

fn expand_all(src: &str, vars: &[(&str, &str)]) -> Instruction {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let df = parse(src).unwrap();
    df.instructions[0]
        .expand(df.escape, &|n| map.get(n).cloned())
        .unwrap()
        .instruction
}

#[test]
fn expansion_applies_where_docker_expands() {
    let v = [("V", "x y"), ("P", "8080"), ("D", "/data")];
    assert_eq!(
        expand_all(
            "COPY --from=$P --chown=$P [\"$D/a\", \"${D}b\", \"/d/$P\"]",
            &v
        ),
        Instruction::Copy {
            from: Some(s("8080")),
            chown: Some(s("8080")),
            chmod: None,
            sources: vec![s("/data/a"), s("/datab")],
            dest: s("/d/8080"),
        }
    );
    assert_eq!(
        expand_all("ENV A=$V B=\"$D q\" $P=1", &v),
        Instruction::Env(vec![
            (s("A"), s("x y")),
            (s("B"), s("/data q")),
            (s("8080"), s("1"))
        ])
    );
    assert_eq!(
        expand_all("ENV L '$D' and $D", &v),
        Instruction::Env(vec![(s("L"), s("$D and /data"))])
    );
    assert_eq!(
        expand_all("EXPOSE $P $V", &v),
        Instruction::Expose(vec![s("8080"), s("x"), s("y")])
    );
    assert_eq!(
        expand_all("VOLUME $D \"$V\"", &v),
        Instruction::Volume(vec![s("/data"), s("x y")])
    );
    assert_eq!(
        expand_all("WORKDIR \"$D/a b\"", &v),
        Instruction::Workdir(s("/data/a b"))
    );
    assert_eq!(
        expand_all("USER ${U:-app}", &v),
        Instruction::User(s("app"))
    );
    assert_eq!(
        expand_all("STOPSIGNAL $S", &v),
        Instruction::StopSignal(s(""))
    );
    assert_eq!(
        expand_all("LABEL \"k $P\"=$V", &v),
        Instruction::Label(vec![(s("k 8080"), s("x y"))])
    );
    assert_eq!(
        expand_all("ARG A=$D B", &v),
        Instruction::Arg(vec![(s("A"), Some(s("/data"))), (s("B"), None)])
    );
    assert_eq!(
        expand_all("FROM --platform=$P img:$P AS $P", &v),
        Instruction::From {
            image: s("img:8080"),
            platform: Some(s("8080")),
            alias: Some(s("$P"))
        }
    );
    for raw in [
        "RUN echo $D",
        "CMD echo $D",
        "ENTRYPOINT [\"$D\"]",
        "SHELL [\"$D\"]",
        "MAINTAINER $D",
    ] {
        let parsed = parse(raw).unwrap().instructions[0].instruction.clone();
        assert!(!parsed.is_expanded(), "{raw}");
        assert_eq!(expand_all(raw, &v), parsed, "{raw} must stay as written");
    }
}

#[test]
fn expansion_errors_name_the_line() {
    let df = parse("FROM a\nWORKDIR ${X:?need X}\nADD $U /x\nENV $E=1").unwrap();
    let u = |n: &str| (n == "U").then(|| s("https://evil/x"));
    let e = df.instructions[1].expand('\\', &u).unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:2: X: need X");
    let e = df.instructions[2].expand('\\', &u).unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:3: ADD of URLs is not supported");
    let e = df.instructions[3].expand('\\', &u).unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:4: ENV names can not be blank");
    let e = parse("USER \"abc").unwrap().instructions[0]
        .expand('\\', &u)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:1: unterminated double-quoted string"
    );
    assert_eq!(e.line(), Some(1));
}

#[test]
fn backtick_escape_in_words() {
    let df = parse("# escape=`\nENV P=C:\\x\\y Q=a` b\n").unwrap();
    assert_eq!(
        df.instructions[0]
            .expand(df.escape, &|_| None)
            .unwrap()
            .instruction,
        Instruction::Env(vec![(s("P"), s("C:\\x\\y")), (s("Q"), s("a b"))])
    );
}
