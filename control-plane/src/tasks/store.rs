//! The durable task store: one SQLite file (WAL) under the state dir. A task's record is a
//! JSON document beside the columns we query by; its events are rows of their own.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::model::{Task, TaskState};
use crate::network::named::NamedNetwork;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    id    TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    doc   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_task ON events(task_id);
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    doc  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    doc  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS service_events (
    service TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS service_events_service ON service_events(service);
CREATE TABLE IF NOT EXISTS images (
    reference TEXT PRIMARY KEY,
    digest    TEXT NOT NULL,
    pulled_ms INTEGER NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("task database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("task database holds a record that does not parse: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// One line of a task's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub time_ms: u64,
    pub message: String,
}

/// `GET /v1/tasks` filters; newest first, `limit` per page, continuing before `before_seq`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub state: Option<TaskState>,
    pub label: Option<(String, String)>,
    pub limit: usize,
    pub before_seq: Option<i64>,
}

pub struct TaskStore {
    conn: Mutex<Connection>,
}

impl TaskStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, t: &Task) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO tasks (id, state, doc) VALUES (?1, ?2, ?3)",
            params![t.id, t.state.as_str(), serde_json::to_string(t)?],
        )?;
        Ok(())
    }

    pub fn update(&self, t: &Task) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE tasks SET state = ?2, doc = ?3 WHERE id = ?1",
            params![t.id, t.state.as_str(), serde_json::to_string(t)?],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let doc: Option<String> = self
            .db()
            .query_row("SELECT doc FROM tasks WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// A page of tasks, newest first, and the token for the next page if there is one.
    pub fn list(&self, q: &ListQuery) -> Result<(Vec<Task>, Option<i64>), StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT seq, doc FROM tasks
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR seq < ?2)
             ORDER BY seq DESC",
        )?;
        let mut rows = stmt.query(params![q.state.map(TaskState::as_str), q.before_seq])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let t: Task = serde_json::from_str(&row.get::<_, String>(1)?)?;
            if let Some((k, v)) = &q.label {
                if t.labels.get(k) != Some(v) {
                    continue;
                }
            }
            if out.len() == q.limit {
                // There is more: the next page starts after the last one returned.
                let last = out.last().map(|(s, _): &(i64, Task)| *s);
                return Ok((out.into_iter().map(|(_, t)| t).collect(), last));
            }
            out.push((seq, t));
        }
        Ok((out.into_iter().map(|(_, t)| t).collect(), None))
    }

    /// Tasks not yet STOPPED, oldest first (the order they were submitted in).
    pub fn unfinished(&self) -> Result<Vec<Task>, StoreError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT doc FROM tasks WHERE state != 'STOPPED' ORDER BY seq ASC")?;
        let docs = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(docs
            .iter()
            .map(|d| serde_json::from_str(d))
            .collect::<Result<_, _>>()?)
    }

    pub fn count_by_state(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TaskState::ALL
            .iter()
            .map(|s| {
                let n = rows
                    .iter()
                    .find(|(name, _)| name == s.as_str())
                    .map_or(0, |(_, n)| *n as u64);
                (*s, n)
            })
            .collect())
    }

    /// Deletes up to `limit` STOPPED tasks that stopped before `cutoff_ms`, with their
    /// events, in one transaction; returns their ids (oldest first) so their files can go.
    pub fn prune_stopped(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let ids = {
            let mut stmt = tx.prepare(
                "SELECT id FROM tasks WHERE state = 'STOPPED'
                 AND json_extract(doc, '$.phases.stoppedMs') < ?1 ORDER BY seq ASC LIMIT ?2",
            )?;
            let ids = stmt
                .query_map(params![cutoff_ms as i64, limit as i64], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            ids
        };
        for id in &ids {
            tx.execute("DELETE FROM events WHERE task_id = ?1", [id])?;
            tx.execute("DELETE FROM tasks WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Whether a task with this id is recorded.
    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .query_row("SELECT 1 FROM tasks WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn add_event(&self, task_id: &str, time_ms: u64, message: &str) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO events (task_id, time_ms, message) VALUES (?1, ?2, ?3)",
            params![task_id, time_ms as i64, message],
        )?;
        Ok(())
    }

    pub fn events(&self, task_id: &str) -> Result<Vec<Event>, StoreError> {
        self.event_rows(
            "SELECT time_ms, message FROM events WHERE task_id = ?1 ORDER BY rowid ASC",
            task_id,
        )
    }

    /// The `(time_ms, message)` rows `sql` selects for `key`, as events.
    pub(crate) fn event_rows(&self, sql: &str, key: &str) -> Result<Vec<Event>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(sql)?;
        let rows = stmt
            .query_map([key], |r| {
                Ok(Event {
                    time_ms: r.get::<_, i64>(0)? as u64,
                    message: r.get(1)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Stores a named network.
    pub fn insert_network(&self, n: &NamedNetwork) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO networks (name, doc) VALUES (?1, ?2)",
            params![n.name, serde_json::to_string(n)?],
        )?;
        Ok(())
    }

    /// The stored named networks, by name.
    pub fn networks(&self) -> Result<Vec<NamedNetwork>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT doc FROM networks ORDER BY name")?;
        let docs = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        docs.iter()
            .map(|d| serde_json::from_str(d).map_err(StoreError::from))
            .collect()
    }

    pub fn delete_network(&self, name: &str) -> Result<(), StoreError> {
        self.db()
            .execute("DELETE FROM networks WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Notes that `reference` was pulled (or resolved) as `digest`.
    pub fn record_image(
        &self,
        reference: &str,
        digest: &str,
        time_ms: u64,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO images (reference, digest, pulled_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(reference) DO UPDATE SET digest = ?2, pulled_ms = ?3",
            params![reference, digest, time_ms as i64],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::request::{Limits, TaskRequest};

    fn task(id: &str, label: &str) -> Task {
        let r: TaskRequest = serde_json::from_str(&format!(
            r#"{{"image":"busybox","labels":{{"team":"{label}"}}}}"#
        ))
        .unwrap();
        r.validate(
            &Limits {
                max_cpu: 2,
                max_memory_mib: 1024,
            },
            &crate::tasks::NetworkMode::None,
            id.into(),
            1,
        )
        .unwrap()
    }

    #[test]
    fn prune_removes_only_tasks_stopped_before_the_cutoff_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let s = TaskStore::open(&dir.path().join("tasks.db")).unwrap();
        for (i, stopped_at) in [Some(100), Some(200), None, Some(300)].iter().enumerate() {
            let id = format!("t{i}");
            let mut t = task(&id, "a");
            if let Some(at) = stopped_at {
                t.apply(
                    crate::tasks::Transition::Stopped(crate::tasks::Ending::new(
                        crate::tasks::StopCode::UserInitiated,
                        "stopped",
                    )),
                    *at,
                )
                .unwrap();
            }
            s.insert(&t).unwrap();
            s.add_event(&id, 1, "accepted").unwrap();
        }
        // Stopped before 250: t0 and t1, oldest first; t2 runs, t3 stopped later.
        assert_eq!(s.prune_stopped(250, 1).unwrap(), ["t0"]);
        assert_eq!(s.prune_stopped(250, 10).unwrap(), ["t1"]);
        assert!(s.prune_stopped(250, 10).unwrap().is_empty());
        for gone in ["t0", "t1"] {
            assert!(!s.contains(gone).unwrap());
            assert!(s.events(gone).unwrap().is_empty());
        }
        for kept in ["t2", "t3"] {
            assert!(s.contains(kept).unwrap());
            assert_eq!(s.events(kept).unwrap().len(), 1);
        }
    }

    #[test]
    fn tasks_survive_reopening_and_page_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        {
            let s = TaskStore::open(&path).unwrap();
            for i in 0..5 {
                s.insert(&task(&format!("t{i}"), if i % 2 == 0 { "a" } else { "b" }))
                    .unwrap();
            }
            let mut t = s.get("t3").unwrap().unwrap();
            t.apply(
                crate::tasks::Transition::Stopped(crate::tasks::Ending::new(
                    crate::tasks::StopCode::UserInitiated,
                    "stopped",
                )),
                7,
            )
            .unwrap();
            s.update(&t).unwrap();
            s.add_event("t3", 7, "stopped").unwrap();
        }
        let s = TaskStore::open(&path).unwrap();
        let q = ListQuery {
            limit: 2,
            ..Default::default()
        };
        let (page, next) = s.list(&q).unwrap();
        let ids: Vec<_> = page.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t4", "t3"]);
        let (page, next) = s
            .list(&ListQuery {
                before_seq: next,
                ..q.clone()
            })
            .unwrap();
        assert_eq!(
            page.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["t2", "t1"]
        );
        let (page, next) = s
            .list(&ListQuery {
                before_seq: next,
                ..q
            })
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(next, None);
        let (stopped, _) = s
            .list(&ListQuery {
                state: Some(TaskState::Stopped),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(stopped.len(), 1);
        let (team_a, _) = s
            .list(&ListQuery {
                label: Some(("team".into(), "a".into())),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(team_a.len(), 3);
        assert_eq!(s.unfinished().unwrap().len(), 4);
        assert_eq!(s.events("t3").unwrap()[0].message, "stopped");
        let counts = s.count_by_state().unwrap();
        assert!(counts.contains(&(TaskState::Stopped, 1)));
        assert!(counts.contains(&(TaskState::Provisioning, 4)));
    }
}
