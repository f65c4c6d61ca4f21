//! The ggml recorder told what each node writes (`ask_node`): views of an
//! owner that no node wrote since the last one in the same graph reuse
//! what that one read (its storage record, its statistics); a write, a
//! graph not begun with `set_step`, or a plain `ask` makes it read the
//! owner again, and every view reads back the bytes it saw.

use trace_format::record::RecordKind;
use trace_format::Metadata;
use trace_reader::Trace;
use trace_writer::ggml::{GgmlNode, GgmlOptions, GgmlRecorder, GgmlView};
use trace_writer::Writer;

const CACHE: usize = 100;

/// A [4 rows of 4] f32 "KV cache" view node of owner `CACHE`: whole
/// (`permuted` false) or transposed.
fn view<'a>(
    name: &'a str,
    op: &'a str,
    key: usize,
    cache: &'a [u8],
    permuted: bool,
) -> GgmlNode<'a> {
    let (ne, nb) = if permuted {
        ([4, 4, 1, 1], [16, 4, 64, 64])
    } else {
        ([4, 4, 1, 1], [4, 16, 64, 64])
    };
    GgmlNode {
        name,
        op,
        ggml_type: 0,
        ne,
        nb,
        op_params: &[],
        key,
        srcs: &[],
        data: cache,
        view: Some(GgmlView {
            owner_key: CACHE,
            owner_name: "cache_k_l0",
            offset: 0,
        }),
        once: false,
    }
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs three graphs over the cache: step 0 (a SET_ROWS writes row 0, then
/// a view and its transpose), step 1 (SET_ROWS writes row 1, the view),
/// then a graph found only by its repeated addresses, after the cache
/// changed outside any node. Returns the trace and, per recorded view in
/// order, the cache values it saw.
fn run(stats_only: bool, plain_ask: bool) -> (Trace, Vec<Vec<f32>>) {
    let w = Writer::in_memory(Metadata::new(), Default::default()).unwrap();
    let rec = GgmlRecorder::with_options(
        w,
        GgmlOptions {
            stats_only,
            ..Default::default()
        },
    );
    let ask = |key: usize, name: &str, writes: Option<usize>| {
        if plain_ask {
            rec.ask(key, name, &[])
        } else {
            rec.ask_node(key, name, &[], writes)
        }
    };
    let mut cache: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let mut seen = Vec::new();
    let mut record = |node: GgmlNode<'_>, values: &[f32]| {
        rec.record(&node).unwrap().unwrap();
        seen.push(values.to_vec());
    };
    for step in 0..2 {
        rec.set_step(Some(step));
        assert!(ask(1, "cache_k_l0 (view)", Some(CACHE)));
        cache[step as usize * 4] = 100.0 + step as f32;
        let b = bytes(&cache);
        record(view("cache_k_l0 (view)", "SET_ROWS", 1, &b, false), &cache);
        assert!(ask(2, "k-0", None));
        record(view("k-0", "VIEW", 2, &b, false), &cache);
        if step == 0 {
            assert!(ask(3, "k-0 (permuted)", None));
            let t: Vec<f32> = (0..16).map(|i| cache[(i % 4) * 4 + i / 4]).collect();
            record(view("k-0 (permuted)", "PERMUTE", 3, &b, true), &t);
        }
    }
    // between graphs, outside any node (a cleared cache): no set_step,
    // the graph is found by the address asked again
    cache[15] = -7.0;
    let b = bytes(&cache);
    assert!(ask(2, "k-0", None));
    record(view("k-0", "VIEW", 2, &b, false), &cache);
    let (_, bytes) = rec.finish_into_bytes().unwrap();
    (Trace::from_bytes("<memory>", bytes).unwrap(), seen)
}

fn storages(t: &Trace) -> (usize, usize) {
    let count = |k: RecordKind| t.records().iter().filter(|r| r.kind == k as u16).count();
    (count(RecordKind::Storage), count(RecordKind::StorageUpdate))
}

#[test]
fn full_dumps_read_an_owner_once_per_write() {
    let (t, seen) = run(false, false);
    let ids = t.tensor_ids().to_vec();
    assert_eq!(ids.len(), seen.len());
    for (id, want) in ids.iter().zip(&seen) {
        assert_eq!(
            &t.view(*id).unwrap().to_f32().unwrap(),
            want,
            "{}",
            t.tensor(*id).unwrap().name
        );
    }
    // step 0: one full storage for its three views; step 1: one update for
    // its two; the untracked graph: another update (the changed value)
    assert_eq!(storages(&t), (1, 2));
    let storage_of = |i: usize| t.tensor(ids[i]).unwrap().storage;
    assert_eq!(storage_of(0), storage_of(1));
    assert_eq!(storage_of(1), storage_of(2));
    assert_eq!(storage_of(3), storage_of(4));
    assert_ne!(storage_of(2), storage_of(3));
    assert_ne!(storage_of(4), storage_of(5));
}

#[test]
fn plain_asks_read_every_view_and_agree() {
    // told nothing of writes, the recorder compares every view's bytes:
    // the same records here (nothing changed between views of a graph)
    let (t, seen) = run(false, true);
    for (id, want) in t.tensor_ids().iter().zip(&seen) {
        assert_eq!(&t.view(*id).unwrap().to_f32().unwrap(), want);
    }
    assert_eq!(storages(&t), (1, 2));
}

#[test]
fn stats_only_views_agree_with_their_values() {
    for plain in [false, true] {
        let (t, seen) = run(true, plain);
        let ids = t.tensor_ids().to_vec();
        assert_eq!(ids.len(), seen.len());
        for (id, want) in ids.iter().zip(&seen) {
            let s = t.tensor(*id).unwrap().stats.clone().unwrap();
            let max = want.iter().copied().fold(f32::MIN, f32::max);
            let min = want.iter().copied().fold(f32::MAX, f32::min);
            let mean = want.iter().map(|&v| f64::from(v)).sum::<f64>() / 16.0;
            assert_eq!(
                (s.count, s.max, s.min),
                (16, f64::from(max), f64::from(min)),
                "plain {plain}"
            );
            assert!(
                (s.mean - mean).abs() < 1e-12,
                "plain {plain}: {} vs {mean}",
                s.mean
            );
        }
    }
}

#[test]
fn tracked_views_trust_the_writes_they_were_told_of() {
    // the contract, shown: a change within a graph that no node announced
    // is not read again by a tracked recorder (ggml writes memory only
    // through nodes), while a plain-asking one compares and records it
    for (plain, storages_seen) in [(false, 1), (true, 2)] {
        let rec =
            GgmlRecorder::new(Writer::in_memory(Metadata::new(), Default::default()).unwrap());
        rec.set_step(Some(0));
        let mut cache: Vec<f32> = (0..16).map(|i| i as f32).collect();
        for (key, name) in [(2usize, "k-0"), (3, "k-0 (again)")] {
            if plain {
                rec.ask(key, name, &[]);
            } else {
                rec.ask_node(key, name, &[], None);
            }
            let b = bytes(&cache);
            rec.record(&view(name, "VIEW", key, &b, false))
                .unwrap()
                .unwrap();
            cache[0] = 50.0;
        }
        let (_, trace) = rec.finish_into_bytes().unwrap();
        let t = Trace::from_bytes("<memory>", trace).unwrap();
        let (full, updates) = storages(&t);
        assert_eq!(full + updates, storages_seen, "plain {plain}");
    }
}
