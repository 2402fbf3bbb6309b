//! `skiff service create|ls|inspect|scale|update|rm`: services through the server.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::remote::{env_map, Api};

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Make a service: COUNT tasks of IMAGE [-- CMD ARG…], kept running.
    Create(CreateArgs),
    /// List the services.
    Ls,
    /// Show services in full (tasks, their health, events), as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set how many tasks a service keeps.
    Scale { name: String, count: u32 },
    /// Change a service's tasks (a rolling deployment) or its count.
    Update(UpdateArgs),
    /// Delete services: their tasks are stopped, then they go.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// What `create` and `update` may set of the tasks' template and health check.
#[derive(Args)]
pub struct TemplateArgs {
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// vCPUs of each task's microVM.
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory of each task's microVM in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// The tasks' network: default, none, or a network made with `skiff network create`.
    #[arg(long)]
    network: Option<String>,
    /// User: name, uid, or uid:gid.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Label KEY=VALUE on the tasks (repeatable).
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
    /// Health check: an HTTP GET from the host, PORT[/PATH]; healthy on 2xx/3xx.
    #[arg(long, value_name = "PORT[/PATH]")]
    health_http: Option<String>,
    /// Health check: a command run in the task; healthy when it exits 0.
    #[arg(long, value_name = "CMD")]
    health_cmd: Option<String>,
    /// Seconds between health checks.
    #[arg(long)]
    health_interval: Option<u64>,
    /// Seconds a health check may take.
    #[arg(long)]
    health_timeout: Option<u64>,
    /// Failed checks in a row that make a task unhealthy.
    #[arg(long)]
    health_retries: Option<u32>,
    /// Seconds after the start when failed checks do not count.
    #[arg(long)]
    health_start_period: Option<u64>,
    /// Healthy tasks kept during a deployment, % of the count.
    #[arg(long)]
    min_healthy_percent: Option<u32>,
    /// Tasks allowed during a deployment, % of the count.
    #[arg(long)]
    max_percent: Option<u32>,
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// How many tasks to keep.
    #[arg(short = 'n', long = "replicas", default_value_t = 1)]
    replicas: u32,
    /// A host port whose connections go to the healthy tasks:
    /// [HOSTIP:]HOSTPORT:CONTAINERPORT.
    #[arg(short = 'p', long = "publish")]
    publish: Option<String>,
    #[command(flatten)]
    template: TemplateArgs,
    /// IMAGE [-- CMD ARG…]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct UpdateArgs {
    name: String,
    /// A new image for the tasks.
    #[arg(long)]
    image: Option<String>,
    /// How many tasks to keep.
    #[arg(short = 'n', long = "replicas")]
    replicas: Option<u32>,
    /// Remove the health check.
    #[arg(long, conflicts_with_all = ["health_http", "health_cmd"])]
    no_health_check: bool,
    #[command(flatten)]
    template: TemplateArgs,
    /// A new command: -- CMD ARG…
    #[arg(last = true)]
    command: Vec<String>,
}

impl TemplateArgs {
    /// Sets the given fields in `t` (a task template), leaving the others.
    fn apply_to(&self, t: &mut Value) -> anyhow::Result<()> {
        if !self.env.is_empty() {
            let mut env = t["env"].as_object().cloned().unwrap_or_default();
            env.extend(env_map(&self.env, "-e")?);
            t["env"] = Value::Object(env);
        }
        if !self.labels.is_empty() {
            let mut l = t["labels"].as_object().cloned().unwrap_or_default();
            l.extend(env_map(&self.labels, "--label")?);
            t["labels"] = Value::Object(l);
        }
        for (key, v) in [
            ("cpu", self.cpu.map(|c| json!(c))),
            ("memoryMiB", self.memory.map(|m| json!(m))),
            ("networkMode", self.network.as_ref().map(|n| json!(n))),
            ("user", self.user.as_ref().map(|u| json!(u))),
            ("workingDir", self.workdir.as_ref().map(|w| json!(w))),
        ] {
            if let Some(v) = v {
                t[key] = v;
            }
        }
        Ok(())
    }

    /// The health check the flags give, if any.
    fn health_check(&self) -> anyhow::Result<Option<Value>> {
        let mut h = match (&self.health_http, &self.health_cmd) {
            (None, None) => {
                if self.health_interval.is_some()
                    || self.health_timeout.is_some()
                    || self.health_retries.is_some()
                    || self.health_start_period.is_some()
                {
                    bail!("--health-interval and the like need --health-http or --health-cmd");
                }
                return Ok(None);
            }
            (Some(_), Some(_)) => bail!("give --health-http or --health-cmd, not both"),
            (Some(spec), None) => {
                let (port, path) = match spec.split_once('/') {
                    Some((p, rest)) => (p, format!("/{rest}")),
                    None => (spec.as_str(), "/".to_owned()),
                };
                let port: u16 = port
                    .parse()
                    .map_err(|_| anyhow!("--health-http {spec}: {port:?} is not a port"))?;
                json!({"httpGet": {"port": port, "path": path}})
            }
            (None, Some(cmd)) => json!({"command": ["/bin/sh", "-c", cmd]}),
        };
        for (key, v) in [
            ("intervalSeconds", self.health_interval),
            ("timeoutSeconds", self.health_timeout),
            ("retries", self.health_retries.map(u64::from)),
            ("startPeriodSeconds", self.health_start_period),
        ] {
            if let Some(v) = v {
                h[key] = json!(v);
            }
        }
        Ok(Some(h))
    }

    fn deployment(&self) -> Option<Value> {
        let mut d = json!({});
        if let Some(m) = self.min_healthy_percent {
            d["minimumHealthyPercent"] = json!(m);
        }
        if let Some(m) = self.max_percent {
            d["maximumPercent"] = json!(m);
        }
        (d != json!({})).then_some(d)
    }
}

/// `[HOSTIP:]HOSTPORT:CONTAINERPORT` as a loadBalancer.
fn load_balancer(s: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let num = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| anyhow!("-p {s}: {p:?} is not a port number"))
    };
    Ok(match parts.as_slice() {
        [c, h] => json!({"hostPort": num(h)?, "containerPort": num(c)?}),
        [c, h, ip] => json!({"hostPort": num(h)?, "containerPort": num(c)?, "hostIp": ip}),
        _ => bail!("-p {s}: give HOSTPORT:CONTAINERPORT or HOSTIP:HOSTPORT:CONTAINERPORT"),
    })
}

pub fn service(api: &Api, cmd: ServiceCmd) -> anyhow::Result<i32> {
    match cmd {
        ServiceCmd::Create(a) => {
            let mut it = a.args.iter();
            let image = it.next().ok_or_else(|| anyhow!("give an image"))?;
            let cmd: Vec<&String> = it.skip_while(|s| *s == "--").collect();
            let mut template = json!({ "image": image });
            a.template.apply_to(&mut template)?;
            if !cmd.is_empty() {
                template["command"] = json!(cmd);
            }
            let mut body = json!({
                "name": a.name, "desiredCount": a.replicas, "taskTemplate": template,
            });
            if let Some(h) = a.template.health_check()? {
                body["healthCheck"] = h;
            }
            if let Some(d) = a.template.deployment() {
                body["deployment"] = d;
            }
            if let Some(p) = &a.publish {
                body["loadBalancer"] = load_balancer(p)?;
            }
            let s = api.post("/v1/services", &body)?;
            crate::outln!("{}", s["name"].as_str().unwrap_or_default());
        }
        ServiceCmd::Ls => {
            let all = api.get("/v1/services")?;
            crate::outln!(
                "{:<20} {:<9} {:>7} {:>7} {:>7} {:>8} {:<12} PORT",
                "NAME",
                "STATUS",
                "DESIRED",
                "RUNNING",
                "HEALTHY",
                "REVISION",
                "DEPLOYMENT"
            );
            for s in all["services"].as_array().into_iter().flatten() {
                let port = s["loadBalancer"]["hostPort"]
                    .as_u64()
                    .map(|p| format!("{}:{p}", s["loadBalancer"]["hostIp"].as_str().unwrap_or("")))
                    .unwrap_or_default();
                crate::outln!(
                    "{:<20} {:<9} {:>7} {:>7} {:>7} {:>8} {:<12} {port}",
                    s["name"].as_str().unwrap_or(""),
                    s["status"].as_str().unwrap_or(""),
                    s["desiredCount"].to_string(),
                    s["runningCount"].to_string(),
                    s["healthyCount"].to_string(),
                    s["current"]["revision"].to_string(),
                    s["deployment"]["state"].as_str().unwrap_or(""),
                );
            }
        }
        ServiceCmd::Inspect { names } => {
            let all: Vec<Value> = names
                .iter()
                .map(|n| api.get(&format!("/v1/services/{n}")))
                .collect::<anyhow::Result<_>>()?;
            crate::outln!("{}", serde_json::to_string_pretty(&all)?);
        }
        ServiceCmd::Scale { name, count } => {
            api.patch(
                &format!("/v1/services/{name}"),
                &json!({"desiredCount": count}),
            )?;
            crate::outln!("{name}");
        }
        ServiceCmd::Update(a) => {
            let path = format!("/v1/services/{}", a.name);
            let cur = api.get(&path)?;
            let mut template = cur["current"]["taskTemplate"].clone();
            a.template.apply_to(&mut template)?;
            if let Some(i) = &a.image {
                template["image"] = json!(i);
            }
            if !a.command.is_empty() {
                template["command"] = json!(a.command);
            }
            let mut body = json!({ "taskTemplate": template });
            if let Some(n) = a.replicas {
                body["desiredCount"] = json!(n);
            }
            if a.no_health_check {
                body["healthCheck"] = Value::Null;
            } else if let Some(h) = a.template.health_check()? {
                body["healthCheck"] = h;
            }
            if let Some(d) = a.template.deployment() {
                body["deployment"] = d;
            }
            let s = api.patch(&path, &body)?;
            crate::outln!(
                "{} (revision {}, deployment {})",
                a.name,
                s["current"]["revision"],
                s["deployment"]["state"].as_str().unwrap_or("")
            );
        }
        ServiceCmd::Rm { names } => {
            for n in names {
                api.delete(&format!("/v1/services/{n}"))?;
                crate::outln!("{n}");
            }
        }
    }
    Ok(0)
}
