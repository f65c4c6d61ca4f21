//! `tracedump show`: the values, printed as numpy and ggml's eval callback do.

use std::fmt::Write;

use trace_reader::{DType, Trace};

use crate::error::bail;
use crate::table::join;
use crate::{ResultExt, ToolsError};

type Result<T, E = ToolsError> = std::result::Result<T, E>;

/// One axis of a numpy-style slice.
#[derive(Clone, Debug, PartialEq)]
enum Axis {
    Index(i64),
    Range(Option<i64>, Option<i64>, i64),
}

fn parse_slice(text: &str) -> Result<Vec<Axis>> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    text.split(',')
        .map(|part| {
            let p = part.trim();
            if !p.contains(':') {
                return Ok(Axis::Index(
                    p.parse()
                        .context_with(|| format!("`{p}` is not an index"))?,
                ));
            }
            let f: Vec<&str> = p.split(':').collect();
            if f.len() > 3 {
                bail!("`{p}` has more than two colons");
            }
            let num = |s: &str| -> Result<Option<i64>> {
                let s = s.trim();
                Ok(if s.is_empty() {
                    None
                } else {
                    Some(
                        s.parse()
                            .context_with(|| format!("`{s}` is not an integer"))?,
                    )
                })
            };
            let step = if f.len() == 3 {
                num(f[2])?.unwrap_or(1)
            } else {
                1
            };
            if step == 0 {
                bail!("slice step cannot be zero");
            }
            Ok(Axis::Range(num(f[0])?, num(f[1])?, step))
        })
        .collect()
}

/// Indices an axis selects along a dimension of `n` (numpy's rules).
fn select(axis: &Axis, n: u64) -> Result<Vec<u64>> {
    let n = n as i64;
    match *axis {
        Axis::Index(i) => {
            let j = if i < 0 { i + n } else { i };
            if j < 0 || j >= n {
                bail!("index {i} is out of range for a dimension of {n}");
            }
            Ok(vec![j as u64])
        }
        Axis::Range(start, stop, step) => {
            let clamp = |v: i64, lo: i64, hi: i64| v.max(lo).min(hi);
            let norm = |v: i64| if v < 0 { v + n } else { v };
            let mut out = Vec::new();
            if step > 0 {
                let (a, b) = (
                    clamp(norm(start.unwrap_or(0)), 0, n),
                    clamp(norm(stop.unwrap_or(n)), 0, n),
                );
                let mut i = a;
                while i < b {
                    out.push(i as u64);
                    i += step;
                }
            } else {
                let a = clamp(start.map_or(n - 1, norm), -1, n - 1);
                let b = stop.map_or(-1, |s| clamp(norm(s), -1, n - 1));
                let mut i = a;
                while i > b {
                    out.push(i as u64);
                    i += step;
                }
            }
            Ok(out)
        }
    }
}

/// Apply a slice to row-major `values` of `shape`: the new values and shape.
fn apply(values: &[f64], shape: &[u64], axes: &[Axis]) -> Result<(Vec<f64>, Vec<u64>)> {
    if axes.len() > shape.len() {
        bail!(
            "{} indices for a tensor of {} dimensions",
            axes.len(),
            shape.len()
        );
    }
    let picks: Vec<Vec<u64>> = (0..shape.len())
        .map(|d| select(axes.get(d).unwrap_or(&Axis::Range(None, None, 1)), shape[d]))
        .collect::<Result<_>>()?;
    let new_shape: Vec<u64> = picks
        .iter()
        .zip((0..shape.len()).map(|d| axes.get(d)))
        .filter(|(_, a)| !matches!(a, Some(Axis::Index(_))))
        .map(|(p, _)| p.len() as u64)
        .collect();
    let strides =
        trace_format::layout::row_major_strides(shape, 1).context_with(|| "shape too large")?;
    let mut out = Vec::new();
    let mut idx = vec![0usize; shape.len()];
    if picks.iter().any(|p| p.is_empty()) {
        return Ok((out, new_shape));
    }
    loop {
        let flat: i64 = idx
            .iter()
            .enumerate()
            .map(|(d, &i)| picks[d][i] as i64 * strides[d])
            .sum();
        out.push(values[flat as usize]);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return Ok((out, new_shape));
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < picks[d].len() {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn fmt_value(v: f64, integer: bool) -> String {
    if integer {
        format!("{v:>8}")
    } else if v.is_nan() {
        format!("{:>10}", "nan")
    } else if v.is_infinite() {
        format!("{:>10}", if v > 0.0 { "inf" } else { "-inf" })
    } else {
        format!("{v:>10.4}")
    }
}

/// numpy's layout: nested brackets, the first and last `edge` items of each
/// dimension longer than 2·edge unless `full`.
fn render(
    out: &mut String,
    values: &[f64],
    shape: &[u64],
    depth: usize,
    edge: usize,
    full: bool,
    integer: bool,
) {
    if shape.is_empty() {
        out.push_str(&fmt_value(
            values.first().copied().unwrap_or(f64::NAN),
            integer,
        ));
        return;
    }
    let n = shape[0] as usize;
    let inner: usize = shape[1..].iter().product::<u64>() as usize;
    let shown: Vec<Option<usize>> = if full || n <= 2 * edge {
        (0..n).map(Some).collect()
    } else {
        (0..edge)
            .map(Some)
            .chain(std::iter::once(None))
            .chain((n - edge..n).map(Some))
            .collect()
    };
    out.push('[');
    for (k, i) in shown.iter().enumerate() {
        if k > 0 {
            if shape.len() > 1 {
                out.push_str(",\n");
                out.push_str(&" ".repeat(depth + 1));
            } else {
                out.push_str(", ");
            }
        }
        match i {
            None => out.push_str("..."),
            Some(i) => render(
                out,
                &values[i * inner..(i + 1) * inner],
                &shape[1..],
                depth + 1,
                edge,
                full,
                integer,
            ),
        }
    }
    out.push(']');
}

/// A tensor's values as `show` selects them: a numpy `slice` of them,
/// converted to `as_dtype`. `show --json` prints it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Shown {
    /// The tensor's name.
    pub name: String,
    /// Its record id.
    pub id: u64,
    /// Its occurrence of the name (from 0) and how many there are.
    pub occurrence: Option<(usize, usize)>,
    /// The stored dtype.
    pub dtype: String,
    /// The dtype the values were converted to (`--as`).
    pub as_dtype: Option<String>,
    /// The tensor's logical shape.
    pub shape: Vec<u64>,
    /// Its byte strides.
    pub byte_strides: Vec<i64>,
    /// The numpy slice taken (`--slice`).
    pub slice: Option<String>,
    /// The slice's shape (that of `values`), with a slice.
    pub sliced_shape: Option<Vec<u64>>,
    /// The values.
    pub values: Values,
}

/// Values in row-major order with their shape; as JSON, nested lists of
/// that shape (a bare number for shape `[]`): integers for integer dtypes,
/// NaN and ±infinity as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`
/// (JSON has no numbers for them).
#[derive(Clone, Debug, PartialEq)]
pub struct Values {
    /// The values, row-major.
    pub flat: Vec<f64>,
    /// Their shape: the slice's (the tensor's without one).
    pub shape: Vec<u64>,
    /// Whether they are integers (an integer dtype, not converted to a float one).
    pub integer: bool,
    /// Whether each is an f32 (or narrower): JSON writes the shortest
    /// digits of the f32, not of the f64 that holds it.
    pub f32: bool,
}

/// One value, or the nested lists of one sub-array, as JSON.
struct Nested<'a> {
    flat: &'a [f64],
    shape: &'a [u64],
    v: &'a Values,
}

impl serde::Serialize for Nested<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let Some((&n, rest)) = self.shape.split_first() else {
            let x = self.flat.first().copied().unwrap_or(f64::NAN);
            return if x.is_nan() {
                s.serialize_str("NaN")
            } else if x.is_infinite() {
                s.serialize_str(if x > 0.0 { "Infinity" } else { "-Infinity" })
            } else if self.v.integer && x.fract() == 0.0 && x.abs() < 9.0e15 {
                s.serialize_i64(x as i64)
            } else if self.v.f32 {
                // the shortest digits that give back the f32
                s.serialize_f32(x as f32)
            } else {
                s.serialize_f64(x)
            };
        };
        let inner = rest.iter().product::<u64>() as usize;
        let mut seq = s.serialize_seq(Some(n as usize))?;
        for i in 0..n as usize {
            seq.serialize_element(&Nested {
                flat: &self.flat[i * inner..(i + 1) * inner],
                shape: rest,
                v: self.v,
            })?;
        }
        seq.end()
    }
}

impl serde::Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Nested {
            flat: &self.flat,
            shape: &self.shape,
            v: self,
        }
        .serialize(s)
    }
}

/// The values `show` prints: a numpy `slice` of a tensor's values,
/// converted to `as_dtype`.
pub fn shown(
    trace: &Trace,
    name: &str,
    slice: Option<&str>,
    as_dtype: Option<DType>,
) -> Result<Shown> {
    let id = trace.resolve(name)?;
    let t = trace.tensor(id)?;
    let view = trace.view(id)?;
    let f32 = matches!(as_dtype, Some(DType::F32 | DType::F16 | DType::BF16))
        || (as_dtype.is_none() && t.dtype != DType::F64);
    let mut values = match as_dtype {
        Some(DType::F32) | None if t.dtype != DType::F64 => {
            view.to_f32()?.into_iter().map(f64::from).collect()
        }
        _ => view.to_f64()?,
    };
    if let Some(d) = as_dtype {
        values = values
            .into_iter()
            .map(|v| match d {
                DType::F16 => half::f16::from_f64(v).to_f64(),
                DType::BF16 => half::bf16::from_f64(v).to_f64(),
                DType::F32 => v as f32 as f64,
                _ => v,
            })
            .collect();
    }
    let mut shape = t.layout.shape().to_vec();
    if let Some(s) = slice {
        let (v, sh) = apply(&values, &shape, &parse_slice(s)?)?;
        values = v;
        shape = sh;
    }
    let integer =
        !t.dtype.is_float() && !t.dtype.is_block() && as_dtype.is_none_or(|d| !d.is_float());
    Ok(Shown {
        name: t.name.clone(),
        id,
        occurrence: trace.occurrence(id),
        dtype: t.dtype.to_string(),
        as_dtype: as_dtype.map(|d| d.to_string()),
        shape: t.layout.shape().to_vec(),
        byte_strides: t.layout.byte_strides().to_vec(),
        slice: slice.map(str::to_owned),
        sliced_shape: slice.map(|_| shape.clone()),
        values: Values {
            flat: values,
            shape,
            integer,
            f32,
        },
    })
}

/// `show`: a tensor's values (a numpy `slice` of them, converted to
/// `as_dtype`), printed as numpy does; every value with `full`.
pub fn show(
    trace: &Trace,
    name: &str,
    slice: Option<&str>,
    as_dtype: Option<DType>,
    full: bool,
) -> Result<String> {
    let sh = shown(trace, name, slice, as_dtype)?;
    let t = trace.tensor(sh.id)?;
    let Values {
        flat: values,
        shape,
        integer,
        ..
    } = &sh.values;
    let mut out = String::new();
    let occ = match sh.occurrence {
        Some((k, n)) if n > 1 => format!(" (occurrence {} of {n})", k + 1),
        _ => String::new(),
    };
    writeln!(
        out,
        "{} #{}{occ} = ({}{}) shape [{}] byte strides [{}]{}",
        sh.name,
        sh.id,
        if t.dtype.is_block() {
            format!("{} dequantized", t.dtype)
        } else {
            t.dtype.to_string()
        },
        as_dtype.map(|d| format!(" as {d}")).unwrap_or_default(),
        join(&sh.shape),
        join(&sh.byte_strides),
        slice
            .map(|s| format!(" [{s}] → [{}]", join(shape)))
            .unwrap_or_default()
    )?;
    render(&mut out, values, shape, 0, 3, full, *integer);
    out.push('\n');
    let sum: f64 = values.iter().sum();
    writeln!(out, "sum = {sum:.6}")?;
    Ok(out)
}

/// The stored bytes a tensor's view spans, as hex: one block per line for
/// block types (the raw ggml blocks, before dequantization), 16 bytes per
/// line otherwise; the first and last 8 lines unless `full`.
pub fn show_raw(trace: &Trace, name: &str, full: bool) -> Result<String> {
    let id = trace.resolve(name)?;
    let t = trace.tensor(id)?;
    let view = trace.view(id)?;
    if t.storage.is_none() {
        bail!(
            "tensor `{}` has no stored bytes ({})",
            t.name,
            if t.derived {
                "derived from its parents"
            } else {
                "statistics only"
            }
        );
    }
    let mut out = String::new();
    let Some((start, end)) = t.layout.byte_span(t.dtype)? else {
        writeln!(out, "{} #{id}: no elements", t.name)?;
        return Ok(out);
    };
    // the layout was checked against the storage when the tensor was read
    let bytes = &view.storage_bytes()[start as usize..end as usize];
    let line = if t.dtype.is_block() {
        t.dtype.block_bytes() as usize
    } else {
        16
    };
    writeln!(
        out,
        "{} #{id} = ({}) raw bytes {start}..{end} of storage #{} ({} bytes{})",
        t.name,
        t.dtype,
        t.storage.unwrap_or(id),
        bytes.len(),
        if t.dtype.is_block() {
            format!(", {} blocks of {line}", bytes.len() / line)
        } else {
            String::new()
        }
    )?;
    let lines: Vec<&[u8]> = bytes.chunks(line).collect();
    let unit = if t.dtype.is_block() { "block" } else { "+" };
    for (i, chunk) in lines.iter().enumerate() {
        if !full && lines.len() > 16 && i == 8 {
            writeln!(out, "… {} lines …", lines.len() - 16)?;
        }
        if !full && lines.len() > 16 && (8..lines.len() - 8).contains(&i) {
            continue;
        }
        let hex: String = chunk
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        if t.dtype.is_block() {
            writeln!(
                out,
                "{unit} {:>6} @{:>10}  {hex}",
                (start as usize / line) + i,
                start as usize + i * line
            )?;
        } else {
            writeln!(out, "{unit}{:>10}  {hex}", start as usize + i * line)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_slices() {
        let v: Vec<f64> = (0..24).map(f64::from).collect();
        let (x, s) = apply(&v, &[2, 3, 4], &parse_slice("1, ::-1, 1:3").unwrap()).unwrap();
        assert_eq!(s, vec![3, 2]);
        assert_eq!(x, vec![21.0, 22.0, 17.0, 18.0, 13.0, 14.0]);
        let (x, s) = apply(&v, &[2, 3, 4], &parse_slice("-1").unwrap()).unwrap();
        assert_eq!(s, vec![3, 4]);
        assert_eq!(x[0], 12.0);
        assert!(apply(&v, &[2, 3, 4], &parse_slice("2").unwrap()).is_err());
        assert!(parse_slice("1:2:0").is_err());
        let mut out = String::new();
        render(
            &mut out,
            &(0..10).map(f64::from).collect::<Vec<_>>(),
            &[10],
            0,
            3,
            false,
            true,
        );
        assert_eq!(
            out,
            "[       0,        1,        2, ...,        7,        8,        9]"
        );
    }
}
