//! Capture filters: which tensors a writer records.

#![forbid(unsafe_code)]

use regex::Regex;
use std::collections::BTreeSet;

/// Which tensors to record. Empty filters accept everything. A step or
/// layer filter passes tensors that have no step or layer (embeddings,
/// logits) unless `require_labels` is set.
#[derive(Clone, Debug, Default)]
pub struct CaptureFilter {
    /// Record only names this regex matches (anywhere in the name).
    pub name: Option<Regex>,
    /// Record only these steps.
    pub steps: Option<BTreeSet<i64>>,
    /// Record only these layers.
    pub layers: Option<BTreeSet<i64>>,
    /// Reject tensors without a step (layer) when a step (layer) filter is set.
    pub require_labels: bool,
}

impl CaptureFilter {
    /// Accept everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only names matching `pattern`.
    pub fn names(pattern: &str) -> Result<Self, regex::Error> {
        Ok(CaptureFilter {
            name: Some(Regex::new(pattern)?),
            ..Default::default()
        })
    }

    /// Also restrict to these layers.
    pub fn with_layers(mut self, layers: impl IntoIterator<Item = i64>) -> Self {
        self.layers = Some(layers.into_iter().collect());
        self
    }

    /// Also restrict to these steps.
    pub fn with_steps(mut self, steps: impl IntoIterator<Item = i64>) -> Self {
        self.steps = Some(steps.into_iter().collect());
        self
    }

    /// Whether a tensor passes.
    pub fn accepts(&self, name: &str, step: Option<i64>, layer: Option<i64>) -> bool {
        let labelled = |set: &Option<BTreeSet<i64>>, v: Option<i64>| match (set, v) {
            (None, _) => true,
            (Some(s), Some(v)) => s.contains(&v),
            (Some(_), None) => !self.require_labels,
        };
        self.name.as_ref().is_none_or(|r| r.is_match(name))
            && labelled(&self.steps, step)
            && labelled(&self.layers, layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = CaptureFilter::names("^(Qcur|Kcur)-")
            .unwrap()
            .with_layers([0, 3]);
        assert!(f.accepts("Qcur-0", None, Some(0)));
        assert!(!f.accepts("Qcur-1", None, Some(1)));
        assert!(!f.accepts("ffn_out-0", None, Some(0)));
        assert!(f.accepts("Kcur-x", Some(5), None));
        let strict = CaptureFilter {
            require_labels: true,
            ..f
        };
        assert!(!strict.accepts("Kcur-x", Some(5), None));
        assert!(CaptureFilter::all().accepts("anything", None, None));
    }
}
