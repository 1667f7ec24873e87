//! The parent backup's nodes, which an incremental backup looks up by path (is this file
//! unchanged? which page lists can it patch?) or by a source's identity of an immutable file.
//!
//! For a phase listed up front they are held in one vector sorted by path ([`ParentNodes`]):
//! its entries may come in any order. A streamed phase (a directory walk) lists its entries in
//! tree order, the order the parent stored them in, so [`ParentCursor`] reads the parent's
//! nodes alongside, a few tree blobs at a time, and a backup of many files holds neither list
//! (200,000 small files: 146 MB at the peak with both in memory, see bench/README).

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};

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
        // A snapshot holds its nodes in the order its phases stored them, which is not byte
        // order (in tree order "a-b" comes before "a/x").
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

/// Raw bytes of tree blobs the cursor reads at a time: a few thousand nodes.
const CURSOR_WINDOW_BYTES: u64 = 1 << 20;

/// The parent backup's nodes read in stored order while a streamed phase asks for its paths in
/// tree order ([`backstop_source::tree_order`]): a merge join, holding one window of nodes.
pub(crate) struct ParentCursor<'r> {
    repo: &'r Repository,
    snapshot: &'r Snapshot,
    /// The next tree blob to read.
    next_tree: usize,
    nodes: VecDeque<Node>,
}

impl<'r> ParentCursor<'r> {
    pub(crate) fn new(repo: &'r Repository, snapshot: &'r Snapshot) -> Self {
        Self {
            repo,
            snapshot,
            next_tree: 0,
            nodes: VecDeque::new(),
        }
    }

    /// The parent's node at `path`, passing over the nodes before it (paths no longer in the
    /// tree). Asked out of tree order, it misses a node it passed, and the file is read again:
    /// slower, never wrong.
    pub(crate) fn find(&mut self, path: &str) -> Result<Option<Node>> {
        loop {
            let Some(front) = self.nodes.front() else {
                if self.read_more()? {
                    continue;
                }
                return Ok(None);
            };
            match backstop_source::tree_order(&front.path, path) {
                Ordering::Less => {
                    self.nodes.pop_front();
                }
                Ordering::Equal => return Ok(self.nodes.pop_front()),
                Ordering::Greater => return Ok(None),
            }
        }
    }

    /// Reads the next window of tree blobs; false when there are none left.
    fn read_more(&mut self) -> Result<bool> {
        let nodes = &mut self.nodes;
        let read = self.repo.read_node_window(
            self.snapshot,
            self.next_tree,
            CURSOR_WINDOW_BYTES,
            true,
            &mut |n| {
                nodes.push_back(n);
                Ok(())
            },
        )?;
        self.next_tree += read;
        Ok(read > 0)
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
        // Tree order, as a directory backup stores them: not sorted as bytes.
        let nodes = vec![
            node("a", NODE_DIR, 0),
            node("a-b", NODE_FILE, 2),
            node("db", NODE_DIR, 0),
            node("z", NODE_FILE, 3),
            node("a/x", NODE_FILE, 1),
            sst,
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
