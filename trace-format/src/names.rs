//! Layer and step numbers read from the names engines give tensors, for
//! sources that do not record them (GGUF files, safetensors imports).
//!
//! Layers: `blk.3.attn_q.weight` (GGUF), `model.layers.3.self_attn` (HF),
//! `kqv_out-3` (llama.cpp graph names), `cache_k_l3` (llama.cpp caches),
//! `layer3` / `layer_3` / `layer.3`. Steps: `step3`, `step_3`, `step-3`,
//! `step.3`, `token3`, `pos_3`.

/// The number right after `prefix` at position `at` of `name`, if any digits follow.
fn digits_after(name: &str, at: usize) -> Option<i64> {
    let rest = &name[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if end == 0 || end > 18 {
        return None;
    }
    rest[..end].parse().ok()
}

/// Whether `name[at..]` starts a word (start of name or after a separator).
fn word_start(name: &str, at: usize) -> bool {
    at == 0
        || matches!(
            name.as_bytes()[at - 1],
            b'.' | b'_' | b'-' | b'/' | b':' | b' '
        )
}

/// The first `<word><sep?><digits>` in `name` for one of `words` (lower
/// case; matched in any case). Byte by byte, without a lower-cased copy:
/// the ggml recorder asks this of every node of every graph.
fn number_after_word(name: &str, words: &[&str]) -> Option<i64> {
    let b = name.as_bytes();
    for word in words {
        let w = word.as_bytes();
        let Some(last) = b.len().checked_sub(w.len()) else {
            continue;
        };
        for at in 0..=last {
            // an ASCII match: `at` and its end are char boundaries
            if !word_start(name, at) || !b[at..at + w.len()].eq_ignore_ascii_case(w) {
                continue;
            }
            let mut j = at + w.len();
            if matches!(b.get(j), Some(b'.' | b'_' | b'-')) {
                j += 1;
            }
            if let Some(n) = digits_after(name, j) {
                return Some(n);
            }
        }
    }
    None
}

/// The layer number in a tensor name, if the name follows a known convention.
///
/// ```
/// use trace_format::names::layer_from_name;
/// assert_eq!(layer_from_name("blk.12.attn_q.weight"), Some(12));
/// assert_eq!(layer_from_name("model.layers.3.self_attn.o_proj"), Some(3));
/// assert_eq!(layer_from_name("kqv_out-7"), Some(7));
/// assert_eq!(layer_from_name("cache_k_l0"), Some(0));
/// assert_eq!(layer_from_name("cache_v_l11 (view) (permuted)"), Some(11));
/// assert_eq!(layer_from_name("token_embd.weight"), None);
/// ```
pub fn layer_from_name(name: &str) -> Option<i64> {
    if let Some(n) = number_after_word(name, &["blk", "layers", "layer", "h", "block", "blocks"]) {
        return Some(n);
    }
    // llama.cpp caches: cache_k_l0, cache_v_l12
    if let Some(i) = name.rfind("_l") {
        if name.starts_with("cache_") {
            // digits to the end or to a suffix ggml adds: "cache_k_l0 (view)"
            let rest = &name[i + 2..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if let Some(n) = digits_after(name, i + 2)
                .filter(|_| end == rest.len() || rest[end..].starts_with(' '))
            {
                return Some(n);
            }
        }
    }
    // llama.cpp graph names: Qcur-0, kqv_out-3, ffn_out-11 (but not node_12)
    if let Some((base, n)) = name.rsplit_once('-') {
        if !base.is_empty()
            && !base.starts_with("node_")
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            return n.parse().ok();
        }
    }
    None
}

/// The step (decode step, token position) in a tensor name, if any.
///
/// ```
/// use trace_format::names::step_from_name;
/// assert_eq!(step_from_name("K_quant.step3.layer0"), Some(3));
/// assert_eq!(step_from_name("q_step_12"), Some(12));
/// assert_eq!(step_from_name("blk.0.attn_q.weight"), None);
/// ```
pub fn step_from_name(name: &str) -> Option<i64> {
    number_after_word(name, &["step", "token", "pos", "tok"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers() {
        for (name, want) in [
            ("blk.0.ffn_down.weight", Some(0)),
            ("model.layers.27.mlp.down_proj", Some(27)),
            ("transformer.h.5.attn", Some(5)),
            ("Qcur-0", Some(0)),
            ("node_12", None),
            ("cache_v_l31", Some(31)),
            ("layer_2.k", Some(2)),
            ("layer3", Some(3)),
            ("output_norm.weight", None),
            ("blocks", None),
            ("K_quant.step1.layer4", Some(4)),
        ] {
            assert_eq!(layer_from_name(name), want, "{name}");
        }
    }

    #[test]
    fn steps() {
        for (name, want) in [
            ("k.step-4", Some(4)),
            ("pos_9.q", Some(9)),
            ("steps", None),
            ("upstep3", None),
        ] {
            assert_eq!(step_from_name(name), want, "{name}");
        }
    }
}
