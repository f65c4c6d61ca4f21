//! Comparing two runs: pair tensors by name (or by rename rules), compare
//! their logical values whatever their layouts, and find the first tensor
//! where the runs part ways.
//!
//! Run **A** is the run under test, run **B** the reference: relative
//! errors and tolerances are measured against B's values.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use rayon::prelude::*;

use trace_format::DType;

use crate::blame::{self, Blame};
use crate::mapping::{self, Mapping, Resolved, Transform};
use crate::ToolsError;
use trace_reader::{TensorInfo, Trace};

pub use crate::metrics::{compare_values, unravel, Metrics, Moments, Tolerance};
use crate::stream::{self, Source};

/// The verdict on one pair.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Verdict {
    /// Within tolerance.
    Agree,
    /// Outside tolerance; the reasons say how.
    Diverge(Vec<String>),
    /// The logical shapes differ (size-1 dimensions aside).
    ShapeMismatch,
    /// Only statistics were recorded on a side: compared by moments, no verdict.
    StatsOnly,
    /// Could not be compared (e.g. a block dtype before dequantization).
    Skipped(String),
}

impl Verdict {
    /// The verdict's name, the same everywhere (JSON's `kind`, Parquet,
    /// Python, the report): `agree`, `diverge`, `shape_mismatch`,
    /// `stats_only` or `skipped`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::Diverge(_) => "diverge",
            Verdict::ShapeMismatch => "shape_mismatch",
            Verdict::StatsOnly => "stats_only",
            Verdict::Skipped(_) => "skipped",
        }
    }

    /// The name as people read it in tables: upper case when the pair
    /// parts the runs (`DIVERGE`, `SHAPE_MISMATCH`), so that it stands out.
    pub fn label(&self) -> String {
        if self.is_divergent() {
            self.name().to_ascii_uppercase()
        } else {
            self.name().to_string()
        }
    }

    /// Why: the reasons a pair diverges, or why it was skipped.
    pub fn reasons(&self) -> &[String] {
        match self {
            Verdict::Diverge(why) => why,
            Verdict::Skipped(why) => std::slice::from_ref(why),
            _ => &[],
        }
    }

    /// Whether this pair marks the runs as parted.
    pub fn is_divergent(&self) -> bool {
        matches!(self, Verdict::Diverge(_) | Verdict::ShapeMismatch)
    }
}

/// One side of a pair.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Side {
    /// Record id.
    pub id: u64,
    /// Name in its trace.
    pub name: String,
    /// Dtype name.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Byte strides.
    pub byte_strides: Vec<i64>,
    /// Whether contiguous.
    pub contiguous: bool,
    /// Layer.
    pub layer: Option<i64>,
}

impl Side {
    /// The side a pair shows of tensor `t`.
    pub fn of(t: &TensorInfo) -> Self {
        Side {
            id: t.id,
            name: t.name.clone(),
            dtype: t.dtype.to_string(),
            shape: t.layout.shape().to_vec(),
            byte_strides: t.layout.byte_strides().to_vec(),
            contiguous: t.is_contiguous(),
            layer: t.layer,
        }
    }
}

/// One compared pair.
///
/// As JSON, a stats-only pair's `metrics` holds both sides' moments and
/// `null` for every element-wise metric (nothing was measured element by
/// element); see [`Pair::measured`].
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The name both sides pair under (B's name: A's name after the mapping).
    pub key: String,
    /// The step both sides belong to (`None`: a side has no steps).
    pub step: Option<i64>,
    /// The mapping rule that paired them, as written (`None`: same name).
    pub rule: Option<String>,
    /// The transforms applied to A's values before comparing (`rope_rows`, …).
    pub transforms: Vec<String>,
    /// Run A's tensor.
    pub a: Side,
    /// Run B's tensor.
    pub b: Side,
    /// The verdict.
    pub verdict: Verdict,
    /// The metrics (absent when skipped or shapes differ; moments only for
    /// stats-only pairs: their other fields are not measured, see [`Pair::measured`]).
    pub metrics: Option<Metrics>,
    /// A's record ids of the tensor's parents, as its lineage records them.
    pub parents: Vec<u64>,
    /// Indices (into the report's pairs) of its compared inputs: the
    /// nearest ancestors that are themselves paired.
    pub inputs: Vec<usize>,
    /// Relative error out over the largest relative error of its inputs,
    /// for a divergent pair whose inputs differ at all.
    pub amplification: Option<f64>,
}

impl Pair {
    /// The element-wise metrics, when values were compared element by
    /// element (`None` for stats-only, skipped and shape-mismatched pairs).
    pub fn measured(&self) -> Option<&Metrics> {
        self.metrics
            .as_ref()
            .filter(|_| self.verdict != Verdict::StatsOnly)
    }
}

/// [`Metrics`] as JSON: `null` for what was not measured.
#[derive(serde::Serialize)]
struct MetricsJson<'a> {
    numel: Option<u64>,
    max_abs: Option<f64>,
    max_abs_index: Option<&'a [u64]>,
    max_abs_a: Option<f64>,
    max_abs_b: Option<f64>,
    max_rel: Option<f64>,
    mean_abs: Option<f64>,
    rmse: Option<f64>,
    cosine: Option<f64>,
    max_ulp: Option<u64>,
    nan_mismatch: Option<u64>,
    inf_mismatch: Option<u64>,
    outside_tolerance: Option<u64>,
    a: &'a Moments,
    b: &'a Moments,
}

impl<'a> MetricsJson<'a> {
    fn of(m: &'a Metrics, measured: bool) -> Self {
        let f = |x: f64| measured.then_some(x);
        let u = |x: u64| measured.then_some(x);
        MetricsJson {
            numel: u(m.numel),
            max_abs: f(m.max_abs),
            max_abs_index: measured.then_some(m.max_abs_index.as_slice()),
            max_abs_a: f(m.max_abs_a),
            max_abs_b: f(m.max_abs_b),
            max_rel: f(m.max_rel),
            mean_abs: f(m.mean_abs),
            rmse: f(m.rmse),
            cosine: f(m.cosine),
            max_ulp: m.max_ulp.filter(|_| measured),
            nan_mismatch: u(m.nan_mismatch),
            inf_mismatch: u(m.inf_mismatch),
            outside_tolerance: u(m.outside_tolerance),
            a: &m.a,
            b: &m.b,
        }
    }
}

impl serde::Serialize for Pair {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct PairJson<'a> {
            key: &'a str,
            step: Option<i64>,
            rule: Option<&'a str>,
            transforms: &'a [String],
            a: &'a Side,
            b: &'a Side,
            verdict: &'a Verdict,
            metrics: Option<MetricsJson<'a>>,
        }
        let measured = self.measured().is_some();
        PairJson {
            key: &self.key,
            step: self.step,
            rule: self.rule.as_deref(),
            transforms: &self.transforms,
            a: &self.a,
            b: &self.b,
            verdict: &self.verdict,
            metrics: self.metrics.as_ref().map(|m| MetricsJson::of(m, measured)),
        }
        .serialize(s)
    }
}

/// Per-layer error growth, as people tabulate it by hand.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerSummary {
    /// The layer (`None`: tensors without a layer).
    pub layer: Option<i64>,
    /// Pairs compared in the layer.
    pub pairs: u64,
    /// Pairs that diverge.
    pub divergent: u64,
    /// Largest max-abs error in the layer.
    pub max_abs: f64,
    /// Smallest cosine in the layer.
    pub min_cosine: f64,
    /// The layer's last compared tensor (its output, in execution order).
    pub last: String,
    /// A's moments of that tensor.
    pub a: Moments,
    /// B's moments of that tensor.
    pub b: Moments,
    /// `a.std / b.std`.
    pub std_ratio: f64,
}

/// One of A's tensors that has no partner in B, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Unpaired {
    /// Record id in A.
    pub id: u64,
    /// Name in A.
    pub name: String,
    /// Step.
    pub step: Option<i64>,
    /// Why it has no partner.
    pub reason: String,
}

/// Everything `diff` found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DiffReport {
    /// The tolerance used.
    pub tolerance: Tolerance,
    /// Pairs in run A's execution order.
    pub pairs: Vec<Pair>,
    /// Index into `pairs` of the first divergent pair.
    pub first_divergence: Option<usize>,
    /// A's tensors without a partner (`name (#record id)`).
    pub only_in_a: Vec<String>,
    /// Why each of A's tensors without a partner has none, in A's order.
    pub unpaired: Vec<Unpaired>,
    /// Whether tensors were paired within steps (both traces record steps).
    pub by_step: bool,
    /// B's tensors without a partner.
    pub only_in_b: Vec<String>,
    /// Per-layer summary, in layer order.
    pub layers: Vec<LayerSummary>,
    /// Tensors that could not be read (bad layout, unknown dtype, …), with the error.
    pub unreadable: Vec<String>,
    /// The ops that made a divergent output from agreeing inputs, in
    /// execution order, each with a diagnosis (see [`crate::blame`]).
    pub blamed: Vec<Blame>,
}

impl DiffReport {
    /// Whether the runs agree: at least one pair compared, none divergent,
    /// no unreadable tensor. Two runs that share no tensor name do not
    /// agree: nothing was compared (a mapping is missing).
    pub fn agrees(&self) -> bool {
        !self.pairs.is_empty() && self.first_divergence.is_none() && self.unreadable.is_empty()
    }
}

fn squeezed(shape: &[u64]) -> Vec<u64> {
    shape.iter().copied().filter(|&n| n != 1).collect()
}

fn compare_pair(
    ta: &Trace,
    a: &TensorInfo,
    tb: &Trace,
    b: &TensorInfo,
    transforms: &[Transform],
    tol: &Tolerance,
) -> Result<(Verdict, Option<Metrics>), ToolsError> {
    if a.is_stats_only() || b.is_stats_only() {
        let moments_of = |trace: &Trace, t: &TensorInfo| -> Result<Moments, ToolsError> {
            match &t.stats {
                Some(s) if t.is_stats_only() => Ok(Moments {
                    mean: s.mean,
                    std: s.std,
                    min: s.min,
                    max: s.max,
                }),
                _ => {
                    let src = Source::of(trace, trace.view(t.id)?)?;
                    let m = stream::moments(&src).map_err(|e| read_error(t, e))?;
                    Ok(m.moments())
                }
            }
        };
        let (ma, mb) = (moments_of(ta, a)?, moments_of(tb, b)?);
        return Ok((
            Verdict::StatsOnly,
            Some(Metrics {
                a: ma,
                b: mb,
                ..Default::default()
            }),
        ));
    }
    for t in [a, b] {
        if t.dtype.is_block() && !trace_quant::can_dequantize(t.dtype) {
            return Ok((
                Verdict::Skipped(format!(
                    "{} blocks cannot be dequantized by this version",
                    t.dtype
                )),
                None,
            ));
        }
    }
    let Ok((shape_a, shape_b)) =
        mapping::transformed_shapes(transforms, a.layout.shape(), b.layout.shape())
    else {
        return Ok((Verdict::ShapeMismatch, None));
    };
    if squeezed(&shape_a) != squeezed(&shape_b) {
        return Ok((Verdict::ShapeMismatch, None));
    }
    let ulp = [a.dtype, b.dtype]
        .into_iter()
        .find(|d| matches!(d, DType::F16 | DType::BF16));
    let mut sa = Source::of(ta, ta.view(a.id)?)?;
    let mut sb = Source::of(tb, tb.view(b.id)?)?;
    if !stream::transform(
        transforms,
        &mut sa,
        a.layout.shape(),
        &mut sb,
        b.layout.shape(),
    ) {
        // a transform no strides express: the values, within bounds
        let numel = a.layout.numel().max(b.layout.numel());
        if numel > stream::MATERIALIZE_LIMIT {
            return Ok((
                Verdict::Skipped(format!(
                    "the mapping's transforms need the values in memory, and {numel} values is more than {} (the bound on memory)",
                    stream::MATERIALIZE_LIMIT
                )),
                None,
            ));
        }
        let va = ta.view(a.id)?.to_f64()?;
        let vb = tb.view(b.id)?.to_f64()?;
        let (va, vb) = mapping::apply(transforms, va, a.layout.shape(), vb, b.layout.shape());
        let (na, nb) = (va.len() as u64, vb.len() as u64);
        sa = Source::owned(va, &[na]).map_err(ToolsError::Invalid)?;
        sb = Source::owned(vb, &[nb]).map_err(ToolsError::Invalid)?;
    }
    let m = stream::compare(&sa, &sb, tol, ulp)
        .map_err(|e| read_error(a, e))?
        .finish(&shape_a, ulp);
    let mut why = Vec::new();
    if m.outside_tolerance > 0 {
        why.push(format!(
            "{} of {} elements outside atol {} + rtol {}·|b|",
            m.outside_tolerance, m.numel, tol.atol, tol.rtol
        ));
    }
    if m.cosine < tol.min_cosine {
        why.push(format!("cosine {:.6} < {}", m.cosine, tol.min_cosine));
    }
    if m.nan_mismatch > 0 {
        why.push(format!("{} NaN mismatches", m.nan_mismatch));
    }
    if m.inf_mismatch > 0 {
        why.push(format!("{} Inf mismatches", m.inf_mismatch));
    }
    let verdict = if why.is_empty() {
        Verdict::Agree
    } else {
        Verdict::Diverge(why)
    };
    Ok((verdict, Some(m)))
}

fn read_error(t: &TensorInfo, e: String) -> ToolsError {
    ToolsError::Invalid(format!("tensor `{}`: {e}", t.name))
}

/// The engine op that made a tensor (ggml: `MUL_MAT`, `RESHAPE`, …).
fn engine_op(t: &TensorInfo) -> Option<&str> {
    t.lineage.engine_op.as_ref().map(|e| e.op.as_str())
}

/// Pair run A's tensors with run B's and compare them.
///
/// Each of A's tensors goes where `mapping` says (by default: B's tensor of
/// the same name). When both traces record steps, tensors pair within the
/// same step; then the k-th of A's tensors going to a name pairs with the
/// k-th of B's tensors of that name (llama.cpp repeats names). `progress` is
/// called after each of A's tensors with (done, total).
pub fn diff(
    a: &Trace,
    b: &Trace,
    mapping: &Mapping,
    tol: &Tolerance,
    mut progress: impl FnMut(usize, usize),
) -> Result<DiffReport, ToolsError> {
    let has_steps = |t: &Trace| {
        t.tensor_ids()
            .iter()
            .any(|&id| t.tensor(id).is_ok_and(|x| x.step.is_some()))
    };
    let by_step = has_steps(a) && has_steps(b);
    let step_of = |t: &TensorInfo| if by_step { t.step } else { None };
    let mut b_by_name: HashMap<(Option<i64>, &str), Vec<u64>> = HashMap::new();
    let mut b_names = std::collections::HashSet::new();
    for &id in b.tensor_ids() {
        let name = b.record_name(id).unwrap_or("");
        let step = b.tensor(id).ok().and_then(step_of);
        b_by_name.entry((step, name)).or_default().push(id);
        b_names.insert(name);
    }
    let mut seen: HashMap<(Option<i64>, String), usize> = HashMap::new();
    let mut used_b = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    let mut unpaired = Vec::new();
    let total = a.len();
    // (A's index, why), sorted into A's order once the pairs are compared
    let mut unreadable: Vec<(usize, String)> = Vec::new();
    let mut pair_transforms = Vec::new();
    // (A's index, A's tensor, B's tensor) of each pair, compared below
    let mut jobs = Vec::new();
    for (done, &ida) in a.tensor_ids().iter().enumerate() {
        let ta = match a.tensor(ida) {
            Ok(t) => t,
            Err(e) => {
                unreadable.push((done, format!("A: {e}")));
                continue;
            }
        };
        let step = step_of(ta);
        let mut no_partner = |reason: String| {
            unpaired.push(Unpaired {
                id: ida,
                name: ta.name.clone(),
                step: ta.step,
                reason,
            })
        };
        let (key, rule, transforms) = match mapping.resolve(&ta.name, engine_op(ta)) {
            Resolved::Unpaired { reason, .. } => {
                no_partner(reason);
                continue;
            }
            Resolved::Pair {
                key,
                rule,
                transforms,
            } => (key, rule, transforms),
        };
        let k = seen.entry((step, key.clone())).or_insert(0);
        let occurrence = *k;
        *k += 1;
        let partner = b_by_name
            .get(&(step, key.as_str()))
            .and_then(|ids| ids.get(occurrence))
            .copied();
        let Some(idb) = partner else {
            let via = rule.map_or("same name".to_string(), |r| format!("rule `{r}`"));
            let at = step.map_or(String::new(), |s| format!(" at step {s}"));
            let reason = match (
                b_names.contains(key.as_str()),
                b_by_name.get(&(step, key.as_str())),
            ) {
                (false, _) => format!("B has no tensor named `{key}` ({via})"),
                (true, None) => format!("B has `{key}`, but not{at} ({via})"),
                (true, Some(ids)) => format!(
                    "B has {} `{key}`{at}; this is the {} of A's tensors that go there ({via})",
                    ids.len(),
                    ordinal(occurrence + 1)
                ),
            };
            no_partner(reason);
            continue;
        };
        used_b.insert(idb);
        let tb = match b.tensor(idb) {
            Ok(t) => t,
            Err(e) => {
                unreadable.push((done, format!("B: {e}")));
                continue;
            }
        };
        jobs.push((done, ta, tb));
        pair_transforms.push(transforms);
        pairs.push(Pair {
            key,
            step,
            rule: rule.map(str::to_owned),
            transforms: transforms.iter().map(|t| t.to_string()).collect(),
            a: Side::of(ta),
            b: Side::of(tb),
            verdict: Verdict::Agree,
            metrics: None,
            parents: ta.lineage.parents.clone(),
            inputs: Vec::new(),
            amplification: None,
        });
    }
    // compare the pairs on every core, a batch at a time (each pair's
    // chunks spread over the cores too), telling progress after each batch
    let batch = rayon::current_num_threads().max(1) * 4;
    for (k, group) in jobs.chunks(batch).enumerate() {
        let results: Vec<_> = group
            .par_iter()
            .enumerate()
            .map(|(i, &(_, ta, tb))| {
                let transforms = pair_transforms[k * batch + i];
                match compare_pair(a, ta, b, tb, transforms, tol) {
                    Ok(x) => x,
                    Err(e) => (Verdict::Skipped(format!("unreadable: {e}")), None),
                }
            })
            .collect();
        for (i, (verdict, metrics)) in results.into_iter().enumerate() {
            let (done, _, _) = group[i];
            let p = &mut pairs[k * batch + i];
            if let Verdict::Skipped(why) = &verdict {
                if why.starts_with("unreadable") {
                    unreadable.push((done, format!("{}: {why}", p.key)));
                }
            }
            p.verdict = verdict;
            p.metrics = metrics;
            progress(done + 1, total);
        }
    }
    unreadable.sort_by_key(|&(done, _)| done);
    let unreadable: Vec<String> = unreadable.into_iter().map(|(_, why)| why).collect();
    if total > 0 {
        progress(total, total);
    }
    let only_in_a = unpaired
        .iter()
        .map(|u| format!("{} (#{})", u.name, u.id))
        .collect();
    let only_in_b = b
        .tensor_ids()
        .iter()
        .filter(|id| !used_b.contains(*id))
        .map(|&id| format!("{} (#{id})", b.record_name(id).unwrap_or("")))
        .collect();
    let first_divergence = pairs.iter().position(|p| p.verdict.is_divergent());
    let layers = layer_summary(&pairs);
    let mut report = DiffReport {
        tolerance: *tol,
        pairs,
        first_divergence,
        only_in_a,
        unpaired,
        by_step,
        only_in_b,
        layers,
        unreadable,
        blamed: Vec::new(),
    };
    let inputs = blame::pair_inputs(a, &report.pairs);
    let (mut blamed, amplification) = blame::blame(&report, &inputs);
    for (p, (i, x)) in report
        .pairs
        .iter_mut()
        .zip(inputs.into_iter().zip(amplification))
    {
        p.inputs = i;
        p.amplification = x;
    }
    // the first distinct ops: a repeat at a later step would say the same
    for bl in blamed
        .iter_mut()
        .filter(|bl| bl.same_op_as.is_none())
        .take(blame::MAX_DIAGNOSED)
    {
        bl.diagnosis = blame::diagnose_in(
            a,
            b,
            &report.pairs,
            bl.pair,
            pair_transforms[bl.pair],
            &report.tolerance,
        )
        .unwrap_or_default();
        bl.diagnosed = blame::diagnosable(&report.pairs[bl.pair]);
    }
    report.blamed = blamed;
    Ok(report)
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn layer_summary(pairs: &[Pair]) -> Vec<LayerSummary> {
    let mut layers: Vec<LayerSummary> = Vec::new();
    for p in pairs {
        let Some(m) = &p.metrics else { continue };
        let layer = p.a.layer.or(p.b.layer);
        let i = match layers.iter().position(|l| l.layer == layer) {
            Some(i) => i,
            None => {
                layers.push(LayerSummary {
                    layer,
                    pairs: 0,
                    divergent: 0,
                    max_abs: 0.0,
                    min_cosine: f64::INFINITY,
                    last: String::new(),
                    a: Moments::default(),
                    b: Moments::default(),
                    std_ratio: f64::NAN,
                });
                layers.len() - 1
            }
        };
        let l = &mut layers[i];
        l.pairs += 1;
        l.divergent += u64::from(p.verdict.is_divergent());
        if p.verdict != Verdict::StatsOnly {
            l.max_abs = l.max_abs.max(m.max_abs);
            l.min_cosine = l.min_cosine.min(m.cosine);
        }
        l.last = p.key.clone();
        l.a = m.a;
        l.b = m.b;
        l.std_ratio = if m.b.std != 0.0 {
            m.a.std / m.b.std
        } else {
            f64::NAN
        };
    }
    layers.sort_by_key(|l| l.layer.unwrap_or(i64::MIN));
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_known_values() {
        let a = [1.0, 2.0, 3.0, f64::NAN, 5.0];
        let b = [1.0, 2.5, 3.0, 4.0, f64::NAN];
        let m = compare_values(&a, &b, &[5], &Tolerance::default(), None);
        assert_eq!(m.max_abs, 0.5);
        assert_eq!(m.max_abs_index, vec![1]);
        assert_eq!((m.max_abs_a, m.max_abs_b), (2.0, 2.5));
        assert_eq!(m.nan_mismatch, 2);
        assert_eq!(m.max_rel, 0.5 / 2.5);
        assert_eq!(m.outside_tolerance, 3);
        let cos = (1.0 + 5.0 + 9.0) / ((1.0f64 + 4.0 + 9.0).sqrt() * (1.0f64 + 6.25 + 9.0).sqrt());
        assert!((m.cosine - cos).abs() < 1e-15);
        assert!((m.rmse - (0.25f64 / 3.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn ulp_distance_in_f16() {
        let one = 1.0;
        let next = half::f16::from_bits(0x3c01).to_f64();
        let m = compare_values(
            &[one, -0.0],
            &[next, 0.0],
            &[2],
            &Tolerance::default(),
            Some(DType::F16),
        );
        assert_eq!(m.max_ulp, Some(1));
    }

    #[test]
    fn presets_parse() {
        for p in mapping::PRESETS {
            assert!(Mapping::from_map(p.text).is_ok(), "{}", p.name);
        }
        let m = Mapping::preset("llama-hf").unwrap();
        assert_eq!(
            m.resolve("attn_norm-0", Some("MUL")).key(),
            Some("model.layers.0.input_layernorm")
        );
        assert_eq!(ordinal(2), "2nd");
        assert_eq!(ordinal(13), "13th");
    }
}
