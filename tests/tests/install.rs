//! Skiff as installed by `scripts/install.sh`: `skiff info` finds the VMM, the kernel and
//! the agent with no Skiff variable set, and a variable still overrides the search.

use skiff_tests::install;

fn info(envs: &[(&str, &str)]) -> String {
    let out = install::skiff()
        .arg("--state-dir")
        .arg(skiff_tests::paths::tmp_dir().join(format!("info-{}", std::process::id())))
        .arg("info")
        .envs(envs.iter().copied())
        .output()
        .expect("run skiff info");
    assert!(
        out.status.success(),
        "skiff info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{text}"))
}

#[test]
fn the_installed_skiff_finds_its_pieces_without_variables() {
    let prefix = install::prefix();
    let text = info(&[]);
    let data = prefix.join("lib/skiff");
    assert_eq!(
        line(&text, "kernel"),
        format!(
            "kernel        {} (installed, ",
            data.join("vmlinux").display()
        ) + line(&text, "kernel")
            .split("(installed, ")
            .nth(1)
            .unwrap_or("<none>"),
        "{text}"
    );
    assert!(line(&text, "agent").contains(&data.join("skiff-agent").display().to_string()));
    assert!(line(&text, "agent").contains("(installed, "), "{text}");
    assert!(line(&text, "vmm").contains(&prefix.join("bin/skiff-vmm").display().to_string()));
    assert!(line(&text, "vmm").contains("(beside skiff, "), "{text}");
    let kvm = line(&text, "kvm");
    assert!(
        kvm.contains("hardware") || kvm.contains("PVM") || kvm.contains("none"),
        "{kvm}"
    );
    assert!(line(&text, "version").ends_with(env!("CARGO_PKG_VERSION")));
    assert!(line(&text, "images").ends_with(" 0"), "{text}");
    // A variable overrides the search, and a wrong one is reported, not ignored.
    let text = info(&[("SKIFF_KERNEL", "/nonexistent/vmlinux")]);
    assert!(
        line(&text, "kernel").contains("/nonexistent/vmlinux ($SKIFF_KERNEL) does not exist"),
        "{text}"
    );
}
