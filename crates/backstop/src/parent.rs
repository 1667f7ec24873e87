//! The parent backup's nodes, which an incremental backup looks up by path (is this file
//! unchanged? which page lists can it patch?) or by a source's identity of an immutable file.
//!
//! They are held in one vector sorted by path rather than in a map keyed by a copy of each
//! path: for a tree of many small files this is most of a backup's memory (200,000 files: a
//! `BTreeMap<String, Node>` took 94 MB at the peak, heaptrack).

use std::collections::HashMap;

use crate::error::Result;
use crate::format::{Node, Snapshot};
use crate::repo::Repository;

#[derive(Default)]
pub(crate) struct ParentNodes {
    /// Sorted by path, one node per path.
    nodes: Vec<Node>,
    /// Where in `nodes` the files with a source identity are.
    by_identity: HashMap<String, usize>,
}

impl ParentNodes {
    /// Every node of `snapshot`, with the ids of its page lists' bases (`page_list`).
    pub(crate) fn read(repo: &Repository, snapshot: &Snapshot) -> Result<Self> {
        let counted = snapshot.stats.files.saturating_add(snapshot.stats.dirs);
        let mut nodes = Vec::with_capacity(usize::try_from(counted).unwrap_or(0));
        repo.read_nodes(snapshot, true, |n| {
            nodes.push(n);
            Ok(())
        })?;
        Ok(Self::from_nodes(nodes))
    }

    fn from_nodes(mut nodes: Vec<Node>) -> Self {
        // Tree order is depth first, which is not byte order ("a/x" comes before "a-b").
        nodes.sort_by(|a, b| a.path.cmp(&b.path));
        // A snapshot names each path once; should a damaged one repeat a path, the last node
        // wins, as it did when these were inserted into a map one by one (the sort is stable,
        // so the later node moves into the kept slot).
        nodes.dedup_by(|later, kept| {
            let repeated = later.path == kept.path;
            if repeated {
                std::mem::swap(later, kept);
            }
            repeated
        });
        nodes.shrink_to_fit();
        let by_identity = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.identity.clone().map(|id| (id, i)))
            .collect();
        Self { nodes, by_identity }
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        let i = self
            .nodes
            .binary_search_by(|n| n.path.as_str().cmp(path))
            .ok()?;
        self.nodes.get(i)
    }

    pub(crate) fn with_identity(&self, identity: &str) -> Option<&Node> {
        self.nodes.get(*self.by_identity.get(identity)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{NODE_DIR, NODE_FILE};

    fn node(path: &str, kind: u8, size: u64) -> Node {
        let mut n = Node::new(path.to_owned(), kind);
        n.size = size;
        n
    }

    #[test]
    fn finds_nodes_given_in_tree_order_by_path_and_by_identity() {
        let mut sst = node("db/000009.sst", NODE_FILE, 9);
        sst.identity = Some("sst-9".into());
        // Depth-first order, as a tree holds them: not sorted as bytes.
        let nodes = vec![
            node("a", NODE_DIR, 0),
            node("a/x", NODE_FILE, 1),
            node("a-b", NODE_FILE, 2),
            node("db", NODE_DIR, 0),
            sst,
            node("z", NODE_FILE, 3),
        ];
        let parent = ParentNodes::from_nodes(nodes);
        for (path, size) in [("a/x", 1), ("a-b", 2), ("z", 3), ("db/000009.sst", 9)] {
            assert_eq!(parent.get(path).map(|n| n.size), Some(size), "{path}");
        }
        assert_eq!(parent.get("a").map(|n| n.kind), Some(NODE_DIR));
        assert!(parent.get("a/y").is_none());
        assert!(parent.get("").is_none());
        assert_eq!(
            parent.with_identity("sst-9").map(|n| n.path.as_str()),
            Some("db/000009.sst")
        );
        assert!(parent.with_identity("sst-10").is_none());
        assert!(ParentNodes::default().get("a").is_none());
    }

    #[test]
    fn a_repeated_path_keeps_its_last_node() {
        let parent = ParentNodes::from_nodes(vec![
            node("f", NODE_FILE, 1),
            node("g", NODE_FILE, 5),
            node("f", NODE_FILE, 2),
        ]);
        assert_eq!(parent.get("f").map(|n| n.size), Some(2));
        assert_eq!(parent.get("g").map(|n| n.size), Some(5));
    }
}
