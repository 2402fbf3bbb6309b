//! One task's health checker: from the moment its process runs until it stops, a check
//! every `intervalSeconds`. A pass makes it healthy; `retries` failures in a row make it
//! unhealthy (the reconciler then replaces it). Failures within `startPeriodSeconds`, before
//! a first pass, do not count.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{health, lock, Services};
use crate::server::Server;
use crate::services::{Health, HealthCheck};
use crate::tasks::now_ms;

pub fn spawn(srv: &Arc<Server>, service: &str, id: &str, hc: HealthCheck, addr: Option<Ipv4Addr>) {
    let (srv, service, id) = (Arc::downgrade(srv), service.to_owned(), id.to_owned());
    tokio::spawn(async move { run(srv, service, id, hc, addr).await });
}

async fn check(
    srv: &Weak<Server>,
    id: &str,
    hc: &HealthCheck,
    addr: Option<Ipv4Addr>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(hc.timeout_seconds);
    match (&hc.http_get, &hc.command, addr) {
        (Some(g), _, Some(ip)) => {
            health::http_get(SocketAddr::new(ip.into(), g.port), &g.path, timeout).await
        }
        (Some(_), _, None) => Err("the task has no network address".into()),
        (None, Some(argv), _) => {
            let control = srv
                .upgrade()
                .and_then(|s| s.live(id))
                .map(|l| l.control.clone())
                .ok_or("the task has ended")?;
            let argv = argv.clone();
            let outcome = tokio::task::spawn_blocking(move || control.exec(argv, timeout))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            health::command_result(&outcome, timeout)
        }
        (None, None, _) => Err("no way to check".into()),
    }
}

async fn run(
    srv: Weak<Server>,
    service: String,
    id: String,
    hc: HealthCheck,
    addr: Option<Ipv4Addr>,
) {
    let started = Instant::now();
    let start_period = Duration::from_secs(hc.start_period_seconds);
    let mut fails = 0u32;
    loop {
        let result = check(&srv, &id, &hc, addr).await;
        {
            let Some(srv) = srv.upgrade() else { return };
            let mut rts = lock(&srv.services.runtime);
            let Some(k) = rts.get_mut(&service).and_then(|r| r.tasks.get_mut(&id)) else {
                return;
            };
            if k.stopping {
                k.watching = false;
                return;
            }
            match result {
                Ok(()) => {
                    fails = 0;
                    if k.became_healthy(now_ms()) {
                        drop(rts);
                        Services::event(&srv, &service, &format!("task {id} is healthy"));
                        srv.services.wake();
                    }
                }
                Err(e) => {
                    let grace = !k.ever_healthy && started.elapsed() < start_period;
                    k.last_error = Some(e);
                    if !grace {
                        fails += 1;
                        if fails >= hc.retries && k.health != Health::Unhealthy {
                            k.health = Health::Unhealthy;
                            drop(rts);
                            srv.services.wake();
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(hc.interval_seconds)).await;
    }
}
