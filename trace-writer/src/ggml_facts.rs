//! The parts of a ggml node's statistics-only record that depend on the
//! node alone, and what its name says of its layer, kept from one graph
//! to the next.
//!
//! A decode evaluates the same graph at every step: the same nodes at the
//! same addresses, with the same names, ops, sources and layouts. Their
//! descriptors differ only in step, parents and statistics, yet building
//! each anew (the canonical layout, `ggml.srcs`, the op relation, the
//! engine op) costs some thirty allocations a record, as much as the
//! statistics of a small tensor. [`NodeFacts`] keeps those parts by the
//! node's address and uses them again while everything they come from is
//! unchanged (op, type, `ne`/`nb`, `op_params`, the sources' names, the
//! view's owner and offset), which it checks at every use.

#![forbid(unsafe_code)]

use rustc_hash::FxHashMap;

use trace_format::layout::ggml as ggml_layout;
use trace_format::{DType, EngineOp, Layout, Metadata, SourceLayout};

use crate::add::check_depth;
use crate::ggml::{GgmlNode, NameFacts};
use crate::WriterError;

/// Nodes kept before the cache starts over (graphs reallocated at new
/// addresses would otherwise grow it without bound).
const MAX_NODES: usize = 50_000;

/// What a node's statistics-only record takes from the node alone, but
/// for its name.
#[derive(Debug)]
pub(crate) struct NodeFacts {
    // what they were made from (the name is not among them: the
    // record takes it from the node)
    op: String,
    ne: [i64; 4],
    nb: [u64; 4],
    op_params: Vec<u8>,
    src_names: Vec<String>,
    view: Option<(String, u64)>,
    /// The element type.
    pub dtype: DType,
    /// The canonical layout at the view's offset in its owner's bytes.
    pub layout: Layout,
    /// The record's strides: the shape's contiguous ones (the record holds
    /// statistics, not bytes).
    pub contiguous_strides: Vec<i64>,
    /// ggml's `ne`/`nb`.
    pub source_layout: SourceLayout,
    /// The engine op (`ggml`, the op's name, `op_params`).
    pub engine_op: EngineOp,
    /// `ggml.srcs`, the op relation, and for a view `ggml.view_src` and
    /// `ggml.view_offs`.
    pub metadata: Metadata,
}

impl NodeFacts {
    /// Whether the facts were made from a node like `node`.
    fn matches(&self, node: &GgmlNode<'_>) -> bool {
        self.op == node.op
            && self.ne == node.ne
            && self.nb == node.nb
            && self.op_params == node.op_params
            && self.src_names.len() == node.srcs.len()
            && self
                .src_names
                .iter()
                .zip(node.srcs)
                .all(|(a, (_, b))| a == b)
            && match (&self.view, node.view) {
                (None, None) => true,
                (Some((owner, offset)), Some(v)) => owner == v.owner_name && *offset == v.offset,
                _ => false,
            }
    }

    fn new(node: &GgmlNode<'_>, dtype: DType) -> Result<NodeFacts, WriterError> {
        let name = node.name;
        let offset = node.view.map_or(0, |v| v.offset);
        let layout = ggml_layout::to_canonical(&node.ne, &node.nb, offset).map_err(|error| {
            WriterError::Layout {
                name: name.into(),
                error,
            }
        })?;
        let contiguous =
            Layout::contiguous(dtype, layout.shape(), 0).map_err(|error| WriterError::Layout {
                name: name.into(),
                error,
            })?;
        let mut metadata = Metadata::new();
        if !node.srcs.is_empty() {
            let srcs: Vec<&str> = node.srcs.iter().map(|(_, n)| *n).collect();
            metadata.insert("ggml.srcs", srcs.join(","));
        }
        // format 1.1's op relation: ggml's view ops are views of src[0]; any
        // other op (a CPY into a cache view included) computed its values
        // from its sources; a leaf (NONE: weights, inputs) has none
        if node.op != "NONE" {
            let op_name = node.op.to_ascii_lowercase();
            let op = match node.op {
                "VIEW" | "PERMUTE" | "RESHAPE" | "TRANSPOSE" => {
                    trace_format::op::OpInfo::view(Some(op_name))
                }
                _ => trace_format::op::OpInfo::computed(op_name),
            };
            metadata.insert(trace_format::op::OP_KEY, op.to_value());
        }
        if let Some(v) = node.view {
            metadata.insert("ggml.view_src", v.owner_name);
            metadata.insert("ggml.view_offs", v.offset);
        }
        check_depth(name, &metadata)?;
        Ok(NodeFacts {
            op: node.op.to_owned(),
            ne: node.ne,
            nb: node.nb,
            op_params: node.op_params.to_vec(),
            src_names: node.srcs.iter().map(|(_, n)| (*n).to_owned()).collect(),
            view: node.view.map(|v| (v.owner_name.to_owned(), v.offset)),
            dtype,
            contiguous_strides: contiguous.byte_strides().to_vec(),
            layout,
            source_layout: SourceLayout::Ggml {
                ne: node.ne.to_vec(),
                nb: node.nb.to_vec(),
            },
            engine_op: EngineOp {
                engine: "ggml".into(),
                op: node.op.into(),
                params: node.op_params.to_vec(),
            },
            metadata,
        })
    }
}

/// [`NodeFacts`] by node address.
#[derive(Debug, Default)]
pub(crate) struct FactsCache {
    by_key: FxHashMap<usize, NodeFacts>,
}

impl FactsCache {
    /// The facts of `node` (of type `dtype`), made now unless kept ones
    /// match it.
    pub fn get(&mut self, node: &GgmlNode<'_>, dtype: DType) -> Result<&NodeFacts, WriterError> {
        let kept = self
            .by_key
            .get(&node.key)
            .is_some_and(|f| f.dtype == dtype && f.matches(node));
        if !kept {
            let facts = NodeFacts::new(node, dtype)?;
            if self.by_key.len() >= MAX_NODES {
                self.by_key.clear();
            }
            self.by_key.insert(node.key, facts);
        }
        Ok(&self.by_key[&node.key])
    }
}

/// [`NameFacts`] by node address, with the name they were read from.
#[derive(Debug, Default)]
pub(crate) struct NamesCache {
    by_key: FxHashMap<usize, (String, NameFacts)>,
}

impl NamesCache {
    /// What `name`, the name of the node at `key`, says of its layer.
    pub fn get(&mut self, key: usize, name: &str) -> NameFacts {
        match self.by_key.get(&key) {
            Some((kept, facts)) if kept == name => *facts,
            _ => {
                let facts = NameFacts::of(name);
                if self.by_key.len() >= MAX_NODES {
                    self.by_key.clear();
                }
                self.by_key.insert(key, (name.to_owned(), facts));
                facts
            }
        }
    }
}
