//! Multi-key transactions: compares, then writes, all or nothing.

use std::{
    fmt,
    hash::{Hash, Hasher},
};

use super::{Revision, Tree};

/// Names one stored value. It changes whenever the value does (a backend may also
/// change it when the same bytes are written again: etcd's modification revision does,
/// the local backends' digest of the value does not). Since every sealed record carries
/// a fresh random nonce, no two writes of the vault store the same bytes, and the two
/// meanings agree for everything the vault compares.
pub type Version = u64;

/// The version the local backends give a value: a 64-bit digest of its bytes.
pub fn version_of(value: &[u8]) -> Version {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Shows bytes by their length only: keys name accounts by email, and values are
/// sealed records, neither of which belongs in a log or a panic message.
pub struct Redacted<'a>(pub &'a [u8]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// A stored value with its version.
#[derive(Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: Version,
}

impl Versioned {
    pub fn new(value: Vec<u8>) -> Self {
        let version = version_of(&value);
        Versioned { value, version }
    }
}

impl fmt::Debug for Versioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versioned")
            .field("value", &Redacted(&self.value))
            .field("version", &self.version)
            .finish()
    }
}

/// What a compare expects a key to hold.
#[derive(Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Value(Vec<u8>),
    Version(Version),
}

impl Expect {
    /// `Absent` for `None`, else that value.
    pub fn from_value(value: Option<&[u8]>) -> Self {
        match value {
            Some(value) => Expect::Value(value.to_vec()),
            None => Expect::Absent,
        }
    }

    /// Whether a key holding the bytes `current` meets this expectation, for a backend
    /// whose versions are [`version_of`] its values (the digest is made only for a
    /// version compare).
    pub fn holds_bytes(&self, current: Option<&[u8]>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Value(want), Some(current)) => want.as_slice() == current,
            (Expect::Version(want), Some(current)) => *want == version_of(current),
            _ => false,
        }
    }

    /// Whether a key holding `current` meets this expectation.
    pub fn holds(&self, current: Option<&Versioned>) -> bool {
        match (self, current) {
            (Expect::Absent, None) => true,
            (Expect::Value(want), Some(current)) => *want == current.value,
            (Expect::Version(want), Some(current)) => *want == current.version,
            _ => false,
        }
    }
}

impl fmt::Debug for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Absent => f.write_str("Absent"),
            Expect::Value(value) => f.debug_tuple("Value").field(&Redacted(value)).finish(),
            Expect::Version(version) => f.debug_tuple("Version").field(version).finish(),
        }
    }
}

/// One key a transaction compares.
#[derive(Clone)]
pub struct Compare {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub expect: Expect,
}

impl fmt::Debug for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compare")
            .field("tree", &self.tree)
            .field("key", &Redacted(&self.key))
            .field("expect", &self.expect)
            .finish()
    }
}

/// One key a transaction writes: `value` is the new value, `None` deletes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Write {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl fmt::Debug for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Write")
            .field("tree", &self.tree)
            .field("key", &Redacted(&self.key))
            .field("value", &self.value.as_deref().map(Redacted))
            .finish()
    }
}

/// Compares, then writes. The writes happen only if every compare holds, and then all
/// of them, at one new revision.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub writes: Vec<Write>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn expect(mut self, tree: Tree, key: &[u8], expect: Expect) -> Self {
        self.compares.push(Compare {
            tree,
            key: key.to_vec(),
            expect,
        });
        self
    }

    /// Writes `value` under `key`, or deletes it when `value` is `None`.
    pub fn write(mut self, tree: Tree, key: &[u8], value: Option<&[u8]>) -> Self {
        self.writes.push(Write {
            tree,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        });
        self
    }

    pub fn put(self, tree: Tree, key: &[u8], value: &[u8]) -> Self {
        self.write(tree, key, Some(value))
    }

    pub fn delete(self, tree: Tree, key: &[u8]) -> Self {
        self.write(tree, key, None)
    }
}

/// How a transaction ended, when the store did not fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every compare held; the writes are committed at this revision.
    Committed(Revision),
    /// A compare failed and nothing was written. What each compared key holds now, in
    /// the order of the compares.
    Conflict(Vec<Option<Versioned>>),
}

impl Outcome {
    pub fn committed(&self) -> bool {
        matches!(self, Outcome::Committed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_lengths_not_keys_or_values() {
        let txn = Txn::new()
            .expect(
                Tree::Accounts,
                b"pixverse\0a@example.com",
                Expect::Value(b"sealed-secret".to_vec()),
            )
            .put(Tree::Accounts, b"pixverse\0a@example.com", b"sealed-secret");
        let outcome = Outcome::Conflict(vec![Some(Versioned::new(b"sealed-secret".to_vec()))]);
        for shown in [format!("{txn:?}"), format!("{outcome:?}")] {
            assert!(
                !shown.contains("example.com") && !shown.contains("secret"),
                "{shown}"
            );
            assert!(shown.contains("bytes>"), "{shown}");
        }
    }

    #[test]
    fn a_version_compare_on_bytes_is_a_digest_compare() {
        let held = b"value".as_slice();
        assert!(Expect::Version(version_of(held)).holds_bytes(Some(held)));
        assert!(!Expect::Version(version_of(b"other")).holds_bytes(Some(held)));
        assert!(Expect::Absent.holds_bytes(None));
        assert!(!Expect::Value(held.to_vec()).holds_bytes(None));
    }
}
