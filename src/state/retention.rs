//! History retention: every save keeps a copy under `history/<generation>.json`, and old
//! copies hold old sealed secrets (tokens and keys that were rotated since). Only the
//! newest generations are kept; older copies are deleted, under the caller's lock.

use super::lock::backend_err;
use super::store::{history_key, StateStore};
use super::StateError;

/// Generations kept in `history/` by default (the current one included).
pub const HISTORY_KEEP: usize = 100;

impl StateStore {
    /// Delete history copies older than the newest `keep` generations; returns how many
    /// were deleted. Call it under the state lock.
    pub async fn prune_history(&self, keep: usize) -> Result<usize, StateError> {
        let backend = self.backend();
        let listed = backend
            .list(super::store::HISTORY_DIR)
            .await
            .map_err(|e| backend_err(backend.as_ref(), e))?;
        let mut generations: Vec<u64> = listed
            .iter()
            .filter_map(|l| {
                l.key
                    .strip_prefix("history/")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        generations.sort_unstable();
        let excess = generations.len().saturating_sub(keep.max(1));
        for g in &generations[..excess] {
            backend
                .delete(&history_key(*g))
                .await
                .map_err(|e| backend_err(backend.as_ref(), e))?;
        }
        Ok(excess)
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{StateDocument, StateStore};

    #[tokio::test]
    async fn only_the_newest_generations_stay_in_history() {
        let store = StateStore::in_memory();
        let (mut doc, mut v): (StateDocument, _) = store.load_or_new().await.unwrap();
        for i in 0..7 {
            doc.host_keys.insert(format!("h{i}"), "k".into());
            v = store.save(&mut doc, &v).await.unwrap();
        }
        assert_eq!(store.history().await.unwrap().len(), 7);
        assert_eq!(store.prune_history(3).await.unwrap(), 4);
        let left: Vec<u64> = store
            .history()
            .await
            .unwrap()
            .iter()
            .map(|e| e.generation)
            .collect();
        assert_eq!(left, [5, 6, 7]);
        assert_eq!(store.prune_history(3).await.unwrap(), 0);
        // The current document is untouched.
        assert_eq!(store.load().await.unwrap().unwrap().0.generation, 7);
    }
}
