//! Reading: `Trace::open` of traces of many small tensors, and the first
//! access of each by name, against the `safetensors` crate doing the same
//! over a mapped file.

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use safetensors::SafeTensors;
use trace_reader::Trace;
use trace_writer::Mode;

use crate::write::{write_safetensors, write_trace};
use crate::{interleaved, ms, pattern, progress, tensor_names, Args, Res, Row, Stat};

const SMALL_BYTES: usize = 256;
const OPEN_COUNTS: [usize; 2] = [20_000, 100_000];

pub(crate) fn check(t: &Trace, expected: usize) -> Res<()> {
    if !t.is_finished() || t.len() != expected {
        return Err(format!(
            "trace {} has {} tensors, expected {expected}",
            t.path().display(),
            t.len()
        )
        .into());
    }
    Ok(())
}

/// `File::open`, map, `SafeTensors::deserialize` (`read_metadata`: the
/// header parsed and checked), then `tensor(name)` of every tensor: the
/// crate's best API for "open and reach every tensor by name".
fn open_safetensors(path: &Path, names: &[String]) -> Res<Duration> {
    let start = Instant::now();
    let file = File::open(path)?;
    // SAFETY: the file is this benchmark's own scratch file, written before
    // and not modified or truncated while the map is alive.
    let map = unsafe { Mmap::map(&file)? };
    let st = SafeTensors::deserialize(&map)?;
    let mut bytes = 0;
    for name in names {
        bytes += st.tensor(name)?.data().len();
    }
    let elapsed = start.elapsed();
    black_box(bytes);
    if st.len() != names.len() {
        return Err(format!("{} holds {} tensors", path.display(), st.len()).into());
    }
    drop(st);
    drop(map);
    Ok(elapsed)
}

/// `Trace::open`, then the first access of every tensor by name
/// (`view_by_name` + `as_slice`): the name map and the descriptor decoding
/// the open defers to first use are in the figure.
pub(crate) fn open_ours(path: &Path, names: &[String]) -> Res<Duration> {
    let start = Instant::now();
    let t = Trace::open(path)?;
    let mut elems = 0;
    for name in names {
        elems += t.view_by_name(name)?.as_slice::<f32>()?.len();
    }
    let elapsed = start.elapsed();
    black_box(elems);
    check(&t, names.len())?;
    Ok(elapsed)
}

pub(crate) fn rows(args: &Args, dir: &Path) -> Res<Vec<Row>> {
    let rounds = 2 * args.repeat + 1;
    let counts = OPEN_COUNTS.map(|n| args.scaled(n));
    let data = pattern(counts[1] * SMALL_BYTES);
    let mut rows = Vec::new();
    for n in counts {
        progress(&format!(
            "open a trace of {n} tensors + every tensor by name, vs safetensors ({rounds} rounds)"
        ));
        let names = tensor_names(n);
        let (trace, st) = (
            dir.join(format!("open-{n}.tdump")),
            dir.join(format!("open-{n}.safetensors")),
        );
        let bytes = &data[..n * SMALL_BYTES];
        write_trace(&trace, Mode::Sync, &names, bytes, SMALL_BYTES)?;
        write_safetensors(&st, &names, bytes, SMALL_BYTES)?;
        let [ours, theirs] = interleaved(
            rounds,
            &mut [
                &mut |_: usize| open_ours(&trace, &names),
                &mut |_: usize| open_safetensors(&st, &names),
            ],
        )?;
        rows.push(
            Row::new(
                "read",
                format!("Rust Trace::open + view_by_name of every tensor, {n} tensors"),
                "ms",
                Stat::of(&ours, ms),
            )
            .vs(
                "safetensors mmap + deserialize + tensor(name) of every tensor",
                Stat::of(&theirs, ms),
            )
            .goal_ratio(2.0, None),
        );
        std::fs::remove_file(&trace)?;
        std::fs::remove_file(&st)?;
    }
    Ok(rows)
}
