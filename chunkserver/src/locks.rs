//! Per-chunk async mutual exclusion inside one glommio executor.
//!
//! The chunk engine serializes mutations of a chunk, and the chain head
//! serializes whole replicated writes of a chunk; both take a lock per
//! chunk id from a [`ChunkLocks`]. A lock exists only while someone holds
//! or awaits it, so the map stays as small as the set of busy chunks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use cairn_proto::ids::ChunkId;
use glommio::sync::{Semaphore, StaticPermit};

/// One lock per busy chunk.
#[derive(Debug, Default)]
pub struct ChunkLocks {
    map: RefCell<HashMap<ChunkId, Rc<Entry>>>,
}

/// A chunk's lock and how many tasks hold or await it. Counted explicitly:
/// `Rc` counts would also include the semaphore references glommio's
/// permits keep.
#[derive(Debug)]
struct Entry {
    sem: Rc<Semaphore>,
    users: Cell<usize>,
}

/// Holds a chunk's lock until dropped.
pub struct ChunkLockGuard<'a> {
    locks: &'a ChunkLocks,
    chunk: ChunkId,
    entry: Rc<Entry>,
    _permit: Option<StaticPermit>,
}

impl Drop for ChunkLockGuard<'_> {
    fn drop(&mut self) {
        self.entry.users.set(self.entry.users.get() - 1);
        if self.entry.users.get() == 0 {
            self.locks.map.borrow_mut().remove(&self.chunk);
        }
    }
}

impl ChunkLocks {
    /// Waits for and takes `chunk`'s lock.
    ///
    /// # Errors
    /// Only if the semaphore was closed, which nothing here does.
    pub async fn lock(&self, chunk: ChunkId) -> glommio::Result<ChunkLockGuard<'_>, ()> {
        let entry = self
            .map
            .borrow_mut()
            .entry(chunk)
            .or_insert_with(|| {
                Rc::new(Entry {
                    sem: Rc::new(Semaphore::new(1)),
                    users: Cell::new(0),
                })
            })
            .clone();
        entry.users.set(entry.users.get() + 1);
        // The guard exists before the wait, so a cancelled wait (a dropped
        // request future) still gives its count back.
        let mut guard = ChunkLockGuard {
            locks: self,
            chunk,
            entry: entry.clone(),
            _permit: None,
        };
        guard._permit = Some(entry.sem.acquire_static_permit(1).await?);
        Ok(guard)
    }

    /// Chunks locked or awaited now.
    pub fn busy(&self) -> usize {
        self.map.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use cairn_proto::ids::ObjectId;

    use super::*;

    #[test]
    fn serializes_per_chunk_and_forgets_idle_chunks() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let locks = Rc::new(ChunkLocks::default());
                let c = |o| ChunkId {
                    object: ObjectId(o),
                    index: 0,
                };
                let inside = Rc::new(Cell::new(0u32));
                let most = Rc::new(Cell::new(0u32));
                let tasks: Vec<_> = (0..8)
                    .map(|i| {
                        let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                        glommio::spawn_local(async move {
                            let _g = locks.lock(c(1)).await.unwrap();
                            inside.set(inside.get() + 1);
                            most.set(most.get().max(inside.get()));
                            glommio::timer::sleep(Duration::from_millis(1 + i % 3)).await;
                            inside.set(inside.get() - 1);
                        })
                    })
                    .collect();
                // Another chunk is not held up meanwhile.
                let other = locks.lock(c(2)).await.unwrap();
                drop(other);
                for t in tasks {
                    t.await;
                }
                assert_eq!(most.get(), 1, "one holder at a time");
                assert_eq!(locks.busy(), 0, "idle chunks forgotten");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
