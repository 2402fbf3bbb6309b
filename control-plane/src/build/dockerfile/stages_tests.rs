use super::*;
use crate::build::dockerfile::{parse, Command};

fn s(v: &str) -> String {
    v.to_string()
}

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
}

fn plan_of(src: &str, build: &[(&str, &str)]) -> Result<Plan, DockerfileError> {
    plan(&parse(src).unwrap(), &args(build))
}

fn steps_of(src: &str, build: &[(&str, &str)], stage: usize, base: &[(&str, &str)]) -> Vec<Step> {
    let base: Vec<(String, String)> = base.iter().map(|(k, v)| (s(k), s(v))).collect();
    plan_of(src, build)
        .unwrap()
        .steps(stage, &base)
        .unwrap()
        .steps
}

#[test]
fn meta_args_expand_from_lines_only() {
    let src = "ARG TAG=3.20\nARG IMG=alpine\nFROM $IMG:${TAG}\nRUN echo\nWORKDIR /$TAG\n";
    let p = plan_of(src, &[]).unwrap();
    assert_eq!(p.stages[0].base, Base::Image(s("alpine:3.20")));
    assert_eq!(
        p.meta_args,
        [(s("TAG"), Some(s("3.20"))), (s("IMG"), Some(s("alpine")))]
    );
    let steps = p.steps(0, &[]).unwrap().steps;
    assert_eq!(
        steps[1].instruction,
        Instruction::Workdir(s("/")),
        "meta args are not visible in stages"
    );

    let p = plan_of(src, &[("TAG", "edge")]).unwrap();
    assert_eq!(p.stages[0].base, Base::Image(s("alpine:edge")));
    assert!(p.unused_build_args.is_empty());
}

#[test]
fn meta_args_see_earlier_meta_args_and_platform_args() {
    let src = "ARG A=x B=${A}y\nFROM img:$B-$TARGETARCH\n";
    let p = plan_of(src, &[]).unwrap();
    assert_eq!(p.stages[0].base, Base::Image(s("img:xy-amd64")));
    let p = plan_of(src, &[("A", "q")]).unwrap();
    assert_eq!(p.stages[0].base, Base::Image(s("img:qy-amd64")));
}

#[test]
fn only_arg_before_from() {
    let e = plan_of("ARG A\nRUN x\nFROM a\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: RUN before the first FROM (only ARG may come first)"
    );
    assert_eq!(
        plan_of("ARG A\n", &[]).unwrap_err(),
        DockerfileError::NoFrom
    );
    assert_eq!(
        plan_of("# nothing\n", &[]).unwrap_err(),
        DockerfileError::Empty
    );
}

#[test]
fn arg_scoping_inside_a_stage() {
    let src = "ARG V=meta\nARG W=mw\nFROM a\nUSER $V\nARG V\nUSER $V\nARG W=own\nUSER $W\nARG Z\nUSER [$Z]\n";
    let steps = steps_of(src, &[], 0, &[]);
    let users: Vec<_> = steps
        .iter()
        .filter_map(|st| match &st.instruction {
            Instruction::User(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(users, ["", "meta", "own", "[]"]);

    let steps = steps_of(src, &[("V", "b1"), ("W", "b2"), ("Z", "b3")], 0, &[]);
    let users: Vec<_> = steps
        .iter()
        .filter_map(|st| match &st.instruction {
            Instruction::User(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(users, ["", "b1", "b2", "[b3]"]);
}

#[test]
fn args_do_not_cross_stages() {
    let src = "FROM a AS one\nARG X=1\nFROM one\nUSER x$X\n";
    let steps = steps_of(src, &[], 1, &[]);
    assert_eq!(steps[0].instruction, Instruction::User(s("x")));
}

#[test]
fn platform_args_need_declaration_in_stage() {
    let src = "FROM a\nUSER $TARGETARCH\nARG TARGETARCH BUILDPLATFORM TARGETVARIANT\nUSER $TARGETARCH-$BUILDPLATFORM-$TARGETVARIANT\n";
    let steps = steps_of(src, &[("TARGETARCH", "arm64")], 0, &[]);
    assert_eq!(steps[0].instruction, Instruction::User(s("")));
    assert_eq!(
        steps[2].instruction,
        Instruction::User(s("amd64-linux/amd64-"))
    );
}

#[test]
fn env_overrides_arg_and_base_env_is_used() {
    let src =
        "FROM a\nARG P=fromarg\nUSER $P\nENV P=fromenv\nUSER $P\nARG HOME=argh\nWORKDIR $HOME\n";
    let steps = steps_of(src, &[], 0, &[("HOME", "/root"), ("PATH", "/bin")]);
    assert_eq!(steps[1].instruction, Instruction::User(s("fromarg")));
    assert_eq!(steps[3].instruction, Instruction::User(s("fromenv")));
    assert_eq!(steps[5].instruction, Instruction::Workdir(s("/root")));
    assert!(
        steps[5].args_seen.is_empty(),
        "HOME comes from ENV, not the ARG"
    );
    assert_eq!(steps[1].args_seen, args(&[("P", "fromarg")]));
    assert!(steps[3].args_seen.is_empty());
}

#[test]
fn env_within_one_instruction_uses_previous_scope() {
    let src = "FROM a\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n";
    let out = plan_of(src, &[]).unwrap().steps(0, &[]).unwrap();
    assert_eq!(
        out.env,
        [
            (s("abc"), s("bye")),
            (s("def"), s("hello")),
            (s("ghi"), s("bye"))
        ]
    );
    assert_eq!(
        out.steps[2].env,
        [(s("abc"), s("bye")), (s("def"), s("hello"))]
    );
    assert!(out.steps[0].env.is_empty());
}

#[test]
fn args_seen_for_cache_keys() {
    let src =
        "FROM a\nARG A=1\nRUN make\nARG B=2\nCOPY x /x\nCOPY $B /y\nRUN make\nARG C\nRUN make\n";
    let steps = steps_of(src, &[], 0, &[]);
    assert_eq!(steps[1].args_seen, args(&[("A", "1")]), "RUN sees A");
    assert!(
        steps[3].args_seen.is_empty(),
        "COPY without variables sees nothing"
    );
    assert_eq!(steps[4].args_seen, args(&[("B", "2")]));
    assert_eq!(steps[5].args_seen, args(&[("A", "1"), ("B", "2")]));
    assert_eq!(
        steps[7].args_seen,
        args(&[("A", "1"), ("B", "2")]),
        "unset C is not seen"
    );
    let changed = steps_of(src, &[("B", "9")], 0, &[]);
    assert_eq!(
        changed[1].args_seen, steps[1].args_seen,
        "before B's first use: unchanged"
    );
    assert_ne!(changed[4].args_seen, steps[4].args_seen);
    assert_ne!(changed[5].args_seen, steps[5].args_seen);
    assert_eq!(
        steps[1].instruction,
        Instruction::Run {
            command: Command::Shell(s("make"))
        }
    );
}

#[test]
fn proxy_args_reach_run_without_declaration() {
    let src = "FROM a\nRUN curl x\nUSER $HTTP_PROXY\nARG NO_PROXY\nRUN curl y\n";
    let build = [("HTTP_PROXY", "http://p:3128"), ("NO_PROXY", "local")];
    let p = plan_of(src, &build).unwrap();
    assert!(
        p.unused_build_args.is_empty(),
        "proxy args are never reported"
    );
    let steps = p.steps(0, &[]).unwrap().steps;
    assert_eq!(
        steps[0].proxy_env,
        [
            (s("HTTP_PROXY"), s("http://p:3128")),
            (s("NO_PROXY"), s("local"))
        ]
    );
    assert!(steps[0].args_seen.is_empty());
    assert_eq!(steps[1].instruction, Instruction::User(s("")));
    assert_eq!(steps[3].proxy_env, [(s("HTTP_PROXY"), s("http://p:3128"))]);
    assert_eq!(steps[3].args_seen, args(&[("NO_PROXY", "local")]));
}

#[test]
fn unconsumed_build_args_are_listed() {
    let src = "ARG M\nFROM a\nARG S\nFROM b\n";
    let p = plan_of(src, &[("M", "1"), ("S", "2"), ("X", "3"), ("A", "4")]).unwrap();
    assert_eq!(p.unused_build_args, [s("A"), s("X")]);
}

#[test]
fn platform_checks() {
    assert!(plan_of("FROM --platform=linux/amd64 a\n", &[]).is_ok());
    assert!(plan_of("FROM --platform=$BUILDPLATFORM a\n", &[]).is_ok());
    assert!(
        plan_of("FROM --platform=$UNSET a\n", &[]).unwrap().stages[0]
            .platform
            .is_none()
    );
    let e = plan_of("ARG P=linux/arm64\nFROM --platform=$P a\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: platform \"linux/arm64\" is not supported, only linux/amd64"
    );
}

const MULTI: &str = "\
FROM golang AS Build
RUN go build
FROM node AS web
RUN npm ci
FROM build AS test
RUN go test
FROM alpine AS final
COPY --from=BUILD /app /app
COPY --from=1 /dist /www
COPY --from=nginx:1 /etc/nginx /etc/nginx
";

#[test]
fn stage_dependencies_and_lookup() {
    let p = plan_of(MULTI, &[]).unwrap();
    assert_eq!(p.stages.len(), 4);
    assert_eq!(p.stages[2].base, Base::Stage(0));
    assert_eq!(p.stage_by_name("build").map(|st| st.index), Some(0));
    assert_eq!(p.stage_by_name("WEB").map(|st| st.index), Some(1));
    let fin = &p.stages[3];
    assert_eq!(fin.depends_on, BTreeSet::from([0, 1]));
    assert_eq!(fin.copy_from.get(&0), Some(&Base::Stage(0)));
    assert_eq!(fin.copy_from.get(&1), Some(&Base::Stage(1)));
    assert_eq!(fin.copy_from.get(&2), Some(&Base::Image(s("nginx:1"))));
    let steps = p.steps(3, &[]).unwrap().steps;
    assert_eq!(steps[2].copy_from, Some(Base::Image(s("nginx:1"))));
    assert_eq!(p.stages[0].base, Base::Image(s("golang")));
}

#[test]
fn target_selection_and_order() {
    let p = plan_of(MULTI, &[]).unwrap();
    assert_eq!(p.target(None).unwrap(), 3);
    assert_eq!(p.build_order(3).unwrap(), [0, 1, 3]);
    assert_eq!(p.build_waves(3).unwrap(), [vec![0, 1], vec![3]]);
    let t = p.target(Some("TEST")).unwrap();
    assert_eq!(t, 2);
    assert_eq!(p.build_order(t).unwrap(), [0, 2]);
    assert_eq!(p.build_waves(t).unwrap(), [vec![0], vec![2]]);
    assert_eq!(p.build_order(1).unwrap(), [1]);
    assert_eq!(
        p.target(Some("x")).unwrap_err().to_string(),
        "target stage \"x\" could not be found"
    );
    assert_eq!(
        p.build_order(9).unwrap_err(),
        DockerfileError::NoSuchStage(9)
    );
}

#[test]
fn copy_from_with_arg_expansion() {
    let src = "FROM a AS base\nFROM b\nARG SRC=base\nCOPY --from=$SRC /x /x\n";
    let p = plan_of(src, &[]).unwrap();
    assert_eq!(p.stages[1].depends_on, BTreeSet::from([0]));
    let p = plan_of(src, &[("SRC", "busybox")]).unwrap();
    assert!(p.stages[1].depends_on.is_empty());
    assert_eq!(
        p.stages[1].copy_from.get(&1),
        Some(&Base::Image(s("busybox")))
    );
}

#[test]
fn forward_and_self_references_are_errors() {
    let e = plan_of("FROM later AS first\nFROM a AS later\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:1: \"later\" refers to this stage or a later one"
    );
    let e = plan_of("FROM a AS me\nCOPY --from=me /x /y\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: \"me\" refers to this stage or a later one"
    );
    let e = plan_of("FROM a\nCOPY --from=1 /x /y\nFROM b\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:2: \"1\" refers to this stage or a later one"
    );
    let e = plan_of("FROM a\nCOPY --from=0 /x /y\n", &[]).unwrap_err();
    assert_eq!(e.line(), Some(2));
    let p = plan_of("FROM a\nCOPY --from=7 /x /y\n", &[]).unwrap();
    assert_eq!(p.stages[0].copy_from.get(&0), Some(&Base::Image(s("7"))));
}

#[test]
fn stage_name_rules() {
    let e = plan_of("FROM a AS x\nFROM b AS X\n", &[]).unwrap_err();
    assert_eq!(e.to_string(), "Dockerfile:2: duplicate stage name \"X\"");
    let e = plan_of("FROM a AS 1st\n", &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Dockerfile:1: invalid name for build stage: \"1st\", name can't start with a number or contain symbols"
    );
    assert!(plan_of("FROM a AS my-stage_1.x\n", &[]).is_ok());
}

#[test]
fn expansion_errors_in_steps_name_the_line() {
    let src = "FROM a\nWORKDIR ${HOME:?no home}\n";
    let p = plan_of(src, &[]).unwrap();
    assert_eq!(
        p.steps(0, &[]).unwrap_err().to_string(),
        "Dockerfile:2: HOME: no home"
    );
    let ok = p.steps(0, &[(s("HOME"), s("/root"))]).unwrap();
    assert_eq!(ok.steps[0].instruction, Instruction::Workdir(s("/root")));
    assert_eq!(
        p.steps(5, &[]).unwrap_err(),
        DockerfileError::NoSuchStage(5)
    );
}
