//! Placeholder replaced by the real backend.
use super::*;

pub struct PostgresStore;

impl PostgresStore {
    pub async fn connect(_url: &str, _pool: PoolSettings) -> StoreResult<Self> {
        Err(StoreError::Corrupt("backend not built yet".into()))
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    async fn ping(&self) -> StoreResult<()> {
        unimplemented!()
    }
    fn pool_status(&self) -> PoolStatus {
        unimplemented!()
    }
    async fn migrate(&self) -> StoreResult<()> {
        unimplemented!()
    }
    async fn close(&self) {}
    async fn create_debate(&self, _new: &NewDebate) -> StoreResult<DebateRecord> {
        unimplemented!()
    }
    async fn get_debate(&self, _id: &str) -> StoreResult<Option<DebateRecord>> {
        unimplemented!()
    }
    async fn update_debate(&self, _id: &str, _u: &DebateUpdate) -> StoreResult<DebateRecord> {
        unimplemented!()
    }
    async fn list_debates(&self, _q: &DebateQuery) -> StoreResult<DebatePage> {
        unimplemented!()
    }
    async fn append_event(&self, _d: &str, _e: &NewEvent) -> StoreResult<StoredEvent> {
        unimplemented!()
    }
    async fn events_since(&self, _d: &str, _s: i64, _l: u32) -> StoreResult<Vec<StoredEvent>> {
        unimplemented!()
    }
    async fn last_seq(&self, _d: &str) -> StoreResult<i64> {
        unimplemented!()
    }
    async fn unfinished_debates(&self) -> StoreResult<Vec<DebateRecord>> {
        unimplemented!()
    }
}
