//! Reading: `Trace::open` of traces of many small tensors against the
//! `safetensors` crate opening the same tensors over a mapped file, and
//! the open's I/O floor.

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use memmap2::Mmap;
use safetensors::SafeTensors;
use trace_reader::Trace;
use trace_writer::Mode;

use crate::write::{write_safetensors, write_trace};
use crate::{interleaved, ms, pattern, progress, tensor_names, Args, Res, Row};

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

/// `File::open`, map, `SafeTensors::deserialize` (= `read_metadata`, the
/// header parsed and checked, plus a slice).
fn open_safetensors(path: &Path, expected: usize) -> Res<Duration> {
    let start = Instant::now();
    let file = File::open(path)?;
    // SAFETY: the file is this benchmark's own scratch file, written before
    // and not modified or truncated while the map is alive.
    let map = unsafe { Mmap::map(&file)? };
    let st = SafeTensors::deserialize(&map)?;
    let elapsed = start.elapsed();
    if st.len() != expected {
        return Err(format!("{} holds {} tensors", path.display(), st.len()).into());
    }
    drop(st);
    drop(map);
    Ok(elapsed)
}

fn open_ours(path: &Path, expected: usize) -> Res<Duration> {
    let start = Instant::now();
    let t = Trace::open(path)?;
    let elapsed = start.elapsed();
    check(&t, expected)?;
    Ok(elapsed)
}

pub(crate) fn rows(args: &Args, dir: &Path) -> Res<Vec<Row>> {
    let rounds = 2 * args.repeat + 1;
    let counts = OPEN_COUNTS.map(|n| args.scaled(n));
    let data = pattern(counts[1] * SMALL_BYTES);
    let mut rows = Vec::new();
    for n in counts {
        progress(&format!(
            "open a trace of {n} tensors vs safetensors (best of {rounds})"
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
            &mut [&mut |_: usize| open_ours(&trace, n), &mut |_: usize| {
                open_safetensors(&st, n)
            }],
        )?;
        rows.push(
            Row::time(
                "read",
                format!("Rust Trace::open, {n} tensors"),
                "ms",
                ms(ours),
            )
            .vs("safetensors mmap + SafeTensors::deserialize", ms(theirs))
            .goal_ratio(2.0, None),
        );
        if n == counts[1] {
            rows.extend(internals(args, &trace, n)?);
        }
    }
    Ok(rows)
}

/// The rows kept from the first version of this bench: the open against its
/// I/O floor (goal ≤ 50 ms for 100,000 tensors), listing the names, and the
/// first view of every tensor.
fn internals(args: &Args, path: &Path, n: usize) -> Res<Vec<Row>> {
    let (footer_offset, file_len) = {
        let t = Trace::open(path)?;
        (
            t.footer_offset().ok_or("the trace has no footer")?,
            t.file_len(),
        )
    };
    let [open, listed, floor] = interleaved(
        2 * args.repeat + 1,
        &mut [
            &mut |_: usize| open_ours(path, n),
            &mut |_: usize| {
                let start = Instant::now();
                let t = Trace::open(path)?;
                let chars: usize = t
                    .tensor_ids()
                    .iter()
                    .map(|&id| t.record_name(id).map_or(0, str::len))
                    .sum();
                black_box(chars);
                Ok(start.elapsed())
            },
            &mut |_: usize| read_tail(path, footer_offset, file_len),
        ],
    )?;
    let floor_label = "read the footer bytes (I/O floor)";
    let mut rows = vec![
        Row::time(
            "read",
            format!("Rust Trace::open, {n} tensors"),
            "ms",
            ms(open),
        )
        .vs(floor_label, ms(floor))
        .goal_max(50.0)
        .ours(),
        Row::time(
            "read",
            format!("Rust Trace::open + list names, {n} tensors"),
            "ms",
            ms(listed),
        )
        .vs(floor_label, ms(floor)),
    ];
    let (mut first, mut warm) = (Duration::MAX, Duration::MAX);
    for _ in 0..args.repeat {
        let t = Trace::open(path)?;
        first = first.min(view_all(&t)?);
        warm = warm.min(view_all(&t)?);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    rows.push(
        Row::time(
            "read",
            "Rust first view(id) + as_slice, per tensor".into(),
            "µs",
            per(first),
        )
        .vs("the second pass (already decoded)", per(warm)),
    );
    Ok(rows)
}

/// The I/O floor of an open: read the footer index and trailer, no decoding.
fn read_tail(path: &Path, footer_offset: u64, file_len: u64) -> Res<Duration> {
    let start = Instant::now();
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(footer_offset))?;
    let mut buf = Vec::with_capacity((file_len - footer_offset) as usize);
    f.read_to_end(&mut buf)?;
    black_box(&buf);
    Ok(start.elapsed())
}

/// `view(id)` and `as_slice::<f32>()` of every tensor (the values are not read).
fn view_all(t: &Trace) -> Res<Duration> {
    let start = Instant::now();
    let mut elems = 0;
    for &id in t.tensor_ids() {
        elems += t.view(id)?.as_slice::<f32>()?.len();
    }
    black_box(elems);
    Ok(start.elapsed())
}
