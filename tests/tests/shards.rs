//! A directory (or glob) of per-rank shards opened as one trace; two runs
//! compared rank by rank.

#![forbid(unsafe_code)]

use trace_format::{DType, Metadata};
use trace_tools::compare::Tolerance;
use trace_tools::mapping::Mapping;
use trace_tools::shards::{diff_by_rank, is_sharded, Shards};
use trace_writer::{TensorMeta, Writer};

fn run(dir: &std::path::Path, bug_rank: Option<i64>) {
    std::fs::create_dir_all(dir).unwrap();
    // written in reverse rank order: the ranks come from the metadata
    for rank in [2i64, 1, 0] {
        let w = Writer::create(
            dir.join(format!("shard-{}.tdump", 2 - rank)),
            Metadata::new().with("rank", rank).with("world_size", 3i64),
        )
        .unwrap();
        for layer in 0..2i64 {
            let mut v = vec![(rank * 10 + layer) as f32; 8];
            if Some(rank) == bug_rank && layer == 1 {
                v[3] += 0.5;
            }
            w.add_tensor(
                &format!("h-{layer}"),
                DType::F32,
                &[8],
                bytemuck::cast_slice(&v),
                TensorMeta::new().layer(layer),
            )
            .unwrap();
        }
        w.add_tensor(
            &format!("mine{rank}"),
            DType::F32,
            &[1],
            &[0; 4],
            TensorMeta::new(),
        )
        .unwrap();
        w.finish().unwrap();
    }
}

#[test]
fn shards_open_as_one_and_diff_rank_by_rank() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    run(&a, Some(2));
    run(&b, None);
    assert!(
        is_sharded(&a)
            && is_sharded(&a.join("shard-*.tdump"))
            && !is_sharded(&a.join("shard-0.tdump"))
    );
    let s = Shards::open(&a).unwrap();
    assert_eq!(
        s.shards().iter().map(|x| x.rank).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(s.warnings().is_empty());
    assert_eq!(s.tensors().len(), 9);
    let (k, id) = s.resolve("rank2/h-1").unwrap();
    let v = s.shards()[k].trace.view(id).unwrap().to_f32().unwrap();
    // rank 2 of run A carries the planted bug
    assert_eq!(v, [21.0, 21.0, 21.0, 21.5, 21.0, 21.0, 21.0, 21.0]);
    assert!(s.resolve("mine1").is_ok() && s.resolve("h-1").is_err());
    let g = Shards::open(a.join("shard-*.tdump")).unwrap();
    assert_eq!(g.tensors().len(), 9);

    let per_rank = diff_by_rank(
        &s,
        &Shards::open(&b).unwrap(),
        &Mapping::none(),
        &Tolerance::default(),
    )
    .unwrap();
    let summary: Vec<(i64, bool)> = per_rank
        .iter()
        .map(|r| (r.rank, r.report.as_ref().unwrap().agrees()))
        .collect();
    assert_eq!(summary, [(0, true), (1, true), (2, false)]);
    let r2 = per_rank[2].report.as_ref().unwrap();
    assert_eq!(r2.pairs[r2.first_divergence.unwrap()].key, "h-1");

    // a world size that disagrees, and a repeated rank, are reported
    let c = d.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    for i in 0..2 {
        Writer::create(
            c.join(format!("{i}.tdump")),
            Metadata::new().with("rank", 0i64).with("world_size", 4i64),
        )
        .unwrap()
        .finish()
        .unwrap();
    }
    let s = Shards::open(&c).unwrap();
    assert_eq!(s.warnings().len(), 3, "{:?}", s.warnings());
    assert!(Shards::open(d.path().join("nothing-*.tdump")).is_err());
}
