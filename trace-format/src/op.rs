//! What a tensor was computed from, and with which parameters (SPEC.md
//! §5.4, "Op relation", format 1.1): the reserved tensor metadata key
//! [`OP_KEY`].
//!
//! A tensor's lineage lists its parents; the relation says how it relates
//! to them: **computed** from all of them (its inputs) by an op, or a
//! **view** of the first (the lineage's view steps say how; further parents
//! are inputs). Typed parameters (RoPE mode and base, eps, scale) sit
//! beside the engine's raw `op_params`. The key is ordinary metadata, so a
//! 1.0 reader opens the file and shows it as such.
//!
//! ```
//! use trace_format::op::{OpInfo, Relation};
//! use trace_format::{Metadata, Value};
//!
//! let op = OpInfo::computed("rms_norm").param("eps", Value::F64(1e-6));
//! let meta = Metadata::new().with(trace_format::op::OP_KEY, op.to_value());
//! assert_eq!(OpInfo::from_metadata(&meta), Some(Ok(op)));
//! assert_eq!(OpInfo::from_metadata(&Metadata::new()), None);
//! ```

use crate::codec::{Metadata, Value};

/// The reserved tensor metadata key (a Map: `relation`, `name`, `params`).
pub const OP_KEY: &str = "tracedump.op";

/// How a tensor relates to its lineage's parents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// Computed from all parents (its inputs) by an op; nothing to replay.
    Computed,
    /// A view of the first parent, as the lineage's view steps say.
    View,
}

impl Relation {
    /// The name stored: `computed` or `view`.
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Computed => "computed",
            Relation::View => "view",
        }
    }
}

/// The op that made a tensor, engine-neutral: relation, name, typed parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct OpInfo {
    /// How the tensor relates to its parents.
    pub relation: Relation,
    /// The op's name (`mul_mat`, `rms_norm`, `rope`, `soft_max`, a torch
    /// function's short name), when known.
    pub name: Option<String>,
    /// Typed parameters, in order (`eps`, `freq_base`, `mode`, `scale` …).
    pub params: Vec<(String, Value)>,
}

impl OpInfo {
    /// A tensor computed from its parents by `name`.
    pub fn computed(name: impl Into<String>) -> Self {
        OpInfo {
            relation: Relation::Computed,
            name: Some(name.into()),
            params: Vec::new(),
        }
    }

    /// A view of its first parent (`name`: the engine's view op, if any).
    pub fn view(name: Option<String>) -> Self {
        OpInfo {
            relation: Relation::View,
            name,
            params: Vec::new(),
        }
    }

    /// With one more typed parameter.
    pub fn param(mut self, key: impl Into<String>, value: Value) -> Self {
        self.params.push((key.into(), value));
        self
    }

    /// A parameter by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value stored under [`OP_KEY`].
    pub fn to_value(&self) -> Value {
        let mut map = vec![(
            "relation".to_string(),
            Value::Str(self.relation.as_str().into()),
        )];
        if let Some(n) = &self.name {
            map.push(("name".into(), Value::Str(n.clone())));
        }
        if !self.params.is_empty() {
            map.push(("params".into(), Value::Map(self.params.clone())));
        }
        Value::Map(map)
    }

    /// The op recorded in a tensor's metadata: `None` without [`OP_KEY`],
    /// an error (what is wrong with it) when the key holds something else
    /// than SPEC.md says. Unknown entries of the map are ignored (a later
    /// minor version may add some).
    pub fn from_metadata(m: &Metadata) -> Option<Result<OpInfo, String>> {
        let (_, v) = m.0.iter().find(|(k, _)| k == OP_KEY)?;
        Some(Self::from_value(v))
    }

    fn from_value(v: &Value) -> Result<OpInfo, String> {
        let Value::Map(entries) = v else {
            return Err(format!("`{OP_KEY}` is not a map"));
        };
        let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let relation = match get("relation") {
            Some(Value::Str(s)) if s == "computed" => Relation::Computed,
            Some(Value::Str(s)) if s == "view" => Relation::View,
            Some(other) => {
                return Err(format!(
                    "`{OP_KEY}.relation` is {other}, not computed or view"
                ))
            }
            None => return Err(format!("`{OP_KEY}` has no relation")),
        };
        let name = match get("name") {
            Some(Value::Str(s)) => Some(s.clone()),
            None => None,
            Some(other) => return Err(format!("`{OP_KEY}.name` is {other}, not a string")),
        };
        let params = match get("params") {
            Some(Value::Map(p)) => p.clone(),
            None => Vec::new(),
            Some(other) => return Err(format!("`{OP_KEY}.params` is {other}, not a map")),
        };
        Ok(OpInfo {
            relation,
            name,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_spec_does_not_allow() {
        let op = OpInfo::computed("rope")
            .param("mode", Value::I64(2))
            .param("freq_base", Value::F64(500_000.0));
        let m = Metadata::new().with(OP_KEY, op.to_value());
        assert_eq!(OpInfo::from_metadata(&m).unwrap().unwrap(), op);
        assert_eq!(op.get("mode"), Some(&Value::I64(2)));
        let view = OpInfo::view(Some("PERMUTE".into()));
        let m = Metadata::new().with(OP_KEY, view.to_value());
        assert_eq!(
            OpInfo::from_metadata(&m).unwrap().unwrap().relation,
            Relation::View
        );
        for bad in [
            Value::I64(1),
            Value::Map(vec![]),
            Value::Map(vec![("relation".into(), Value::Str("copy".into()))]),
            Value::Map(vec![
                ("relation".into(), Value::Str("view".into())),
                ("params".into(), Value::I64(0)),
            ]),
        ] {
            let m = Metadata::new().with(OP_KEY, bad);
            assert!(OpInfo::from_metadata(&m).unwrap().is_err());
        }
        // unknown entries are a later minor version's: ignored
        let m = Metadata::new().with(
            OP_KEY,
            Value::Map(vec![
                ("relation".into(), Value::Str("computed".into())),
                ("later".into(), Value::Bool(true)),
            ]),
        );
        assert_eq!(OpInfo::from_metadata(&m).unwrap().unwrap().name, None);
    }
}
