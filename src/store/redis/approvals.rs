//! The approvals ledger in Redis ([`crate::approval::Ledger`]): a record key per approval and a binding key
//! per bound request, both under the `{tessera}` hash tag (one Cluster slot), each step one script so it is
//! atomic across replicas. Keys expire with what they hold (`EXAT`), so the ledger stays bounded.

use std::sync::LazyLock;

use super::RedisStore;
use crate::approval::Ledger;
use crate::revocation::StoreFuture;
use crate::store::memory::{approval_binding_key, approval_record_key};

/// `KEYS`: binding, record. `ARGV`: id, record, expires_at. Answers the id the binding already holds, or
/// records both and answers nil.
static OPEN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EXAT', ARGV[3])
return false
",
    )
});

/// `KEYS`: record, binding. `ARGV`: expected, record, expires_at, keep_binding (1|0), id. Answers 1 when
/// it swapped.
static SWAP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EXAT', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[5] then
  if ARGV[4] == '1' then
    redis.call('SET', KEYS[2], ARGV[5], 'EXAT', ARGV[3])
  else
    redis.call('DEL', KEYS[2])
  end
end
return 1
",
    )
});

/// `KEYS`: binding. `ARGV`: id. Drops the binding if it still names the id.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
",
    )
});

impl Ledger for RedisStore {
    fn open<'a>(
        &'a self,
        binding: &'a str,
        id: &'a str,
        record: &'a str,
        expires_at: u64,
        _now: u64,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut inv = OPEN.prepare_invoke();
            inv.key(approval_binding_key(binding)).key(approval_record_key(id)).arg(id).arg(record).arg(expires_at);
            let mut handle = self.with_timeout(self.conn.handle()).await?;
            self.with_timeout(inv.invoke_async::<Option<String>>(&mut handle)).await
        })
    }

    fn load<'a>(&'a self, id: &'a str, _now: u64) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut handle = self.with_timeout(self.conn.handle()).await?;
            let mut cmd = redis::cmd("GET");
            cmd.arg(approval_record_key(id));
            self.with_timeout(cmd.query_async::<Option<String>>(&mut handle)).await
        })
    }

    fn swap<'a>(
        &'a self,
        id: &'a str,
        binding: &'a str,
        expected: &'a str,
        record: &'a str,
        expires_at: u64,
        keep_binding: bool,
        _now: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = SWAP.prepare_invoke();
            inv.key(approval_record_key(id))
                .key(approval_binding_key(binding))
                .arg(expected)
                .arg(record)
                .arg(expires_at)
                .arg(if keep_binding { "1" } else { "0" })
                .arg(id);
            let mut handle = self.with_timeout(self.conn.handle()).await?;
            Ok(self.with_timeout(inv.invoke_async::<i64>(&mut handle)).await? == 1)
        })
    }

    fn release<'a>(&'a self, binding: &'a str, id: &'a str, _now: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut inv = RELEASE.prepare_invoke();
            inv.key(approval_binding_key(binding)).arg(id);
            let mut handle = self.with_timeout(self.conn.handle()).await?;
            self.with_timeout(inv.invoke_async::<i64>(&mut handle)).await.map(|_| ())
        })
    }
}
