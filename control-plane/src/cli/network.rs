//! `skiff network create|ls|inspect|rm`: named task networks, through the server.

use clap::Subcommand;
use serde_json::{json, Value};

use super::remote::Api;

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Make a network whose tasks reach each other, by name too.
    Create {
        name: String,
        /// Its IPv4 subnet (CIDR); the server's --network-pool gives a /24 otherwise.
        #[arg(long)]
        subnet: Option<String>,
    },
    /// List the networks (the default one first).
    Ls,
    /// Show networks in full, as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks (no unfinished task may use them).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn network(api: &Api, cmd: NetworkCmd) -> anyhow::Result<i32> {
    match cmd {
        NetworkCmd::Create { name, subnet } => {
            let mut body = json!({ "name": name });
            if let Some(s) = subnet {
                body["subnet"] = json!(s);
            }
            let n = api.post("/v1/networks", &body)?;
            println!("{}", n["name"].as_str().unwrap_or_default());
        }
        NetworkCmd::Ls => {
            let all = api.get("/v1/networks")?;
            println!(
                "{:<20} {:<18} {:<15} {:<10} TASKS",
                "NAME", "SUBNET", "GATEWAY", "BRIDGE"
            );
            for n in all["networks"].as_array().into_iter().flatten() {
                let s = |k: &str| n[k].as_str().unwrap_or("").to_owned();
                let tasks = n["tasks"].as_array().map_or(0, Vec::len);
                println!(
                    "{:<20} {:<18} {:<15} {:<10} {tasks}",
                    s("name"),
                    s("subnet"),
                    s("gateway"),
                    s("bridge")
                );
            }
        }
        NetworkCmd::Inspect { names } => {
            let all: Vec<Value> = names
                .iter()
                .map(|n| api.get(&format!("/v1/networks/{n}")))
                .collect::<anyhow::Result<_>>()?;
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        NetworkCmd::Rm { names } => {
            for n in names {
                api.delete(&format!("/v1/networks/{n}"))?;
                println!("{n}");
            }
        }
    }
    Ok(0)
}
