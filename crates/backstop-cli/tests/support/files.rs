//! File helpers the CLI's test binaries share (each includes this file with `#[path]`): a
//! directory's contents for byte-for-byte comparison, incompressible test data, and the files
//! under a directory (from `backstop_store::test_servers`, like the server harnesses).
#![allow(dead_code, reason = "each test binary uses some of these")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

use std::collections::BTreeMap;
use std::path::Path;

/// A directory's contents: relative path -> bytes, or `None` for a directory.
pub(crate) type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Every file under `root` (relative path -> bytes), and every directory (-> None).
pub(crate) fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Incompressible bytes, fast, different per seed (xorshift64*).
pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every regular file under `dir`, recursively.
pub(crate) use backstop_store::test_servers::files_under;
