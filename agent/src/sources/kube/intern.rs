//! Shares equal values between the objects the source keeps. The pods of one workload carry the
//! same labels (a Deployment's replicas differ in name and address only), and a label set is a
//! B-tree node and a string per key and value: most of what a pod costs. Namespaces, service
//! accounts and node names repeat across pods the same way. Kept here because no
//! interning crate among the well-kept ones shares `Arc`s of arbitrary values and forgets the
//! unused ones.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// Fewest values kept before unused ones are swept.
const FIRST_SWEEP: usize = 1024;

#[derive(Debug)]
pub(super) struct Interner<T: ?Sized> {
    inner: Mutex<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T: ?Sized> {
    values: HashSet<Arc<T>>,
    /// The set's size at which values no object holds any more are dropped.
    sweep_at: usize,
}

impl<T: Eq + Hash + ?Sized> Default for Interner<T> {
    fn default() -> Interner<T> {
        Interner {
            inner: Mutex::new(Inner {
                values: HashSet::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }
}

impl<T: Eq + Hash + ?Sized> Interner<T> {
    /// The shared value equal to `value` (`value` itself if there is none yet).
    pub fn intern(&self, value: Arc<T>) -> Arc<T> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = inner.values.get(&*value) {
            return Arc::clone(shared);
        }
        if inner.values.len() >= inner.sweep_at {
            // Only the interner holds these: no object uses them any more. Sweeping when the
            // set has doubled since the last sweep keeps the cost per call constant.
            inner.values.retain(|v| Arc::strong_count(v) > 1);
            inner.sweep_at = (inner.values.len() * 2).max(FIRST_SWEEP);
        }
        inner.values.insert(Arc::clone(&value));
        value
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_allocation_and_unused_ones_are_swept() {
        let interner: Interner<String> = Interner::default();
        let a = interner.intern(Arc::new("app=web".to_owned()));
        let b = interner.intern(Arc::new("app=web".to_owned()));
        assert!(Arc::ptr_eq(&a, &b));
        let other = interner.intern(Arc::new("app=db".to_owned()));
        assert!(!Arc::ptr_eq(&a, &other));
        drop(other);
        // Fill past the first sweep with values nobody keeps: they go, `a` stays.
        for i in 0..FIRST_SWEEP {
            interner.intern(Arc::new(format!("app=filler-{i}")));
        }
        assert!(interner.len() <= FIRST_SWEEP, "swept: {}", interner.len());
        let again = interner.intern(Arc::new("app=web".to_owned()));
        assert!(Arc::ptr_eq(&a, &again), "a value in use is never swept");
    }

    #[test]
    fn strings_are_shared_too() {
        let interner: Interner<str> = Interner::default();
        let a = interner.intern(Arc::from("default"));
        let b = interner.intern(Arc::from("default"));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
