//! Blame through the graph: which op turned agreeing inputs into a
//! divergent output, how much each op amplified the error it was given,
//! and, for each blamed op, a diagnosis of its output.
//!
//! A tensor's inputs are the parents its lineage records (llama.cpp's
//! `src[]` through the ggml adapter, module and op inputs through
//! `tracedump.capture`). Records between two compared tensors (views,
//! weights nobody paired) are walked through, so a pair's inputs are its
//! nearest compared ancestors. A divergent pair whose compared inputs all
//! agree is a *blamed op*; a divergent pair with a divergent input is the
//! cascade. Without recorded parents, the first divergence in execution
//! order is blamed, and the report says so.

use std::collections::{HashMap, HashSet};

use trace_reader::Trace;

use crate::compare::{DiffReport, Pair, Verdict};
use crate::diagnose::{diagnose, Finding, Values};
use crate::mapping::{self, Transform};
use crate::metrics::Tolerance;
use crate::ToolsError;

/// At most this many ancestors are visited per pair, looking for compared ones.
const MAX_WALK: usize = 4096;
/// At most this many blamed ops get a diagnosis (each reads both tensors again).
pub const MAX_DIAGNOSED: usize = 8;
/// A pair of more values than this (per side) gets no diagnosis: it reads
/// both tensors into memory, several times over (4M values: about 100 MiB).
pub const MAX_DIAGNOSED_VALUES: u64 = crate::stream::MATERIALIZE_LIMIT;
/// The other tensors compared with a blamed output, in bytes of f32 at most.
const MAX_STALE_BYTES: u64 = 64 << 20;

/// An op that made a divergent output from agreeing inputs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Blame {
    /// Index into the report's pairs of the op's output.
    pub pair: usize,
    /// Indices of the pairs of its compared inputs (all agree).
    pub inputs: Vec<usize>,
    /// Relative error out over the largest relative error in (None: the
    /// inputs agree exactly, so the op made the error from nothing).
    pub amplification: Option<f64>,
    /// Whether blamed through recorded parents (false: by execution order,
    /// because the traces record none).
    pub by_graph: bool,
    /// What the values say about why (strongest first).
    pub diagnosis: Vec<Finding>,
    /// Whether the diagnosis ran (only the first [`MAX_DIAGNOSED`] distinct
    /// blamed ops are diagnosed, and an op blamed again at a later step is
    /// not diagnosed twice): `false` says nothing about the hypotheses.
    pub diagnosed: bool,
    /// The pair (index into the report's pairs) of the first blame of the
    /// same op, when this one is that op again at a later step: the same
    /// names, pair key and layer.
    pub same_op_as: Option<usize>,
}

/// ‖A − B‖ / ‖B‖ of a pair, where values were compared.
pub fn relative_error(p: &Pair) -> Option<f64> {
    let m = p.metrics.as_ref()?;
    if matches!(p.verdict, Verdict::StatsOnly | Verdict::Skipped(_)) {
        return None;
    }
    let rms_b = (m.b.std * m.b.std + m.b.mean * m.b.mean).sqrt();
    (rms_b > 0.0).then(|| m.rmse / rms_b)
}

/// Each pair's compared inputs: the nearest ancestors of A's tensor (through
/// its lineage's parents) that are themselves in a pair.
pub fn pair_inputs(a: &Trace, pairs: &[Pair]) -> Vec<Vec<usize>> {
    let pair_of: HashMap<u64, usize> = pairs.iter().enumerate().map(|(i, p)| (p.a.id, i)).collect();
    pairs
        .iter()
        .map(|p| {
            let mut found = Vec::new();
            let mut seen = HashSet::new();
            let mut todo: Vec<u64> = parents(a, p.a.id);
            while let Some(id) = todo.pop() {
                if !seen.insert(id) || seen.len() > MAX_WALK {
                    continue;
                }
                match pair_of.get(&id) {
                    Some(&i) => found.push(i),
                    None => todo.extend(parents(a, id)),
                }
            }
            found.sort_unstable();
            found.dedup();
            found
        })
        .collect()
}

fn parents(t: &Trace, id: u64) -> Vec<u64> {
    t.tensor(id)
        .map(|x| x.lineage.parents.clone())
        .unwrap_or_default()
}

/// The blamed ops of a diff, in execution order, and each pair's
/// amplification (relative error out over the largest relative error in;
/// None where the pair agrees, has no compared input, or its inputs agree
/// exactly).
/// `inputs` are [`pair_inputs`]'s.
pub fn blame(report: &DiffReport, inputs: &[Vec<usize>]) -> (Vec<Blame>, Vec<Option<f64>>) {
    let pairs = &report.pairs;
    let rel: Vec<Option<f64>> = pairs.iter().map(relative_error).collect();
    let divergent = |i: usize| pairs[i].verdict.is_divergent();
    let amplification: Vec<Option<f64>> = (0..pairs.len())
        .map(|i| {
            let out = rel[i]?;
            let input = inputs[i]
                .iter()
                .filter_map(|&j| rel[j])
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))?;
            (input > 0.0 && divergent(i)).then(|| out / input)
        })
        .collect();
    let mut blamed = Vec::new();
    for i in (0..pairs.len()).filter(|&i| divergent(i)) {
        let by_graph = !inputs[i].is_empty();
        // without recorded (and compared) inputs only the order says
        // anything: the first divergence is blamed, what follows it may be
        // its cascade
        let blame = if by_graph {
            inputs[i].iter().all(|&j| !divergent(j))
        } else {
            report.first_divergence == Some(i)
        };
        if blame {
            blamed.push(Blame {
                pair: i,
                inputs: inputs[i].clone(),
                amplification: amplification[i],
                by_graph,
                diagnosis: Vec::new(),
                diagnosed: false,
                same_op_as: None,
            });
        }
    }
    link_repeats(pairs, &mut blamed);
    (blamed, amplification)
}

/// Marks each blamed op that is an earlier blamed op again at another
/// step (a decode re-running one wrong kernel blames it at every step):
/// [`Blame::same_op_as`].
fn link_repeats(pairs: &[Pair], blamed: &mut [Blame]) {
    let mut first: HashMap<(&str, &str, &str, Option<i64>), usize> = HashMap::new();
    for bl in blamed.iter_mut() {
        let p = &pairs[bl.pair];
        let op = (
            p.key.as_str(),
            p.a.name.as_str(),
            p.b.name.as_str(),
            p.a.layer,
        );
        match first.get(&op) {
            Some(&at) if pairs[at].step != p.step => bl.same_op_as = Some(at),
            Some(_) => {}
            None => {
                first.insert(op, bl.pair);
            }
        }
    }
}

/// Whether [`diagnose_pair`] tests its hypotheses on pair `p`'s values:
/// not on more than [`MAX_DIAGNOSED_VALUES`] values a side.
pub fn diagnosable(p: &Pair) -> bool {
    let numel = |s: &[u64]| s.iter().product::<u64>();
    numel(&p.a.shape).max(numel(&p.b.shape)) <= MAX_DIAGNOSED_VALUES
}

/// Pair `i` of `pairs` diagnosed: [`diagnose_pair`]'s findings on its
/// values and [`path_differs`]'s on the two graphs, strongest first.
/// `tolerance` is the one the pairs were compared with.
pub fn diagnose_in(
    a: &Trace,
    b: &Trace,
    pairs: &[Pair],
    i: usize,
    transforms: &[Transform],
    tolerance: &Tolerance,
) -> Result<Vec<Finding>, ToolsError> {
    let p = pairs
        .get(i)
        .ok_or_else(|| ToolsError::Invalid(format!("pair {i} of {}", pairs.len())))?;
    let mut found = diagnose_pair(a, b, p, transforms, tolerance)?;
    found.extend(path_differs(a, b, pairs, i));
    found.sort_by(|x, y| y.strength.total_cmp(&x.strength));
    Ok(found)
}

/// At most this many unpaired ops are named per run in a path finding.
const MAX_PATH_OPS: usize = 4;

/// The ops each run computes between pair `i`'s compared inputs and its
/// output that pair with nothing in the other run (views are walked
/// through, not counted; weights and inputs are leaves, not ops): a
/// [`Cause::Path`] finding when a run has any and both record the
/// output's parents. Strongest between two runs of one engine (the run
/// metadata's `engine`), whose graphs record ops alike, and when only one
/// run has them: it computes something the other does not. Between two
/// engines (ggml's nodes against torch's modules) a run often records
/// what the other computes inside one op: a weak hint, below what the
/// values say.
///
/// [`Cause::Path`]: crate::diagnose::Cause::Path
pub fn path_differs(a: &Trace, b: &Trace, pairs: &[Pair], i: usize) -> Option<Finding> {
    let p = pairs.get(i)?;
    if parents(a, p.a.id).is_empty() || parents(b, p.b.id).is_empty() {
        return None;
    }
    let paired_a: HashSet<u64> = pairs.iter().map(|p| p.a.id).collect();
    let paired_b: HashSet<u64> = pairs.iter().map(|p| p.b.id).collect();
    let only_a = unpaired_ops(a, p.a.id, &paired_a);
    let only_b = unpaired_ops(b, p.b.id, &paired_b);
    if only_a.is_empty() && only_b.is_empty() {
        return None;
    }
    let list = |ops: &[String]| {
        let mut s = ops
            .iter()
            .take(MAX_PATH_OPS)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if ops.len() > MAX_PATH_OPS {
            s.push_str(&format!("; … {} more", ops.len() - MAX_PATH_OPS));
        }
        s
    };
    let count = |n: usize| {
        if n == 1 {
            "1 op that pairs".to_string()
        } else {
            format!("{n} ops that pair")
        }
    };
    let same_engine = same_engine(a, b);
    let (evidence, strength) = match (only_a.is_empty(), only_b.is_empty()) {
        (false, true) | (true, false) => {
            let (run, other, ops) = if only_b.is_empty() {
                ("A", "B", &only_a)
            } else {
                ("B", "A", &only_b)
            };
            (
                format!(
                    "from the agreeing inputs, {run} computes it through {} with nothing \
                     in {other} ({}), {other} through none: the runs compute it \
                     differently, or {other} records less",
                    count(ops.len()),
                    list(ops)
                ),
                if same_engine { 0.9 } else { 0.5 },
            )
        }
        _ => (
            format!(
                "the runs compute it along different paths from the agreeing inputs: A \
                 through {} with nothing in B ({}), B through {} with nothing in A ({})",
                count(only_a.len()),
                list(&only_a),
                count(only_b.len()),
                list(&only_b)
            ),
            if same_engine { 0.75 } else { 0.4 },
        ),
    };
    Some(Finding {
        evidence,
        cause: crate::diagnose::Cause::Path { only_a, only_b },
        strength,
    })
}

/// The computed (non-view, non-leaf, with an op name) ancestors of `id` in
/// `t` reached before any paired record, in execution order, as `name
/// (#id) = op(parents)`.
fn unpaired_ops(t: &Trace, id: u64, paired: &HashSet<u64>) -> Vec<String> {
    let mut ops = Vec::new();
    let mut seen = HashSet::new();
    let mut todo = parents(t, id);
    while let Some(id) = todo.pop() {
        if paired.contains(&id) || !seen.insert(id) || seen.len() > MAX_WALK {
            continue;
        }
        let Ok(info) = t.tensor(id) else { continue };
        if info.lineage.parents.is_empty() {
            continue;
        }
        // an op is what a record says computed it: a record that names
        // none (a module's input, as torch capture keeps it) is walked through
        if info.is_computed() && op_name(info).is_some() {
            ops.push(id);
        }
        todo.extend(info.lineage.parents.iter().copied());
    }
    ops.sort_unstable();
    let name = |id: u64| match t.record_name(id).map(str::trim) {
        Some(n) if !n.is_empty() => format!("{n} (#{id})"),
        _ => format!("#{id}"),
    };
    ops.into_iter()
        .map(|id| {
            let info = t.tensor(id).ok();
            let op = info.and_then(op_name).unwrap_or_default();
            let inputs: Vec<String> = info
                .map(|i| i.lineage.parents.iter().map(|&p| name(p)).collect())
                .unwrap_or_default();
            format!("{} = {op}({})", name(id), inputs.join(", "))
        })
        .collect()
}

/// Diagnose pair `p` (A's values with the pairing's transforms applied,
/// against B's), as f32; nothing for a pair of more than
/// [`MAX_DIAGNOSED_VALUES`] values a side (memory stays bounded).
/// `tolerance` (the comparison's) is how close A must be to a tensor B
/// computes its output from for the stale-buffer check to name it.
pub fn diagnose_pair(
    a: &Trace,
    b: &Trace,
    p: &Pair,
    transforms: &[Transform],
    tolerance: &Tolerance,
) -> Result<Vec<Finding>, ToolsError> {
    let (sa, sb) = mapping::transformed_shapes(transforms, &p.a.shape, &p.b.shape)
        .map_err(ToolsError::Invalid)?;
    if !diagnosable(p) {
        // bounded memory first: the metrics still say where it diverges
        return Ok(Vec::new());
    }
    let va = a.view(p.a.id)?.to_f64()?;
    let vb = b.view(p.b.id)?.to_f64()?;
    let (va, vb) = mapping::apply(transforms, va, &p.a.shape, vb, &p.b.shape);
    let (fa, fb): (Vec<f32>, Vec<f32>) = (
        va.iter().map(|&x| x as f32).collect(),
        vb.iter().map(|&x| x as f32).collect(),
    );
    let to_usize = |s: &[u64]| s.iter().map(|&n| n as usize).collect::<Vec<_>>();
    let (sa, sb) = (to_usize(&sa), to_usize(&sb));
    let (Some(x), Some(y)) = (Values::new(&fa, &sa), Values::new(&fb, &sb)) else {
        return Ok(Vec::new());
    };
    let mut found = diagnose(x, y);
    if !found.iter().any(|f| f.strength >= 0.9) {
        // nothing exact: B rearranged up to the noise the runs are
        // compared with (another engine's kernels)
        found.extend(crate::diagnose::order_within(
            x,
            y,
            tolerance.atol,
            tolerance.rtol,
        ));
    }
    if p.verdict == Verdict::ShapeMismatch {
        found.extend(crate::diagnose::reshaped(x, y));
    }
    found.extend(params_differ(a, b, p));
    found.extend(rope_in(a, p, transforms, x, y));
    // an agreeing pair equals its copies elsewhere: that is no staleness
    if p.verdict.is_divergent() && found.iter().all(|f| f.strength < 0.95) {
        found.extend(stale_in(a, b, p, x, tolerance));
    }
    found.sort_by(|x, y| y.strength.total_cmp(&x.strength));
    Ok(found)
}

/// At most this many other tensors are compared with a blamed output.
const MAX_STALE: usize = 32;

/// A's values equal another tensor of either run with as many values (the
/// nearest ones in execution order first): a buffer reused without being
/// written, or read from another step or layer. A tensor B computes its
/// output from need only agree with A within `tolerance` (the pair's own
/// comparison: between engines, f16 tables and fused kernels leave more
/// than the 10⁻³ of an exact match).
fn stale_in(
    a: &Trace,
    b: &Trace,
    p: &Pair,
    x: Values<'_>,
    tolerance: &Tolerance,
) -> Option<Finding> {
    let numel = x.data.len() as u64;
    let near = |t: &Trace, own: u64| -> Vec<u64> {
        // views of the tensor's own bytes hold its values: no other
        // buffer; nor does the input of a copy (ggml's CONT of a permuted
        // view, torch's contiguous()), nor views of that input's bytes
        let info = t.tensor(own).ok();
        let mut storages: Vec<u64> = info.and_then(|i| i.storage).into_iter().collect();
        let mut inputs: Vec<u64> = Vec::new();
        if info.is_some_and(is_copy) {
            inputs = info.map(|i| i.lineage.parents.clone()).unwrap_or_default();
            storages.extend(inputs.iter().filter_map(|&p| t.tensor(p).ok()?.storage));
        }
        let mut ids: Vec<u64> = t
            .tensor_ids()
            .iter()
            .copied()
            .filter(|&id| id != own && !inputs.contains(&id))
            .filter(|&id| {
                storages.is_empty()
                    || t.tensor(id)
                        .is_ok_and(|i| i.storage.is_none_or(|s| !storages.contains(&s)))
            })
            .filter(|&id| {
                t.tensor(id).is_ok_and(|i| {
                    !i.is_stats_only() && i.layout.shape().iter().product::<u64>() == numel
                })
            })
            .collect();
        ids.sort_by_key(|&id| id.abs_diff(own));
        let room = MAX_STALE_BYTES / numel.saturating_mul(4).max(1) / 2;
        ids.truncate((MAX_STALE / 2).min(room as usize));
        ids
    };
    // (label, values, B's record id)
    let mut others: Vec<(String, Vec<f32>, Option<u64>)> = Vec::new();
    for (t, own, run) in [(a, p.a.id, "A"), (b, p.b.id, "B")] {
        for id in near(t, own) {
            if let Ok(v) = t.view(id).and_then(|v| v.to_f32()) {
                let name = t.record_name(id).unwrap_or("?");
                let of_b = (run == "B").then_some(id);
                others.push((format!("{name} (record #{id} of {run})"), v, of_b));
            }
        }
    }
    // B's own value is not "another tensor": a match there is no bug
    let Some(mut found) =
        crate::diagnose::stale(x, others.iter().map(|(n, v, _)| (n.as_str(), v.as_slice())))
    else {
        return upstream_in_b(b, p, x, &others, tolerance);
    };
    // a tensor B computes its output from, through ops of its own: A
    // holds what B had before those ops, which then changed it
    let crate::diagnose::Cause::Stale { other } = &found.cause else {
        return Some(found);
    };
    let of_b = others.iter().find(|o| &o.0 == other).and_then(|o| o.2);
    if of_b.is_some_and(|id| ancestors(b, p.b.id).contains(&id)) {
        found.evidence = format!(
            "A equals `{other}`, which B computes its output from: the ops B applies \
             after it change the values, and A's run has none of them"
        );
    }
    Some(found)
}

/// A equals, within `tolerance`, one of `others` that B computes pair
/// `p`'s output from (B's record id in `others`' third field).
fn upstream_in_b(
    b: &Trace,
    p: &Pair,
    x: Values<'_>,
    others: &[(String, Vec<f32>, Option<u64>)],
    tolerance: &Tolerance,
) -> Option<Finding> {
    let upstream = ancestors(b, p.b.id);
    let within = |v: &[f32]| {
        let close = crate::diagnose::Close::within(v, tolerance.atol, tolerance.rtol);
        x.data.iter().zip(v).all(|(&s, &t)| close.eq(s, t))
    };
    let (other, _, _) = others
        .iter()
        .find(|(_, v, id)| id.is_some_and(|id| upstream.contains(&id)) && within(v))?;
    Some(Finding {
        evidence: format!(
            "A equals `{other}` within the comparison's tolerance (atol {:e}, rtol {:e}), \
             which B computes its output from: the ops B applies after it change the \
             values, and A's run has none of them",
            tolerance.atol, tolerance.rtol
        ),
        cause: crate::diagnose::Cause::Stale {
            other: other.clone(),
        },
        strength: 0.9,
    })
}

/// The records `id` is computed from in `t`, through its lineage (at most
/// [`MAX_WALK`] of them).
fn ancestors(t: &Trace, id: u64) -> HashSet<u64> {
    let mut seen = HashSet::new();
    let mut todo = parents(t, id);
    while let Some(id) = todo.pop() {
        if seen.len() < MAX_WALK && seen.insert(id) {
            todo.extend(parents(t, id));
        }
    }
    seen
}

/// Ops whose output holds its input's values in a new buffer or layout.
const COPY_OPS: [&str; 7] = ["cont", "cpy", "dup", "contiguous", "clone", "copy", "copy_"];

/// Whether `info` was made by a copy op, whose output equals its input by
/// design.
fn is_copy(info: &trace_reader::TensorInfo) -> bool {
    op_name(info).is_some_and(|n| COPY_OPS.contains(&n.to_ascii_lowercase().as_str()))
}

/// The op that made `info`: its `tracedump.op` name (as recorded: a torch
/// module's class keeps its case), else the engine's op in lower case
/// (ggml's `MUL_MAT` as `mul_mat`); `None` where neither says.
fn op_name(info: &trace_reader::TensorInfo) -> Option<String> {
    info.op()
        .and_then(Result::ok)
        .and_then(|op| op.name)
        .or_else(|| {
            info.lineage
                .engine_op
                .as_ref()
                .map(|e| e.op.to_ascii_lowercase())
        })
}

/// Whether both runs name the same engine in their run metadata (ggml and
/// ggml, torch and torch; neither naming one counts as the same): op
/// names and recording grain are then alike.
fn same_engine(a: &Trace, b: &Trace) -> bool {
    a.run_metadata().get("engine") == b.run_metadata().get("engine")
}

/// The op's typed parameters (or the op itself) differ between the runs,
/// as each tensor's `tracedump.op` records them.
fn params_differ(a: &Trace, b: &Trace, p: &Pair) -> Option<Finding> {
    let op_of = |t: &Trace, id: u64| t.tensor(id).ok().and_then(|i| i.op()).and_then(Result::ok);
    let (oa, ob) = (op_of(a, p.a.id)?, op_of(b, p.b.id)?);
    // op names and parameter keys are each engine's own words (ggml's
    // mul_mat is torch's matmul, ggml's rope torch's add of rotated
    // halves): between two engines only a parameter both record counts
    let same_engine = same_engine(a, b);
    let mut differ = Vec::new();
    if oa.name != ob.name && same_engine {
        let name = |o: &trace_format::op::OpInfo| o.name.clone().unwrap_or_else(|| "?".into());
        differ.push(("op".to_string(), name(&oa), name(&ob)));
    }
    let mut seen = HashSet::new();
    let keys = oa.params.iter().chain(&ob.params).map(|(k, _)| k.as_str());
    for k in keys.filter(|k| seen.insert(*k)) {
        let (va, vb) = (oa.get(k), ob.get(k));
        if va != vb && (same_engine || (va.is_some() && vb.is_some())) {
            let text =
                |v: Option<&trace_format::Value>| v.map_or("(none)".to_string(), |v| v.to_string());
            differ.push((k.to_string(), text(va), text(vb)));
        }
    }
    if differ.is_empty() {
        return None;
    }
    let name = oa.name.as_deref().unwrap_or("op");
    let said: Vec<String> = differ
        .iter()
        .map(|(k, x, y)| format!("{k} = {x} in A, {y} in B"))
        .collect();
    Some(Finding {
        evidence: format!(
            "the runs configured {name} differently: {}",
            said.join("; ")
        ),
        cause: crate::diagnose::Cause::Params { differ },
        strength: 0.99,
    })
}

/// For a RoPE output (its op relation names `rope`, as ggml's ROPE and
/// `TensorMeta::computed_from("rope", ..)` do) whose first parent is the
/// rotated input (as many values) and second the positions (`T`
/// integers): which RoPE variant gives A, and which B. The input goes
/// through the pairing's transforms as A did (llama.cpp's Q against HF's:
/// `rope_rows`, then heads before tokens), and the comparison frame is
/// `[T, H, D]` once leading axes of 1 are dropped (down to three axes):
/// `[H, T, D]` is read transposed.
fn rope_in(
    a: &Trace,
    p: &Pair,
    transforms: &[Transform],
    x: Values<'_>,
    y: Values<'_>,
) -> Option<Finding> {
    let info = a.tensor(p.a.id).ok()?;
    let op = info.op()?.ok()?;
    if op.name.as_deref() != Some("rope") {
        return None;
    }
    let (&input, &pos) = (info.lineage.parents.first()?, info.lineage.parents.get(1)?);
    let input = a.view(input).ok()?.to_f64().ok()?;
    let positions = a.view(pos).ok()?.to_f64().ok()?;
    // (a pair of two shapes, a shape mismatch, has no one frame)
    if input.len() != x.data.len() || y.data.len() != x.data.len() {
        return None;
    }
    // (B's values are not transformed: none are passed)
    let (input, _) = mapping::apply(transforms, input, &p.a.shape, Vec::new(), &p.b.shape);
    let input: Vec<f32> = input.iter().map(|&v| v as f32).collect();
    // (leading axes of 1 dropped down to three: one KV head stays an axis)
    let mut dims: &[usize] = x.shape;
    while dims.len() > 3 && dims[0] == 1 {
        dims = &dims[1..];
    }
    let &[n0, n1, d] = dims else {
        return None;
    };
    let t = positions.len();
    if n0 == t {
        let frame = [n0, n1, d];
        let (xa, yb) = (Values::new(x.data, &frame)?, Values::new(y.data, &frame)?);
        if let Some(found) = crate::diagnose::rope::rope(xa, yb, &input, &positions) {
            return Some(found);
        }
    }
    if n1 == t {
        // heads before tokens: each of the three read as [T, H, D]
        let shape = [n0 as u64, n1 as u64, d as u64];
        let swap = |v: &[f32]| mapping::transpose(v, &shape, 0, 1);
        let (xs, ys, is) = (swap(x.data), swap(y.data), swap(&input));
        let frame = [n1, n0, d];
        let (xa, yb) = (Values::new(&xs, &frame)?, Values::new(&ys, &frame)?);
        return crate::diagnose::rope::rope(xa, yb, &is, &positions);
    }
    None
}
