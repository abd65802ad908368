//! kmod's binary index format (`modules.dep.bin`, `modules.builtin.bin`): a prefix-compressed
//! trie of NUL-free keys, each with a list of (priority, value) strings. `modprobe` and
//! libkmod read only these indexes, never the text `modules.dep`, so a guest tree that is
//! not run through `depmod` needs them written here.
//!
//! ```text
//!  header   u32 magic 0xB007F457 · u32 version 0x0002_0001 · u32 root node offset
//!  offset   u32: bits 0..28 file offset of the node, | 0x8000_0000 prefix
//!                                                   | 0x4000_0000 values | 0x2000_0000 children
//!  node     [prefix bytes, NUL]                                 (if prefix)
//!           [u8 first, u8 last, (last-first+1) × u32 offset]    (if children; 0 = none)
//!           [u32 count, count × (u32 priority, value bytes, NUL)] (if values)
//! ```
//! All integers big-endian. A lookup walks the key: a node's prefix must match, then the next
//! key byte picks a child; where the key ends, the node's values are the answer.

use std::collections::BTreeMap;

const MAGIC: u32 = 0xB007_F457;
const VERSION: u32 = 0x0002_0001;
const PREFIX: u32 = 0x8000_0000;
const VALUES: u32 = 0x4000_0000;
const CHILDREN: u32 = 0x2000_0000;

#[derive(Default)]
struct Node {
    children: BTreeMap<u8, Node>,
    values: Vec<(u32, String)>,
}

/// The index of `entries` (key, value, priority). Values of one key are kept in priority order.
pub(super) fn write(entries: impl IntoIterator<Item = (String, String, u32)>) -> Vec<u8> {
    let mut root = Node::default();
    for (key, value, priority) in entries {
        let mut node = &mut root;
        for b in key.bytes() {
            node = node.children.entry(b).or_default();
        }
        node.values.push((priority, value));
    }
    let mut out = Vec::new();
    for word in [MAGIC, VERSION, 0] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    let root_offset = write_node(&root, &mut out);
    out[8..12].copy_from_slice(&root_offset.to_be_bytes());
    out
}

/// Writes `node` (children first) and returns its offset word.
fn write_node(node: &Node, out: &mut Vec<u8>) -> u32 {
    // A chain of nodes with one child and no values becomes the prefix of the last one.
    let mut prefix = Vec::new();
    let mut node = node;
    while node.values.is_empty() && node.children.len() == 1 {
        let (&b, child) = node.children.iter().next().expect("one child");
        prefix.push(b);
        node = child;
    }
    let children: Vec<(u8, u32)> = node.children.iter().map(|(&b, child)| (b, write_node(child, out))).collect();
    let offset = u32::try_from(out.len()).expect("kmod index below 256 MiB");
    let mut flags = 0;
    if !prefix.is_empty() {
        flags |= PREFIX;
        out.extend_from_slice(&prefix);
        out.push(0);
    }
    if let (Some(&(first, _)), Some(&(last, _))) = (children.first(), children.last()) {
        flags |= CHILDREN;
        out.extend_from_slice(&[first, last]);
        let mut table = vec![0u32; usize::from(last - first) + 1];
        for (b, off) in &children {
            table[usize::from(b - first)] = *off;
        }
        for off in table {
            out.extend_from_slice(&off.to_be_bytes());
        }
    }
    if !node.values.is_empty() {
        flags |= VALUES;
        let mut values = node.values.clone();
        values.sort_by_key(|(p, _)| *p);
        out.extend_from_slice(&(values.len() as u32).to_be_bytes());
        for (priority, value) in values {
            out.extend_from_slice(&priority.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
    }
    offset | flags
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of the format above, to check the writer against.
    fn lookup(index: &[u8], key: &str) -> Option<Vec<String>> {
        let be = |o: usize| u32::from_be_bytes(index[o..o + 4].try_into().unwrap());
        assert_eq!(be(0), MAGIC);
        assert_eq!(be(4) >> 16, 2);
        let mut word = be(8);
        let key = key.as_bytes();
        let mut i = 0;
        loop {
            let mut at = (word & 0x0FFF_FFFF) as usize;
            if word & PREFIX != 0 {
                let end = at + index[at..].iter().position(|&b| b == 0).unwrap();
                let prefix = &index[at..end];
                if !key[i..].starts_with(prefix) {
                    return None;
                }
                i += prefix.len();
                at = end + 1;
            }
            let (mut first, mut last) = (1u8, 0u8);
            let children_at = at + 2;
            if word & CHILDREN != 0 {
                (first, last) = (index[at], index[at + 1]);
                at = children_at + 4 * (usize::from(last - first) + 1);
            }
            if i == key.len() {
                if word & VALUES == 0 {
                    return None;
                }
                let count = be(at) as usize;
                let mut values = Vec::new();
                let mut p = at + 4;
                for _ in 0..count {
                    let end = p + 4 + index[p + 4..].iter().position(|&b| b == 0).unwrap();
                    values.push(String::from_utf8(index[p + 4..end].to_vec()).unwrap());
                    p = end + 1;
                }
                return Some(values);
            }
            let b = key[i];
            if word & CHILDREN == 0 || b < first || b > last {
                return None;
            }
            word = be(children_at + 4 * usize::from(b - first));
            if word == 0 {
                return None;
            }
            i += 1;
        }
    }

    #[test]
    fn keys_are_found_and_others_not() {
        let keys = ["virtio", "virtio_net", "virtio_ring", "failover", "net_failover", "e1000"];
        let index = write(keys.iter().enumerate().map(|(i, k)| (k.to_string(), format!("kernel/{k}.ko:"), i as u32)));
        for k in keys {
            assert_eq!(lookup(&index, k), Some(vec![format!("kernel/{k}.ko:")]), "{k}");
        }
        for k in ["virt", "virtio_", "virtio_netx", "x", ""] {
            assert_eq!(lookup(&index, k), None, "{k}");
        }
    }

    #[test]
    fn empty_index_has_a_root() {
        let index = write(std::iter::empty());
        assert_eq!(index.len(), 12);
        assert_eq!(lookup(&index, "a"), None);
    }
}
