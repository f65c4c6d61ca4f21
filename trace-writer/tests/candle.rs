//! `Writer::add_candle`: candle tensors recorded with their real layout
//! read back with the values candle's own `to_vec` gives.

use candle_core::{DType as CandleDType, Device, IndexOp, Tensor};
use trace_reader::Trace;
use trace_writer::{Metadata, TensorMeta, Writer};

#[test]
fn candle_views_keep_their_layout_and_values() {
    let dev = Device::Cpu;
    let base = Tensor::arange(0f32, 60., &dev)
        .unwrap()
        .reshape((3, 4, 5))
        .unwrap();
    let cases: Vec<(&str, Tensor)> = vec![
        ("contiguous", base.clone()),
        ("transposed", base.transpose(0, 2).unwrap()),
        ("permuted", base.permute((1, 0, 2)).unwrap()),
        ("narrowed", base.narrow(1, 1, 2).unwrap()),
        ("row", base.i((2, 1..3)).unwrap()),
        ("f16", base.to_dtype(CandleDType::F16).unwrap().t().unwrap()),
        ("bf16", base.to_dtype(CandleDType::BF16).unwrap()),
        (
            "i64",
            base.to_dtype(CandleDType::I64)
                .unwrap()
                .narrow(2, 3, 2)
                .unwrap(),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("candle.tdump");
    let w = Writer::create(&path, Metadata::new()).unwrap();
    for (name, t) in &cases {
        w.add_candle(name, t, TensorMeta::new()).unwrap().unwrap();
    }
    w.finish().unwrap();
    let trace = Trace::open(&path).unwrap();
    assert!(trace.verify().is_ok());
    for (name, t) in &cases {
        let v = trace.view_by_name(name).unwrap();
        let info = v.info();
        let dims: Vec<u64> = t.dims().iter().map(|&d| d as u64).collect();
        assert_eq!(info.layout.shape(), dims.as_slice(), "{name}");
        // strides in elements, as candle holds them
        let elem = t.dtype().size_in_bytes() as i64;
        let strides: Vec<i64> = t.stride().iter().map(|&s| s as i64 * elem).collect();
        assert_eq!(info.layout.byte_strides(), strides.as_slice(), "{name}");
        let want: Vec<f32> = t
            .to_dtype(CandleDType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v.to_f32().unwrap(), want, "{name}");
    }
    // the narrowed view takes only the bytes it spans
    let narrowed = trace.view_by_name("row").unwrap();
    assert_eq!(narrowed.info().layout.storage_offset(), 0);
}
