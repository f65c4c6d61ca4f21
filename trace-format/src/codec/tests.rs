use super::*;
use crate::error::FormatError;

#[test]
fn tensor_round_trip() {
    let t = TensorDesc {
        name: "Qcur-0".into(),
        dtype: DType::F16,
        data: DataRef::Storage {
            storage: 3,
            offset: 64,
        },
        shape: vec![1, 8, 4],
        byte_strides: vec![64, 8, 2],
        step: Some(0),
        layer: Some(0),
        role: Some("q".into()),
        source_layout: Some(SourceLayout::Ggml {
            ne: vec![4, 8, 1, 1],
            nb: vec![2, 8, 64, 64],
        }),
        lineage: Lineage {
            parents: vec![2],
            ops: vec![
                Op::Permute {
                    axes: vec![0, 2, 1],
                },
                Op::Convert { dtype: DType::F16 },
            ],
            engine_op: Some(EngineOp {
                engine: "ggml".into(),
                op: "CPY".into(),
                params: vec![1, 2, 3],
            }),
        },
        stats: Some(Stats {
            count: 32,
            min: -1.0,
            ..Default::default()
        }),
        metadata: Metadata::new().with("n", Value::List(vec![1i64.into(), "x".into()])),
    };
    let b = encode_tensor(&t);
    assert_eq!(decode_tensor(&b, 0).unwrap(), t);
    for cut in 0..b.len() {
        assert!(decode_tensor(&b[..cut], 0).is_err(), "cut at {cut}");
    }
}

#[test]
fn hostile_counts_do_not_allocate() {
    let mut e = Encoder::new();
    e.u32(u32::MAX); // metadata count
    let err = decode_run_metadata(&e.buf, 100).unwrap_err();
    assert!(
        matches!(err, FormatError::Invalid { offset: 100, .. }),
        "{err}"
    );
    let mut e = Encoder::new();
    e.u64(u64::MAX / 2);
    assert!(decode_footer(&e.buf, 0).is_err());
}

#[test]
fn deep_values_are_refused() {
    let mut e = Encoder::new();
    e.u32(1);
    e.str("k");
    for _ in 0..100 {
        e.u8(7);
        e.u32(1);
    }
    e.u8(1);
    e.u8(1);
    assert!(decode_run_metadata(&e.buf, 0).is_err());
}
