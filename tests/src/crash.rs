//! Deterministic record plans for the crash-safety and disk-full tests: the
//! child writer (`src/bin/crash_writer.rs`) records a plan, the test
//! regenerates it from the same seed and checks what the reader returns
//! against it, byte for byte.
//!
//! Record `i + 1` of a trace is item `i` of its plan (record 0 is the run
//! metadata): the writer hands out ids in order and nothing is dropped.

#![forbid(unsafe_code)]

use trace_format::record::{next_record_offset, RecordKind, RECORD_HEADER_BYTES};
use trace_format::{DType, Layout, Stats};
use trace_reader::Trace;
use trace_writer::{RecordId, TensorMeta, Writer, WriterError};

use crate::Rng;

/// What one plan item records.
#[derive(Clone, Debug)]
pub enum ItemKind {
    /// `add_tensor` of `dtype` and `shape` with its own bytes.
    Tensor {
        /// Element type.
        dtype: DType,
        /// Shape (its bytes are the item's payload).
        shape: Vec<u64>,
    },
    /// `add_storage`: raw bytes, an f32 matrix `rows × cols` for the views.
    Storage {
        /// Rows of the matrix.
        rows: u64,
        /// Columns of the matrix.
        cols: u64,
    },
    /// `add_view` of f32 over the storage of plan item `storage`.
    View {
        /// Plan index of the storage item.
        storage: usize,
        /// The view's layout, relative to the storage's first byte.
        layout: Layout,
    },
    /// `add_stats`: statistics only, no data.
    Stats {
        /// Element type.
        dtype: DType,
        /// Shape.
        shape: Vec<u64>,
        /// The statistics recorded.
        stats: Stats,
    },
}

/// One record of a plan.
#[derive(Clone, Debug)]
pub struct Item {
    /// Tensor or storage name (unique within the plan).
    pub name: String,
    /// What is recorded.
    pub kind: ItemKind,
    /// Bytes of the item's own payload (0 for views and statistics).
    pub payload_len: usize,
    /// Whether the writer is flushed after this item.
    pub flush_after: bool,
}

/// A seeded sequence of records.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The seed everything is derived from.
    pub seed: u64,
    /// The records, in order.
    pub items: Vec<Item>,
}

/// Element types of the tensors (any bit pattern is a valid value of each).
const DTYPES: [DType; 5] = [DType::F32, DType::F16, DType::I32, DType::U8, DType::BF16];

impl Plan {
    /// `count` records whose payloads range from 4 bytes to about
    /// `max_bytes` (log-uniform), mixing tensors, storages with views over
    /// them, and statistics-only records. Roughly one item in three is
    /// followed by a flush, and so is the last.
    pub fn new(seed: u64, count: usize, max_bytes: usize) -> Plan {
        let mut rng = Rng::new(seed);
        let mut items: Vec<Item> = Vec::with_capacity(count);
        let mut storages: Vec<usize> = Vec::new();
        let log_max = (max_bytes.max(8) as f64).ln();
        let log_min = 4f64.ln();
        while items.len() < count {
            let i = items.len();
            let size = f64::from(rng.f32_in(0.0, 1.0))
                .mul_add(log_max - log_min, log_min)
                .exp() as u64;
            let roll = rng.next_u64() % 100;
            let (kind, payload_len) = if roll < 15 && !storages.is_empty() {
                let s = storages[(rng.next_u64() % storages.len() as u64) as usize];
                let ItemKind::Storage { rows, cols } = items[s].kind.clone() else {
                    unreachable!("storages holds storage items only")
                };
                let layout = view_layout(&mut rng, rows, cols);
                (ItemKind::View { storage: s, layout }, 0)
            } else if roll < 30 {
                let shape = if rng.next_u64() % 2 == 0 {
                    vec![size.max(1)]
                } else {
                    vec![1 + rng.next_u64() % 64, size.max(1)]
                };
                let count = shape.iter().product::<u64>();
                let stats = Stats {
                    count,
                    nan_count: rng.next_u64() % 3,
                    inf_count: 0,
                    min: -f64::from(rng.f32_in(0.0, 10.0)),
                    max: f64::from(rng.f32_in(0.0, 10.0)),
                    mean: f64::from(rng.f32_in(-1.0, 1.0)),
                    std: f64::from(rng.f32_in(0.0, 3.0)),
                    abs_max: f64::from(rng.f32_in(0.0, 10.0)),
                    l2_norm: f64::from(rng.f32_in(0.0, 100.0)),
                    bytes_crc32c: Some(rng.next_u64() as u32),
                };
                let dtype = DTYPES[(rng.next_u64() % DTYPES.len() as u64) as usize];
                (
                    ItemKind::Stats {
                        dtype,
                        shape,
                        stats,
                    },
                    0,
                )
            } else if roll < 50 {
                // an f32 matrix of about `size` bytes
                let elems = (size / 4).max(1);
                let cols = 1 + rng.next_u64() % elems.min(512);
                let rows = (elems / cols).max(1);
                storages.push(i);
                (ItemKind::Storage { rows, cols }, (rows * cols * 4) as usize)
            } else {
                let dtype = DTYPES[(rng.next_u64() % DTYPES.len() as u64) as usize];
                let elem = dtype.element_bytes().unwrap_or(1) as u64;
                let elems = (size / elem).max(1);
                let shape = match rng.next_u64() % 3 {
                    0 => vec![elems],
                    1 => {
                        let cols = 1 + rng.next_u64() % elems.min(1024);
                        vec![(elems / cols).max(1), cols]
                    }
                    _ => {
                        let c = 1 + rng.next_u64() % elems.min(64);
                        let b = 1 + rng.next_u64() % (elems / c).clamp(1, 16);
                        vec![(elems / (b * c)).max(1), b, c]
                    }
                };
                let len = shape.iter().product::<u64>() * elem;
                (ItemKind::Tensor { dtype, shape }, len as usize)
            };
            let prefix = match kind {
                ItemKind::Tensor { .. } => "t",
                ItemKind::Storage { .. } => "s",
                ItemKind::View { .. } => "v",
                ItemKind::Stats { .. } => "st",
            };
            items.push(Item {
                name: format!("{prefix}{i}.l{}", i % 7),
                kind,
                payload_len,
                flush_after: rng.next_u64() % 3 == 0 || items.len() + 1 == count,
            });
        }
        Plan { seed, items }
    }

    /// Total payload bytes of the plan.
    pub fn payload_bytes(&self) -> usize {
        self.items.iter().map(|i| i.payload_len).sum()
    }

    /// The own bytes of item `index` (empty for views and statistics).
    pub fn payload(&self, index: usize) -> Vec<u8> {
        payload_bytes(self.seed, index, self.items[index].payload_len)
    }

    /// Record item `index` with `payload` (its [`Plan::payload`]); returns
    /// the writer's answer. `ids[j]` is the record id of item `j < index`.
    pub fn record(
        &self,
        w: &Writer,
        index: usize,
        payload: &[u8],
        ids: &[RecordId],
    ) -> Result<Option<RecordId>, WriterError> {
        let item = &self.items[index];
        let meta = TensorMeta::new()
            .layer((index % 7) as i64)
            .step((index / 7) as i64);
        match &item.kind {
            ItemKind::Tensor { dtype, shape } => {
                w.add_tensor(&item.name, *dtype, shape, payload, meta)
            }
            ItemKind::Storage { .. } => w.add_storage(&item.name, payload).map(Some),
            ItemKind::View { storage, layout } => {
                w.add_view(&item.name, DType::F32, ids[*storage], layout, meta)
            }
            ItemKind::Stats {
                dtype,
                shape,
                stats,
            } => w.add_stats(&item.name, *dtype, shape, stats.clone(), meta),
        }
    }

    /// The logical bytes of item `index`, row-major: its payload for
    /// tensors and storages, the gathered elements for views, nothing for
    /// statistics.
    pub fn expected_bytes(&self, index: usize) -> Vec<u8> {
        match &self.items[index].kind {
            ItemKind::View { storage, layout } => gather(&self.payload(*storage), 4, layout),
            _ => self.payload(index),
        }
    }

    /// Check record `id` of `trace` against item `id - 1` of this plan:
    /// kind, name, layer and step, and every byte of its data (for views,
    /// the values they select from their storage's bytes).
    pub fn check_record(&self, trace: &Trace, id: u64) -> Result<(), String> {
        let index = id
            .checked_sub(1)
            .map(|i| i as usize)
            .filter(|&i| i < self.items.len())
            .ok_or_else(|| format!("record {id} is not in the plan"))?;
        let item = &self.items[index];
        let entry = trace.records()[id as usize];
        let name = trace.record_name(id).unwrap_or("");
        if name != item.name {
            return Err(format!(
                "record {id} is named `{name}`, planned `{}`",
                item.name
            ));
        }
        if let ItemKind::Storage { .. } = item.kind {
            if entry.kind != RecordKind::Storage as u16 {
                return Err(format!(
                    "record {id} has kind {}, planned a storage",
                    entry.kind
                ));
            }
            let s = trace.storage(id).map_err(|e| e.to_string())?;
            let at = s.file_offset as usize;
            let bytes = &trace.source().bytes()[at..at + s.len as usize];
            return same_bytes(id, bytes, &self.payload(index));
        }
        let info = trace.tensor(id).map_err(|e| e.to_string())?;
        if info.layer != Some((index % 7) as i64) || info.step != Some((index / 7) as i64) {
            return Err(format!(
                "record {id}: layer {:?} step {:?}, planned {} and {}",
                info.layer,
                info.step,
                index % 7,
                index / 7
            ));
        }
        match &item.kind {
            ItemKind::Stats {
                dtype,
                shape,
                stats,
            } => {
                if !info.is_stats_only()
                    || info.dtype != *dtype
                    || info.layout.shape() != shape
                    || info.stats.as_ref() != Some(stats)
                {
                    return Err(format!(
                        "record {id}: statistics differ from the plan: {info:?}"
                    ));
                }
                Ok(())
            }
            ItemKind::View { storage, layout } => {
                if info.storage != Some(*storage as u64 + 1) || &info.layout != layout {
                    return Err(format!(
                        "record {id}: view of {:?} with {:?}, planned storage record {} with {layout:?}",
                        info.storage,
                        info.layout,
                        storage + 1
                    ));
                }
                let got = trace
                    .view(id)
                    .and_then(|v| v.materialize())
                    .map_err(|e| e.to_string())?;
                same_bytes(id, &got, &self.expected_bytes(index))
            }
            ItemKind::Tensor { dtype, shape } => {
                if info.dtype != *dtype || info.layout.shape() != shape {
                    return Err(format!(
                        "record {id}: {} {:?}, planned {dtype} {shape:?}",
                        info.dtype,
                        info.layout.shape()
                    ));
                }
                let view = trace.view(id).map_err(|e| e.to_string())?;
                let got = view.contiguous_bytes().ok_or_else(|| {
                    format!("record {id}: a contiguous tensor has no contiguous bytes")
                })?;
                same_bytes(id, got, &self.payload(index))
            }
            ItemKind::Storage { .. } => unreachable!("handled above"),
        }
    }
}

/// Check what the reader says about the end of an unfinished trace: the
/// torn tail runs from the end of the last complete record (or of its
/// padding) to the end of the file, and there is none only when the file
/// ends exactly after a record; `verify()` finds nothing wrong but the
/// missing footer. Returns the torn tail's length (0 for none).
pub fn check_unfinished(trace: &Trace) -> Result<u64, String> {
    if trace.is_finished() {
        return Err("the trace is finished".into());
    }
    let report = trace.verify();
    if let Some(f) = report
        .faults
        .iter()
        .find(|f| f.record.is_some() || !f.message.starts_with("unfinished trace"))
    {
        return Err(format!("verify: {f:?}"));
    }
    let records = trace.records();
    let last = records
        .last()
        .ok_or("no records, not even the run metadata")?;
    let body_end = last.offset + RECORD_HEADER_BYTES + last.body_len;
    let aligned_end = next_record_offset(last.offset, last.body_len).ok_or("overflow")?;
    let len = trace.file_len();
    match trace.torn_tail() {
        None if aligned_end == len => Ok(0),
        // the zero bytes a writer allocated ahead end the scan cleanly (SPEC.md §2)
        None if aligned_end < len
            && std::fs::read(trace.path())
                .map_err(|e| e.to_string())?
                .get(aligned_end as usize..)
                .is_some_and(|tail| tail.iter().all(|&b| b == 0)) =>
        {
            Ok(0)
        }
        None => Err(format!(
            "no torn tail reported, but the last record ends at {aligned_end} of {len} bytes, before bytes that are not zero"
        )),
        Some(t) => {
            let starts_right =
                t.offset == aligned_end || (t.offset == body_end && len < aligned_end);
            if t.bytes == 0 || t.offset + t.bytes != len || !starts_right || t.reason.is_empty() {
                return Err(format!(
                    "torn tail {t:?} of a {len}-byte file whose last record ends at {body_end} (aligned {aligned_end})"
                ));
            }
            Ok(t.bytes)
        }
    }
}

fn same_bytes(id: u64, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "record {id}: {} bytes, planned {}",
            got.len(),
            want.len()
        ));
    }
    if got == want {
        return Ok(());
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
    Err(format!(
        "record {id}: byte {at} is {:#04x}, planned {:#04x}",
        got[at], want[at]
    ))
}

/// A view of an f32 `rows × cols` matrix: the transpose, a band of rows, or
/// the rows in reverse order (a negative stride).
fn view_layout(rng: &mut Rng, rows: u64, cols: u64) -> Layout {
    let row = (cols * 4) as i64;
    let layout = match rng.next_u64() % 3 {
        0 => Layout::new(vec![cols, rows], vec![4, row], 0),
        1 => {
            let start = rng.next_u64() % rows;
            let n = 1 + rng.next_u64() % (rows - start);
            Layout::new(vec![n, cols], vec![row, 4], start * cols * 4)
        }
        _ => Layout::new(vec![rows, cols], vec![-row, 4], (rows - 1) * cols * 4),
    };
    layout.expect("planned views have valid layouts")
}

/// The elements of `layout` (elements of `elem` bytes) over `storage`, in
/// row-major order: an independent walk, not the reader's (whole rows at
/// once where the innermost stride is one element).
pub fn gather(storage: &[u8], elem: usize, layout: &Layout) -> Vec<u8> {
    let n: u64 = layout.shape().iter().product();
    let mut out = Vec::with_capacity(n as usize * elem);
    if n == 0 {
        return out;
    }
    let dims = layout.shape().len();
    let (run, outer) = match layout.byte_strides().last() {
        Some(&s) if s == elem as i64 => (layout.shape()[dims - 1] as usize, dims - 1),
        _ => (1, dims),
    };
    let mut index = vec![0u64; outer];
    loop {
        let at = index
            .iter()
            .zip(layout.byte_strides())
            .fold(layout.storage_offset() as i64, |a, (&i, &s)| {
                a + i as i64 * s
            }) as usize;
        out.extend_from_slice(&storage[at..at + run * elem]);
        let mut d = outer;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < layout.shape()[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// `len` deterministic bytes for item `index` of the plan seeded `seed`
/// (splitmix64 words: cheap enough in a debug build for a few MiB).
pub fn payload_bytes(seed: u64, index: usize, len: usize) -> Vec<u8> {
    let mut state = seed ^ (index as u64).wrapping_mul(0xD134_2543_DE82_EF95);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}
