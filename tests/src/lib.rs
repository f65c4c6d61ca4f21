//! Helpers shared by the cross-crate tests: the Python reference
//! interpreter (gguf-py, numpy) and a small deterministic random source.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python interpreter that has the reference packages: `$TRACEDUMP_PYTHON`,
/// else the workspace's `.venv` (which `make test` creates). Panics with
/// what to do when neither exists: a test whose reference is missing fails.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACEDUMP_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no reference Python: set TRACEDUMP_PYTHON or run `make test`, which creates .venv with gguf and numpy"
    );
    venv
}

/// Run `tests/python/<script>` with `args` under [`python`]; panics with its
/// stderr when it fails. Returns stdout.
pub fn run_python(script: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let path = workspace_root().join("tests/python").join(script);
    let mut cmd = Command::new(python());
    cmd.arg(&path);
    for a in args {
        cmd.arg(a.as_ref());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small deterministic generator (xorshift64*), so reference tests are
/// reproducible without a `rand` dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator (seed 0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }

    /// A float in [lo, hi).
    pub fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

/// Traces built record by record (hostile-input tests).
pub mod raw;

/// Seeded record plans for the crash-safety and disk-full tests and their child writer.
pub mod crash;

/// The bodies of the fuzz targets (`fuzz/`), shared with the corpus replay.
pub mod fuzzing;
/// The fuzz body of the `verbs` target (the CLI verbs' library calls).
pub mod fuzzing_verbs;
