//! Named networks in the server (`/v1/networks`): made live by the network registry and
//! stored in the task database, so that they come back after a restart. A network that
//! unfinished tasks use cannot be removed.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::Server;
use crate::network::named::NamedNetwork;
use crate::network::registry::RegistryError;
use crate::tasks::{now_ms, StoreError};

/// A network as the API shows it: its record and the unfinished tasks on it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkView {
    #[serde(flatten)]
    pub network: NamedNetwork,
    /// The default network: always there, tasks on it cannot reach each other.
    pub builtin: bool,
    pub tasks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("task networks are not available on this server: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("network {name:?} is used by {} unfinished task(s): {}; stop them first", tasks.len(), tasks.join(", "))]
    InUse { name: String, tasks: Vec<String> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Server {
    fn tasks_on(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.tasks_by_network()?.remove(name).unwrap_or_default())
    }

    /// The unfinished tasks per network, from one read of the store.
    fn tasks_by_network(&self) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let mut by = HashMap::<String, Vec<String>>::new();
        for t in self.records.store.unfinished()? {
            if let Some(n) = super::networking::network_name(&t.network_mode) {
                by.entry(n.to_owned()).or_default().push(t.id);
            }
        }
        Ok(by)
    }

    /// The default network first, then the named ones by name.
    pub fn networks(&self) -> Result<Vec<NetworkView>, NetworksError> {
        let reg = self.registry()?;
        let mut tasks = self.tasks_by_network()?;
        let mut view = |network: NamedNetwork, builtin| NetworkView {
            tasks: tasks.remove(&network.name).unwrap_or_default(),
            network,
            builtin,
        };
        let mut out = vec![view(reg.default_network(), true)];
        out.extend(reg.list().into_iter().map(|n| view(n, false)));
        Ok(out)
    }

    pub fn network(&self, name: &str) -> Result<Option<NetworkView>, NetworksError> {
        let reg = self.registry()?;
        let (network, builtin) = if name == crate::network::DEFAULT_NETWORK {
            (reg.default_network(), true)
        } else {
            match reg.list().into_iter().find(|n| n.name == name) {
                Some(n) => (n, false),
                None => return Ok(None),
            }
        };
        Ok(Some(NetworkView {
            tasks: self.tasks_on(name)?,
            network,
            builtin,
        }))
    }

    fn registry(&self) -> Result<&crate::network::registry::NetworkRegistry, NetworksError> {
        self.networks
            .as_ref()
            .map_err(|why| NetworksError::Unavailable(why.clone()))
    }

    /// Makes and stores named network `name`.
    pub async fn create_network(
        self: &Arc<Self>,
        name: String,
        subnet: Option<String>,
    ) -> Result<NetworkView, NetworksError> {
        let srv = self.clone();
        tokio::task::spawn_blocking(move || {
            let reg = srv.registry()?;
            let n = reg.create(&name, subnet.as_deref(), now_ms())?;
            if let Err(e) = srv.records.store.insert_network(&n) {
                let _ = reg.remove(&name);
                return Err(e.into());
            }
            tracing::info!(network = name, subnet = %n.subnet, bridge = n.bridge, "network created");
            Ok(NetworkView {
                network: n,
                builtin: false,
                tasks: Vec::new(),
            })
        })
        .await
        .map_err(|e| NetworksError::Unavailable(e.to_string()))?
    }

    /// Removes named network `name`, unless unfinished tasks use it.
    pub async fn remove_network(self: &Arc<Self>, name: String) -> Result<(), NetworksError> {
        let srv = self.clone();
        tokio::task::spawn_blocking(move || {
            let reg = srv.registry()?;
            if reg.get(&name).is_none() {
                return Err(RegistryError::NotFound(name).into());
            }
            let tasks = srv.tasks_on(&name)?;
            if !tasks.is_empty() {
                return Err(NetworksError::InUse { name, tasks });
            }
            srv.records.store.delete_network(&name)?;
            reg.remove(&name)?;
            tracing::info!(network = name, "network removed");
            Ok(())
        })
        .await
        .map_err(|e| NetworksError::Unavailable(e.to_string()))?
    }
}
