//! `skiff-agent`: /init of every Skiff microVM. See `agent/mod.rs` for what it does.
#![forbid(unsafe_op_in_unsafe_fn)]

mod agent;

fn main() {
    if std::process::id() != 1 {
        eprintln!("skiff-agent: must run as PID 1 (the init of a Skiff microVM)");
        std::process::exit(2);
    }
    if let Err(e) = agent::run() {
        eprintln!("skiff-agent: {e}");
    }
    agent::power_off();
}
