//! Crash points for the fault tests: with `PIPELINE_FAILPOINT=name:n` set, the process aborts (no
//! cleanup, like kill -9) the n-th time it reaches `name`. Unset, a failpoint costs one lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "PIPELINE_FAILPOINT";

/// Every crash point the binaries have; the tests arm them by this type too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The consumer, after a batch's PostgreSQL commit, before its Kafka offset commit.
    ConsumerAfterDbCommit,
    /// The bridge, after every row of a file was acknowledged, before archiving it.
    BridgeBeforeArchive,
    /// The bridge, after a row was sent (and what was sent flushed).
    BridgeMidFile,
}

impl Failpoint {
    pub const fn name(self) -> &'static str {
        match self {
            Failpoint::ConsumerAfterDbCommit => "consumer-after-db-commit",
            Failpoint::BridgeBeforeArchive => "bridge-before-archive",
            Failpoint::BridgeMidFile => "bridge-mid-file",
        }
    }

    /// The environment that makes a process abort the `n`-th time it reaches this point.
    pub fn armed_at(self, n: u64) -> (&'static str, String) {
        (ENV, format!("{}:{n}", self.name()))
    }
}

fn parse(spec: &str) -> Option<(String, u64)> {
    let (name, count) = spec.rsplit_once(':')?;
    Some((name.to_owned(), count.parse().ok()?))
}

/// Aborts the process if this is the armed failpoint's n-th hit.
pub fn hit(point: Failpoint) {
    hit_then(point, || {});
}

/// Like [`hit`], running `before_abort` first: a crash at a chosen point, e.g. once what was
/// sent so far is surely delivered.
pub fn hit_then(point: Failpoint, before_abort: impl FnOnce()) {
    let name = point.name();
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().as_deref().and_then(parse));
    if let Some((armed_name, at)) = armed {
        if armed_name == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            before_abort();
            eprintln!("failpoint {name} reached: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn specs_parse() {
        assert_eq!(super::parse("a-b:3"), Some(("a-b".into(), 3)));
        assert_eq!(super::parse("a"), None);
        assert_eq!(super::parse("a:x"), None);
    }
}
