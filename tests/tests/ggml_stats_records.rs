//! The ggml recorder's statistics-only records keep the parts of each
//! descriptor that depend on the node alone from one graph to the next:
//! the records must be the ones the writer's own `add_stats` makes from
//! the node's facts, byte for byte, at every step, and a node whose facts
//! change at the same address (a new graph reusing memory) must get its
//! new facts.

use trace_format::op::{OpInfo, OP_KEY};
use trace_format::stats::compute_stats;
use trace_format::{DType, Metadata};
use trace_reader::Trace;
use trace_writer::ggml::{GgmlNode, GgmlOptions, GgmlRecorder, GgmlView};
use trace_writer::{TensorMeta, Writer};

const CACHE: usize = 900;
const WEIGHT: usize = 901;

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One node as the test describes it.
struct Node {
    name: &'static str,
    op: &'static str,
    key: usize,
    ne: [i64; 4],
    srcs: Vec<(usize, &'static str)>,
    params: [u8; 8],
    /// The view's offset into the cache, for a view.
    view_offset: Option<u64>,
}

/// The graph of `step`: the same nodes at the same addresses for steps
/// 1 and 2; at step 3 the view moves (its offset alone changes); at step
/// 4 the second node's address holds another tensor (name, shape, op,
/// sources), and of the others one fact each changes: the first's
/// op_params, the view's shape, the last's name.
fn graph(step: i64) -> Vec<Node> {
    let renamed = step == 4;
    vec![
        Node {
            name: "inp_embd",
            op: "GET_ROWS",
            key: 1,
            ne: [8, 2, 1, 1],
            srcs: vec![(WEIGHT, "token_embd.weight")],
            params: [u8::from(renamed), 0, 0, 0, 0, 0, 0, 0],
            view_offset: None,
        },
        if renamed {
            Node {
                name: "ffn_norm-1",
                op: "RMS_NORM",
                key: 2,
                ne: [4, 4, 1, 1],
                srcs: vec![(1, "inp_embd")],
                params: [9, 0, 0, 0, 0, 0, 0, 0],
                view_offset: None,
            }
        } else {
            Node {
                name: "attn_norm-0",
                op: "MUL",
                key: 2,
                ne: [8, 2, 1, 1],
                srcs: vec![(1, "inp_embd"), (WEIGHT, "blk.0.attn_norm.weight")],
                params: [1, 2, 3, 4, 0, 0, 0, 0],
                view_offset: None,
            }
        },
        Node {
            name: "cache_k_l0 (view)",
            op: "VIEW",
            key: 3,
            ne: if renamed { [4, 1, 1, 1] } else { [4, 2, 1, 1] },
            srcs: vec![(CACHE, "cache_k_l0")],
            params: [0; 8],
            view_offset: Some(if step >= 3 { 16 } else { 0 }),
        },
        Node {
            name: if renamed { "node_8" } else { "node_7" },
            op: "ADD",
            key: 4,
            ne: [8, 2, 1, 1],
            srcs: vec![(2, "attn_norm-0"), (3, "cache_k_l0 (view)")],
            params: [0; 8],
            view_offset: None,
        },
    ]
}

/// The node's values at `step` (its own bytes, or for the view the cache's).
fn values(n: &Node, step: i64) -> Vec<f32> {
    let len = if n.view_offset.is_some() {
        32
    } else {
        n.ne.iter().product::<i64>() as usize
    };
    (0..len)
        .map(|i| (i as f32 - 5.0) * 0.25 + step as f32 * (n.key as f32))
        .collect()
}

fn ggml_node<'a>(n: &'a Node, data: &'a [u8]) -> GgmlNode<'a> {
    // a view keeps its owner's strides ([8 rows of 4]); a tensor of its
    // own is packed
    let nb0 = 4u64;
    let nb1 = nb0 * n.ne[0] as u64;
    let nb2 = if n.view_offset.is_some() {
        128
    } else {
        nb1 * n.ne[1] as u64
    };
    GgmlNode {
        name: n.name,
        op: n.op,
        ggml_type: 0,
        ne: n.ne,
        nb: [nb0, nb1, nb2, nb2],
        op_params: &n.params,
        key: n.key,
        srcs: &n.srcs,
        data,
        view: n.view_offset.map(|offset| GgmlView {
            owner_key: CACHE,
            owner_name: "cache_k_l0",
            offset,
        }),
        once: false,
    }
}

#[test]
fn stats_records_are_the_writers_own_at_every_step() {
    let rec = GgmlRecorder::with_options(
        Writer::in_memory(Metadata::new(), Default::default()).unwrap(),
        GgmlOptions {
            stats_only: true,
            ..Default::default()
        },
    );
    let mut recorded_ids = Vec::new();
    for step in 1..=4 {
        rec.set_step(Some(step));
        for n in graph(step) {
            let data = bytes(&values(&n, step));
            let keys: Vec<usize> = n.srcs.iter().map(|s| s.0).collect();
            rec.ask_node(n.key, n.name, &keys, None);
            let id = rec.record(&ggml_node(&n, &data)).unwrap();
            recorded_ids.push(id.unwrap_or_else(|| panic!("{} not recorded", n.name)));
        }
    }
    let (_, recorded) = rec.finish_into_bytes().unwrap();
    let trace = Trace::from_bytes("<memory>", recorded.clone()).unwrap();

    // the same records through the writer's add_stats, each descriptor made
    // from the node's facts as SPEC.md §7 says; the statistics are the
    // recorder's (for a tensor with its own bytes: checked against
    // compute_stats)
    let w = Writer::in_memory(Metadata::new(), Default::default()).unwrap();
    let mut order = recorded_ids.iter().copied();
    for step in 1..=4 {
        let mut ids = std::collections::HashMap::new();
        for n in graph(step) {
            let id = order.next().unwrap();
            let t = trace.tensor(id).unwrap();
            let stats = t.stats.clone().unwrap();
            let data = bytes(&values(&n, step));
            if n.view_offset.is_none() {
                assert_eq!(
                    Some(&stats),
                    compute_stats(DType::F32, &data).as_ref(),
                    "{}",
                    n.name
                );
            }
            // the name's layer; node_7's sources' while they agree
            let layer = match n.name {
                "attn_norm-0" | "cache_k_l0 (view)" => Some(0),
                "node_7" => Some(0),
                "ffn_norm-1" => Some(1),
                _ => None,
            };
            let g = ggml_node(&n, &data);
            let mut meta = TensorMeta {
                step: Some(step),
                layer,
                ..Default::default()
            }
            .ggml_layout(&g.ne, &g.nb)
            .engine_op("ggml", n.op, &n.params);
            meta.lineage.parents = n
                .srcs
                .iter()
                .filter_map(|s| ids.get(&s.0).copied())
                .collect();
            let srcs: Vec<&str> = n.srcs.iter().map(|s| s.1).collect();
            meta.metadata.insert("ggml.srcs", srcs.join(","));
            let op = n.op.to_ascii_lowercase();
            let op = if n.op == "VIEW" {
                OpInfo::view(Some(op))
            } else {
                OpInfo::computed(op)
            };
            meta.metadata.insert(OP_KEY, op.to_value());
            if let Some(offset) = n.view_offset {
                meta.metadata.insert("ggml.view_src", "cache_k_l0");
                meta.metadata.insert("ggml.view_offs", offset);
            }
            let shape: Vec<u64> = n.ne.iter().rev().map(|&x| x as u64).collect();
            assert_eq!(t.layout.shape(), &shape[..], "{} at step {step}", n.name);
            let got = w
                .add_stats(n.name, DType::F32, &shape, stats, meta)
                .unwrap();
            assert_eq!(got, Some(id));
            ids.insert(n.key, id);
        }
    }
    let (_, expected) = w.finish_into_bytes().unwrap();
    assert_eq!(trace.len(), 16);
    assert!(
        recorded == expected,
        "the recorder's records differ from add_stats'"
    );
    // the address reused at step 4 got its new facts
    let renamed = trace.tensor(recorded_ids[13]).unwrap();
    assert_eq!(renamed.name, "ffn_norm-1");
    assert_eq!(renamed.layer, Some(1));
    assert_eq!(
        renamed.metadata.get("ggml.srcs").unwrap().to_string(),
        "\"inp_embd\""
    );
    let moved = trace.tensor(recorded_ids[10]).unwrap();
    assert_eq!(
        moved.metadata.get("ggml.view_offs").unwrap().to_string(),
        "16"
    );
    assert_eq!(
        trace.tensor(recorded_ids[14]).unwrap().layout.shape(),
        &[1, 1, 1, 4]
    );
    assert_eq!(trace.tensor(recorded_ids[15]).unwrap().name, "node_8");
}
