//! Export to safetensors: the logical tensors and, in `__metadata__`, the
//! run metadata and every source layout.

use super::*;

fn st_dtype(d: DType) -> Option<Dtype> {
    Some(match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
        DType::F8_E4M3 => Dtype::F8_E4M3,
        DType::F8_E5M2 => Dtype::F8_E5M2,
        _ => return None,
    })
}

/// One tensor as safetensors sees it: the bytes are borrowed from the trace
/// when contiguous, else materialized when the file is written (one tensor
/// at a time).
struct StTensor<'a> {
    view: TensorView<'a>,
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    /// The first tensor that could not be materialized (checked after writing).
    failed: &'a RefCell<Option<String>>,
}

impl View for StTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let info = self.view.info();
        if info.dtype.is_block() {
            // safetensors has no ggml block types: the logical (dequantized) values
            let values = self
                .view
                .to_f32()
                .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
            return match values {
                Ok(v) if v.len() == self.len => Cow::Owned(v),
                other => {
                    let why = other
                        .err()
                        .map_or_else(|| "wrong length".to_string(), |e| e.to_string());
                    self.failed
                        .borrow_mut()
                        .get_or_insert(format!("tensor `{}`: {why}", info.name));
                    // nothing made up: the file is removed (`write_safetensors`)
                    Cow::Borrowed(&[])
                }
            };
        }
        if let Some(b) = self.view.contiguous_bytes() {
            return Cow::Borrowed(b);
        }
        match self.view.materialize() {
            Ok(v) if v.len() == self.len => Cow::Owned(v),
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(v) => format!("{} bytes materialized, {} expected", v.len(), self.len),
                };
                self.failed
                    .borrow_mut()
                    .get_or_insert(format!("tensor `{}`: {why}", self.view.info().name));
                Cow::Borrowed(&[])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

fn metadata_string(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(super) fn write_safetensors(trace: &Trace, plan: &Plan<'_>, out: &Path) -> Result<()> {
    let failed = RefCell::new(None);
    let mut tensors = Vec::with_capacity(plan.tensors.len());
    for p in &plan.tensors {
        let info = p.view.info();
        let ctx = || format!("tensor `{}`", p.name);
        // block types are written as their dequantized f32 values
        let stored = if info.dtype.is_block() {
            DType::F32
        } else {
            info.dtype
        };
        let dtype = st_dtype(stored)
            .ok_or_else(|| invalid!("{} has no safetensors dtype", info.dtype))
            .context_with(ctx)?;
        let shape = info
            .layout
            .shape()
            .iter()
            .map(|&n| usize::try_from(n))
            .collect::<Result<Vec<_>, _>>()
            .context_with(ctx)?;
        let len = stored
            .bytes_for(info.layout.numel())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| invalid!("too large"))
            .context_with(ctx)?;
        tensors.push((
            p.name.clone(),
            StTensor {
                view: p.view.clone(),
                dtype,
                shape,
                len,
                failed: &failed,
            },
        ));
    }
    let mut meta: HashMap<String, String> = trace
        .run_metadata()
        .iter()
        .map(|(k, v)| (k.to_owned(), metadata_string(v)))
        .collect();
    meta.insert(
        TENSORS_KEY.to_owned(),
        serde_json::to_string(&plan.described)?,
    );
    let permissions = usual_permissions(out);
    ::safetensors::serialize_to_file(tensors, Some(meta), out)
        .context_with(|| format!("writing {}", out.display()))?;
    if let Some(why) = failed.into_inner() {
        let _ = fs::remove_file(out);
        bail!("writing {}: {why}", out.display());
    }
    if let Some(p) = permissions {
        let _ = fs::set_permissions(out, p);
    }
    Ok(())
}

/// The permissions a file newly created beside `path` gets (the umask
/// applied). safetensors writes through a private temporary file, so its
/// output would otherwise be readable by its owner only.
fn usual_permissions(path: &Path) -> Option<fs::Permissions> {
    let probe = temp_path(path);
    let permissions = File::create(&probe)
        .and_then(|f| f.metadata())
        .map(|m| m.permissions())
        .ok();
    let _ = fs::remove_file(&probe);
    permissions
}
