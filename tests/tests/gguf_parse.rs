//! Our GGUF parser against gguf-py: `tests/python/make_gguf.py` writes a
//! file with `GGUFWriter` (every value type, alignment 64, f32 … q4_k and an
//! IQ type we do not know) and describes what `GGUFReader` reads back; our
//! parse must agree on every field.

#![forbid(unsafe_code)]

use serde_json::Value as Json;
use trace_format::DType;
use trace_reader::gguf::{self, value_type, GgufValue};
use tracedump_tests::run_python;

/// A value as GGUFReader reports it: arrays flattened to their leaves.
fn flat_json(v: &GgufValue, out: &mut Vec<Json>) {
    match v {
        GgufValue::Array(a) => a.items.iter().for_each(|i| flat_json(i, out)),
        other => out.push(scalar_json(other)),
    }
}

fn scalar_json(v: &GgufValue) -> Json {
    match v {
        GgufValue::U8(x) => (*x).into(),
        GgufValue::I8(x) => (*x).into(),
        GgufValue::U16(x) => (*x).into(),
        GgufValue::I16(x) => (*x).into(),
        GgufValue::U32(x) => (*x).into(),
        GgufValue::I32(x) => (*x).into(),
        GgufValue::U64(x) => (*x).into(),
        GgufValue::I64(x) => (*x).into(),
        GgufValue::F32(x) => f64::from(*x).into(),
        GgufValue::F64(x) => (*x).into(),
        GgufValue::Bool(x) => (*x).into(),
        GgufValue::String(s) => s.as_str().into(),
        GgufValue::Array(_) => unreachable!("flattened by flat_json"),
    }
}

/// GGUFReader's type chain: the value's type, then for an array the type
/// of its first item, recursively.
fn type_chain(v: &GgufValue) -> Vec<u64> {
    let mut chain = vec![u64::from(v.type_id())];
    let mut v = v;
    while let GgufValue::Array(a) = v {
        match a.items.first() {
            Some(first) if a.item_type == value_type::ARRAY => {
                chain.push(u64::from(value_type::ARRAY));
                v = first;
            }
            _ => {
                chain.push(u64::from(a.item_type));
                break;
            }
        }
    }
    chain
}

fn u64_of(j: &Json, what: &str) -> u64 {
    j.as_u64()
        .unwrap_or_else(|| panic!("{what}: {j} is not a u64"))
}

#[test]
fn parse_agrees_with_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ref.gguf");
    let json = dir.path().join("ref.json");
    run_python("make_gguf.py", &[&file, &json]);
    let bytes = std::fs::read(&file).unwrap();
    let reference: Json = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();

    let g = gguf::parse(&file, &bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        u64::from(g.version),
        u64_of(&reference["version"], "version")
    );
    assert_eq!(g.alignment, 64);
    assert_eq!(g.alignment, u64_of(&reference["alignment"], "alignment"));
    assert_eq!(
        g.data_offset,
        u64_of(&reference["data_offset"], "data_offset")
    );

    // Metadata: same keys in the same order, same types, same values.
    let meta = reference["metadata"].as_array().unwrap();
    let keys: Vec<&str> = g.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let ref_keys: Vec<&str> = meta.iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ref_keys);
    for ((key, value), m) in g.metadata.iter().zip(meta) {
        let types: Vec<u64> = m["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| u64_of(t, key))
            .collect();
        assert_eq!(type_chain(value), types, "{key}: type");
        let ours = match value {
            GgufValue::Array(_) => {
                let mut leaves = Vec::new();
                flat_json(value, &mut leaves);
                Json::Array(leaves)
            }
            other => scalar_json(other),
        };
        assert_eq!(ours, m["value"], "{key}: value");
    }
    // Every value type the writer can produce is in the file.
    let mut seen: Vec<u32> = g.metadata.iter().map(|(_, v)| v.type_id()).collect();
    seen.extend(g.metadata.iter().filter_map(|(_, v)| match v {
        GgufValue::Array(a) => Some(a.item_type),
        _ => None,
    }));
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..=12).collect::<Vec<u32>>());
    // The nested array keeps its structure (GGUFReader flattens it).
    let GgufValue::Array(nested) = g.get("test.array.nested").unwrap() else {
        panic!("not an array")
    };
    let lens: Vec<usize> = nested
        .items
        .iter()
        .map(|i| match i {
            GgufValue::Array(a) => a.items.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(lens, [2, 1, 3]);
    assert_eq!(g.get("general.alignment"), Some(&GgufValue::U32(64)));
    assert_eq!(g.to_metadata().0.len(), g.metadata.len());

    // Tensors: every field, and the bytes they point at.
    let tensors = reference["tensors"].as_array().unwrap();
    assert_eq!(g.tensors.len(), tensors.len());
    let mut unknown = 0;
    for (t, r) in g.tensors.iter().zip(tensors) {
        let name = r["name"].as_str().unwrap();
        assert_eq!(t.name, name);
        let ne: Vec<u64> = r["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| u64_of(n, name))
            .collect();
        assert_eq!(t.ne, ne, "{name}: ne");
        assert_eq!(
            t.n_elements(),
            u64_of(&r["n_elements"], name),
            "{name}: n_elements"
        );
        assert_eq!(
            u64::from(t.ggml_type),
            u64_of(&r["type"], name),
            "{name}: type"
        );
        assert_eq!(
            t.info_offset,
            u64_of(&r["info_offset"], name),
            "{name}: info_offset"
        );
        assert_eq!(t.name_offset, t.info_offset + 8, "{name}: name_offset");
        assert_eq!(
            &bytes[t.name_offset as usize..][..name.len()],
            name.as_bytes()
        );
        assert_eq!(t.offset, u64_of(&r["offset"], name), "{name}: offset");
        assert_eq!(t.offset % g.alignment, 0, "{name}: aligned");
        assert_eq!(
            t.file_offset,
            u64_of(&r["data_offset"], name),
            "{name}: file_offset"
        );
        let ref_nbytes = u64_of(&r["nbytes"], name);
        match t.dtype {
            Some(d) => {
                assert_eq!(u64::from(d.id()), u64::from(t.ggml_type), "{name}: dtype");
                assert_eq!(
                    d.name(),
                    r["type_name"].as_str().unwrap().to_lowercase(),
                    "{name}: dtype name"
                );
                assert_eq!(t.nbytes, ref_nbytes, "{name}: nbytes");
                let data = &bytes[t.byte_range().start as usize..t.byte_range().end as usize];
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(hex, r["data_hex"].as_str().unwrap(), "{name}: data");
            }
            None => {
                // A type we do not know: kept, with no byte size.
                unknown += 1;
                assert_eq!(t.nbytes, 0, "{name}");
                assert!(ref_nbytes > 0);
            }
        }
    }
    assert_eq!(
        unknown, 1,
        "the IQ2_XXS tensor is the one type we do not know"
    );
    for (name, dtype) in [
        ("f32.matrix", DType::F32),
        ("f16.3d", DType::F16),
        ("bf16.w", DType::BF16),
        ("f64.matrix", DType::F64),
        ("i32.ids", DType::I32),
        ("q8_0.w", DType::Q8_0),
        ("q4_0.w", DType::Q4_0),
        ("mxfp4.w", DType::MXFP4),
        ("q4_k.w", DType::Q4_K),
    ] {
        assert_eq!(g.tensor(name).and_then(|t| t.dtype), Some(dtype), "{name}");
    }

    // Version 2 files read the same (v3 only added big-endian files).
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let g2 = gguf::parse(&file, &v2).unwrap();
    assert_eq!(
        (g2.version, &g2.tensors, &g2.metadata),
        (2, &g.tensors, &g.metadata)
    );

    // The writer pads after the last tensor too; cutting into the last
    // tensor's bytes is an error naming it.
    let last = g
        .tensors
        .iter()
        .filter(|t| t.nbytes > 0)
        .max_by_key(|t| t.byte_range().end)
        .unwrap();
    let cut = (last.byte_range().end - 1) as usize;
    let e = gguf::parse(&file, &bytes[..cut]).unwrap_err().to_string();
    assert!(
        e.contains(&format!("(tensor `{}`)", last.name)) && e.contains("runs past the end"),
        "{e}"
    );
}
