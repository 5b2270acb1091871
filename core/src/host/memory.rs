//! The host in memory, for native tests: a shared store several "workers" can hold (`Rc`), with
//! compare-and-swap losses on demand, HTTP calls recorded instead of sent, stats and log lines
//! kept for assertions.

use super::{Cas, HttpDispatch, Level, Metrics, Say, SharedStore, Write};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// One worker's host: a store shared with the other workers, its own HTTP calls and log.
#[derive(Default)]
pub struct MemHost {
    pub store: Rc<MemStore>,
    pub http: MemHttp,
    pub log: MemLog,
}

impl MemHost {
    /// Another worker of the same Envoy: the same shared store.
    pub fn sibling(&self) -> MemHost {
        MemHost {
            store: Rc::clone(&self.store),
            ..MemHost::default()
        }
    }
}

impl SharedStore for MemHost {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Write {
        self.store.set(key, value, cas)
    }
}

impl HttpDispatch for MemHost {
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<u32, String> {
        self.http.dispatch(cluster, headers, timeout)
    }
}

impl Metrics for MemHost {
    fn add_counter(&self, name: &str, by: u64) {
        self.log.add_counter(name, by);
    }
    fn set_gauge(&self, name: &str, value: u64) {
        self.log.set_gauge(name, value);
    }
}

impl Say for MemHost {
    fn say(&self, level: Level, message: &str) {
        self.log.say(level, message);
    }
}

#[derive(Default)]
pub struct MemStore {
    values: RefCell<HashMap<String, (Vec<u8>, Cas)>>,
    /// The next this-many compare-and-swap writes lose, as if another worker wrote first.
    lose: Cell<u32>,
    /// Writes that happened, in order (key).
    writes: RefCell<Vec<String>>,
    /// How many times each key was read.
    reads: RefCell<HashMap<String, usize>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Make the next `n` writes that carry a CAS token lose their race.
    pub fn lose_next(&self, n: u32) {
        self.lose.set(n);
    }

    /// Overwrite a value directly (another writer, or garbage).
    pub fn put(&self, key: &str, value: &[u8]) {
        let mut values = self.values.borrow_mut();
        let cas = values.get(key).map_or(1, |(_, c)| c + 1);
        values.insert(key.to_string(), (value.to_vec(), cas));
    }

    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.values.borrow().get(key).map(|(v, _)| v.clone())
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.values.borrow().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// How many times `key` was read so far.
    pub fn reads_of(&self, key: &str) -> usize {
        self.reads.borrow().get(key).copied().unwrap_or(0)
    }

    /// How many writes went to `key` so far.
    pub fn writes_to(&self, key: &str) -> usize {
        self.writes.borrow().iter().filter(|k| *k == key).count()
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        *self.reads.borrow_mut().entry(key.to_string()).or_default() += 1;
        self.values.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Write {
        if cas.is_some() && self.lose.get() > 0 {
            self.lose.set(self.lose.get() - 1);
            // The other writer's change: the token moves on.
            if let Some((_, c)) = self.values.borrow_mut().get_mut(key) {
                *c += 1;
            }
            return Write::Lost;
        }
        let mut values = self.values.borrow_mut();
        let current = values.get(key).map(|(_, c)| *c);
        if let (Some(want), Some(have)) = (cas, current) {
            if want != have {
                return Write::Lost;
            }
        }
        values.insert(
            key.to_string(),
            (value.to_vec(), current.map_or(1, |c| c + 1)),
        );
        self.writes.borrow_mut().push(key.to_string());
        Write::Done
    }
}

/// One recorded HTTP call: (token, cluster, headers).
pub type Call = (u32, String, Vec<(String, String)>);

/// HTTP calls recorded.
#[derive(Default)]
pub struct MemHttp {
    pub calls: RefCell<Vec<Call>>,
    next: Cell<u32>,
    /// Refuse every call (the cluster does not exist).
    pub refuse: Cell<bool>,
}

impl MemHttp {
    /// The token of the last call to `path` with header `name: value`.
    pub fn token_for(&self, name: &str, value: &str) -> Option<u32> {
        self.calls
            .borrow()
            .iter()
            .rev()
            .find(|(_, _, h)| h.iter().any(|(k, v)| k == name && v == value))
            .map(|(t, _, _)| *t)
    }

    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
}

impl HttpDispatch for MemHttp {
    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        _timeout: Duration,
    ) -> Result<u32, String> {
        if self.refuse.get() {
            return Err(format!("no cluster {cluster}"));
        }
        let token = self.next.get() + 1;
        self.next.set(token);
        self.calls.borrow_mut().push((
            token,
            cluster.to_string(),
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        Ok(token)
    }
}

/// Stats and log lines kept for assertions.
#[derive(Default)]
pub struct MemLog {
    pub counters: RefCell<HashMap<String, u64>>,
    pub gauges: RefCell<HashMap<String, u64>>,
    pub lines: RefCell<Vec<(Level, String)>>,
}

impl MemLog {
    /// Log lines at `level` or louder that contain `text`.
    pub fn count(&self, level: Level, text: &str) -> usize {
        self.lines
            .borrow()
            .iter()
            .filter(|(l, m)| *l >= level && m.contains(text))
            .count()
    }

    pub fn gauge(&self, name: &str) -> Option<u64> {
        self.gauges.borrow().get(name).copied()
    }
}

impl Metrics for MemLog {
    fn add_counter(&self, name: &str, by: u64) {
        *self
            .counters
            .borrow_mut()
            .entry(name.to_string())
            .or_default() += by;
    }

    fn set_gauge(&self, name: &str, value: u64) {
        self.gauges.borrow_mut().insert(name.to_string(), value);
    }
}

impl Say for MemLog {
    fn say(&self, level: Level, message: &str) {
        self.lines.borrow_mut().push((level, message.to_string()));
    }
}
