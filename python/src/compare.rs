//! `compare()`: `trace_tools::compare::diff`, with its report as Python objects.

#![forbid(unsafe_code)]

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use trace_tools::compare::{diff, DiffReport, Moments, Pair, Tolerance, Verdict};
use trace_tools::diagnose::Finding;
use trace_tools::mapping::{preset_names, Mapping};

use crate::errors::tools_error;
use crate::reader::{PyTrace, Shared};

fn trace_arg(obj: &Bound<'_, PyAny>) -> PyResult<Arc<Shared>> {
    if let Ok(t) = obj.cast::<PyTrace>() {
        return t.get().shared();
    }
    crate::reader::open(obj, None)?.shared()
}

/// `rules`: None; a preset name ("llama-hf", …); mapping-file text (lines of
/// `PATTERN [@OP] => REPLACEMENT [| TRANSFORM]...`); a list of "PAT=>REP" strings or (pattern,
/// replacement) pairs; or a dict {pattern: replacement}.
fn mapping(rules: Option<&Bound<'_, PyAny>>) -> PyResult<Mapping> {
    let Some(rules) = rules.filter(|r| !r.is_none()) else {
        return Ok(Mapping::none());
    };
    let bad = |e: String| PyValueError::new_err(format!("bad rename rule: {e}"));
    if let Ok(s) = rules.cast::<PyString>() {
        let s = s.to_str()?;
        if let Some(r) = Mapping::preset(s) {
            return Ok(r);
        }
        if s.contains("=>") {
            return Mapping::from_map(s).map_err(bad);
        }
        return Err(PyValueError::new_err(format!(
            "unknown preset {s:?} ({}), and not a `PATTERN => REPLACEMENT` rule",
            preset_names()
        )));
    }
    let mut r = Mapping::none();
    if let Ok(d) = rules.cast::<PyDict>() {
        for (k, v) in d.iter() {
            r.push(&k.extract::<String>()?, &v.extract::<String>()?)
                .map_err(bad)?;
        }
        return Ok(r);
    }
    for item in rules.try_iter()? {
        let item = item?;
        if let Ok(s) = item.extract::<String>() {
            r.extend(Mapping::from_map(&s).map_err(bad)?);
        } else if let Ok((p, rep)) = item.extract::<(String, String)>() {
            r.push(&p, &rep).map_err(bad)?;
        } else {
            return Err(PyTypeError::new_err(
                "rename rules are \"PAT=>REP\" strings or (pattern, replacement) pairs",
            ));
        }
    }
    Ok(r)
}

/// Compare run `a` (under test) against run `b` (the reference): pair
/// tensors by name (k-th occurrence with k-th, after `rules` rename A's
/// names), compare their logical values whatever their layouts, and find
/// the first tensor where the runs part ways. `a` and `b` are `Trace`
/// objects or paths.
#[pyfunction]
#[pyo3(signature = (a, b, rules=None, atol=1e-3, rtol=1e-2, min_cosine=0.999))]
pub fn compare(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    rules: Option<&Bound<'_, PyAny>>,
    atol: f64,
    rtol: f64,
    min_cosine: f64,
) -> PyResult<DiffResult> {
    let (ta, tb, report) = run_diff(py, a, b, rules, atol, rtol, min_cosine)?;
    Ok(DiffResult {
        report,
        traces: (ta, tb),
        mapping: mapping(rules)?,
    })
}

/// Open both sides and compare them (the GIL released while comparing).
fn run_diff(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    rules: Option<&Bound<'_, PyAny>>,
    atol: f64,
    rtol: f64,
    min_cosine: f64,
) -> PyResult<(Arc<Shared>, Arc<Shared>, DiffReport)> {
    let (ta, tb) = (trace_arg(a)?, trace_arg(b)?);
    let ren = mapping(rules)?;
    let tol = Tolerance {
        atol,
        rtol,
        min_cosine,
    };
    let report = py
        .detach(|| diff(&ta.trace, &tb.trace, &ren, &tol, |_, _| {}))
        .map_err(tools_error)?;
    Ok((ta, tb, report))
}

/// Compare `a` with `b` as `compare()` does and write the divergence report
/// to `path`: one self-contained HTML page (per-layer error growth, the
/// first divergent tensor's lineage and layout in both runs, an error
/// histogram, a heat map of where the error sits, the sortable table; what
/// `tracedump report` writes). Returns the comparison.
#[pyfunction]
#[pyo3(signature = (a, b, path, rules=None, atol=1e-3, rtol=1e-2, min_cosine=0.999))]
#[allow(clippy::too_many_arguments)]
pub fn report(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
    path: &Bound<'_, PyAny>,
    rules: Option<&Bound<'_, PyAny>>,
    atol: f64,
    rtol: f64,
    min_cosine: f64,
) -> PyResult<DiffResult> {
    let out: std::path::PathBuf = py
        .import("os")?
        .getattr("fspath")?
        .call1((path,))?
        .extract()?;
    let (ta, tb, report) = run_diff(py, a, b, rules, atol, rtol, min_cosine)?;
    let page = py
        .detach(|| trace_tools::report::html(&ta.trace, &tb.trace, &report))
        .map_err(tools_error)?;
    std::fs::write(&out, page)
        .map_err(|e| crate::errors::os_error(format!("{}: {e}", out.display()), &e, Some(&out)))?;
    Ok(DiffResult {
        report,
        traces: (ta, tb),
        mapping: mapping(rules)?,
    })
}

/// What `compare()` found.
#[pyclass(frozen, module = "tracedump", name = "DiffResult")]
#[derive(Debug)]
pub struct DiffResult {
    report: DiffReport,
    /// Both runs, for diagnoses on request.
    traces: (Arc<Shared>, Arc<Shared>),
    /// The mapping the pairs were made with (their transforms).
    mapping: Mapping,
}

/// A diagnosis finding as a dict: `kind`, the cause's fields, `strength`,
/// `evidence`.
fn finding_dict<'py>(py: Python<'py>, f: &Finding) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_string(&serde_json::json!({
        "cause": f.cause,
        "strength": f.strength,
        "evidence": f.evidence,
    }))
    .map_err(|e| crate::errors::TraceError::new_err(e.to_string()))?;
    let d = py.import("json")?.getattr("loads")?.call1((json,))?;
    // flatten: the cause's kind and fields next to strength and evidence
    let cause = d.get_item("cause")?;
    d.del_item("cause")?;
    d.call_method1("update", (cause,))?;
    Ok(d)
}

fn verdict_name(v: &Verdict) -> (&'static str, Vec<String>) {
    match v {
        Verdict::Agree => ("agree", vec![]),
        Verdict::Diverge(why) => ("diverge", why.clone()),
        Verdict::ShapeMismatch => ("shape_mismatch", vec![]),
        Verdict::StatsOnly => ("stats_only", vec![]),
        Verdict::Skipped(why) => ("skipped", vec![why.clone()]),
    }
}

fn moments(d: &Bound<'_, PyDict>, side: &str, m: &Moments) -> PyResult<()> {
    d.set_item(format!("mean_{side}"), m.mean)?;
    d.set_item(format!("std_{side}"), m.std)?;
    d.set_item(format!("min_{side}"), m.min)?;
    d.set_item(format!("max_{side}"), m.max)?;
    Ok(())
}

/// One pair as a flat dict (one row of `to_pandas()`).
fn pair_dict<'py>(py: Python<'py>, index: usize, p: &Pair) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("index", index)?;
    d.set_item("key", &p.key)?;
    d.set_item("name_a", &p.a.name)?;
    d.set_item("name_b", &p.b.name)?;
    d.set_item("id_a", p.a.id)?;
    d.set_item("id_b", p.b.id)?;
    d.set_item("layer", p.a.layer.or(p.b.layer))?;
    d.set_item("step", p.step)?;
    d.set_item("rule", &p.rule)?;
    d.set_item("transforms", PyTuple::new(py, &p.transforms)?)?;
    d.set_item("dtype_a", &p.a.dtype)?;
    d.set_item("dtype_b", &p.b.dtype)?;
    d.set_item("shape_a", PyTuple::new(py, &p.a.shape)?)?;
    d.set_item("shape_b", PyTuple::new(py, &p.b.shape)?)?;
    let (verdict, reasons) = verdict_name(&p.verdict);
    d.set_item("verdict", verdict)?;
    d.set_item("divergent", p.verdict.is_divergent())?;
    d.set_item("reasons", reasons)?;
    let m = p.metrics.clone().unwrap_or_default();
    let has = p.metrics.is_some() && !matches!(p.verdict, Verdict::StatsOnly);
    let num = |x: f64| if has { Some(x) } else { None };
    d.set_item("numel", if has { Some(m.numel) } else { None })?;
    d.set_item("max_abs", num(m.max_abs))?;
    d.set_item(
        "max_abs_index",
        if has {
            Some(PyTuple::new(py, &m.max_abs_index)?)
        } else {
            None
        },
    )?;
    d.set_item("max_rel", num(m.max_rel))?;
    d.set_item("mean_abs", num(m.mean_abs))?;
    d.set_item("rmse", num(m.rmse))?;
    d.set_item("cosine", num(m.cosine))?;
    d.set_item("max_ulp", m.max_ulp)?;
    d.set_item(
        "nan_mismatch",
        if has { Some(m.nan_mismatch) } else { None },
    )?;
    d.set_item(
        "inf_mismatch",
        if has { Some(m.inf_mismatch) } else { None },
    )?;
    d.set_item(
        "outside_tolerance",
        if has { Some(m.outside_tolerance) } else { None },
    )?;
    if p.metrics.is_some() {
        moments(&d, "a", &m.a)?;
        moments(&d, "b", &m.b)?;
    }
    d.set_item("parents", PyTuple::new(py, &p.parents)?)?;
    d.set_item("inputs", PyTuple::new(py, &p.inputs)?)?;
    d.set_item("amplification", p.amplification)?;
    Ok(d)
}

#[pymethods]
impl DiffResult {
    /// Every compared pair, in A's execution order, as dicts of metrics.
    #[getter]
    fn pairs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (i, p) in self.report.pairs.iter().enumerate() {
            list.append(pair_dict(py, i, p)?)?;
        }
        Ok(list)
    }

    /// The first divergent pair (a dict like those of `pairs`), or None.
    #[getter]
    fn first_divergence<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.report
            .first_divergence
            .and_then(|i| self.report.pairs.get(i).map(|p| (i, p)))
            .map(|(i, p)| pair_dict(py, i, p))
            .transpose()
    }

    /// The ops that made a divergent output from agreeing inputs, in
    /// execution order: dicts with `index` (into `pairs`), `key`, `inputs`
    /// (indices of its compared inputs, which agree), `amplification`
    /// (relative error out over in; None when its inputs agree exactly),
    /// `by_graph` (False: blamed by execution order, no inputs recorded),
    /// `diagnosis` (findings, strongest first: `kind`, its fields,
    /// `strength`, `evidence`), `diagnosed` (False: the values were not
    /// tested, too many of them or beyond the first distinct blamed ops) and
    /// `same_op_as` (the index of the first blame of the same op, when this
    /// is that op again at a later step; else None).
    #[getter]
    fn blamed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for bl in &self.report.blamed {
            let d = PyDict::new(py);
            d.set_item("index", bl.pair)?;
            d.set_item("key", &self.report.pairs[bl.pair].key)?;
            d.set_item("inputs", PyTuple::new(py, &bl.inputs)?)?;
            d.set_item("amplification", bl.amplification)?;
            d.set_item("by_graph", bl.by_graph)?;
            let findings = PyList::empty(py);
            for f in &bl.diagnosis {
                findings.append(finding_dict(py, f)?)?;
            }
            d.set_item("diagnosis", findings)?;
            d.set_item("diagnosed", bl.diagnosed)?;
            d.set_item("same_op_as", bl.same_op_as)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// Diagnose one pair on request: why its values differ. `pair` is an
    /// index into `pairs` or a pair's `key` (its first pair of that key).
    /// A list of findings (dicts: `kind`, its fields, `strength`,
    /// `evidence`), strongest first; empty when no hypothesis holds or the
    /// pair agrees.
    fn diagnosis<'py>(
        &self,
        py: Python<'py>,
        pair: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let pairs = &self.report.pairs;
        let index = if let Ok(i) = pair.extract::<usize>() {
            i
        } else {
            let key: String = pair.extract()?;
            pairs.iter().position(|p| p.key == key).ok_or_else(|| {
                Python::attach(|py| crate::errors::not_found(py, format!("no pair `{key}`")))
            })?
        };
        let p = pairs.get(index).ok_or_else(|| {
            pyo3::exceptions::PyIndexError::new_err(format!("pair {index} of {}", pairs.len()))
        })?;
        let (ta, tb) = (&self.traces.0.trace, &self.traces.1.trace);
        let op = ta
            .tensor(p.a.id)
            .ok()
            .and_then(|t| t.lineage.engine_op.as_ref().map(|e| e.op.clone()));
        let transforms = match self.mapping.resolve(&p.a.name, op.as_deref()) {
            trace_tools::mapping::Resolved::Pair { transforms, .. } => transforms.to_vec(),
            _ => Vec::new(),
        };
        let found = py
            .detach(|| {
                trace_tools::blame::diagnose_in(
                    ta,
                    tb,
                    pairs,
                    index,
                    &transforms,
                    &self.report.tolerance,
                )
            })
            .map_err(tools_error)?;
        let list = PyList::empty(py);
        for f in &found {
            list.append(finding_dict(py, f)?)?;
        }
        Ok(list)
    }

    /// Index into `pairs` of the first divergent pair, or None.
    #[getter]
    fn first_divergence_index(&self) -> Option<usize> {
        self.report.first_divergence
    }

    /// Whether the runs agree (no divergent pair, no unreadable tensor).
    #[getter]
    fn agrees(&self) -> bool {
        self.report.agrees()
    }

    /// A's tensors without a partner in B.
    #[getter]
    fn only_in_a(&self) -> Vec<String> {
        self.report.only_in_a.clone()
    }

    /// Why each of A's tensors without a partner has none: dicts with
    /// id, name, step and reason, in A's order.
    #[getter]
    fn unpaired<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for u in &self.report.unpaired {
            let d = PyDict::new(py);
            d.set_item("id", u.id)?;
            d.set_item("name", &u.name)?;
            d.set_item("step", u.step)?;
            d.set_item("reason", &u.reason)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// B's tensors without a partner in A.
    #[getter]
    fn only_in_b(&self) -> Vec<String> {
        self.report.only_in_b.clone()
    }

    /// Tensors that could not be read, with the error.
    #[getter]
    fn unreadable(&self) -> Vec<String> {
        self.report.unreadable.clone()
    }

    /// Per-layer error growth: dicts with layer, pairs, divergent, max_abs,
    /// min_cosine, last (the layer's output), its moments, std_ratio.
    #[getter]
    fn layers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for l in &self.report.layers {
            let d = PyDict::new(py);
            d.set_item("layer", l.layer)?;
            d.set_item("pairs", l.pairs)?;
            d.set_item("divergent", l.divergent)?;
            d.set_item("max_abs", l.max_abs)?;
            d.set_item("min_cosine", l.min_cosine)?;
            d.set_item("last", &l.last)?;
            moments(&d, "a", &l.a)?;
            moments(&d, "b", &l.b)?;
            d.set_item("std_ratio", l.std_ratio)?;
            list.append(d)?;
        }
        Ok(list)
    }

    /// The tolerance used: {"atol", "rtol", "min_cosine"}.
    #[getter]
    fn tolerance<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("atol", self.report.tolerance.atol)?;
        d.set_item("rtol", self.report.tolerance.rtol)?;
        d.set_item("min_cosine", self.report.tolerance.min_cosine)?;
        Ok(d)
    }

    /// The pairs as a pandas DataFrame (needs pandas).
    fn to_pandas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let pd = py.import("pandas")?;
        pd.getattr("DataFrame")?
            .call_method1("from_records", (self.pairs(py)?,))
    }

    fn __len__(&self) -> usize {
        self.report.pairs.len()
    }

    /// A notebook view: the verdict and the first divergence on top, the
    /// per-layer error growth, then the pairs up to a little past the first
    /// divergence (that row highlighted).
    fn _repr_html_(&self) -> String {
        diff_html(&self.report)
    }

    fn __repr__(&self) -> String {
        let first = self
            .report
            .first_divergence
            .and_then(|i| self.report.pairs.get(i).map(|p| (i, p)))
            .map(|(i, p)| {
                let names = if p.a.name == p.b.name {
                    format!("{:?}", p.a.name)
                } else {
                    format!("{:?} = {:?}", p.a.name, p.b.name)
                };
                let step = p.step.map_or(String::new(), |s| format!(" at step {s}"));
                format!(
                    "{names}{step} (pair {} of {})",
                    i + 1,
                    self.report.pairs.len()
                )
            })
            .unwrap_or_else(|| "None".into());
        format!(
            "DiffResult({} pairs, agrees={}, first_divergence={first})",
            self.report.pairs.len(),
            if self.report.agrees() {
                "True"
            } else {
                "False"
            }
        )
    }
}

fn num(x: f64) -> String {
    if x == 0.0 || (1e-3..1e4).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

/// The HTML of a comparison for notebooks (self-contained, no scripts).
fn diff_html(r: &DiffReport) -> String {
    use crate::convert::html_escape as esc;
    const AROUND: usize = 10;
    const ROWS: usize = 60;
    let mut h = String::from("<div class=\"tracedump-diff\">");
    let first = r
        .first_divergence
        .and_then(|i| r.pairs.get(i).map(|p| (i, p)));
    h.push_str(&format!(
        "<p><b>DiffResult</b>: {} pairs, {}; tolerance atol={} rtol={} min cosine={}</p>",
        r.pairs.len(),
        if r.agrees() {
            "<span style=\"color:green\">the runs agree</span>".to_owned()
        } else {
            format!(
                "<span style=\"color:#b00\"><b>{} divergent</b></span>",
                r.pairs.iter().filter(|p| p.verdict.is_divergent()).count()
            )
        },
        r.tolerance.atol,
        r.tolerance.rtol,
        r.tolerance.min_cosine
    ));
    if let Some((i, p)) = first {
        let (_, why) = verdict_name(&p.verdict);
        h.push_str(&format!(
            "<p>first divergence: pair {} of {} <code>{}</code> (A <code>{}</code> #{}, B <code>{}</code> #{}){}</p>",
            i + 1,
            r.pairs.len(),
            esc(&p.key),
            esc(&p.a.name),
            p.a.id,
            esc(&p.b.name),
            p.b.id,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {}", esc(&why.join("; ")))
            }
        ));
    }
    for (label, list) in [
        ("only in A", &r.only_in_a),
        ("only in B", &r.only_in_b),
        ("unreadable", &r.unreadable),
    ] {
        if !list.is_empty() {
            let shown: Vec<String> = list.iter().take(10).map(|s| esc(s)).collect();
            h.push_str(&format!(
                "<p>{label} ({}): {}{}</p>",
                list.len(),
                shown.join(", "),
                if list.len() > 10 { ", …" } else { "" }
            ));
        }
    }
    if !r.layers.is_empty() {
        h.push_str(
            "<table><thead><tr><th>layer</th><th>pairs</th><th>divergent</th><th>max abs</th>\
             <th>min cosine</th><th>last</th><th>std A</th><th>std B</th><th>std ratio</th>\
             </tr></thead><tbody>",
        );
        for l in &r.layers {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                l.layer.map(|x| x.to_string()).unwrap_or_else(|| "—".into()),
                l.pairs,
                l.divergent,
                num(l.max_abs),
                num(l.min_cosine),
                esc(&l.last),
                num(l.a.std),
                num(l.b.std),
                num(l.std_ratio)
            ));
        }
        h.push_str("</tbody></table>");
    }
    let end = match first {
        Some((i, _)) => (i + AROUND + 1).max(ROWS.min(r.pairs.len())),
        None => ROWS,
    }
    .min(r.pairs.len());
    let start = end.saturating_sub(ROWS);
    // the # column counts pairs from 1, as "pair N of M" and the CLI's
    // tables do; `pairs[i]`, `first_divergence_index` and `diagnosis(i)`
    // stay 0-based (JSON and Python indices)
    h.push_str(
        "<table><thead><tr><th>#</th><th>tensor</th><th>layer</th><th>dtype</th><th>shape</th>\
         <th>verdict</th><th>max abs</th><th>max rel</th><th>cosine</th><th>mean A</th>\
         <th>mean B</th><th>std A</th><th>std B</th></tr></thead><tbody>",
    );
    if start > 0 {
        h.push_str(&format!(
            "<tr><td colspan=13>… {start} pairs before</td></tr>"
        ));
    }
    for (i, p) in r.pairs.iter().enumerate().take(end).skip(start) {
        let (verdict, _) = verdict_name(&p.verdict);
        let style = if Some(i) == r.first_divergence {
            " style=\"background:#fdd;font-weight:bold\""
        } else if p.verdict.is_divergent() {
            " style=\"background:#fee\""
        } else {
            ""
        };
        let m = p
            .metrics
            .as_ref()
            .filter(|_| !matches!(p.verdict, Verdict::StatsOnly));
        let cell = |f: fn(&trace_tools::compare::Metrics) -> f64| {
            m.map(|m| num(f(m))).unwrap_or_else(|| "—".into())
        };
        let dtype = if p.a.dtype == p.b.dtype {
            p.a.dtype.clone()
        } else {
            format!("{} / {}", p.a.dtype, p.b.dtype)
        };
        h.push_str(&format!(
            "<tr{style}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{verdict}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            esc(&p.key),
            p.a.layer.or(p.b.layer).map(|l| l.to_string()).unwrap_or_default(),
            esc(&dtype),
            p.a.shape,
            cell(|m| m.max_abs),
            cell(|m| m.max_rel),
            cell(|m| m.cosine),
            p.metrics.as_ref().map(|m| num(m.a.mean)).unwrap_or_default(),
            p.metrics.as_ref().map(|m| num(m.b.mean)).unwrap_or_default(),
            p.metrics.as_ref().map(|m| num(m.a.std)).unwrap_or_default(),
            p.metrics.as_ref().map(|m| num(m.b.std)).unwrap_or_default(),
        ));
    }
    if end < r.pairs.len() {
        h.push_str(&format!(
            "<tr><td colspan=13>… {} more pairs (all of them: <code>.to_pandas()</code>)</td></tr>",
            r.pairs.len() - end
        ));
    }
    h.push_str("</tbody></table></div>");
    h
}
