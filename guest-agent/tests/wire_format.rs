//! Freezes the wire format: each message below must encode to exactly these bytes. A change
//! here is a protocol change — bump PROTOCOL_VERSION and update both sides together.

use guest_agent::*;

fn wire(f: &Frame) -> String {
    let b = f.encode().unwrap();
    let (head, body) = b.split_at(5);
    let head: Vec<String> = head.iter().map(|x| format!("{x:02x}")).collect();
    format!("{} {}", head.join(""), String::from_utf8_lossy(body))
}

#[test]
fn protocol_version_is_8() {
    assert_eq!(PROTOCOL_VERSION, 8);
    assert_eq!(STDIN_WINDOW, 1 << 20);
    assert_eq!(HOST_PORT, 1024);
}

#[test]
fn control_messages_encode_as_frozen() {
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::Hello {
                protocol_version: 1,
                agent_version: "0.1.0".into(),
                timings: BootTimings {
                    agent_start_ms: 1,
                    setup_done_ms: 2,
                    connected_ms: 3,
                },
                prepared_image: None,
            },
            r#"8000000000 {"type":"hello","protocol_version":1,"agent_version":"0.1.0","timings":{"agent_start_ms":1,"setup_done_ms":2,"connected_ms":3}}"#,
        ),
        (
            Message::Run(Box::new(RunSpec {
                argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["A=b".into()],
                working_dir: "/".into(),
                user: "1000:1000".into(),
                image_disk: "/dev/vda".into(),
                upper_size_mib: 64,
                hostname: "task".into(),
                stdin: false,
                wall_clock_ms: 1_700_000_000_123,
                entropy: vec![1, 255],
                image_id: String::new(),
                network: None,
                record_opens: false,
                usage_interval_ms: 0,
                rlimits: Vec::new(),
                export_upper: false,
                scratch_disk: String::new(),
            })),
            r#"db00000000 {"type":"run","argv":["sh","-c","echo hi"],"env":["A=b"],"working_dir":"/","user":"1000:1000","image_disk":"/dev/vda","upper_size_mib":64,"hostname":"task","stdin":false,"wall_clock_ms":1700000000123,"entropy":[1,255]}"#,
        ),
        (
            Message::Run(Box::new(RunSpec {
                argv: vec!["sleep".into(), "1".into()],
                working_dir: "/".into(),
                user: "0".into(),
                image_disk: "/dev/vda".into(),
                upper_size_mib: 16,
                hostname: "c".into(),
                rlimits: vec![Rlimit {
                    name: "RLIMIT_NOFILE".into(),
                    soft: 1024,
                    hard: 4096,
                }],
                ..Default::default()
            })),
            r#"ef00000000 {"type":"run","argv":["sleep","1"],"env":[],"working_dir":"/","user":"0","image_disk":"/dev/vda","upper_size_mib":16,"hostname":"c","stdin":false,"wall_clock_ms":0,"entropy":[],"rlimits":[{"name":"RLIMIT_NOFILE","soft":1024,"hard":4096}]}"#,
        ),
        (
            Message::Run(Box::new(RunSpec {
                argv: vec!["make".into()],
                working_dir: "/src".into(),
                image_disk: "/dev/vda".into(),
                upper_size_mib: 512,
                scratch_disk: "/dev/vdb".into(),
                export_upper: true,
                ..Default::default()
            })),
            r#"dd00000000 {"type":"run","argv":["make"],"env":[],"working_dir":"/src","user":"","image_disk":"/dev/vda","upper_size_mib":512,"scratch_disk":"/dev/vdb","hostname":"","stdin":false,"wall_clock_ms":0,"entropy":[],"export_upper":true}"#,
        ),
        (
            Message::Hello {
                protocol_version: 4,
                agent_version: "0.1.0".into(),
                timings: BootTimings::default(),
                prepared_image: Some("0011223344556677".into()),
            },
            r#"a400000000 {"type":"hello","protocol_version":4,"agent_version":"0.1.0","timings":{"agent_start_ms":0,"setup_done_ms":0,"connected_ms":0},"prepared_image":"0011223344556677"}"#,
        ),
        (
            Message::Prepare(PrepareSpec {
                image_id: "0011223344556677".into(),
                image_disk: "/dev/vda".into(),
                upper_size_mib: 32,
                warm_programs: vec!["sh".into()],
                path: "/bin".into(),
                warm_files: Vec::new(),
            }),
            r#"8200000000 {"type":"prepare","image_id":"0011223344556677","image_disk":"/dev/vda","upper_size_mib":32,"warm_programs":["sh"],"path":"/bin"}"#,
        ),
        (
            Message::Prepare(PrepareSpec {
                image_id: "k".into(),
                image_disk: "/dev/vda".into(),
                upper_size_mib: 32,
                warm_programs: vec!["python3".into()],
                path: "/usr/bin".into(),
                warm_files: vec!["/usr/lib/libz.so.1".into()],
            }),
            r#"a000000000 {"type":"prepare","image_id":"k","image_disk":"/dev/vda","upper_size_mib":32,"warm_programs":["python3"],"path":"/usr/bin","warm_files":["/usr/lib/libz.so.1"]}"#,
        ),
        (
            Message::Opened {
                paths: vec!["/usr/bin/python3".into(), "/etc/passwd".into()],
            },
            r#"3d00000000 {"type":"opened","paths":["/usr/bin/python3","/etc/passwd"]}"#,
        ),
        (
            Message::Exec {
                id: 7,
                argv: vec!["test".into(), "-f".into(), "/ok".into()],
                timeout_ms: 5000,
            },
            r#"4400000000 {"type":"exec","id":7,"argv":["test","-f","/ok"],"timeout_ms":5000}"#,
        ),
        (
            Message::ExecExited {
                id: 7,
                exit_code: 1,
                timed_out: false,
                output: "no\n".into(),
            },
            r#"4e00000000 {"type":"exec_exited","id":7,"exit_code":1,"timed_out":false,"output":"no\n"}"#,
        ),
        (
            Message::Usage {
                cpu_usec: 1500000,
                at_ms: 30000,
            },
            r#"3200000000 {"type":"usage","cpu_usec":1500000,"at_ms":30000}"#,
        ),
        (
            Message::MountScratch {
                device: "/dev/vdb".into(),
            },
            r#"2d00000000 {"type":"mount_scratch","device":"/dev/vdb"}"#,
        ),
        (
            Message::Prepared {
                prepare_ms: 1200,
                warmed_bytes: 4096,
            },
            r#"3a00000000 {"type":"prepared","prepare_ms":1200,"warmed_bytes":4096}"#,
        ),
        (
            Message::Started {
                pid: 42,
                spec_ms: 5,
                prepared_ms: 7,
                exec_ms: 9,
            },
            r#"4400000000 {"type":"started","pid":42,"spec_ms":5,"prepared_ms":7,"exec_ms":9}"#,
        ),
        (
            Message::Signal { signal: 15 },
            r#"1e00000000 {"type":"signal","signal":15}"#,
        ),
        (
            Message::StdinConsumed { bytes: 65536 },
            r#"2800000000 {"type":"stdin_consumed","bytes":65536}"#,
        ),
        (
            Message::Failed {
                kind: FailureKind::CommandNotFound,
                message: "nope: not found".into(),
                exit_code: 127,
            },
            r#"5900000000 {"type":"failed","kind":"command_not_found","message":"nope: not found","exit_code":127}"#,
        ),
        (
            Message::Exited(ExitReport {
                exit_code: 137,
                signal: Some(9),
                cpu_user_ms: 1,
                cpu_system_ms: 2,
                max_rss_kib: 3,
                exited_ms: 4,
                oom_killed: true,
            }),
            r#"7f00000000 {"type":"exited","exit_code":137,"signal":9,"cpu_user_ms":1,"cpu_system_ms":2,"max_rss_kib":3,"exited_ms":4,"oom_killed":true}"#,
        ),
    ];
    for (m, want) in cases {
        assert_eq!(wire(&Frame::Control(m.clone())), want, "{m:?}");
        // And back.
        let bytes = Frame::Control(m.clone()).encode().unwrap();
        let got = Frame::decode_from(&bytes).unwrap().unwrap().0;
        assert_eq!(got, Frame::Control(m));
    }
}

#[test]
fn output_frames_encode_as_frozen() {
    assert_eq!(
        Frame::Stdout(b"hi".to_vec()).encode().unwrap(),
        [3, 0, 0, 0, 1, b'h', b'i']
    );
    assert_eq!(
        Frame::Stderr(vec![0xff]).encode().unwrap(),
        [2, 0, 0, 0, 2, 0xff]
    );
    assert_eq!(Frame::Stdin(vec![]).encode().unwrap(), [1, 0, 0, 0, 3]);
    assert_eq!(Frame::StdinEof.encode().unwrap(), [1, 0, 0, 0, 4]);
    assert_eq!(
        Frame::Upper(b"ustar".to_vec()).encode().unwrap(),
        [6, 0, 0, 0, 5, b'u', b's', b't', b'a', b'r']
    );
}

#[test]
fn unknown_fields_and_types_are_refused() {
    for bad in [
        r#"{"type":"signal","signal":15,"extra":1}"#,
        r#"{"type":"reboot"}"#,
        r#"{"signal":15}"#,
        r#"{"type":"exited","exit_code":0,"signal":null,"cpu_user_ms":0,"cpu_system_ms":0,"max_rss_kib":0,"exited_ms":0,"extra":1}"#,
    ] {
        let mut b = ((bad.len() + 1) as u32).to_le_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(bad.as_bytes());
        assert!(Frame::decode_from(&b).is_err(), "{bad}");
    }
}
