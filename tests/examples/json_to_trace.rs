//! Write a trace from a JSON description and raw byte files: the records the
//! Python `Writer` cannot express (raw quantized blocks, views over a
//! storage with ggml's `ne`/`nb`, derived tensors). `tests/golden/gen.py`
//! uses it for the mixed KV cache golden file.
//!
//! ```text
//! cargo run -q -p tracedump-tests --example json_to_trace -- SPEC.json OUT.tdump
//! ```
//!
//! SPEC.json (files are relative to its folder):
//!
//! ```json
//! {"run_metadata": {"engine": "gen.py"},
//!  "records": [
//!   {"kind": "storage", "name": "cache_k_l0", "file": "cache_k.bin"},
//!   {"kind": "view", "name": "K_quant-0", "dtype": "q8_0", "storage": "cache_k_l0",
//!    "shape": [1, 40, 2, 16], "byte_strides": [1360, 34, 17, 34], "offset": 0, "meta": {...}},
//!   {"kind": "tensor", "name": "K_hot-0", "dtype": "f16", "shape": [1, 8, 2, 16], "file": "k_hot.bin", "meta": {...}},
//!   {"kind": "derived", "name": "K-0", "dtype": "f32", "shape": [1, 2, 48, 16], "meta": {...}}]}
//! ```
//!
//! `meta`: `layer`, `step`, `role`, `ggml` (`[ne, nb]`), `parents` (names
//! recorded earlier), `ops` (the Python binding's op dicts:
//! `{"op": "concat", "axis": 1}`, `{"op": "permute", "axes": [0, 2, 1, 3]}`, …),
//! `engine_op` (`{"engine", "op", "params_hex"}`), `metadata` (string values).
//! A view's `storage` names a storage or a tensor recorded with its own bytes.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;
use trace_format::{DType, Layout, Metadata, Op};
use trace_writer::{TensorMeta, Writer};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn field<'a>(v: &'a Json, key: &str) -> Res<&'a Json> {
    v.get(key)
        .ok_or_else(|| format!("missing `{key}` in {v}").into())
}

fn string(v: &Json, key: &str) -> Res<String> {
    Ok(field(v, key)?
        .as_str()
        .ok_or_else(|| format!("`{key}` must be a string"))?
        .to_owned())
}

fn u64s(v: &Json, key: &str) -> Res<Vec<u64>> {
    field(v, key)?
        .as_array()
        .ok_or_else(|| format!("`{key}` must be a list"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .ok_or_else(|| format!("`{key}`: {x} is not a u64").into())
        })
        .collect()
}

fn i64s(v: &Json, key: &str) -> Res<Vec<i64>> {
    field(v, key)?
        .as_array()
        .ok_or_else(|| format!("`{key}` must be a list"))?
        .iter()
        .map(|x| {
            x.as_i64()
                .ok_or_else(|| format!("`{key}`: {x} is not an i64").into())
        })
        .collect()
}

fn dtype(name: &str) -> Res<DType> {
    DType::from_name(name).ok_or_else(|| format!("unknown dtype `{name}`").into())
}

fn op(v: &Json) -> Res<Op> {
    let u32_of =
        |k: &str| -> Res<u32> { Ok(u32::try_from(field(v, k)?.as_u64().ok_or("not a u32")?)?) };
    Ok(match string(v, "op")?.as_str() {
        "view" => Op::View {
            offset: field(v, "offset")?.as_u64().ok_or("offset")?,
            shape: u64s(v, "shape")?,
            byte_strides: i64s(v, "byte_strides")?,
        },
        "permute" => Op::Permute {
            axes: u64s(v, "axes")?
                .into_iter()
                .map(u32::try_from)
                .collect::<Result<_, _>>()?,
        },
        "reshape" => Op::Reshape {
            shape: u64s(v, "shape")?,
        },
        "transpose" => Op::Transpose {
            a: u32_of("a")?,
            b: u32_of("b")?,
        },
        "cont" => Op::Cont,
        "convert" => Op::Convert {
            dtype: dtype(&string(v, "dtype")?)?,
        },
        "quantize" => Op::Quantize {
            dtype: dtype(&string(v, "dtype")?)?,
        },
        "dequantize" => Op::Dequantize {
            dtype: dtype(&string(v, "dtype")?)?,
        },
        "concat" => Op::Concat {
            axis: u32_of("axis")?,
        },
        other => return Err(format!("unknown op `{other}`").into()),
    })
}

fn hex(s: &str) -> Res<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(s.get(i..i + 2).ok_or("odd hex")?, 16)?))
        .collect()
}

fn meta(v: Option<&Json>, ids: &HashMap<String, u64>) -> Res<TensorMeta> {
    let mut m = TensorMeta::new();
    let Some(v) = v else { return Ok(m) };
    if let Some(l) = v.get("layer").and_then(Json::as_i64) {
        m = m.layer(l);
    }
    if let Some(s) = v.get("step").and_then(Json::as_i64) {
        m = m.step(s);
    }
    if let Some(r) = v.get("role").and_then(Json::as_str) {
        m = m.role(r);
    }
    if let Some(g) = v.get("ggml") {
        let pair = g.as_array().ok_or("ggml must be [ne, nb]")?;
        let ne: Vec<i64> = pair[0]
            .as_array()
            .ok_or("ne")?
            .iter()
            .map(|x| x.as_i64().ok_or("ne"))
            .collect::<Result<_, _>>()?;
        let nb: Vec<u64> = pair[1]
            .as_array()
            .ok_or("nb")?
            .iter()
            .map(|x| x.as_u64().ok_or("nb"))
            .collect::<Result<_, _>>()?;
        m = m.ggml_layout(&ne, &nb);
    }
    for p in v
        .get("parents")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let name = p.as_str().ok_or("parents are names")?;
        m = m.parent(
            *ids.get(name)
                .ok_or_else(|| format!("parent `{name}` not recorded yet"))?,
        );
    }
    for o in v.get("ops").and_then(Json::as_array).into_iter().flatten() {
        m = m.op(op(o)?);
    }
    if let Some(e) = v.get("engine_op") {
        m = m.engine_op(
            &string(e, "engine")?,
            &string(e, "op")?,
            &hex(&string(e, "params_hex")?)?,
        );
    }
    if let Some(md) = v.get("metadata").and_then(Json::as_object) {
        for (k, x) in md {
            m = m.meta(
                k,
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string()),
            );
        }
    }
    Ok(m)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, spec_path, out] = args.as_slice() else {
        return Err("usage: json_to_trace SPEC.json OUT.tdump".into());
    };
    let dir = Path::new(spec_path).parent().unwrap_or(Path::new("."));
    let spec: Json = serde_json::from_slice(&std::fs::read(spec_path)?)?;
    let mut run = Metadata::new();
    for (k, v) in spec
        .get("run_metadata")
        .and_then(Json::as_object)
        .into_iter()
        .flatten()
    {
        run.insert(
            k.clone(),
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string()),
        );
    }
    let w = Writer::create(out, run)?;
    let mut storages: HashMap<String, u64> = HashMap::new();
    let mut tensors: HashMap<String, u64> = HashMap::new();
    for r in field(&spec, "records")?
        .as_array()
        .ok_or("records must be a list")?
    {
        let name = string(r, "name")?;
        let m = meta(r.get("meta"), &tensors)?;
        let id = match string(r, "kind")?.as_str() {
            "storage" => {
                let id = w.add_storage(&name, &std::fs::read(dir.join(string(r, "file")?))?)?;
                storages.insert(name.clone(), id);
                continue;
            }
            "tensor" => {
                let bytes = std::fs::read(dir.join(string(r, "file")?))?;
                w.add_tensor(
                    &name,
                    dtype(&string(r, "dtype")?)?,
                    &u64s(r, "shape")?,
                    &bytes,
                    m,
                )?
            }
            "view" => {
                let s = string(r, "storage")?;
                let sid = *storages
                    .get(&s)
                    .or_else(|| tensors.get(&s))
                    .ok_or_else(|| format!("storage `{s}` not recorded yet"))?;
                let offset = r.get("offset").and_then(Json::as_u64).unwrap_or(0);
                let layout = Layout::new(u64s(r, "shape")?, i64s(r, "byte_strides")?, offset)?;
                w.add_view(&name, dtype(&string(r, "dtype")?)?, sid, &layout, m)?
            }
            "derived" => {
                w.add_derived(&name, dtype(&string(r, "dtype")?)?, &u64s(r, "shape")?, m)?
            }
            other => return Err(format!("unknown record kind `{other}`").into()),
        };
        tensors.insert(name, id.ok_or("record dropped")?);
    }
    w.finish()?;
    Ok(())
}
