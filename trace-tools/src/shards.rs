//! Traces from many processes: a directory (or glob) of shards, one trace
//! file per rank, opened as one.
//!
//! Each shard is an ordinary trace whose run metadata says `rank` and
//! `world_size` (when it does not, ranks follow the sorted file names).
//! Tensor names are qualified by rank when they collide across shards:
//! `rank1/attn_out-0`; a name only one shard has keeps its own name.
//! [`diff_by_rank`] compares two sharded runs rank by rank.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::compare::{diff, DiffReport, Tolerance};
use crate::mapping::Mapping;
use trace_reader::{ReaderError, Trace, Value};

use crate::ToolsError;

/// One shard: its rank and its trace.
#[derive(Debug)]
pub struct Shard {
    /// The rank (run metadata `rank`, else the position in sorted order).
    pub rank: i64,
    /// The shard's trace.
    pub trace: Trace,
}

/// Qualified name → (shard position, record id), in rank then record
/// order, and where each name sits in that list.
#[derive(Debug)]
struct NameIndex {
    names: Vec<(String, usize, u64)>,
    by_name: HashMap<String, Vec<usize>>,
}

impl NameIndex {
    fn of(shards: &[Shard]) -> NameIndex {
        // names in more than one shard are qualified by rank
        let mut owners: HashMap<&str, Vec<usize>> = HashMap::new();
        for (k, s) in shards.iter().enumerate() {
            for &id in s.trace.tensor_ids() {
                let n = s.trace.record_name(id).unwrap_or("");
                let o = owners.entry(n).or_default();
                if o.last() != Some(&k) {
                    o.push(k);
                }
            }
        }
        let mut names = Vec::new();
        for (k, s) in shards.iter().enumerate() {
            for &id in s.trace.tensor_ids() {
                let n = s.trace.record_name(id).unwrap_or("");
                let q = if owners.get(n).is_some_and(|o| o.len() > 1) {
                    format!("rank{}/{n}", s.rank)
                } else {
                    n.to_string()
                };
                names.push((q, k, id));
            }
        }
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (q, _, _)) in names.iter().enumerate() {
            by_name.entry(q.clone()).or_default().push(i);
        }
        NameIndex { names, by_name }
    }
}

/// A sharded trace.
#[derive(Debug)]
pub struct Shards {
    path: PathBuf,
    shards: Vec<Shard>,
    warnings: Vec<String>,
    /// The qualified names, built on first use ([`Shards::tensors`],
    /// [`Shards::resolve`]): a verb that only walks the shards never pays
    /// for a string per tensor.
    index: std::sync::OnceLock<NameIndex>,
    /// Opened from a directory or glob (not one file).
    sharded: bool,
}

/// Whether `path` names shards: a directory, or a file name with `*` / `?`.
pub fn is_sharded(path: &Path) -> bool {
    path.is_dir()
        || path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(['*', '?']))
}

/// `*` and `?` matching of one file name.
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            matches(&pattern[1..], name) || (!name.is_empty() && matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The shard files `path` names, sorted: a directory's `*.tdump` files, or
/// the files a `dir/pattern*.tdump` glob matches.
pub fn shard_files(path: &Path) -> Result<Vec<PathBuf>, ToolsError> {
    let io = |error| ReaderError::Io {
        path: path.to_path_buf(),
        error,
    };
    let (dir, pattern) = if path.is_dir() {
        (path.to_path_buf(), "*.tdump".to_string())
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let pattern = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (dir.to_path_buf(), pattern)
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| matches(pattern.as_bytes(), n.to_string_lossy().as_bytes()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no shard matches {pattern} in {}", dir.display()),
        ))
        .into());
    }
    Ok(files)
}

/// A trace's `rank` from its run metadata (an integer, or a string of one).
pub fn metadata_rank(trace: &Trace) -> Option<i64> {
    int(trace.run_metadata().get("rank"))
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::I64(x) => Some(*x),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::Str(s) => s.parse().ok(),
        _ => None,
    }
}

impl Shards {
    /// Open every shard `path` names (see [`shard_files`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Shards, ToolsError> {
        let path = path.as_ref().to_path_buf();
        let mut shards = Vec::new();
        for (i, f) in shard_files(&path)?.into_iter().enumerate() {
            let trace = Trace::open(&f)?;
            let rank = metadata_rank(&trace).unwrap_or(i as i64);
            shards.push(Shard { rank, trace });
        }
        Ok(Self::from_shards(path, shards))
    }

    /// A trace file, as a run of one shard, or every shard a directory or
    /// glob names: the one way the verbs open what they are given.
    pub fn open_any(path: impl AsRef<Path>) -> Result<Shards, ToolsError> {
        let path = path.as_ref();
        if is_sharded(path) {
            return Self::open(path);
        }
        Ok(Self::single(Trace::open(path)?))
    }

    /// One trace as a run of one shard (its rank from the run metadata, else 0).
    pub fn single(trace: Trace) -> Shards {
        let rank = metadata_rank(&trace).unwrap_or(0);
        let mut s = Self::from_shards(trace.path().to_path_buf(), vec![Shard { rank, trace }]);
        s.warnings.clear();
        s.sharded = false;
        s
    }

    /// Whether this run was opened from a directory or glob of shards.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The one trace of a run that is not sharded; for shards, an error
    /// saying that `verb` takes one trace file.
    pub fn only(&self, verb: &str) -> Result<&Trace, ToolsError> {
        match (&self.shards[..], self.sharded) {
            ([s], false) => Ok(&s.trace),
            _ => Err(ToolsError::Invalid(format!(
                "{}: {verb} takes one trace file, not a directory or glob of shards ({} shards here); give it one rank's file",
                self.path.display(),
                self.shards.len()
            ))),
        }
    }

    /// Shards already open.
    pub fn from_shards(path: PathBuf, mut shards: Vec<Shard>) -> Shards {
        shards.sort_by_key(|s| s.rank);
        let mut warnings = Vec::new();
        for w in shards.windows(2) {
            if w[0].rank == w[1].rank {
                warnings.push(format!(
                    "{} and {} both say rank {}",
                    w[0].trace.path().display(),
                    w[1].trace.path().display(),
                    w[0].rank
                ));
            }
        }
        for s in &shards {
            if let Some(ws) = int(s.trace.run_metadata().get("world_size")) {
                if ws != shards.len() as i64 {
                    warnings.push(format!(
                        "{} says world_size {ws}, {} shards are here",
                        s.trace.path().display(),
                        shards.len()
                    ));
                }
            }
        }
        Shards {
            path,
            shards,
            warnings,
            index: std::sync::OnceLock::new(),
            sharded: true,
        }
    }

    /// The directory or glob opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shards, by rank.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Inconsistencies seen (repeated ranks, world sizes that disagree).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every tensor: (qualified name, shard position, record id), rank by
    /// rank, in record order within a shard.
    pub fn tensors(&self) -> &[(String, usize, u64)] {
        &self.index().names
    }

    fn index(&self) -> &NameIndex {
        self.index.get_or_init(|| NameIndex::of(&self.shards))
    }

    /// Look a tensor up by qualified name (`name#k` for the k-th occurrence,
    /// as [`Trace::resolve`]): its shard position and record id.
    pub fn resolve(&self, name: &str) -> Result<(usize, u64), ToolsError> {
        let index = self.index();
        let hit = index.by_name.get(name).and_then(|v| v.first()).or_else(|| {
            let (base, k) = name.rsplit_once('#')?;
            index.by_name.get(base)?.get(k.parse::<usize>().ok()?)
        });
        match hit {
            Some(&i) => Ok((index.names[i].1, index.names[i].2)),
            None => Err(ReaderError::NotFound {
                path: self.path.clone(),
                name: name.to_owned(),
            }
            .into()),
        }
    }
}

/// What [`diff_by_rank`] found for one rank.
#[derive(Debug)]
pub struct RankDiff {
    /// The rank.
    pub rank: i64,
    /// A's and B's shard for it (None when a side has no such rank).
    pub files: (Option<PathBuf>, Option<PathBuf>),
    /// The comparison, when both sides have the rank.
    pub report: Option<DiffReport>,
}

/// Compare two sharded runs rank by rank (rank r of A with rank r of B).
pub fn diff_by_rank(
    a: &Shards,
    b: &Shards,
    mapping: &Mapping,
    tolerance: &Tolerance,
) -> Result<Vec<RankDiff>, ToolsError> {
    let mut ranks: Vec<i64> = a.shards.iter().chain(&b.shards).map(|s| s.rank).collect();
    ranks.sort();
    ranks.dedup();
    let mut out = Vec::new();
    for r in ranks {
        let sa = a.shards.iter().find(|s| s.rank == r);
        let sb = b.shards.iter().find(|s| s.rank == r);
        let report = match (sa, sb) {
            (Some(x), Some(y)) => Some(diff(&x.trace, &y.trace, mapping, tolerance, |_, _| {})?),
            _ => None,
        };
        out.push(RankDiff {
            rank: r,
            files: (
                sa.map(|s| s.trace.path().to_path_buf()),
                sb.map(|s| s.trace.path().to_path_buf()),
            ),
            report,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn glob_matching() {
        assert!(matches(b"rank*.tdump", b"rank12.tdump"));
        assert!(matches(b"r?.tdump", b"r1.tdump"));
        assert!(!matches(b"rank*.tdump", b"rank1.gguf"));
        assert!(matches(b"*", b""));
        assert!(!matches(b"a*b", b"acd"));
    }
}
