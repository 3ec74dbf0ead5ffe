//! The state document of a run (`StateHandle`), changed and saved under the run's lock,
//! and its journal.
//!
//! Writes are kept to what changed: an update that leaves the document as it was saves
//! nothing, and journal entries are held in memory until the next real save or
//! `flush` — so a run that changes nothing writes at most one generation (its journal),
//! while a run that changes the cluster records each phase before and after.

use super::{JournalEntry, PhaseStatus, StateDocument, StateError, StateStore, Version};
use chrono::Utc;

/// Journal entries kept in the document; older ones are dropped.
pub const JOURNAL_KEEP: usize = 500;

/// The state document of a run.
pub struct StateHandle {
    pub store: StateStore,
    inner: tokio::sync::Mutex<Inner>,
}

struct Inner {
    doc: StateDocument,
    version: Version,
    /// Journal changes not saved yet (applied to `doc.journal` already).
    journal_dirty: bool,
    /// Generations this handle saved.
    saves: u64,
}

/// What an update can compare: everything a save would change on the store except its
/// own bookkeeping (generation, time, writer).
fn content(doc: &StateDocument) -> impl PartialEq + '_ {
    (
        &doc.machines,
        &doc.host_keys,
        &doc.versions.kubernetes,
        &doc.versions.components,
        &doc.journal,
        &doc.addons,
        &doc.secrets,
    )
}

/// One journal attempt of a phase (or of a step on one host).
#[derive(Debug, Clone)]
pub struct JournalId {
    phase: String,
    host: Option<String>,
}

impl StateHandle {
    pub fn new(store: StateStore, doc: StateDocument, version: Version) -> Self {
        StateHandle {
            store,
            inner: tokio::sync::Mutex::new(Inner {
                doc,
                version,
                journal_dirty: false,
                saves: 0,
            }),
        }
    }

    /// A copy of the current document.
    pub async fn get(&self) -> StateDocument {
        self.inner.lock().await.doc.clone()
    }

    /// How many generations this handle has saved.
    pub async fn saves(&self) -> u64 {
        self.inner.lock().await.saves
    }

    /// Change the document and save it as the next generation (compare-and-swap), with
    /// any journal entries not saved yet. An update that changes nothing saves nothing.
    pub async fn update<F: FnOnce(&mut StateDocument)>(&self, f: F) -> Result<(), StateError> {
        let mut guard = self.inner.lock().await;
        let mut next = guard.doc.clone();
        f(&mut next);
        if content(&next) == content(&guard.doc) {
            // Nothing changed; journal entries held in memory keep waiting.
            return Ok(());
        }
        Self::save(&self.store, &mut guard, next).await
    }

    async fn save(
        store: &StateStore,
        guard: &mut Inner,
        mut next: StateDocument,
    ) -> Result<(), StateError> {
        let v = store.save(&mut next, &guard.version).await?;
        guard.doc = next;
        guard.version = v;
        guard.journal_dirty = false;
        guard.saves += 1;
        Ok(())
    }

    /// Save journal entries held in memory, if any.
    pub async fn flush(&self) -> Result<(), StateError> {
        let mut guard = self.inner.lock().await;
        if !guard.journal_dirty {
            return Ok(());
        }
        let next = guard.doc.clone();
        Self::save(&self.store, &mut guard, next).await
    }

    /// Open a journal entry (`started`), held in memory until the next save.
    pub async fn journal_start(
        &self,
        phase: &str,
        plan_digest: &str,
        host: Option<&str>,
    ) -> JournalId {
        let mut guard = self.inner.lock().await;
        let now = Utc::now();
        guard.doc.journal.push(JournalEntry {
            phase: phase.to_string(),
            plan_digest: plan_digest.to_string(),
            status: PhaseStatus::Started,
            started: now,
            finished: None,
            host: host.map(String::from),
            error: None,
        });
        let excess = guard.doc.journal.len().saturating_sub(JOURNAL_KEEP);
        guard.doc.journal.drain(..excess);
        guard.journal_dirty = true;
        JournalId {
            phase: phase.to_string(),
            host: host.map(String::from),
        }
    }

    /// Close a journal entry: done (`error == None`) or failed. Held in memory until
    /// the next save; call `flush` to save it now.
    pub async fn journal_finish(&self, id: &JournalId, error: Option<String>) {
        let mut guard = self.inner.lock().await;
        let now = Utc::now();
        let entry =
            guard.doc.journal.iter_mut().rev().find(|e| {
                e.phase == id.phase && e.host == id.host && e.status == PhaseStatus::Started
            });
        if let Some(e) = entry {
            e.status = if error.is_some() {
                PhaseStatus::Failed
            } else {
                PhaseStatus::Done
            };
            e.finished = Some(now);
            e.error = error;
            guard.journal_dirty = true;
        }
    }

    /// Whether the journal's last entry for `phase` on `host` is done.
    pub async fn journal_done(&self, phase: &str, host: Option<&str>) -> bool {
        let guard = self.inner.lock().await;
        guard
            .doc
            .last_journal(phase, host)
            .is_some_and(|e| e.status == PhaseStatus::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn handle() -> StateHandle {
        let store = StateStore::in_memory();
        let (doc, v) = store.load_or_new().await.unwrap();
        StateHandle::new(store, doc, v)
    }

    #[tokio::test]
    async fn unchanged_updates_and_held_journal_entries_save_nothing_until_flushed() {
        let h = handle().await;
        h.update(|d| {
            d.host_keys.insert("a".into(), "ssh-ed25519 AAAA".into());
        })
        .await
        .unwrap();
        assert_eq!(h.saves().await, 1);
        // The same change again: nothing to save.
        h.update(|d| {
            d.host_keys.insert("a".into(), "ssh-ed25519 AAAA".into());
        })
        .await
        .unwrap();
        assert_eq!(h.saves().await, 1);
        // Journal entries wait for a flush (or the next real save)...
        for p in ["connect", "prepare-hosts", "init-control-plane"] {
            let id = h.journal_start(p, "d", None).await;
            h.journal_finish(&id, None).await;
        }
        assert_eq!(h.saves().await, 1);
        assert_eq!(h.store.load().await.unwrap().unwrap().0.journal.len(), 0);
        h.flush().await.unwrap();
        assert_eq!(h.saves().await, 2);
        h.flush().await.unwrap();
        assert_eq!(h.saves().await, 2);
        let stored = h.store.load().await.unwrap().unwrap().0;
        assert_eq!(stored.journal.len(), 3);
        assert!(stored.journal.iter().all(|e| e.status == PhaseStatus::Done));
        assert!(h.journal_done("init-control-plane", None).await);
        // ...and go with the next real save.
        let id = h.journal_start("join", "d", Some("cp-2")).await;
        h.journal_finish(&id, Some("boom".into())).await;
        h.update(|d| d.versions.kubernetes = Some("v1.20.2".into()))
            .await
            .unwrap();
        assert_eq!(h.saves().await, 3);
        let stored = h.store.load().await.unwrap().unwrap().0;
        let last = stored.journal.last().unwrap();
        assert_eq!(
            (last.status, last.host.as_deref()),
            (PhaseStatus::Failed, Some("cp-2"))
        );
        assert!(!h.journal_done("join", Some("cp-2")).await);
    }
}
