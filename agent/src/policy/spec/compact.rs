//! Compact shapes for the parts of a policy that repeat per rule. A document's spec objects stay
//! in memory while it is in force (a reload validates from them without re-parsing), so their
//! slack is paid per rule: serde grows a list whose length YAML does not announce by doubling
//! (a one-peer `from` kept room for four peers, 2 KiB), and a B-tree map's first node has room
//! for eleven entries (a one-label `matchLabels`, 540 B). At 100k rules that was two thirds of
//! the agent's memory. And every value whose position a diagnostic may name carries it as
//! [`Spanned`]: a line and a column in 8 bytes, where serde-saphyr's own `Spanned` keeps two
//! 28-byte locations (where the value was referenced and where defined, each with a byte span
//! and a source id) that nothing here reads: a rule's one peer and one port were 632 bytes, 248
//! with these.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// A value and the line and column (1-based; 0: unknown) where the document refers to it (for
/// an alias, where the alias stands), read through serde-saphyr's `Spanned`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spanned<T> {
    pub value: T,
    pub referenced: At,
}

/// A position in a document: line and column, 1-based (0: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct At {
    line: u32,
    column: u32,
}

impl At {
    pub fn new(line: u64, column: u64) -> At {
        At {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }

    pub fn line(&self) -> u64 {
        u64::from(self.line)
    }

    pub fn column(&self) -> u64 {
        u64::from(self.column)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Spanned<T>, D::Error> {
        let read = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(Spanned {
            referenced: At::new(read.referenced.line(), read.referenced.column()),
            value: read.value,
        })
    }
}

/// Written as the value alone (a policy written back out carries no positions).
impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

/// A list kept at its length (a boxed slice), read and described in schemas as a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(Box<[T]>);

impl<T> Default for List<T> {
    fn default() -> List<T> {
        List(Box::default())
    }
}

impl<T> std::ops::Deref for List<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'a, T> IntoIterator for &'a List<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<List<T>, D::Error> {
        Vec::deserialize(deserializer).map(|list| List(list.into_boxed_slice()))
    }
}

/// The schema of a `Vec<T>`: the CRDs do not tell the two apart.
impl<T: schemars::JsonSchema> schemars::JsonSchema for List<T> {
    fn inline_schema() -> bool {
        Vec::<T>::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        Vec::<T>::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        Vec::<T>::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        Vec::<T>::json_schema(generator)
    }
}

/// A string-to-string map (`matchLabels`) as a list sorted by key: read as a map is (a key given
/// twice keeps its last value), iterated in key order, and sized to its entries. Its schema is
/// a map's (`#[schemars(with = "BTreeMap<String, String>")]` where it is used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMap(Box<[(String, String)]>);

impl StringMap {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a StringMap {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StringMap, D::Error> {
        struct MapVisitor;

        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StringMap;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                // Through a B-tree map: its semantics (sorted, last value wins), then a list of
                // exactly its length.
                let mut entries = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    entries.insert(key, value);
                }
                Ok(StringMap(entries.into_iter().collect()))
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spec::objects::{NpPeer, PortEntry};

    #[test]
    fn a_rule_peer_and_port_stay_small() {
        // What each NetworkPolicy rule's one peer and one port cost in the kept spec objects
        // (632 bytes with serde-saphyr's own spans).
        assert!(size_of::<Spanned<()>>() <= 8);
        let rule = size_of::<Spanned<NpPeer>>() + size_of::<Spanned<PortEntry>>();
        assert!(rule <= 256, "{rule} bytes");
    }

    #[test]
    fn spanned_values_keep_line_and_column() {
        #[derive(Debug, serde::Deserialize)]
        struct Doc {
            a: Spanned<u32>,
            b: Spanned<Vec<Spanned<String>>>,
        }
        let doc: Doc = serde_saphyr::from_str("a: 1\nb:\n  - x\n  -   y\n").expect("parse");
        assert_eq!(doc.a.value, 1);
        assert_eq!((doc.a.referenced.line(), doc.a.referenced.column()), (1, 4));
        let items: Vec<(u64, u64)> = doc
            .b
            .value
            .iter()
            .map(|s| (s.referenced.line(), s.referenced.column()))
            .collect();
        assert_eq!(items, [(3, 5), (4, 7)]);
        assert_eq!(serde_json::to_string(&doc.a).expect("json"), "1");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Shape {
        list: Option<List<u32>>,
        labels: Option<StringMap>,
    }

    #[test]
    fn lists_are_kept_at_their_length_and_maps_read_as_maps() {
        let shape: Shape =
            serde_saphyr::from_str("list: [1]\nlabels: {b: '3', a: '1'}\n").expect("reads");
        let list = shape.list.expect("list");
        assert_eq!(&*list, &[1]);
        let labels = shape.labels.expect("labels");
        let pairs: Vec<(&String, &String)> = labels.iter().collect();
        assert_eq!(
            pairs,
            [
                (&"a".to_owned(), &"1".to_owned()),
                (&"b".to_owned(), &"3".to_owned())
            ]
        );
        let absent: Shape = serde_saphyr::from_str("labels: {}\n").expect("reads");
        assert!(absent.list.is_none());
        assert!(absent.labels.is_some_and(|l| l.is_empty()));
    }

    #[test]
    fn a_map_of_other_values_or_a_key_given_twice_is_an_error() {
        assert!(serde_saphyr::from_str::<Shape>("labels: {a: '1', a: '2'}\n").is_err());
        assert!(serde_saphyr::from_str::<Shape>("labels: {a: [1]}\n").is_err());
        assert!(serde_saphyr::from_str::<Shape>("labels: [a]\n").is_err());
    }
}
