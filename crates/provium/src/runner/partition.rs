//! `--partition hash:K/N` and `count:K/N`: run one of N shards of the
//! discovered files, so N CI machines together run every file exactly once.
//!
//! Both are stable across machines: discovery sorts files by path, and
//! `hash` hashes the path as shown (relative to where it was found), not
//! anything of the machine. `count` deals the sorted files out in turn
//! (file i goes to shard i mod N), so the shards' sizes differ by at most
//! one; `hash` keeps a file in its shard when others are added or removed.

use std::str::FromStr;

use super::TestFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    /// Shard `k` (1-based) of `n` by a hash of the file's path.
    Hash { k: u64, n: u64 },
    /// Shard `k` (1-based) of `n` by position in the sorted file list.
    Count { k: u64, n: u64 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--partition `{given}`: {why} (expected hash:K/N or count:K/N, 1 ≤ K ≤ N)")]
pub struct PartitionError {
    given: String,
    why: &'static str,
}

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(s: &str) -> Result<Partition, PartitionError> {
        let bad = |why| PartitionError { given: s.to_string(), why };
        let (kind, shard) = s.split_once(':').ok_or_else(|| bad("no `:`"))?;
        let (k, n) = shard.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let (k, n): (u64, u64) =
            (k.parse().map_err(|_| bad("K is not a number"))?, n.parse().map_err(|_| bad("N is not a number"))?);
        if n == 0 || k == 0 || k > n {
            return Err(bad("K must be from 1 to N"));
        }
        match kind {
            "hash" => Ok(Partition::Hash { k, n }),
            "count" => Ok(Partition::Count { k, n }),
            _ => Err(bad("unknown kind")),
        }
    }
}

/// FNV-1a (64-bit) of `s`: fixed, so every machine agrees.
fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

impl Partition {
    /// The files of this shard, in their order.
    pub fn select(&self, files: Vec<TestFile>) -> Vec<TestFile> {
        files
            .into_iter()
            .enumerate()
            .filter(|(i, f)| match *self {
                Partition::Hash { k, n } => fnv1a64(&f.shown) % n == k - 1,
                Partition::Count { k, n } => *i as u64 % n == k - 1,
            })
            .map(|(_, f)| f)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize) -> Vec<TestFile> {
        (0..n)
            .map(|i| TestFile { path: format!("/s/f{i:02}.test.lua").into(), shown: format!("f{i:02}.test.lua") })
            .collect()
    }

    #[test]
    fn shards_cover_every_file_exactly_once() {
        let all = files(17);
        for n in 1..=5 {
            for kind in ["hash", "count"] {
                let mut seen: Vec<String> = Vec::new();
                for k in 1..=n {
                    let p: Partition = format!("{kind}:{k}/{n}").parse().unwrap();
                    seen.extend(p.select(all.clone()).into_iter().map(|f| f.shown));
                }
                seen.sort();
                let expected: Vec<String> = all.iter().map(|f| f.shown.clone()).collect();
                assert_eq!(seen, expected, "{kind} N={n}");
            }
        }
        let sizes: Vec<usize> = (1..=3).map(|k| Partition::Count { k, n: 3 }.select(all.clone()).len()).collect();
        assert_eq!(sizes, vec![6, 6, 5]);
    }

    #[test]
    fn bad_partitions_say_what_is_expected() {
        for bad in ["hash", "hash:1", "hash:0/2", "hash:3/2", "mod:1/2", "count:a/2", "count:1/0"] {
            let e = bad.parse::<Partition>().unwrap_err().to_string();
            assert!(e.starts_with(&format!("--partition `{bad}`:")) && e.contains("hash:K/N or count:K/N"), "{e}");
        }
        assert_eq!("count:2/3".parse::<Partition>(), Ok(Partition::Count { k: 2, n: 3 }));
    }
}
