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
            });
        }
    }
    (blamed, amplification)
}

/// Diagnose pair `p` (A's values with the pairing's transforms applied,
/// against B's), as f32; nothing for a pair of more than
/// [`MAX_DIAGNOSED_VALUES`] values a side (memory stays bounded).
pub fn diagnose_pair(
    a: &Trace,
    b: &Trace,
    p: &Pair,
    transforms: &[Transform],
) -> Result<Vec<Finding>, ToolsError> {
    let (sa, sb) = mapping::transformed_shapes(transforms, &p.a.shape, &p.b.shape)
        .map_err(ToolsError::Invalid)?;
    let numel = |s: &[u64]| s.iter().product::<u64>();
    if numel(&p.a.shape).max(numel(&p.b.shape)) > MAX_DIAGNOSED_VALUES {
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
    found.extend(params_differ(a, b, p));
    found.extend(rope_in(a, p.a.id, x, y));
    // an agreeing pair equals its copies elsewhere: that is no staleness
    if p.verdict.is_divergent() && found.iter().all(|f| f.strength < 0.95) {
        found.extend(stale_in(a, b, p, x));
    }
    found.sort_by(|x, y| y.strength.total_cmp(&x.strength));
    Ok(found)
}

/// At most this many other tensors are compared with a blamed output.
const MAX_STALE: usize = 32;

/// A's values equal another tensor of either run with as many values (the
/// nearest ones in execution order first): a buffer reused without being
/// written, or read from another step or layer.
fn stale_in(a: &Trace, b: &Trace, p: &Pair, x: Values<'_>) -> Option<Finding> {
    let numel = x.data.len() as u64;
    let near = |t: &Trace, own: u64| -> Vec<u64> {
        // views of the tensor's own bytes hold its values: no other buffer
        let storage = t.tensor(own).ok().and_then(|i| i.storage);
        let mut ids: Vec<u64> = t
            .tensor_ids()
            .iter()
            .copied()
            .filter(|&id| id != own)
            .filter(|&id| storage.is_none() || t.tensor(id).is_ok_and(|i| i.storage != storage))
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
    let mut others: Vec<(String, Vec<f32>)> = Vec::new();
    for (t, own, run) in [(a, p.a.id, "A"), (b, p.b.id, "B")] {
        for id in near(t, own) {
            if let Ok(v) = t.view(id).and_then(|v| v.to_f32()) {
                let name = t.record_name(id).unwrap_or("?");
                others.push((format!("{name} (record #{id} of {run})"), v));
            }
        }
    }
    // B's own value is not "another tensor": a match there is no bug
    crate::diagnose::stale(x, others.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
}

/// The op's typed parameters (or the op itself) differ between the runs,
/// as each tensor's `tracedump.op` records them.
fn params_differ(a: &Trace, b: &Trace, p: &Pair) -> Option<Finding> {
    let op_of = |t: &Trace, id: u64| t.tensor(id).ok().and_then(|i| i.op()).and_then(Result::ok);
    let (oa, ob) = (op_of(a, p.a.id)?, op_of(b, p.b.id)?);
    let mut differ = Vec::new();
    if oa.name != ob.name {
        let name = |o: &trace_format::op::OpInfo| o.name.clone().unwrap_or_else(|| "?".into());
        differ.push(("op".to_string(), name(&oa), name(&ob)));
    }
    let mut seen = HashSet::new();
    let keys = oa.params.iter().chain(&ob.params).map(|(k, _)| k.as_str());
    for k in keys.filter(|k| seen.insert(*k)) {
        let (va, vb) = (oa.get(k), ob.get(k));
        if va != vb {
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
/// rotated input (`[T, H, D]`, as many values) and second the positions
/// (`T` integers): which RoPE variant gives A, and which B.
fn rope_in(a: &Trace, id: u64, x: Values<'_>, y: Values<'_>) -> Option<Finding> {
    let &[t, _, _] = x.shape else { return None };
    let info = a.tensor(id).ok()?;
    let op = info.op()?.ok()?;
    if op.name.as_deref() != Some("rope") {
        return None;
    }
    let (&input, &pos) = (info.lineage.parents.first()?, info.lineage.parents.get(1)?);
    let input = a.view(input).ok()?.to_f32().ok()?;
    let positions = a.view(pos).ok()?.to_f64().ok()?;
    if input.len() != x.data.len() || positions.len() != t {
        return None;
    }
    crate::diagnose::rope::rope(x, y, &input, &positions)
}
