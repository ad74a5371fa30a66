//! Policies validated by an earlier reload, by the parsed object they came from: a source that
//! keeps its parsed objects between reloads (the Kubernetes source parses each version of an
//! object once) has only its changed objects validated again. Validating every policy of a
//! 100k-rule set took 85 ms of each pod event.
//!
//! Only NetworkPolicies and ClusterPolicies are remembered: what they validate into depends on
//! the object alone. MeshPolicies resolve Secrets, which other objects carry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::PolicyModel;
use crate::policy::diag::{Diagnostic, Pos};
use crate::policy::source::{Object, SourceObject};

/// What one object validated into.
#[derive(Debug, Clone)]
pub struct Validation {
    pub policy: Option<Arc<PolicyModel>>,
    /// Everything validating it reported (errors and warnings).
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Debug)]
struct Entry {
    /// Held so that its address names it while the entry lives.
    object: Arc<Object>,
    file: PathBuf,
    line_offset: u64,
    start: Pos,
    validation: Validation,
}

impl Entry {
    fn is_of(&self, so: &SourceObject) -> bool {
        Arc::ptr_eq(&self.object, &so.object)
            && self.file == so.file
            && self.line_offset == so.line_offset
            && self.start == so.start
    }
}

/// Validations of the current reload and of the one before (what neither uses is forgotten).
#[derive(Debug, Default)]
pub struct ValidationMemo {
    current: HashMap<usize, Entry>,
    previous: HashMap<usize, Entry>,
    hits: u64,
    misses: u64,
}

impl ValidationMemo {
    pub fn new() -> ValidationMemo {
        ValidationMemo::default()
    }

    /// Starts a reload: what the last one did not use is forgotten after this one.
    pub fn next_reload(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }

    /// What `so` validated into, if it was validated before.
    pub fn get(&mut self, so: &SourceObject) -> Option<Validation> {
        let key = Arc::as_ptr(&so.object) as usize;
        if let Some(entry) = self.current.get(&key).filter(|e| e.is_of(so)) {
            self.hits += 1;
            return Some(entry.validation.clone());
        }
        let entry = self.previous.remove(&key).filter(|e| e.is_of(so))?;
        self.hits += 1;
        let validation = entry.validation.clone();
        self.current.insert(key, entry);
        Some(validation)
    }

    /// Remembers what `so` validated into.
    pub fn put(&mut self, so: &SourceObject, validation: Validation) {
        self.misses += 1;
        self.current.insert(
            Arc::as_ptr(&so.object) as usize,
            Entry {
                object: Arc::clone(&so.object),
                file: so.file.clone(),
                line_offset: so.line_offset,
                start: so.start,
                validation,
            },
        );
    }

    /// (objects found validated, objects validated) since the memo was made.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::model::Validated;
    use crate::policy::model::validate::build_with;
    use crate::policy::source::parse_str;

    const SET: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 70000}]}]
";

    fn errors(diags: &[Diagnostic]) -> Vec<String> {
        let mut e: Vec<String> = diags.iter().map(ToString::to_string).collect();
        e.sort();
        e
    }

    #[test]
    fn an_object_validated_before_gives_the_same_policy_and_diagnostics() {
        let read = parse_str(Path::new("set.yaml"), SET);
        let mut memo = ValidationMemo::new();
        let mut first = Vec::new();
        let a = build_with(
            &read.objects,
            Validated::default(),
            &mut first,
            Some(&mut memo),
        );
        assert_eq!(memo.counts(), (0, 2));
        assert!(first.iter().any(|d| d.to_string().contains("70000")));
        memo.next_reload();
        let mut second = Vec::new();
        let b = build_with(
            &read.objects,
            Validated::default(),
            &mut second,
            Some(&mut memo),
        );
        assert_eq!(memo.counts(), (2, 2), "both found");
        assert_eq!(
            errors(&first),
            errors(&second),
            "the errors are reported again"
        );
        assert_eq!(a.policies.len(), 1);
        assert!(
            Arc::ptr_eq(&a.policies[0], &b.policies[0]),
            "shared, not copied"
        );
    }

    #[test]
    fn a_new_version_is_validated_and_an_unused_one_forgotten() {
        let read = parse_str(Path::new("set.yaml"), SET);
        let mut memo = ValidationMemo::new();
        build_with(
            &read.objects,
            Validated::default(),
            &mut Vec::new(),
            Some(&mut memo),
        );
        // The same text parsed again is another version (another object): validated again.
        let again = parse_str(Path::new("set.yaml"), SET);
        memo.next_reload();
        build_with(
            &again.objects,
            Validated::default(),
            &mut Vec::new(),
            Some(&mut memo),
        );
        assert_eq!(memo.counts(), (0, 4));
        // Two reloads without the first version: it is gone.
        memo.next_reload();
        memo.next_reload();
        assert!(memo.get(&read.objects[0]).is_none());
        assert_eq!(memo.current.len() + memo.previous.len(), 0);
    }
}
