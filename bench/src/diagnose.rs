//! Diagnosis and blame (issue 20): the time to diagnose a 16 M-element
//! f32 pair, and what blame adds to a 10,000-pair diff.

use std::path::Path;
use std::time::Instant;

use trace_reader::Trace;
use trace_tools::blame::{blame, diagnose_pair, pair_inputs};
use trace_tools::compare::{diff, Tolerance};
use trace_tools::diagnose::{diagnose, Values};
use trace_tools::mapping::Mapping;
use trace_writer::{DType, Metadata, TensorMeta, Writer};

use crate::{progress, Args, Res, Row, Stat};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

pub(crate) fn rows(args: &Args, dir: &Path) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    let rounds = args.repeat.max(3);

    // a pair that no hypothesis explains runs every search to its end
    let shape = [128usize, 32, 4096];
    let n: usize = shape.iter().product();
    let n = args.scaled(n).next_multiple_of(32 * 4096).max(32 * 4096);
    let shape = [n / (32 * 4096), 32, 4096];
    progress(&format!(
        "diagnose: a pair of {n} f32 values, {rounds} rounds"
    ));
    let b = values(n, 7);
    let a: Vec<f32> = b
        .iter()
        .zip(values(n, 11))
        .map(|(x, e)| x + 0.05 * e)
        .collect();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let found = diagnose(
            Values::new(&a, &shape).ok_or("shape")?,
            Values::new(&b, &shape).ok_or("shape")?,
        );
        times.push(start.elapsed());
        std::hint::black_box(found);
    }
    rows.push(
        Row::new(
            "diagnose",
            format!("diagnose one {n}-value f32 pair (no hypothesis holds: every search runs)"),
            "s",
            Stat::of(&times, |d| d.as_secs_f64()),
        )
        .goal_max(2.0),
    );

    // blame over a 10,000-pair diff: a chain of tensors, a bug at the middle
    let pairs = args.scaled(10_000).max(100);
    progress(&format!(
        "diagnose: blame over a {pairs}-pair diff, {rounds} rounds"
    ));
    let (pa, pb) = (dir.join("blame-a.tdump"), dir.join("blame-b.tdump"));
    for (path, bug) in [(&pa, true), (&pb, false)] {
        let w = Writer::create(path, Metadata::new())?;
        let mut prev = None;
        for i in 0..pairs {
            let mut v = values(256, i as u64 + 1);
            if bug && i >= pairs / 2 {
                v.iter_mut().for_each(|x| *x *= 1.5);
            }
            let mut m = TensorMeta::new();
            m.lineage.parents.extend(prev);
            prev = w.add_tensor(
                &format!("t{i}"),
                DType::F32,
                &[16, 16],
                bytemuck::cast_slice(&v),
                m,
            )?;
        }
        w.finish()?;
    }
    let (ta, tb) = (Trace::open(&pa)?, Trace::open(&pb)?);
    let (mut total, mut blaming) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let report = diff(&ta, &tb, &Mapping::none(), &Tolerance::default(), |_, _| {})?;
        total.push(start.elapsed());
        // the part of it that is blame: inputs, blame, the diagnosis
        let start = Instant::now();
        let inputs = pair_inputs(&ta, &report.pairs);
        let (blamed, _) = blame(&report, &inputs);
        for bl in &blamed {
            std::hint::black_box(diagnose_pair(
                &ta,
                &tb,
                &report.pairs[bl.pair],
                &[],
                &report.tolerance,
            )?);
        }
        blaming.push(start.elapsed());
        if blamed.len() != 1 || report.pairs[blamed[0].pair].key != format!("t{}", pairs / 2) {
            return Err(format!("blame named {blamed:?}, not t{}", pairs / 2).into());
        }
    }
    // the diff alone, round by round: its total less blame's part
    let alone: Vec<f64> = total
        .iter()
        .zip(&blaming)
        .map(|(t, b)| t.saturating_sub(*b).as_secs_f64())
        .collect();
    rows.push(
        Row::new(
            "diagnose",
            format!("blame (with the diagnosis) over a {pairs}-pair diff, over the diff alone"),
            "s",
            Stat::of(&blaming, |d| d.as_secs_f64()),
        )
        .vs(
            "the diff without blame (its total less blame's part)",
            Stat::values(alone),
        )
        .goal_ratio(10.0, Some("blame <= 10% of the diff")),
    );
    Ok(rows)
}
