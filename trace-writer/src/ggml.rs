//! Recording a ggml graph as it is evaluated (SPEC.md §7).
//!
//! [`GgmlRecorder::record`] takes the facts a ggml eval callback sees about
//! one tensor ([`GgmlNode`]) and records it the way §7 says:
//!
//! * a tensor that owns its data (no `view_src`) is recorded with its own
//!   bytes, in its ggml layout;
//! * a view (`view_src` set: VIEW, PERMUTE, RESHAPE, TRANSPOSE, and the CPY
//!   or SET_ROWS that write into a KV cache) is recorded as a view of its
//!   owner's bytes: the owner is recorded once as a storage (or the owner's
//!   own record is used, when it was recorded in this graph), and recorded
//!   again only when its bytes have changed since (a crc32c check), so a
//!   view never points at bytes that are not the ones it had; recorded
//!   again, it is an update of the last record holding only the byte
//!   ranges that changed (format 1.2, `ggml_updates.rs`), so a decode
//!   step costs the KV cache rows it wrote, not the whole cache;
//! * `src[]` become parents by record id (names repeat in a graph: `Qcur-0`
//!   is a MUL_MAT, a RESHAPE and a ROPE; the flash-attention node is
//!   `node_N`), the op and its `op_params` the engine op, and the view ops
//!   whose meaning is certain canonical lineage steps (VIEW → `View`,
//!   PERMUTE → `Permute`, TRANSPOSE → `Transpose`, RESHAPE → `Reshape`;
//!   CONT → `Cont` and CPY → `Convert` when the shape is kept), which
//!   `verify` replays;
//! * the op relation (SPEC.md §5.4, format 1.1): VIEW, PERMUTE, RESHAPE and
//!   TRANSPOSE are views of `src[0]`; every other op (a CPY into a cache
//!   view included) computed the tensor from its sources, named by
//!   `ggml_op_name` in lower case (`mul_mat`, `rms_norm`, `rope`); a leaf
//!   (`NONE`) has none. `op_params` stay raw bytes: their layout per op is
//!   ggml's implementation, not its interface;
//! * the layer comes from the name (`kqv_out-0`, `cache_k_l0`); a tensor
//!   whose name ggml made up (`node_N`, `Kcur-0 (view)`) takes its parents'
//!   when they agree (so the flash-attention `node_N` gets its layer), or
//!   the later layer whose nodes ggml is computing when it comes (llama.cpp's
//!   last layer selects the output rows of the previous layer's output: a
//!   `node_N` of the last layer, not of the one before); one
//!   the engine named without a layer (`embd`, `norm`, `result_norm`,
//!   `result_output`) has none: it belongs to the graph, not a layer.
//!
//! Names of sources that were not recorded (weights, the KV cache itself)
//! are kept in the metadata (`ggml.srcs`, `ggml.view_src`).
//!
//! **Options** ([`GgmlOptions`]). The recorder's filter (a name regex,
//! layers, steps) is applied where ggml asks whether the callback wants a
//! tensor ([`GgmlRecorder::ask`]): a tensor it will not record is answered
//! no there, so ggml's scheduler does not stop its graph at that node. A
//! layer is the name's, or for a name ggml made up the layer its sources
//! agree on (every source the graph computed, recorded or not; a later
//! layer when ggml computes it among that layer's nodes), so a
//! one-layer filter keeps `node_N` of that layer and nothing of the others.
//! The graph inputs a recorded tensor reads ([`GgmlNode::once`]) are
//! recorded whatever the filter. Stats-only mode records each tensor's
//! statistics (data kind 0, SPEC.md §5.3) computed where its values lie,
//! in one pass, instead of its bytes; no storages, no lineage steps (there
//! are no values to replay them on), parents and engine op as usual.

#![forbid(unsafe_code)]

use std::sync::Mutex;

use rustc_hash::FxHashMap;

use trace_format::layout::ggml as ggml_layout;
use trace_format::names::layer_from_name;
use trace_format::record::crc32c;
use trace_format::{DType, DataRef, Layout, Metadata, Op, TensorDescRef};

use crate::ggml_facts::{FactsCache, NamesCache};
use crate::ggml_updates::Shadows;
use crate::strided_stats::{ggml_stats, PieceCache, Token};
use crate::{CaptureFilter, RecordId, TensorMeta, Writer, WriterError};

/// Set (to anything) to record views' owners whole whenever they change,
/// as format 1.1 did, instead of as updates ([`GgmlRecorder::set_storage_updates`]).
pub const FULL_STORAGES_ENV: &str = "TRACEDUMP_GGML_FULL_STORAGES";

/// Whether `name` is one ggml made up rather than one the engine chose:
/// none, `node_N`/`leaf_N`, or a name with ggml's suffix (`Kcur-0 (view)`).
fn is_derived_name(name: &str) -> bool {
    name.is_empty() || name.starts_with("node_") || name.starts_with("leaf_") || name.ends_with(')')
}

/// What a ggml eval callback knows about one tensor.
#[derive(Clone, Debug)]
pub struct GgmlNode<'a> {
    /// `ggml_get_name(t)`.
    pub name: &'a str,
    /// `ggml_op_name(t->op)`: `VIEW`, `PERMUTE`, `FLASH_ATTN_EXT`, `NONE`…
    pub op: &'a str,
    /// `t->type` (`enum ggml_type`).
    pub ggml_type: u32,
    /// `t->ne`, fastest first.
    pub ne: [i64; 4],
    /// `t->nb`, bytes, fastest first.
    pub nb: [u64; 4],
    /// `t->op_params` (as many bytes as the engine has; ggml: 64).
    pub op_params: &'a [u8],
    /// The tensor's address: its identity within one graph.
    pub key: usize,
    /// `t->src[i]` addresses (0 for none) and names, in order.
    pub srcs: &'a [(usize, &'a str)],
    /// For a tensor that owns its data: its `ggml_nbytes(t)` bytes. For a
    /// view: the owner's (`view_src`'s) `ggml_nbytes` bytes.
    pub data: &'a [u8],
    /// For a view: the owner.
    pub view: Option<GgmlView<'a>>,
    /// A graph input (or a view or conversion of one) that a recorded
    /// tensor reads, such as `attn_inp_kq_mask` or `inp_pos`, recorded
    /// before that user: recorded whatever the filter, and only if this
    /// address was not recorded in this graph yet (else its id comes back).
    pub once: bool,
}

/// A view's owner (`t->view_src`) and offset (`t->view_offs`).
#[derive(Clone, Copy, Debug)]
pub struct GgmlView<'a> {
    /// The owner's address.
    pub owner_key: usize,
    /// The owner's name (`cache_k_l0`).
    pub owner_name: &'a str,
    /// `t->view_offs`: bytes from the owner's first byte.
    pub offset: u64,
}

#[derive(Clone, Debug)]
struct Recorded {
    id: RecordId,
    shape: Vec<u64>,
    layer: Option<i64>,
    /// The storage record the tensor's bytes are in and its offset there.
    storage: RecordId,
    offset: u64,
}

#[derive(Clone, Copy, Debug)]
struct Owner {
    storage: RecordId,
    len: usize,
    crc: u32,
}

#[derive(Debug, Default)]
struct State {
    step: Option<i64>,
    /// The layer of every tensor ggml asked about in the current graph, by
    /// address (recorded or not: a made-up name takes its sources').
    asked: FxHashMap<usize, Option<i64>>,
    /// The latest layer a node's name stated in the current graph's asks:
    /// the layer block ggml is computing.
    block_layer: Option<i64>,
    /// Tensors recorded in the current graph, by address.
    graph: FxHashMap<usize, Recorded>,
    /// Stats-only mode: statistics of pieces of views' owners.
    pieces: PieceCache,
    /// Stats-only mode: what each node's record takes from the node alone.
    facts: FactsCache,
    /// What each node's name says of its layer.
    names: NamesCache,
    /// Bytes recorded as storages (or as a tensor's own bytes), by the
    /// owner's address, with their crc.
    owners: FxHashMap<usize, Owner>,
    /// Copies of the owners recorded as storages, to record only what
    /// changed (`ggml_updates.rs`).
    shadows: Shadows,
    /// Whether views' owners are recorded as updates (format 1.2).
    updates: bool,
    graphs: u64,
    /// What the engine said it writes ([`GgmlRecorder::ask_node`]).
    writes: WriteTracking,
}

/// Which owners' bytes changed since the recorder last read them in this
/// graph, from what ggml said each node writes: views of an owner that
/// nothing wrote since the last one reuse what that one found (its
/// storage record, its pieces' statistics) instead of reading the owner
/// again.
#[derive(Debug, Default)]
struct WriteTracking {
    /// Every question came through [`GgmlRecorder::ask_node`] (a plain
    /// [`GgmlRecorder::ask`] turns tracking off for good).
    asked_nodes: bool,
    plain_asks: bool,
    /// This graph began with [`GgmlRecorder::set_step`]: a graph found
    /// only by its repeated addresses is not trusted (memory may have
    /// been written between graphs, outside any node).
    stepped: bool,
    /// Bumped at every graph.
    epoch: u64,
    /// Per owner (by address), writes seen in this graph.
    gen: FxHashMap<usize, u64>,
    /// Full dumps: the storage record holding each owner's bytes as of
    /// (epoch, gen), and their length.
    clean: FxHashMap<usize, (Token, RecordId, usize)>,
    /// Stats-only: statistics of views by (owner, dtype, offset, dims
    /// sorted by stride), as of (epoch, gen): a permutation of a view
    /// holds the same values.
    view_stats: FxHashMap<ViewKey, (Token, trace_format::Stats)>,
}

/// A view's values: owner, dtype, offset, (stride, extent) of its
/// dimensions of more than one element, sorted.
type ViewKey = (usize, u16, u64, [(u64, u64); 4]);

impl WriteTracking {
    fn new_graph(&mut self, stepped: bool) {
        self.epoch += 1;
        self.stepped = stepped;
        self.gen.clear();
        self.clean.clear();
        self.view_stats.clear();
    }

    /// What owner `key`'s bytes are as of, when that is known.
    fn token(&self, key: usize) -> Option<Token> {
        (self.asked_nodes && !self.plain_asks && self.stepped)
            .then(|| (self.epoch, self.gen.get(&key).copied().unwrap_or(0)))
    }
}

/// What a [`GgmlRecorder`] records.
#[derive(Clone, Debug, Default)]
pub struct GgmlOptions {
    /// Which tensors (default: all). Applied by the recorder, before the
    /// writer's own filter (which also applies: open the writer with none).
    /// The graph inputs a recorded tensor reads are recorded whatever it says.
    pub filter: CaptureFilter,
    /// Record each tensor's statistics (data kind 0) instead of its bytes.
    pub stats_only: bool,
}

/// Records ggml tensors into a [`Writer`]; thread-safe. Give it a writer
/// opened with [`WriterOptions::checksum_thread`](crate::WriterOptions::checksum_thread)
/// off, as the C adapter does: the engine's threads hold the cores while
/// the callback runs.
#[derive(Debug)]
pub struct GgmlRecorder {
    writer: Writer,
    options: GgmlOptions,
    state: Mutex<State>,
}

fn tensor_error(name: &str, what: String) -> WriterError {
    WriterError::Unsupported {
        name: name.into(),
        what,
    }
}

impl GgmlRecorder {
    /// Record everything into `writer`.
    pub fn new(writer: Writer) -> GgmlRecorder {
        Self::with_options(writer, GgmlOptions::default())
    }

    /// Record into `writer` what `options` say.
    pub fn with_options(writer: Writer, options: GgmlOptions) -> GgmlRecorder {
        GgmlRecorder {
            writer,
            options,
            state: Mutex::new(State {
                updates: std::env::var_os(FULL_STORAGES_ENV).is_none(),
                ..State::default()
            }),
        }
    }

    /// The options.
    pub fn options(&self) -> &GgmlOptions {
        &self.options
    }

    /// Whether a view's owner recorded before is recorded again as an
    /// update holding only the bytes that changed (STORAGE_UPDATE, format
    /// 1.2: a decode step costs the KV cache rows it wrote, not the whole
    /// cache; the default), or whole whenever it changed (every reader of
    /// format 1.x reads that). The environment variable
    /// `TRACEDUMP_GGML_FULL_STORAGES` (any value) turns updates off for
    /// every recorder made while it is set.
    pub fn set_storage_updates(&self, on: bool) {
        self.lock().updates = on;
    }

    /// The writer.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Finish the file.
    pub fn finish(self) -> Result<crate::FinishSummary, WriterError> {
        self.writer.finish()
    }

    /// Finish, handing back the trace's bytes ([`Writer::finish_into_bytes`]).
    pub fn finish_into_bytes(self) -> Result<(crate::FinishSummary, Vec<u8>), WriterError> {
        self.writer.finish_into_bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start a new step (a new graph): every later record has this step;
    /// parents are looked up in the new graph only.
    pub fn set_step(&self, step: Option<i64>) {
        let mut st = self.lock();
        st.step = step;
        st.graph.clear();
        st.asked.clear();
        st.block_layer = None;
        st.graphs += 1;
        st.writes.new_graph(true);
    }

    /// The step records get.
    pub fn step(&self) -> Option<i64> {
        self.lock().step
    }

    /// Whether a tensor named `name` would be recorded (the filters), its
    /// layer taken from the name alone ([`GgmlRecorder::ask`] knows more).
    pub fn wants(&self, name: &str) -> bool {
        let st = self.lock();
        self.accepts(name, st.step, layer_from_name(name))
    }

    fn accepts(&self, name: &str, step: Option<i64>, layer: Option<i64>) -> bool {
        self.options.filter.accepts(name, step, layer) && self.writer.wants(name, step, layer)
    }

    /// ggml's question before it computes a node (an eval callback's
    /// `ask`): whether [`GgmlRecorder::record`] will record the tensor at
    /// `key` named `name`, whose sources are at `srcs` (0 for none). Call
    /// it for every node, in graph order: it remembers each node's layer,
    /// so that a made-up name (`node_N`) gets the layer its sources agree
    /// on, recorded or not, or the later layer whose nodes come before it.
    pub fn ask(&self, key: usize, name: &str, srcs: &[usize]) -> bool {
        let mut st = self.lock();
        st.writes.plain_asks = true;
        self.ask_locked(&mut st, key, name, srcs)
    }

    /// [`GgmlRecorder::ask`], told also which owner computing the node
    /// writes into besides its own bytes (`t->view_src` of a SET_ROWS, of
    /// a CPY into a view: any op other than VIEW, RESHAPE, PERMUTE,
    /// TRANSPOSE), `None` for none. Asked only this way, with
    /// [`GgmlRecorder::set_step`] before each graph, the recorder reads an
    /// owner once for all its views that no node wrote in between.
    pub fn ask_node(&self, key: usize, name: &str, srcs: &[usize], writes: Option<usize>) -> bool {
        let mut st = self.lock();
        st.writes.asked_nodes = true;
        let wanted = self.ask_locked(&mut st, key, name, srcs);
        // the node's own bytes, and the owner it writes into, change now
        for k in std::iter::once(key).chain(writes) {
            *st.writes.gen.entry(k).or_insert(0) += 1;
        }
        wanted
    }

    fn ask_locked(&self, st: &mut State, key: usize, name: &str, srcs: &[usize]) -> bool {
        if st.asked.contains_key(&key) {
            // every node is asked about once per graph: this is a new graph
            st.asked.clear();
            st.block_layer = None;
            st.writes.new_graph(false);
        }
        // (a node's name is read at every step: what it says is kept)
        let name_facts = st.names.get(key, name);
        let layer = layer_of(
            name_facts,
            srcs.iter().map(|k| st.asked.get(k).copied().flatten()),
        );
        let layer = match (name_facts.layer, layer, st.block_layer) {
            (Some(stated), _, _) => {
                st.block_layer = st.block_layer.max(Some(stated));
                Some(stated)
            }
            // a made-up name computed inside a later layer's nodes from an
            // earlier layer's output (llama.cpp's last layer keeps only the
            // output rows of the residual it reads: `get_rows(l_out-(n-2),
            // inp_out_ids)`) belongs to the layer computing it
            (None, Some(from_sources), Some(block)) if block > from_sources => Some(block),
            (None, layer, _) => layer,
        };
        st.asked.insert(key, layer);
        self.accepts(name, st.step, layer)
    }

    /// Record one tensor; `Ok(None)` when the filter skips it (or, with
    /// `once`, when it is already recorded in this graph: then its id).
    pub fn record(&self, node: &GgmlNode<'_>) -> Result<Option<RecordId>, WriterError> {
        let name = node.name;
        let dtype = DType::from_id(u16::try_from(node.ggml_type).unwrap_or(u16::MAX))
            .filter(|d| d.id() == node.ggml_type as u16)
            .ok_or_else(|| tensor_error(name, format!("ggml type {}", node.ggml_type)))?;
        let mut st = self.lock();
        if let Some(prev) = st.graph.get(&node.key) {
            if node.once {
                return Ok(Some(prev.id));
            }
            // every node is evaluated once per graph: this is a new graph
            st.graph.clear();
            st.graphs += 1;
            st.writes.new_graph(false);
        }
        let parents: Vec<Option<&Recorded>> = node
            .srcs
            .iter()
            .map(|(k, _)| (*k != 0).then(|| st.graph.get(k)).flatten())
            .collect();
        // the layer found when ggml asked (from every source), else from
        // the recorded sources
        let layer = match st.asked.get(&node.key) {
            Some(&layer) if !node.once => layer,
            _ => derive_layer(name, parents.iter().map(|p| p.and_then(|p| p.layer))),
        };
        if !node.once && !self.options.filter.accepts(name, st.step, layer) {
            return Ok(None);
        }
        if !self.writer.wants(name, st.step, layer) {
            return Ok(None);
        }
        if self.options.stats_only {
            let parents: Vec<RecordId> = parents.iter().flatten().map(|p| p.id).collect();
            return self.record_stats(&mut st, node, dtype, layer, &parents);
        }
        let mut meta = TensorMeta {
            step: st.step,
            layer,
            ..Default::default()
        }
        .ggml_layout(&node.ne, &node.nb)
        .engine_op("ggml", node.op, node.op_params);
        meta.lineage.parents = parents.iter().flatten().map(|p| p.id).collect();
        meta.metadata = node_metadata(node);
        let first_parent = parents.first().copied().flatten().cloned();
        let offset = node.view.map_or(0, |v| v.offset);
        let layout = canonical_layout(node)?;
        let (id, storage) = match node.view {
            None => {
                // owns its data: (only) the first parent's conversions are certain
                if first_parent
                    .as_ref()
                    .is_some_and(|p| p.shape == layout.shape())
                {
                    if let Some(op) = copy_step(node.op, dtype) {
                        meta.lineage.ops.push(op);
                    }
                }
                // a contiguous tensor (the usual node) gets its crc from the
                // write itself; a strided one is checksummed here
                let whole = layout.is_contiguous(dtype)
                    && dtype.bytes_for(layout.numel()) == Some(node.data.len() as u64);
                let added = if whole {
                    self.writer.add_tensor_checksummed(
                        name,
                        dtype,
                        layout.shape(),
                        node.data,
                        meta,
                    )?
                } else {
                    self.writer
                        .add_strided(name, dtype, &layout, node.data, meta)?
                        .map(|id| (id, crc32c(node.data)))
                };
                let Some((id, crc)) = added else {
                    return Ok(None);
                };
                st.owners.insert(
                    node.key,
                    Owner {
                        storage: id,
                        len: node.data.len(),
                        crc,
                    },
                );
                st.shadows.forget(node.key);
                if let Some(token) = st.writes.token(node.key) {
                    st.writes
                        .clean
                        .insert(node.key, (token, id, node.data.len()));
                }
                (id, id)
            }
            Some(v) => {
                meta.metadata.insert("ggml.view_src", v.owner_name);
                meta.metadata.insert("ggml.view_offs", v.offset);
                let token = st.writes.token(v.owner_key);
                let clean = token.and_then(|t| {
                    st.writes
                        .clean
                        .get(&v.owner_key)
                        .filter(|c| c.0 == t && c.2 == node.data.len())
                        .map(|c| c.1)
                });
                let storage = if let Some(sid) = clean {
                    // read by a view of this graph, written by no node since
                    sid
                } else if st.updates && st.shadows.has(v.owner_key) {
                    // recorded before: an update with what changed (format 1.2)
                    st.shadows
                        .storage_for(&self.writer, v.owner_key, v.owner_name, node.data, name)?
                        .0
                } else {
                    let crc = crc32c(node.data);
                    match st.owners.get(&v.owner_key) {
                        Some(o) if o.len == node.data.len() && o.crc == crc => o.storage,
                        _ if st.updates => {
                            st.owners.remove(&v.owner_key);
                            st.shadows
                                .storage_for(
                                    &self.writer,
                                    v.owner_key,
                                    v.owner_name,
                                    node.data,
                                    name,
                                )?
                                .0
                        }
                        _ => {
                            let sid = self.writer.add_storage_with(
                                v.owner_name,
                                node.data,
                                Metadata::new().with("first_view", name),
                            )?;
                            st.owners.insert(
                                v.owner_key,
                                Owner {
                                    storage: sid,
                                    len: node.data.len(),
                                    crc,
                                },
                            );
                            sid
                        }
                    }
                };
                if let Some(t) = token {
                    st.writes
                        .clean
                        .insert(v.owner_key, (t, storage, node.data.len()));
                }
                // a view step from the first parent when both view one storage
                if let Some(p) = first_parent.as_ref().filter(|p| p.storage == storage) {
                    if let Some(op) = view_step(node, p, offset, &layout) {
                        meta.lineage.ops.push(op);
                    }
                }
                let id = self.writer.add_view(name, dtype, storage, &layout, meta)?;
                let Some(id) = id else { return Ok(None) };
                (id, storage)
            }
        };
        st.graph.insert(
            node.key,
            Recorded {
                id,
                shape: layout.shape().to_vec(),
                layer,
                storage,
                offset,
            },
        );
        Ok(Some(id))
    }
}

impl GgmlRecorder {
    /// Stats-only mode: record `node`'s statistics, computed where its
    /// values lie, with the parts of its descriptor that depend on the node
    /// alone kept from earlier graphs ([`FactsCache`]).
    fn record_stats(
        &self,
        st: &mut State,
        node: &GgmlNode<'_>,
        dtype: DType,
        layer: Option<i64>,
        parents: &[RecordId],
    ) -> Result<Option<RecordId>, WriterError> {
        let name = node.name;
        let State {
            step,
            graph,
            pieces,
            writes,
            facts,
            ..
        } = st;
        let facts = facts.get(node, dtype)?;
        facts
            .layout
            .check_within(dtype, node.data.len() as u64)
            .map_err(|error| WriterError::Layout {
                name: name.into(),
                error,
            })?;
        let offset = node.view.map_or(0, |v| v.offset);
        // views read memory that outlives the graph (the KV cache): its
        // unchanged pieces are not read again; a view of values another
        // view of this graph found, nothing having written them since,
        // takes that one's statistics
        let token = node.view.and_then(|v| writes.token(v.owner_key));
        let memo = node.view.zip(token).map(|(v, token)| {
            let mut dims = [(0u64, 0u64); 4];
            for (d, (&n, &b)) in dims.iter_mut().zip(node.ne.iter().zip(&node.nb)) {
                *d = if n > 1 { (b, n as u64) } else { (0, 0) };
            }
            dims.sort_unstable();
            ((v.owner_key, dtype.id(), offset, dims), token)
        });
        let known = memo.as_ref().and_then(|(key, token)| {
            writes
                .view_stats
                .get(key)
                .filter(|(t, _)| t == token)
                .map(|(_, s)| s.clone())
        });
        let stats = match known {
            Some(stats) => stats,
            None => {
                let cache = node.view.map(|v| (v.owner_key, token, &mut *pieces));
                let stats = ggml_stats(dtype, &node.ne, &node.nb, offset, node.data, cache)
                    .map_err(|what| tensor_error(name, what))?;
                if let Some((key, token)) = memo {
                    writes.view_stats.insert(key, (token, stats.clone()));
                }
                stats
            }
        };
        let desc = TensorDescRef {
            name,
            dtype,
            data: DataRef::StatsOnly,
            shape: facts.layout.shape(),
            byte_strides: &facts.contiguous_strides,
            step: *step,
            layer,
            role: None,
            source_layout: Some(&facts.source_layout),
            parents,
            ops: &[],
            engine_op: Some(&facts.engine_op),
            stats: Some(&stats),
            metadata: &facts.metadata,
        };
        let Some(id) = self.writer.append_stats_ref(&desc)? else {
            return Ok(None);
        };
        graph.insert(
            node.key,
            Recorded {
                id,
                shape: facts.layout.shape().to_vec(),
                layer,
                storage: id,
                offset: 0,
            },
        );
        Ok(Some(id))
    }
}

/// A node's metadata from its sources and op: `ggml.srcs`, and format
/// 1.1's op relation: ggml's view ops are views of src[0]; any other op (a
/// CPY into a cache view included) computed its values from its sources;
/// a leaf (NONE: weights, inputs) has no op.
pub(crate) fn node_metadata(node: &GgmlNode<'_>) -> Metadata {
    let mut metadata = Metadata::new();
    if !node.srcs.is_empty() {
        let srcs: Vec<&str> = node.srcs.iter().map(|(_, n)| *n).collect();
        metadata.insert("ggml.srcs", srcs.join(","));
    }
    if node.op != "NONE" {
        let name = node.op.to_ascii_lowercase();
        let op = match node.op {
            "VIEW" | "PERMUTE" | "RESHAPE" | "TRANSPOSE" => {
                trace_format::op::OpInfo::view(Some(name))
            }
            _ => trace_format::op::OpInfo::computed(name),
        };
        metadata.insert(trace_format::op::OP_KEY, op.to_value());
    }
    metadata
}

/// A node's canonical layout at its view's offset in its owner's bytes.
pub(crate) fn canonical_layout(node: &GgmlNode<'_>) -> Result<Layout, WriterError> {
    let offset = node.view.map_or(0, |v| v.offset);
    ggml_layout::to_canonical(&node.ne, &node.nb, offset).map_err(|error| WriterError::Layout {
        name: node.name.into(),
        error,
    })
}

/// A tensor's layer: its name's; for a name ggml made up, the layer its
/// sources (`None` where unknown) agree on. A name the engine gave without
/// a layer (llama.cpp's `embd`, `norm`, `result_output`) marks a
/// graph-level tensor: it keeps no layer even where its inputs come from
/// the last one.
fn derive_layer(name: &str, srcs: impl Iterator<Item = Option<i64>>) -> Option<i64> {
    layer_of(NameFacts::of(name), srcs)
}

/// [`derive_layer`] from what the name says.
fn layer_of(name: NameFacts, srcs: impl Iterator<Item = Option<i64>>) -> Option<i64> {
    name.layer.or_else(|| {
        if !name.derived {
            return None;
        }
        let mut layers = srcs.flatten();
        let first = layers.next()?;
        layers.all(|l| l == first).then_some(first)
    })
}

/// What a tensor's name says of its layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NameFacts {
    /// The name's layer ([`layer_from_name`]).
    pub layer: Option<i64>,
    /// Whether ggml made the name up ([`is_derived_name`]).
    pub derived: bool,
}

impl NameFacts {
    pub(crate) fn of(name: &str) -> NameFacts {
        NameFacts {
            layer: layer_from_name(name),
            derived: is_derived_name(name),
        }
    }
}

/// The lineage step of a view op whose meaning is certain.
fn view_step(node: &GgmlNode<'_>, parent: &Recorded, offset: u64, layout: &Layout) -> Option<Op> {
    match node.op {
        "VIEW" => Some(Op::View {
            offset: offset.checked_sub(parent.offset)?,
            shape: layout.shape().to_vec(),
            byte_strides: layout.byte_strides().to_vec(),
        }),
        "PERMUTE" if offset == parent.offset => {
            let p: Vec<u32> = node
                .op_params
                .chunks_exact(4)
                .take(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .map(|x| u32::try_from(x).ok())
                .collect::<Option<_>>()?;
            (p.len() == 4)
                .then(|| ggml_layout::permute_axes(&p))
                .flatten()
                .map(|axes| Op::Permute { axes })
        }
        "TRANSPOSE" if offset == parent.offset => Some(Op::Transpose { a: 2, b: 3 }),
        "RESHAPE" if offset == parent.offset => Some(Op::Reshape {
            shape: layout.shape().to_vec(),
        }),
        _ => None,
    }
}

/// The step of a copy into a new tensor of the same shape.
fn copy_step(op: &str, dtype: DType) -> Option<Op> {
    match op {
        "CONT" | "DUP" => Some(Op::Cont),
        "CPY" => Some(Op::Convert { dtype }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaptureFilter;

    fn recorder(layers: &[i64]) -> GgmlRecorder {
        let writer = Writer::in_memory(Metadata::new(), Default::default()).unwrap();
        GgmlRecorder::with_options(
            writer,
            GgmlOptions {
                filter: CaptureFilter::all().with_layers(layers.iter().copied()),
                ..Default::default()
            },
        )
    }

    /// llama.cpp's last layer (3 here) keeps only the output rows: two
    /// made-up GET_ROWS nodes, one of its own attention output, one of the
    /// layer before's output (its residual), both computed among layer
    /// 3's nodes.
    fn last_layer(rec: &GgmlRecorder) -> [bool; 4] {
        rec.set_step(Some(0));
        let (l_out_2, attn_out_3, out_ids, rows_attn, rows_residual) = (1, 2, 3, 4, 5);
        rec.ask(l_out_2, "l_out-2", &[]);
        rec.ask(out_ids, "out_ids", &[]);
        [
            rec.ask(attn_out_3, "attn_out-3", &[l_out_2]),
            rec.ask(rows_attn, "node_137", &[attn_out_3, out_ids]),
            rec.ask(rows_residual, "node_138", &[l_out_2, out_ids]),
            // a later graph starts over: layer 2's made-up node is layer 2's
            {
                rec.set_step(Some(1));
                rec.ask(l_out_2, "l_out-2", &[]);
                rec.ask(rows_residual, "node_138", &[l_out_2, out_ids])
            },
        ]
    }

    #[test]
    fn a_made_up_name_belongs_to_the_layer_computing_it() {
        assert_eq!(last_layer(&recorder(&[3])), [true, true, true, false]);
        assert_eq!(last_layer(&recorder(&[2])), [false, false, false, true]);
    }
}
