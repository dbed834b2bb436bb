//! Multi-key transactions: compares, then writes, all or nothing.

use std::hash::{Hash, Hasher};

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

/// A stored value with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// What a compare expects a key to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// One key a transaction compares.
#[derive(Clone, Debug)]
pub struct Compare {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub expect: Expect,
}

/// One key a transaction writes: `value` is the new value, `None` deletes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
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
