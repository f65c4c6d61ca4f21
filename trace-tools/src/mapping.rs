//! How two engines' tensors correspond: which of run B's tensors a tensor of
//! run A pairs with, and the transform that brings A's values into B's form.
//!
//! A mapping is a list of rules, one per line, the first match wins:
//!
//! ```text
//! PATTERN [@OP] => NAME [| TRANSFORM]...
//! PATTERN [@OP] => unpaired: REASON
//! ```
//!
//! `PATTERN` is a regex on A's tensor name, `@OP` restricts the rule to
//! records of that engine op (llama.cpp records `Qcur-0` three times: a
//! MUL_MAT, a RESHAPE and a ROPE), `NAME` is B's tensor name (`$1`… refer to
//! the pattern's groups). A name no rule matches pairs with B's tensor of
//! the same name. The transforms, applied in order:
//!
//! * `rope_rows` — undo llama.cpp's converter permutation of q/k weight rows
//!   for its RoPE along A's last axis (one head): A's element `2j + k` is
//!   B's element `k·D/2 + j`, for `j < D/2`, `k ∈ {0, 1}`;
//! * `transpose(I, J)` — swap A's axes `I` and `J` (negative: from the end);
//! * `reshape` — compare A's values in row-major order under B's shape
//!   (`[T, H, D]` against `[T, H·D]`), numel must match;
//! * `last_rows` — where A has fewer rows than B along the token axis (-2),
//!   compare them with B's last rows (llama.cpp keeps only the rows whose
//!   logits were asked for in its last layer);
//! * `crop(I)` — where A's axis `I` is longer than B's, compare only its
//!   first entries (llama.cpp's attention scores span the KV cache cells,
//!   padded past the tokens there are).
//!
//! ```
//! use trace_tools::mapping::Mapping;
//! let m = Mapping::from_map(r"
//!     ^Qcur-(\d+)$ @RESHAPE => model.layers.$1.self_attn.q_proj | rope_rows | reshape
//!     ^Qcur-(\d+)$ @MUL_MAT => unpaired: rows permuted for RoPE; its RESHAPE is paired
//! ").unwrap();
//! let to = m.resolve("Qcur-3", Some("RESHAPE"));
//! assert_eq!(to.key(), Some("model.layers.3.self_attn.q_proj"));
//! assert!(m.resolve("Qcur-3", Some("MUL_MAT")).key().is_none());
//! assert_eq!(m.resolve("other", None).key(), Some("other"));
//! ```

#![forbid(unsafe_code)]

use regex::Regex;

/// A change of A's values (or of the part of B they meet) before comparing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Undo llama.cpp's per-head RoPE row permutation on A's last axis.
    RopeRows,
    /// Swap two of A's axes (negative: counted from the end).
    Transpose(i64, i64),
    /// Compare in row-major order under B's shape.
    Reshape,
    /// Compare A's rows with B's last rows along axis -2.
    LastRows,
    /// Keep A's first entries along an axis, as many as B has.
    Crop(i64),
}

impl std::fmt::Display for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transform::RopeRows => f.write_str("rope_rows"),
            Transform::Transpose(i, j) => write!(f, "transpose({i}, {j})"),
            Transform::Reshape => f.write_str("reshape"),
            Transform::LastRows => f.write_str("last_rows"),
            Transform::Crop(i) => write!(f, "crop({i})"),
        }
    }
}

impl std::str::FromStr for Transform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "rope_rows" => return Ok(Transform::RopeRows),
            "reshape" => return Ok(Transform::Reshape),
            "last_rows" => return Ok(Transform::LastRows),
            _ => {}
        }
        if let Some(args) = s
            .strip_prefix("transpose(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let axes: Vec<i64> = args
                .split(',')
                .map(|a| a.trim().parse::<i64>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("transform `{s}`: {e}"))?;
            if let [i, j] = axes[..] {
                return Ok(Transform::Transpose(i, j));
            }
            return Err(format!("transform `{s}`: transpose takes two axes"));
        }
        if let Some(arg) = s.strip_prefix("crop(").and_then(|r| r.strip_suffix(')')) {
            return arg
                .trim()
                .parse()
                .map(Transform::Crop)
                .map_err(|e| format!("transform `{s}`: {e}"));
        }
        Err(format!(
            "unknown transform `{s}` (known: rope_rows, transpose(I, J), reshape, last_rows, crop(I))"
        ))
    }
}

/// What a rule does with the tensors it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// Pair with B's tensor of this name (a regex replacement template).
    Name(String),
    /// Leave unpaired, for this reason.
    Unpaired(String),
}

/// One line of a mapping.
#[derive(Clone, Debug)]
pub struct Rule {
    pattern: Regex,
    op: Option<String>,
    target: Target,
    transforms: Vec<Transform>,
    text: String,
}

impl Rule {
    /// Parse one rule: `PATTERN [@OP] => NAME [| TRANSFORM]...` or
    /// `PATTERN [@OP] => unpaired: REASON`.
    pub fn parse(line: &str) -> Result<Rule, String> {
        let (left, right) = line
            .split_once("=>")
            .ok_or_else(|| "expected `PATTERN => REPLACEMENT`".to_string())?;
        let left = left.trim();
        let (pattern, op) = match left.rsplit_once(char::is_whitespace) {
            Some((p, o)) if o.starts_with('@') && o.len() > 1 => {
                (p.trim(), Some(o[1..].to_string()))
            }
            _ => (left, None),
        };
        let pattern = Regex::new(pattern).map_err(|e| e.to_string())?;
        let right = right.trim();
        let (target, transforms) = if let Some(reason) = right.strip_prefix("unpaired:") {
            (Target::Unpaired(reason.trim().to_string()), Vec::new())
        } else {
            let mut parts = right.split('|');
            let name = parts.next().unwrap_or("").trim();
            if name.is_empty() {
                return Err("the replacement is empty".into());
            }
            let transforms = parts
                .map(str::parse)
                .collect::<Result<Vec<Transform>, String>>()?;
            (Target::Name(name.to_string()), transforms)
        };
        Ok(Rule {
            pattern,
            op,
            target,
            transforms,
            text: line.trim().to_string(),
        })
    }

    /// The rule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn matches(&self, name: &str, op: Option<&str>) -> bool {
        self.pattern.is_match(name) && self.op.as_deref().is_none_or(|want| Some(want) == op)
    }
}

/// Where a tensor of run A goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved<'m> {
    /// Pair with B's tensor `key`, transformed so.
    Pair {
        /// B's name.
        key: String,
        /// The rule that said so (`None`: no rule, the name itself).
        rule: Option<&'m str>,
        /// The transforms to apply.
        transforms: &'m [Transform],
    },
    /// Not paired, by a rule.
    Unpaired {
        /// The rule.
        rule: &'m str,
        /// Its reason.
        reason: String,
    },
}

impl Resolved<'_> {
    /// B's name, when the tensor is to be paired.
    pub fn key(&self) -> Option<&str> {
        match self {
            Resolved::Pair { key, .. } => Some(key),
            Resolved::Unpaired { .. } => None,
        }
    }
}

/// Rules that map run A's tensors onto run B's (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    rules: Vec<Rule>,
}

/// A built-in mapping: its name, what it pairs, and its text.
#[derive(Debug)]
pub struct Preset {
    /// The name `--preset` takes.
    pub name: &'static str,
    /// One line on what it maps.
    pub about: &'static str,
    /// The rules.
    pub text: &'static str,
}

/// The built-in mappings, llama.cpp (run A) against HF transformers (run B).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "llama-hf",
        about: "llama.cpp LLAMA (converted by convert_hf_to_gguf.py) vs HF LlamaForCausalLM, also Mistral",
        text: include_str!("../presets/llama-hf.map"),
    },
    Preset {
        name: "qwen2-hf",
        about: "llama.cpp QWEN2 vs HF Qwen2ForCausalLM (q/k/v bias, NEOX RoPE)",
        text: include_str!("../presets/qwen2-hf.map"),
    },
    Preset {
        name: "qwen3-hf",
        about: "llama.cpp QWEN3 vs HF Qwen3ForCausalLM (q/k norm, NEOX RoPE)",
        text: include_str!("../presets/qwen3-hf.map"),
    },
    Preset {
        name: "gemma2-hf",
        about: "llama.cpp GEMMA2 vs HF Gemma2ForCausalLM (scaled embedding, 4 norms a layer, soft-capping, sliding window)",
        text: include_str!("../presets/gemma2-hf.map"),
    },
];

/// The names of the built-in mappings, comma-separated (for messages).
pub fn preset_names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Mapping {
    /// No rules: tensors pair by name.
    pub fn none() -> Self {
        Self::default()
    }

    /// Add one rule (see [`Rule::parse`]); it applies after the ones before it.
    pub fn push_rule(&mut self, line: &str) -> Result<(), String> {
        self.rules.push(Rule::parse(line)?);
        Ok(())
    }

    /// Add one rule from its two sides: A's name pattern (optionally
    /// followed by ` @OP`) and what it maps to (`NAME [| TRANSFORM]...` or
    /// `unpaired: REASON`).
    pub fn push(&mut self, pattern: &str, target: &str) -> Result<(), String> {
        self.push_rule(&format!("{} => {}", pattern.trim(), target.trim()))
    }

    /// Rules from a mapping file's text: one rule per line; blank lines and
    /// lines starting with `#` are ignored.
    pub fn from_map(text: &str) -> Result<Self, String> {
        let mut m = Mapping::none();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            m.push_rule(line)
                .map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        Ok(m)
    }

    /// A built-in mapping by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| Self::from_map(p.text).ok())
    }

    /// Append another mapping's rules after this one's.
    pub fn extend(&mut self, other: Mapping) {
        self.rules.extend(other.rules);
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Where A's tensor `name`, made by engine op `op`, goes.
    pub fn resolve(&self, name: &str, op: Option<&str>) -> Resolved<'_> {
        for r in &self.rules {
            if !r.matches(name, op) {
                continue;
            }
            return match &r.target {
                Target::Name(rep) => Resolved::Pair {
                    key: r.pattern.replace(name, rep.as_str()).into_owned(),
                    rule: Some(&r.text),
                    transforms: &r.transforms,
                },
                Target::Unpaired(reason) => Resolved::Unpaired {
                    rule: &r.text,
                    reason: match r.pattern.captures(name) {
                        Some(caps) => {
                            let mut out = String::new();
                            caps.expand(reason, &mut out);
                            out
                        }
                        None => reason.clone(),
                    },
                },
            };
        }
        Resolved::Pair {
            key: name.to_owned(),
            rule: None,
            transforms: &[],
        }
    }
}

pub(crate) fn axis(i: i64, ndim: usize) -> Result<usize, String> {
    let a = if i < 0 { ndim as i64 + i } else { i };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < ndim)
        .ok_or_else(|| format!("axis {i} is out of range for {ndim} dimensions"))
}

fn numel(shape: &[u64]) -> u64 {
    shape.iter().product()
}

/// The shapes A and B are compared under, after `transforms`: A's shape
/// and B's (B's is narrowed by `last_rows`), or why they cannot be.
pub fn transformed_shapes(
    transforms: &[Transform],
    a: &[u64],
    b: &[u64],
) -> Result<(Vec<u64>, Vec<u64>), String> {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    for t in transforms {
        match *t {
            Transform::RopeRows => {
                let d = a.last().copied().unwrap_or(0);
                if d % 2 != 0 {
                    return Err(format!("rope_rows: the last axis has odd size {d}"));
                }
            }
            Transform::Transpose(i, j) => {
                let (i, j) = (axis(i, a.len())?, axis(j, a.len())?);
                a.swap(i, j);
            }
            Transform::Reshape => {
                if numel(&a) != numel(&b) {
                    return Err(format!(
                        "reshape: {} values against {}",
                        numel(&a),
                        numel(&b)
                    ));
                }
                a = b.clone();
            }
            Transform::LastRows => {
                if a.len() >= 2 && b.len() >= 2 {
                    let (ra, rb) = (a[a.len() - 2], b.len() - 2);
                    if ra < b[rb] {
                        b[rb] = ra;
                    }
                }
            }
            Transform::Crop(i) => {
                let (ia, ib) = (axis(i, a.len())?, axis(i, b.len())?);
                if a[ia] > b[ib] {
                    a[ia] = b[ib];
                }
            }
        }
    }
    Ok((a, b))
}

/// Row-major strides (in elements) of `shape`.
fn strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// `values` (row-major of `shape`) with axes `i` and `j` swapped.
pub(crate) fn transpose<T: Copy>(values: &[T], shape: &[u64], i: usize, j: usize) -> Vec<T> {
    let src = strides(shape);
    let mut out_shape = shape.to_vec();
    out_shape.swap(i, j);
    let mut gather = src.clone();
    gather.swap(i, j);
    let mut out = Vec::with_capacity(values.len());
    let mut idx = vec![0u64; shape.len()];
    for _ in 0..values.len() {
        let at: u64 = idx.iter().zip(&gather).map(|(x, s)| x * s).sum();
        out.push(values[at as usize]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// Apply `transforms` to A's values (row-major of `a_shape`) and narrow B's
/// values (row-major of `b_shape`) as `last_rows` says. Shapes must have
/// passed [`transformed_shapes`].
pub fn apply(
    transforms: &[Transform],
    a: Vec<f64>,
    a_shape: &[u64],
    b: Vec<f64>,
    b_shape: &[u64],
) -> (Vec<f64>, Vec<f64>) {
    let (mut a, mut sa, mut b, mut sb) = (a, a_shape.to_vec(), b, b_shape.to_vec());
    for t in transforms {
        match *t {
            Transform::RopeRows => {
                let d = *sa.last().unwrap_or(&0) as usize;
                if d >= 2 {
                    let half = d / 2;
                    let mut out = vec![0.0; a.len()];
                    for (row_in, row_out) in a.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                        for j in 0..half {
                            row_out[j] = row_in[2 * j];
                            row_out[half + j] = row_in[2 * j + 1];
                        }
                    }
                    a = out;
                }
            }
            Transform::Transpose(i, j) => {
                let (i, j) = (
                    axis(i, sa.len()).unwrap_or(0),
                    axis(j, sa.len()).unwrap_or(0),
                );
                a = transpose(&a, &sa, i, j);
                sa.swap(i, j);
            }
            Transform::Reshape => sa = sb.clone(),
            Transform::LastRows => {
                if sa.len() >= 2 && sb.len() >= 2 {
                    let rb = sb.len() - 2;
                    let (keep, have) = (sa[sa.len() - 2], sb[rb]);
                    if keep < have {
                        let inner = numel(&sb[rb + 1..]) as usize;
                        let block = have as usize * inner;
                        let skip = (have - keep) as usize * inner;
                        // (a block of no values: B holds none to drop)
                        if block > 0 {
                            b = b
                                .chunks_exact(block)
                                .flat_map(|c| c[skip..].iter().copied())
                                .collect();
                        }
                        sb[rb] = keep;
                    }
                }
            }
            Transform::Crop(i) => {
                let (ia, ib) = (
                    axis(i, sa.len()).unwrap_or(0),
                    axis(i, sb.len()).unwrap_or(0),
                );
                let (have, keep) = (sa[ia], sb[ib]);
                if keep < have {
                    let inner = numel(&sa[ia + 1..]) as usize;
                    let block = have as usize * inner;
                    let take = keep as usize * inner;
                    // (a block of no values: A holds none to drop)
                    if block > 0 {
                        a = a
                            .chunks_exact(block)
                            .flat_map(|c| c[..take].iter().copied())
                            .collect();
                    }
                    sa[ia] = keep;
                }
            }
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_resolve() {
        let m = Mapping::from_map(
            "^Qcur-(\\d+)$ @ROPE => q.$1 | rope_rows | transpose(-3, -2)\n\
             # a comment\n\
             ^Qcur-(\\d+)$ => unpaired: layer $1 is paired elsewhere\n\
             \\)$ => unpaired: a view\n\
             ^a$=>b",
        )
        .unwrap();
        match m.resolve("Qcur-2", Some("ROPE")) {
            Resolved::Pair {
                key, transforms, ..
            } => {
                assert_eq!(key, "q.2");
                assert_eq!(
                    transforms,
                    &[Transform::RopeRows, Transform::Transpose(-3, -2)]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            m.resolve("Qcur-2", Some("MUL_MAT")),
            Resolved::Unpaired {
                rule: "^Qcur-(\\d+)$ => unpaired: layer $1 is paired elsewhere",
                reason: "layer 2 is paired elsewhere".into()
            }
        );
        assert_eq!(m.resolve("a", None).key(), Some("b"));
        // a reason is the rule's text, not the name with its match replaced
        assert!(matches!(
            m.resolve("Kcur-0 (view)", None),
            Resolved::Unpaired { reason, .. } if reason == "a view"
        ));
        assert!(Mapping::from_map("no arrow here").is_err());
        assert!(Mapping::from_map("a => b | flip").is_err());
        assert!(Mapping::from_map("a => b | transpose(1)").is_err());
    }

    #[test]
    fn rope_rows_undo_the_converter_permutation() {
        // llama.cpp's converter: w.reshape(n_head, 2, D/2, ..).swapaxes(1, 2):
        // HF row k·D/2 + j lands on llama row 2j + k.
        let hf: Vec<f64> = (0..16).map(f64::from).collect(); // 2 heads of D = 8
        let mut llama = vec![0.0; 16];
        for h in 0..2 {
            for j in 0..4 {
                for k in 0..2 {
                    llama[h * 8 + 2 * j + k] = hf[h * 8 + k * 4 + j];
                }
            }
        }
        let (a, _) = apply(&[Transform::RopeRows], llama, &[2, 8], vec![], &[]);
        assert_eq!(a, hf);
    }

    #[test]
    fn rows_of_no_values_are_kept_and_dropped_without_a_panic() {
        // an axis of 0 after the rows: there is nothing to keep or drop
        let (_, b) = apply(&[Transform::LastRows], vec![], &[1, 0], vec![], &[3, 0]);
        assert!(b.is_empty());
        let (a, _) = apply(&[Transform::Crop(0)], vec![], &[4, 0], vec![], &[2, 0]);
        assert!(a.is_empty());
    }

    #[test]
    fn transpose_reshape_and_last_rows() {
        // A [2, 3] transposed is [3, 2]
        let (a, _) = apply(
            &[Transform::Transpose(0, 1)],
            vec![0., 1., 2., 3., 4., 5.],
            &[2, 3],
            vec![],
            &[],
        );
        assert_eq!(a, vec![0., 3., 1., 4., 2., 5.]);
        let t = [Transform::Reshape];
        assert_eq!(
            transformed_shapes(&t, &[1, 2, 3], &[6]).unwrap(),
            (vec![6], vec![6])
        );
        assert!(transformed_shapes(&t, &[2, 3], &[7]).is_err());
        // B has 3 rows of 2, A only the last one
        let t = [Transform::LastRows];
        let (sa, sb) = transformed_shapes(&t, &[1, 2], &[3, 2]).unwrap();
        assert_eq!((sa, sb), (vec![1, 2], vec![1, 2]));
        let (_, b) = apply(
            &t,
            vec![4., 5.],
            &[1, 2],
            vec![0., 1., 2., 3., 4., 5.],
            &[3, 2],
        );
        assert_eq!(b, vec![4., 5.]);
        assert!(transformed_shapes(&[Transform::Transpose(0, 5)], &[2, 3], &[3, 2]).is_err());
        // A's scores span 4 cache cells, B's the 2 tokens there are
        let t: [Transform; 1] = ["crop(-1)".parse().unwrap()];
        assert_eq!(
            transformed_shapes(&t, &[2, 4], &[1, 2, 2]).unwrap(),
            (vec![2, 2], vec![1, 2, 2])
        );
        let (a, _) = apply(
            &t,
            vec![0., 1., 2., 3., 4., 5., 6., 7.],
            &[2, 4],
            vec![],
            &[1, 2, 2],
        );
        assert_eq!(a, vec![0., 1., 4., 5.]);
    }
}
