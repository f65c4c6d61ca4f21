//! `tracedump diff`: where do two runs part ways.

use std::fmt::Write;

use crate::compare::{DiffReport, Pair, Verdict};
use trace_reader::Trace;

use crate::inspect::num;
use crate::table::{join, Grid};
use crate::ToolsError;

type Result<T, E = ToolsError> = std::result::Result<T, E>;

/// The verdict as the table shows it: its name, upper case when divergent.
fn verdict_cell(v: &Verdict) -> String {
    match v {
        Verdict::Skipped(why) => format!("{}: {why}", v.label()),
        _ => v.label(),
    }
}

fn name_cell(p: &Pair) -> String {
    let mut s = if p.a.name == p.b.name {
        p.a.name.clone()
    } else {
        format!("{} = {}", p.a.name, p.b.name)
    };
    if p.a.dtype != p.b.dtype {
        s.push_str(&format!(" ({} vs {})", p.a.dtype, p.b.dtype));
    }
    s
}

fn side(trace: &Trace, id: u64) -> String {
    match trace.tensor(id) {
        Ok(t) => format!(
            "{} (record #{id}): {} [{}] byte strides [{}] {}, {}\n      lineage: {}",
            t.name,
            t.dtype,
            join(t.layout.shape()),
            join(t.layout.byte_strides()),
            if t.is_contiguous() {
                "contiguous"
            } else {
                "strided"
            },
            match t.storage {
                None => "stats only".to_string(),
                Some(s) if s == id => format!("own bytes +{}", t.layout.storage_offset()),
                Some(s) => format!("storage #{s} +{}", t.layout.storage_offset()),
            },
            match trace.lineage_text(t.id) {
                c if c.is_empty() => "(none)".to_string(),
                c => c,
            }
        ),
        Err(e) => e.to_string(),
    }
}

/// The first names of a long list (all of them with `all`).
fn some(names: &[String], all: bool) -> String {
    const SHOWN: usize = 24;
    if all || names.len() <= SHOWN {
        return names.join(", ");
    }
    format!(
        "{}, … and {} more (--all lists them, --explain-pairing says why)",
        names[..SHOWN].join(", "),
        names.len() - SHOWN
    )
}

/// A list cut to its first dozen items, with the count of the rest.
fn few(items: &[String]) -> String {
    const SHOWN: usize = 12;
    if items.len() <= SHOWN {
        return items.join(", ");
    }
    format!(
        "{}, … {} more",
        items[..SHOWN].join(", "),
        items.len() - SHOWN
    )
}

/// "A's name = B's name", or the one name both sides share.
fn pair_names(p: &Pair) -> String {
    if p.a.name == p.b.name {
        p.a.name.clone()
    } else {
        format!("{} (A) = {} (B)", p.a.name, p.b.name)
    }
}

/// The rule and transforms that made a pair.
fn pairing_of(p: &Pair) -> String {
    let mut s = match &p.rule {
        Some(r) => format!("rule `{r}`"),
        None => "the same name".to_string(),
    };
    if !p.transforms.is_empty() {
        write!(s, "; A transformed by {}", p.transforms.join(", ")).ok();
    }
    s
}

/// `diff --explain-pairing`: how each pair was made, and why each of A's
/// unpaired tensors has no partner.
pub fn explain_pairing(r: &DiffReport) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "\npairing ({}): {} pairs, {} of A's tensors unpaired",
        if r.by_step {
            "within steps, then by occurrence"
        } else {
            "by occurrence over the whole trace: a trace has no steps"
        },
        r.pairs.len(),
        r.unpaired.len()
    )?;
    let mut t = Grid::new(&[
        "pair",
        "step",
        "record A",
        "A",
        "record B",
        "B",
        "paired by",
    ]);
    for (i, p) in r.pairs.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            p.step.map_or("-".into(), |x| x.to_string()),
            format!("#{}", p.a.id),
            p.a.name.clone(),
            format!("#{}", p.b.id),
            p.b.name.clone(),
            pairing_of(p),
        ]);
    }
    writeln!(s, "{t}")?;
    if !r.unpaired.is_empty() {
        let mut t = Grid::new(&["step", "record A", "A", "why unpaired"]);
        for u in &r.unpaired {
            t.row(vec![
                u.step.map_or("-".into(), |x| x.to_string()),
                format!("#{}", u.id),
                u.name.clone(),
                u.reason.clone(),
            ]);
        }
        writeln!(s, "A's tensors without a partner\n{t}")?;
    }
    Ok(s)
}

/// `diff`'s text: the summary, the first divergence with both sides' layout
/// and lineage, per-layer growth, and the divergent pairs (every pair with `all`).
pub fn diff_text(a: &Trace, b: &Trace, r: &DiffReport, all: bool) -> Result<String> {
    let mut s = String::new();
    writeln!(s, "A (under test) {}", a.path().display())?;
    writeln!(s, "B (reference)  {}", b.path().display())?;
    let t = &r.tolerance;
    let divergent = r.pairs.iter().filter(|p| p.verdict.is_divergent()).count();
    writeln!(
        s,
        "{} pairs compared, {} divergent; {} only in A (--explain-pairing says why), {} only in B (atol {}, rtol {}, min cosine {})",
        r.pairs.len(),
        divergent,
        r.only_in_a.len(),
        r.only_in_b.len(),
        t.atol,
        t.rtol,
        t.min_cosine
    )?;

    let mut lt = Grid::new(&[
        "layer",
        "div/pairs",
        "max abs err",
        "min cos",
        "output",
        "mean A",
        "std A",
        "mean B",
        "std B",
        "std A/B",
    ]);
    for l in &r.layers {
        lt.row(vec![
            l.layer.map_or("-".into(), |x| x.to_string()),
            format!("{}/{}", l.divergent, l.pairs),
            num(l.max_abs),
            if l.min_cosine.is_finite() {
                format!("{:.5}", l.min_cosine)
            } else {
                "-".into()
            },
            l.last.clone(),
            num(l.a.mean),
            num(l.a.std),
            num(l.b.mean),
            num(l.b.std),
            format!("{:.4}", l.std_ratio),
        ]);
    }
    writeln!(
        s,
        "\nper layer (mean/std of the layer's last tensor: its output)\n{lt}"
    )?;

    let mut pt = Grid::new(&[
        "pair", "record A", "name", "shape", "max abs", "max rel", "cosine", "ulp", "verdict",
    ]);
    for (i, p) in r.pairs.iter().enumerate() {
        if !all
            && !p.verdict.is_divergent()
            && Some(i) != r.first_divergence
            && !matches!(p.verdict, Verdict::Skipped(_))
        {
            continue;
        }
        let m = p.measured();
        pt.row(vec![
            (i + 1).to_string(),
            format!("#{}", p.a.id),
            name_cell(p),
            format!("[{}]", join(&p.a.shape)),
            m.map_or(String::new(), |m| num(m.max_abs)),
            m.map_or(String::new(), |m| num(m.max_rel)),
            m.map_or(String::new(), |m| format!("{:.5}", m.cosine)),
            m.and_then(|m| m.max_ulp)
                .map_or(String::new(), |u| u.to_string()),
            verdict_cell(&p.verdict),
        ]);
    }
    if all {
        writeln!(s, "\nevery pair, in A's execution order\n{pt}")?;
    } else {
        writeln!(s, "\ndivergent pairs (all pairs: --all)\n{pt}")?;
    }

    match r.first_divergence {
        None if r.pairs.is_empty() => writeln!(
            s,
            "\nNOTHING COMPARED: no tensor of A pairs with one of B (engines name tensors differently: a --preset, --map or --rename says how)"
        )?,
        None => writeln!(s, "\nthe runs agree: no pair diverges")?,
        Some(i) => {
            let p = &r.pairs[i];
            writeln!(
                s,
                "\nFIRST DIVERGENCE: {}{} (pair {} of {}, in A's execution order)",
                pair_names(p),
                p.step.map_or(String::new(), |st| format!(" at step {st}")),
                i + 1,
                r.pairs.len()
            )?;
            if p.rule.is_some() || !p.transforms.is_empty() {
                writeln!(s, "  paired by: {}", pairing_of(p))?;
            }
            match (&p.verdict, &p.metrics) {
                (Verdict::Diverge(why), Some(m)) => {
                    writeln!(s, "  why: {}", why.join("; "))?;
                    writeln!(
                        s,
                        "  max abs err {} at [{}]: A = {}, B = {}; max rel {}, mean abs {}, rmse {}, cosine {:.6}",
                        num(m.max_abs),
                        join(&m.max_abs_index),
                        num(m.max_abs_a),
                        num(m.max_abs_b),
                        num(m.max_rel),
                        num(m.mean_abs),
                        num(m.rmse),
                        m.cosine
                    )?;
                    writeln!(
                        s,
                        "  A mean {} std {}; B mean {} std {}",
                        num(m.a.mean),
                        num(m.a.std),
                        num(m.b.mean),
                        num(m.b.std)
                    )?;
                }
                (Verdict::ShapeMismatch, _) => writeln!(
                    s,
                    "  shapes differ: A [{}], B [{}]",
                    join(&p.a.shape),
                    join(&p.b.shape)
                )?,
                _ => {}
            }
            writeln!(s, "  A {}", side(a, p.a.id))?;
            writeln!(s, "  B {}", side(b, p.b.id))?;
            if i > 0 {
                let prev = &r.pairs[i - 1];
                writeln!(
                    s,
                    "  the pair before it: {} ({})",
                    pair_names(prev),
                    verdict_cell(&prev.verdict)
                )?;
            }
        }
    }
    s.push_str(&blame_text(r)?);
    for u in &r.unreadable {
        writeln!(s, "UNREADABLE {u}")?;
    }
    if !r.only_in_a.is_empty() {
        writeln!(s, "\nonly in A: {}", some(&r.only_in_a, all))?;
    }
    if !r.only_in_b.is_empty() {
        writeln!(s, "only in B: {}", some(&r.only_in_b, all))?;
    }
    Ok(s)
}

/// The blamed ops: for each, the inputs that agree, the amplification and
/// the likely causes the values support; an op blamed again at later steps
/// once, with those steps.
pub fn blame_text(r: &DiffReport) -> Result<String> {
    let mut s = String::new();
    let step = |i: usize| r.pairs[i].step.map_or("?".to_string(), |x| x.to_string());
    for bl in r.blamed.iter().filter(|bl| bl.same_op_as.is_none()) {
        let p = &r.pairs[bl.pair];
        let inputs: Vec<String> = bl.inputs.iter().map(|&i| r.pairs[i].key.clone()).collect();
        let how = if !bl.by_graph {
            "the first divergence in execution order (no compared input of it is recorded)"
                .to_string()
        } else if inputs.is_empty() {
            "made a divergent output, and none of its inputs was compared".to_string()
        } else {
            format!(
                "made a divergent output from agreeing inputs ({})",
                some(&inputs, false)
            )
        };
        writeln!(
            s,
            "\nBLAMED OP: {} (pair {} of {}): {how}",
            pair_names(p),
            bl.pair + 1,
            r.pairs.len()
        )?;
        match bl.amplification {
            Some(x) => writeln!(
                s,
                "  amplification: relative error {x:.3e}× that of its inputs"
            )?,
            None if bl.by_graph && !inputs.is_empty() => writeln!(
                s,
                "  amplification: its inputs agree exactly; the error starts here"
            )?,
            None => {}
        }
        for (k, f) in bl.diagnosis.iter().take(3).enumerate() {
            let label = if k == 0 { "likely cause" } else { "also" };
            writeln!(s, "  {label}: {}", f.evidence)?;
        }
        if !bl.diagnosed {
            let why = if crate::blame::diagnosable(p) {
                format!(
                    "only the first {} distinct blamed ops are",
                    crate::blame::MAX_DIAGNOSED
                )
            } else {
                format!(
                    "more than {} values a side",
                    crate::blame::MAX_DIAGNOSED_VALUES
                )
            };
            writeln!(s, "  values not diagnosed: {why}")?;
        } else if bl.diagnosis.is_empty() {
            writeln!(
                s,
                "  likely cause: none of the diagnosis's hypotheses holds"
            )?;
        }
        let again: Vec<&crate::blame::Blame> = r
            .blamed
            .iter()
            .filter(|x| x.same_op_as == Some(bl.pair))
            .collect();
        if !again.is_empty() {
            let steps: Vec<String> = again.iter().map(|x| step(x.pair)).collect();
            let at: Vec<String> = again.iter().map(|x| (x.pair + 1).to_string()).collect();
            writeln!(
                s,
                "  blamed again at {} later step{} ({}: pairs {})",
                again.len(),
                if again.len() == 1 { "" } else { "s" },
                few(&steps),
                few(&at)
            )?;
        }
    }
    Ok(s)
}
