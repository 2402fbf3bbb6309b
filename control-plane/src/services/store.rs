//! Services in the task database (`services`, `service_events`), beside the tasks they own.

use rusqlite::{params, OptionalExtension};

use super::model::Service;
use crate::tasks::store::Event;
use crate::tasks::{StoreError, TaskStore};

/// Events kept per service: the newest; a flapping service cannot grow the database.
const MAX_EVENTS: i64 = 500;

impl TaskStore {
    /// Adds a service; false when one of that name exists.
    pub fn insert_service(&self, s: &Service) -> Result<bool, StoreError> {
        let n = self.db().execute(
            "INSERT OR IGNORE INTO services (name, doc) VALUES (?1, ?2)",
            params![s.name, serde_json::to_string(s)?],
        )?;
        Ok(n == 1)
    }

    pub fn update_service(&self, s: &Service) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE services SET doc = ?2 WHERE name = ?1",
            params![s.name, serde_json::to_string(s)?],
        )?;
        Ok(())
    }

    pub fn service(&self, name: &str) -> Result<Option<Service>, StoreError> {
        let doc: Option<String> = self
            .db()
            .query_row("SELECT doc FROM services WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Vec<Service>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT doc FROM services ORDER BY name")?;
        let docs = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(docs
            .iter()
            .map(|d| serde_json::from_str(d))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes a service and its events.
    pub fn delete_service(&self, name: &str) -> Result<(), StoreError> {
        let db = self.db();
        db.execute("DELETE FROM services WHERE name = ?1", [name])?;
        db.execute("DELETE FROM service_events WHERE service = ?1", [name])?;
        Ok(())
    }

    pub fn add_service_event(
        &self,
        name: &str,
        time_ms: u64,
        message: &str,
    ) -> Result<(), StoreError> {
        let db = self.db();
        db.execute(
            "INSERT INTO service_events (service, time_ms, message) VALUES (?1, ?2, ?3)",
            params![name, time_ms as i64, message],
        )?;
        db.execute(
            "DELETE FROM service_events WHERE service = ?1 AND rowid NOT IN
             (SELECT rowid FROM service_events WHERE service = ?1 ORDER BY rowid DESC LIMIT ?2)",
            params![name, MAX_EVENTS],
        )?;
        Ok(())
    }

    /// A service's events, oldest first.
    pub fn service_events(&self, name: &str) -> Result<Vec<Event>, StoreError> {
        self.event_rows(
            "SELECT time_ms, message FROM service_events WHERE service = ?1 ORDER BY rowid",
            name,
        )
    }
}
