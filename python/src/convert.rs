//! Conversions between the format's types and Python objects.

#![forbid(unsafe_code)]

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use trace_format::codec::MAX_VALUE_DEPTH;
use trace_format::{DType, Lineage, Metadata, Op, SourceLayout, Stats, Value};

/// A metadata value as a Python object.
pub fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => PyFloat::new(py, *x).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(entries) => {
            let d = PyDict::new(py);
            for (k, item) in entries {
                d.set_item(k, value_to_py(py, item)?)?;
            }
            d.into_any()
        }
    })
}

/// A Python object as a metadata value: bool, int, float, str, bytes, and
/// lists/tuples and dicts (string keys) of them, nested at most
/// `MAX_VALUE_DEPTH` deep (SPEC.md §4): deeper, or a structure that contains
/// itself, is a `ValueError` naming the key path (`key` is the entry's key).
pub fn py_to_value(obj: &Bound<'_, PyAny>, key: &str) -> PyResult<Value> {
    let mut path = vec![key.to_owned()];
    to_value(obj, &mut path)
}

fn to_value(obj: &Bound<'_, PyAny>, path: &mut Vec<String>) -> PyResult<Value> {
    // the entry's own value is depth 0: path holds its key and one segment a level
    if path.len() > MAX_VALUE_DEPTH + 1 {
        let shown = if path.len() > 8 {
            format!(
                "{}.….{}",
                path[..3].join("."),
                path[path.len() - 2..].join(".")
            )
        } else {
            path.join(".")
        };
        return Err(PyValueError::new_err(format!(
            "metadata `{shown}` is nested deeper than {MAX_VALUE_DEPTH} levels, which a reader refuses (a dict or list that contains itself?)"
        )));
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract::<bool>()?));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(v) = obj.extract::<i64>() {
            return Ok(Value::I64(v));
        }
        return Ok(Value::U64(obj.extract::<u64>()?));
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Value::F64(obj.extract::<f64>()?));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Str(s.to_str()?.to_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("metadata dict keys must be str"))?;
            path.push(key.clone());
            let value = to_value(&v, path)?;
            path.pop();
            entries.push((key, value));
        }
        return Ok(Value::Map(entries));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for (i, item) in obj.try_iter()?.enumerate() {
            path.push(i.to_string());
            items.push(to_value(&item?, path)?);
            path.pop();
        }
        return Ok(Value::List(items));
    }
    // numpy scalars and the like: ints and floats by their protocols
    if obj.hasattr("__index__")? {
        if let Ok(v) = obj.extract::<i64>() {
            return Ok(Value::I64(v));
        }
    }
    if obj.hasattr("__float__")? {
        if let Ok(v) = obj.call_method0("__float__")?.extract::<f64>() {
            return Ok(Value::F64(v));
        }
    }
    Err(PyTypeError::new_err(format!(
        "cannot store a {} as metadata (bool, int, float, str, bytes, list, dict)",
        obj.get_type().name()?
    )))
}

/// Metadata as a dict, in order.
pub fn metadata_to_py<'py>(py: Python<'py>, m: &Metadata) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in m.iter() {
        d.set_item(k, value_to_py(py, v)?)?;
    }
    Ok(d)
}

/// A dict (or None) as metadata.
pub fn py_to_metadata(d: Option<&Bound<'_, PyDict>>) -> PyResult<Metadata> {
    let mut m = Metadata::new();
    if let Some(d) = d {
        for (k, v) in d.iter() {
            let key: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("metadata keys must be str"))?;
            let value = py_to_value(&v, &key)?;
            m.insert(key, value);
        }
    }
    Ok(m)
}

/// Stats as a dict.
pub fn stats_to_py<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("count", s.count)?;
    d.set_item("nan_count", s.nan_count)?;
    d.set_item("inf_count", s.inf_count)?;
    d.set_item("min", s.min)?;
    d.set_item("max", s.max)?;
    d.set_item("mean", s.mean)?;
    d.set_item("std", s.std)?;
    d.set_item("abs_max", s.abs_max)?;
    d.set_item("l2_norm", s.l2_norm)?;
    d.set_item("bytes_crc32c", s.bytes_crc32c)?;
    Ok(d)
}

/// A lineage step as a dict: `{"op": "permute", "axes": [0, 2, 1, 3]}`.
pub fn op_to_py<'py>(py: Python<'py>, op: &Op) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match op {
        Op::View {
            offset,
            shape,
            byte_strides,
        } => {
            d.set_item("op", "view")?;
            d.set_item("offset", offset)?;
            d.set_item("shape", shape.clone())?;
            d.set_item("byte_strides", byte_strides.clone())?;
        }
        Op::Permute { axes } => {
            d.set_item("op", "permute")?;
            d.set_item("axes", axes.clone())?;
        }
        Op::Reshape { shape } => {
            d.set_item("op", "reshape")?;
            d.set_item("shape", shape.clone())?;
        }
        Op::Transpose { a, b } => {
            d.set_item("op", "transpose")?;
            d.set_item("a", a)?;
            d.set_item("b", b)?;
        }
        Op::Cont => d.set_item("op", "cont")?,
        Op::Convert { dtype } => {
            d.set_item("op", "convert")?;
            d.set_item("dtype", dtype.name())?;
        }
        Op::Quantize { dtype } => {
            d.set_item("op", "quantize")?;
            d.set_item("dtype", dtype.name())?;
        }
        Op::Dequantize { dtype } => {
            d.set_item("op", "dequantize")?;
            d.set_item("dtype", dtype.name())?;
        }
        Op::Concat { axis } => {
            d.set_item("op", "concat")?;
            d.set_item("axis", axis)?;
        }
    }
    Ok(d)
}

fn item<'py, T: for<'a> FromPyObject<'a, 'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T>
where
    for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
{
    let op = d.get_item("op")?.map(|o| o.to_string()).unwrap_or_default();
    let v = d
        .get_item(key)?
        .ok_or_else(|| PyValueError::new_err(format!("lineage op `{op}` needs `{key}`")))?;
    v.extract::<T>().map_err(Into::into)
}

/// Parse a dtype name (`f16`, `float16`, `q8_0`, …).
pub fn dtype_from_name(name: &str) -> PyResult<DType> {
    DType::from_name(name).ok_or_else(|| PyValueError::new_err(format!("unknown dtype `{name}`")))
}

/// A dict as a lineage step (the inverse of [`op_to_py`]).
pub fn py_to_op(d: &Bound<'_, PyDict>) -> PyResult<Op> {
    let op: String = item(d, "op")?;
    Ok(match op.as_str() {
        "view" => Op::View {
            offset: item(d, "offset")?,
            shape: item(d, "shape")?,
            byte_strides: item(d, "byte_strides")?,
        },
        "permute" => Op::Permute {
            axes: item(d, "axes")?,
        },
        "reshape" => Op::Reshape {
            shape: item(d, "shape")?,
        },
        "transpose" => Op::Transpose {
            a: item(d, "a")?,
            b: item(d, "b")?,
        },
        "cont" => Op::Cont,
        "convert" => Op::Convert {
            dtype: dtype_from_name(&item::<String>(d, "dtype")?)?,
        },
        "quantize" => Op::Quantize {
            dtype: dtype_from_name(&item::<String>(d, "dtype")?)?,
        },
        "dequantize" => Op::Dequantize {
            dtype: dtype_from_name(&item::<String>(d, "dtype")?)?,
        },
        "concat" => Op::Concat {
            axis: item(d, "axis")?,
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown lineage op `{other}` (view, permute, reshape, transpose, cont, convert, quantize, dequantize, concat)"
            )))
        }
    })
}

/// The engine op of a lineage as a dict, or None.
pub fn engine_op_to_py<'py>(py: Python<'py>, l: &Lineage) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(e) = &l.engine_op else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("engine", &e.engine)?;
    d.set_item("op", &e.op)?;
    d.set_item("params", PyBytes::new(py, &e.params))?;
    Ok(Some(d))
}

/// ggml's `ne`/`nb` as a dict, or None.
pub fn source_layout_to_py<'py>(
    py: Python<'py>,
    s: Option<&SourceLayout>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    match s {
        Some(SourceLayout::Ggml { ne, nb }) => {
            let d = PyDict::new(py);
            d.set_item("ne", ne.clone())?;
            d.set_item("nb", nb.clone())?;
            Ok(Some(d))
        }
        None => Ok(None),
    }
}

/// Escape text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
