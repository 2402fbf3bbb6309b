//! `skiff-jailer [JAIL FLAGS] -- PROGRAM ARGS…`: see the `jailer` library.

fn main() {
    jailer::panic::abort_on_panic();
    let code = match jailer::JailSpec::parse(std::env::args_os().skip(1)) {
        Err(e) => {
            eprintln!("skiff-jailer: {e}");
            2
        }
        Ok(spec) => jailer::run(&spec).unwrap_or_else(|e| {
            eprintln!("skiff-jailer: {e}");
            jailer::JAIL_FAILED
        }),
    };
    std::process::exit(code);
}
