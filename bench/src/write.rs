//! Writing: our writer (sync, background) against a plain `write()` of the
//! same bytes, the `safetensors` crate's `serialize_to_file`, and a memcpy;
//! and the crc32c the writer computes, as a share of the sync write time.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use safetensors::tensor::{Dtype, SafeTensors, View};
use trace_format::record::crc32c;
use trace_reader::Trace;
use trace_writer::{DType, Metadata, Mode, TensorMeta, WhenFull, Writer, WriterOptions};

use crate::{gbps, interleaved, pattern, progress, tensor_names, Args, Res, Row, Stat, MIB};

const LARGE_COUNT: usize = 256;
const LARGE_BYTES: usize = 4 * MIB;
const SMALL_COUNT: usize = 20_000;
const SMALL_BYTES: usize = 256;
/// The queue budget the Python `Writer` uses by default.
pub(crate) const DEFAULT_BUDGET: u64 = 256 * MIB as u64;

/// A 1-D f32 tensor over borrowed bytes, for `safetensors`.
pub(crate) struct StView<'a> {
    shape: [usize; 1],
    bytes: &'a [u8],
}

impl<'a> StView<'a> {
    pub(crate) fn f32(bytes: &'a [u8]) -> Self {
        StView {
            shape: [bytes.len() / 4],
            bytes,
        }
    }
}

impl View for StView<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// `safetensors::serialize_to_file` of every tensor (1-D f32), no fsync.
pub(crate) fn write_safetensors(
    path: &Path,
    names: &[String],
    data: &[u8],
    tensor: usize,
) -> Res<Duration> {
    let start = Instant::now();
    let views = names
        .iter()
        .map(String::as_str)
        .zip(data.chunks_exact(tensor).map(StView::f32));
    safetensors::serialize_to_file(views, None, path)?;
    Ok(start.elapsed())
}

/// Every round of one size's contenders.
struct Times {
    plain: Vec<Duration>,
    sync: Vec<Duration>,
    /// Background writer with the default queue, create to finish.
    background: Vec<Duration>,
    /// Its `add_tensor` calls alone: the recording thread's cost, on the
    /// default queue, its staging memory not preallocated.
    background_adds: Vec<Duration>,
    safetensors: Vec<Duration>,
    /// memcpy into a buffer allocated and faulted in beforehand.
    memcpy: Vec<Duration>,
    /// The same copies into fresh allocations, all kept (as a queue keeps
    /// them until they are written).
    fresh_copy: Vec<Duration>,
    crc: Vec<Duration>,
}

fn measure(
    args: &Args,
    dir: &Path,
    names: &[String],
    data: &[u8],
    tensor: usize,
    buffered: bool,
) -> Res<Times> {
    let trace = dir.join("bench.tdump");
    let st = dir.join("bench.safetensors");
    let plain = dir.join("plain.bin");
    let background = Mode::Background {
        budget_bytes: DEFAULT_BUDGET,
        when_full: WhenFull::Block,
    };
    // written once beforehand, so the memcpy does not fault its pages in
    let mut dst = vec![1u8; data.len()];
    let background_adds = RefCell::new(Vec::new());
    let last = &data[data.len() - tensor..];

    let mut c_plain = |_: usize| {
        let t = write_plain(&plain, data, tensor, buffered)?;
        remove_settled(&plain)?;
        Ok(t)
    };
    let mut c_sync = |round: usize| {
        let (_, t) = write_trace(&trace, Mode::Sync, names, data, tensor)?;
        check_trace(&trace, round, names.len(), last)?;
        Ok(t)
    };
    let mut c_background = |round: usize| {
        let (adds, t) = write_trace(&trace, background, names, data, tensor)?;
        background_adds.borrow_mut().push(adds);
        check_trace(&trace, round, names.len(), last)?;
        Ok(t)
    };
    let mut c_safetensors = |round: usize| {
        let t = write_safetensors(&st, names, data, tensor)?;
        if round == 0 {
            let bytes = fs::read(&st)?;
            let file = SafeTensors::deserialize(&bytes)?;
            let name = names.last().ok_or("no tensors")?;
            if file.len() != names.len() || file.tensor(name)?.data() != last {
                return Err("the safetensors file read back differs".into());
            }
        }
        remove_settled(&st)?;
        Ok(t)
    };
    let mut c_memcpy = |_: usize| {
        let start = Instant::now();
        for (d, s) in dst.chunks_exact_mut(tensor).zip(data.chunks_exact(tensor)) {
            d.copy_from_slice(s);
        }
        black_box(&mut dst);
        Ok(start.elapsed())
    };
    let mut c_fresh = |_: usize| {
        let start = Instant::now();
        let copies: Vec<Vec<u8>> = data.chunks_exact(tensor).map(<[u8]>::to_vec).collect();
        let elapsed = start.elapsed();
        black_box(&copies);
        drop(copies);
        Ok(elapsed)
    };
    let mut c_crc = |_: usize| {
        let start = Instant::now();
        let x = data.chunks_exact(tensor).fold(0, |x, c| x ^ crc32c(c));
        black_box(x);
        Ok(start.elapsed())
    };
    // 2N+1 rounds: on this kind of VM the same 1 GiB write takes 0.3 s or
    // 3 s from one round to the next, whoever writes it
    let [plain, sync, background, safetensors, memcpy, fresh_copy, crc] = interleaved(
        2 * args.repeat + 1,
        &mut [
            &mut c_plain,
            &mut c_sync,
            &mut c_background,
            &mut c_safetensors,
            &mut c_memcpy,
            &mut c_fresh,
            &mut c_crc,
        ],
    )?;
    Ok(Times {
        plain,
        sync,
        background,
        background_adds: background_adds.into_inner(),
        safetensors,
        memcpy,
        fresh_copy,
        crc,
    })
}

/// The faster (by median) of the two memcpy forms, with its label.
fn best_copy(t: &Times, to: impl Fn(Duration) -> f64 + Copy, higher: bool) -> (&'static str, Stat) {
    let pre = Stat::of(&t.memcpy, to);
    let fresh = Stat::of(&t.fresh_copy, to);
    if (pre.median >= fresh.median) == higher {
        (
            "memcpy into a preallocated, faulted-in buffer (the faster form)",
            pre,
        )
    } else {
        (
            "memcpy into fresh allocations, all kept (to_vec; the faster form)",
            fresh,
        )
    }
}

pub(crate) fn rows(args: &Args, dir: &Path) -> Res<Vec<Row>> {
    let (n_large, n_small) = (args.scaled(LARGE_COUNT), args.scaled(SMALL_COUNT));
    let data = pattern(n_large * LARGE_BYTES);
    let mut rows = Vec::new();

    // 1. Large tensors: page-cache throughput (no fsync).
    let label = format!("{n_large} x 4 MiB f32");
    progress(&format!(
        "write {label}: plain, sync, background, safetensors, memcpy x2, crc32c"
    ));
    let t = measure(args, dir, &tensor_names(n_large), &data, LARGE_BYTES, false)?;
    let bytes = data.len();
    let gb = move |d: Duration| gbps(bytes, d);
    let plain = ("plain write() of the same bytes", Stat::of(&t.plain, gb));
    let st = (
        "safetensors serialize_to_file",
        Stat::of(&t.safetensors, gb),
    );
    let sync_name = format!("Rust sync writer, {label}");
    rows.push(
        Row::rate("write", sync_name.clone(), bytes, &t.sync)
            .vs(plain.0, plain.1)
            .goal_ratio(0.9, None),
    );
    rows.push(
        Row::rate("write", sync_name, bytes, &t.sync)
            .vs(st.0, st.1)
            .goal_ratio(0.95, None),
    );
    rows.push(
        Row::rate(
            "write",
            format!("Rust background writer, {label}, create..finish"),
            bytes,
            &t.background,
        )
        .vs(plain.0, plain.1)
        .goal_ratio(0.9, None)
        .ours(),
    );
    let (copy_label, copy) = best_copy(&t, gb, true);
    let other_copy = if copy_label.contains("preallocated") {
        (
            "memcpy into fresh allocations (to_vec, all kept)",
            &t.fresh_copy,
        )
    } else {
        ("memcpy into a preallocated buffer", &t.memcpy)
    };
    rows.push(
        Row::rate(
            "write",
            format!(
                "Rust background, {label}: recording thread's add() calls (default 256 MiB queue)"
            ),
            bytes,
            &t.background_adds,
        )
        .vs(copy_label, copy)
        .goal_ratio(0.8, Some(">= 0.8x (time <= 1.25x memcpy)"))
        .also(other_copy.0, Stat::of(other_copy.1, gb).median, "GB/s"),
    );
    let share = |crc: &[Duration], sync: &[Duration]| {
        Stat::values(
            crc.iter()
                .zip(sync)
                .map(|(c, s)| 100.0 * c.as_secs_f64() / s.as_secs_f64())
                .collect(),
        )
    };
    rows.push(
        Row::new(
            "checksum",
            format!("crc32c of {label} payloads / sync write time"),
            "%",
            share(&t.crc, &t.sync),
        )
        .also("crc32c", Stat::of(&t.crc, gb).median, "GB/s")
        .also("sync writer", Stat::of(&t.sync, gb).median, "GB/s"),
    );

    // 2. Small tensors: per-tensor cost.
    let small = &data[..n_small * SMALL_BYTES];
    let label = format!("{n_small} x 256 B");
    progress(&format!(
        "write {label}: plain, sync, background, safetensors, memcpy x2, crc32c"
    ));
    let t = measure(args, dir, &tensor_names(n_small), small, SMALL_BYTES, true)?;
    let us = move |d: Duration| d.as_secs_f64() * 1e6 / n_small as f64;
    let st = (
        "safetensors serialize_to_file",
        Stat::of(&t.safetensors, us),
    );
    let plain = (
        "plain write() via a 1 MiB BufWriter",
        Stat::of(&t.plain, us).median,
    );
    rows.push(
        Row::new(
            "write",
            format!("Rust sync writer, {label}, per tensor"),
            "µs",
            Stat::of(&t.sync, us),
        )
        .vs(st.0, st.1)
        .goal_ratio(0.5, Some(">= 0.5x (ours)"))
        .also(plain.0, plain.1, "µs"),
    );
    rows.push(
        Row::new(
            "write",
            format!("Rust background writer, {label}, create..finish, per tensor"),
            "µs",
            Stat::of(&t.background, us),
        )
        .vs(st.0, st.1)
        .goal_ratio(0.5, Some(">= 0.5x (ours)"))
        .also(plain.0, plain.1, "µs"),
    );
    rows.push(
        Row::new(
            "write",
            format!("Rust background, {label}: add() call per tensor"),
            "µs",
            Stat::of(&t.background_adds, us),
        )
        .vs(st.0, st.1)
        .goal_ratio(1.0, None)
        .also("memcpy of the tensor", Stat::of(&t.memcpy, us).median, "µs")
        .also(
            "to_vec of the tensor",
            Stat::of(&t.fresh_copy, us).median,
            "µs",
        ),
    );
    rows.push(
        Row::new(
            "checksum",
            format!("crc32c of {label} payloads / sync write time"),
            "%",
            share(&t.crc, &t.sync),
        )
        .also("crc32c per tensor", Stat::of(&t.crc, us).median, "µs")
        .also("sync writer per tensor", Stat::of(&t.sync, us).median, "µs"),
    );
    Ok(rows)
}

/// Round 0 reads the trace back (tensor count, last tensor's bytes); every
/// round removes it ([`remove_settled`]).
fn check_trace(path: &Path, round: usize, count: usize, last: &[u8]) -> Res<()> {
    if round == 0 {
        let t = Trace::open(path)?;
        crate::read::check(&t, count)?;
        let view = t.view(*t.tensor_ids().last().ok_or("empty trace")?)?;
        if view.contiguous_bytes() != Some(last) {
            return Err("the last tensor read back differs from what was written".into());
        }
    }
    remove_settled(path)
}

/// Remove a file written by a contender and wait until the kernel has
/// settled (`sync`: no dirty pages, no pending block frees left of it), so
/// that the next contender starts from the same clean page cache. Outside
/// every timing.
fn remove_settled(path: &Path) -> Res<()> {
    fs::remove_file(path)?;
    let status = std::process::Command::new("sync").status()?;
    if !status.success() {
        return Err(format!("sync failed: {status}").into());
    }
    Ok(())
}

/// Plain sequential write of `data` in `chunk`-byte pieces after a 64-byte
/// header, no fsync. `buffered` puts a 1 MiB `BufWriter` (the writer's own
/// buffer size) in front.
///
/// The header is there because every file format has one, and because on
/// the VMs this runs on, 4 MiB writes at page-aligned offsets took 5-12x
/// longer than the same writes 64 bytes further in, in about half of the
/// rounds (no other contender writes at page-aligned offsets): without it
/// the baseline would be slowed by an accident of alignment.
fn write_plain(path: &Path, data: &[u8], chunk: usize, buffered: bool) -> Res<Duration> {
    fn all(w: &mut impl Write, data: &[u8], chunk: usize) -> std::io::Result<()> {
        w.write_all(&[0; 64])?;
        data.chunks_exact(chunk).try_for_each(|c| w.write_all(c))?;
        w.flush()
    }
    let start = Instant::now();
    let file = File::create(path)?;
    if buffered {
        all(&mut BufWriter::with_capacity(MIB, file), data, chunk)?;
    } else {
        all(&mut &file, data, chunk)?;
    }
    Ok(start.elapsed())
}

/// Create a trace, add every tensor (1-D f32, with a layer and step),
/// finish; no fsync. Returns (the add calls alone, create to finish).
pub(crate) fn write_trace(
    path: &Path,
    mode: Mode,
    names: &[String],
    data: &[u8],
    tensor: usize,
) -> Res<(Duration, Duration)> {
    let shape = [(tensor / 4) as u64];
    let start = Instant::now();
    let w = Writer::with_options(
        path,
        Metadata::new(),
        WriterOptions {
            mode,
            ..Default::default()
        },
    )?;
    let adding = Instant::now();
    for (i, (name, bytes)) in names.iter().zip(data.chunks_exact(tensor)).enumerate() {
        let meta = TensorMeta::new()
            .layer((i % 32) as i64)
            .step((i / 32) as i64);
        w.add_tensor(name, DType::F32, &shape, bytes, meta)?
            .ok_or("a tensor was not recorded")?;
    }
    let adds = adding.elapsed();
    let summary = w.finish()?;
    let total = start.elapsed();
    if summary.dropped != 0 {
        return Err("the writer dropped tensors".into());
    }
    Ok((adds, total))
}
