#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod add;
#[cfg(feature = "candle")]
mod candle;
pub mod capi;
mod error;
mod filter;
pub mod ggml;
mod ggml_facts;
mod ggml_updates;
mod queue;
pub mod regions;
mod sink;
mod staging;
mod stream_copy;
mod strided_stats;
mod writer;

pub use error::WriterError;
pub use filter::CaptureFilter;
pub use regions::{Region, Regions};
pub use trace_format::{
    DType, EngineOp, Layout, Lineage, Metadata, Op, SourceLayout, Stats, Value,
};
pub use writer::Writer;

/// A record's id: its position among the file's records, from 0. Tensors are
/// identified by it (names repeat); storages are referred to by it.
pub type RecordId = u64;

/// Run metadata a user would want in every trace: the command line
/// (`command_line`), the time (`created_unix_ns`), the process id (`pid`) and
/// the writer's version (`tracedump_version`). Add your own keys (`engine`,
/// `model`, `engine_version`, …) to it.
pub fn default_run_metadata() -> Metadata {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let args: Vec<String> = std::env::args().collect();
    Metadata::new()
        .with("command_line", args.join(" "))
        .with("created_unix_ns", now)
        .with("pid", u64::from(std::process::id()))
        .with("tracedump_version", env!("CARGO_PKG_VERSION"))
}

/// What to do when the background queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the writer thread has made room (nothing is lost).
    Block,
    /// Drop the record and count it ([`Writer::dropped`]); `add_*` return `Ok(None)`.
    Drop,
}

/// How records reach the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The recording thread frames and writes the record itself (small
    /// ones into a shared mapping of the file where the file system
    /// allows: see the crate README).
    Sync,
    /// The recording thread copies the bytes once into a queue; a writer
    /// thread does the I/O. At most `budget_bytes` wait in the queue, and at
    /// most as much again is kept for reuse (written staging chunks, the
    /// last batch's arena), so memory stays below twice the budget whatever
    /// the recording rate.
    Background {
        /// Most bytes (payloads and descriptors) held in the queue.
        budget_bytes: u64,
        /// Block or drop when the budget is used up.
        when_full: WhenFull,
    },
}

/// Options of [`Writer::with_options`].
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Sync (default) or background.
    pub mode: Mode,
    /// Which tensors to record (default: all).
    pub filter: CaptureFilter,
    /// Sync mode on Linux: copy small records into a shared mapping of
    /// space allocated ahead of them, one system call fewer a record
    /// (default). The file never shrinks, so a finished file keeps that
    /// space as its footer's zero payload (SPEC.md §5.6): up to the file's
    /// own size, at most 4 MiB, its disk blocks given back. `false` writes
    /// every record, and a file exactly as long as its records.
    pub allocate_ahead: bool,
    /// Sync mode: checksum a payload of 1 MiB or more on a second thread
    /// while this one writes it (default), rather than piece by piece
    /// right after writing it. The second thread pays where a core is
    /// idle; where an engine's own threads hold every core (a ggml eval
    /// callback: llama.cpp's workers wait, spinning, for the callback to
    /// return), it only contends with them: the ggml recorder turns it off.
    pub checksum_thread: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            mode: Mode::Sync,
            filter: CaptureFilter::default(),
            allocate_ahead: true,
            checksum_thread: true,
        }
    }
}

/// Everything about a tensor besides its bytes and layout.
#[derive(Clone, Debug, Default)]
pub struct TensorMeta {
    /// Decode step.
    pub step: Option<i64>,
    /// Layer number.
    pub layer: Option<i64>,
    /// Role (`q`, `k`, `v`, `mask`, `kq`, `kqv_out`, `k_hot`, `k_quant`, …).
    pub role: Option<String>,
    /// Parents, steps and engine op.
    pub lineage: Lineage,
    /// The engine's own layout (ggml `ne`/`nb`).
    pub source_layout: Option<SourceLayout>,
    /// Statistics to store with the tensor.
    pub stats: Option<Stats>,
    /// Free typed metadata.
    pub metadata: Metadata,
}

impl TensorMeta {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set the step.
    pub fn step(mut self, step: i64) -> Self {
        self.step = Some(step);
        self
    }
    /// Set the layer.
    pub fn layer(mut self, layer: i64) -> Self {
        self.layer = Some(layer);
        self
    }
    /// Set the role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = Some(role.into());
        self
    }
    /// Add a parent tensor.
    pub fn parent(mut self, id: RecordId) -> Self {
        self.lineage.parents.push(id);
        self
    }
    /// Add a lineage step.
    pub fn op(mut self, op: Op) -> Self {
        self.lineage.ops.push(op);
        self
    }
    /// Set the engine's op, kept verbatim.
    pub fn engine_op(mut self, engine: &str, op: &str, params: &[u8]) -> Self {
        self.lineage.engine_op = Some(EngineOp {
            engine: engine.into(),
            op: op.into(),
            params: params.to_vec(),
        });
        self
    }
    /// Keep ggml's `ne`/`nb` (fastest first) beside the canonical layout.
    pub fn ggml_layout(mut self, ne: &[i64], nb: &[u64]) -> Self {
        self.source_layout = Some(SourceLayout::Ggml {
            ne: ne.to_vec(),
            nb: nb.to_vec(),
        });
        self
    }
    /// Add a metadata entry.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metadata.insert(key, value);
        self
    }
    /// Computed from `inputs` (added as parents, in order) by the op `name`
    /// (`rms_norm`, `mul_mat`, …): SPEC.md §5.4's op relation, which lets
    /// `tracedump diff` blame the op that made a divergence.
    pub fn computed_from(mut self, name: &str, inputs: &[RecordId]) -> Self {
        self.lineage.parents.extend_from_slice(inputs);
        let mut op = self
            .op_info()
            .unwrap_or_else(|| trace_format::op::OpInfo::computed(name));
        op.relation = trace_format::op::Relation::Computed;
        op.name = Some(name.into());
        self.metadata
            .insert(trace_format::op::OP_KEY, op.to_value());
        self
    }
    /// A view of `parent` (added as the first parent; the view steps go in
    /// with [`TensorMeta::op`]), by the engine's op `name` if it has one.
    pub fn view_of(mut self, parent: RecordId, name: Option<&str>) -> Self {
        self.lineage.parents.insert(0, parent);
        let op = trace_format::op::OpInfo::view(name.map(str::to_owned));
        self.metadata
            .insert(trace_format::op::OP_KEY, op.to_value());
        self
    }
    /// A typed parameter of the op that made the tensor (`eps`,
    /// `freq_base`, `mode`, `scale`), beside the engine's raw bytes. Call
    /// after [`TensorMeta::computed_from`] or [`TensorMeta::view_of`];
    /// alone, it records a computed tensor of an unnamed op.
    pub fn op_param(mut self, key: &str, value: impl Into<Value>) -> Self {
        let mut op = self.op_info().unwrap_or(trace_format::op::OpInfo {
            relation: trace_format::op::Relation::Computed,
            name: None,
            params: Vec::new(),
        });
        let value = value.into();
        match op.params.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => op.params.push((key.into(), value)),
        }
        self.metadata
            .insert(trace_format::op::OP_KEY, op.to_value());
        self
    }
    fn op_info(&self) -> Option<trace_format::op::OpInfo> {
        trace_format::op::OpInfo::from_metadata(&self.metadata).and_then(Result::ok)
    }
}

/// What [`Writer::finish`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishSummary {
    /// Records written (footer excluded).
    pub records: u64,
    /// Records dropped because the background queue was full.
    pub dropped: u64,
    /// File size in bytes.
    pub bytes: u64,
}
