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

use trace_format::{DType, EngineOp, Layout, Metadata, SourceLayout};

use crate::add::check_depth;
use crate::ggml::{canonical_layout, node_metadata, GgmlNode, NameFacts};
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
        let layout = canonical_layout(node)?;
        let contiguous =
            Layout::contiguous(dtype, layout.shape(), 0).map_err(|error| WriterError::Layout {
                name: name.into(),
                error,
            })?;
        let mut metadata = node_metadata(node);
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
