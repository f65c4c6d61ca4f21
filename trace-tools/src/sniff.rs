//! What kind of file a path holds, from its first bytes: so that a verb
//! handed a safetensors, npz or PyTorch file says what it is and what to
//! do, rather than "bad magic".

use std::io::Read;
use std::path::Path;

/// A file format told apart by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A tracedump trace.
    Trace,
    /// A GGUF file (llama.cpp's models, and KV-cache traces).
    Gguf,
    /// A safetensors file: an 8-byte little-endian header length, then `{`.
    Safetensors,
    /// A numpy `.npz` archive (a zip of `.npy` files).
    Npz,
    /// A PyTorch checkpoint (`torch.save`: a zip with `data.pkl`, or a bare pickle).
    PyTorch,
    /// A single numpy `.npy` array.
    Npy,
    /// Some other zip archive.
    Zip,
}

impl Kind {
    /// What people call it.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Trace => "a tracedump trace",
            Kind::Gguf => "a GGUF file",
            Kind::Safetensors => "a safetensors file",
            Kind::Npz => "a numpy .npz archive",
            Kind::PyTorch => "a PyTorch checkpoint (torch.save)",
            Kind::Npy => "a numpy .npy array",
            Kind::Zip => "a zip archive",
        }
    }

    /// What to do with a file of this kind where a trace was wanted.
    pub fn hint(self, path: &Path) -> Option<String> {
        let p = path.display();
        match self {
            Kind::Trace | Kind::Gguf => None,
            Kind::Safetensors => Some(format!(
                "{p} is {}, not a trace: `tracedump import {p} -o OUT.tdump` converts it",
                self.describe()
            )),
            Kind::Npz | Kind::Npy | Kind::PyTorch | Kind::Zip => Some(format!(
                "{p} is {}, not a trace; tracedump reads traces and GGUF files, and `tracedump import` \
                 converts safetensors and GGUF (save the tensors with safetensors, then import them)",
                self.describe()
            )),
        }
    }
}

/// The kind of file at `path`, when its first bytes say (`None`: unknown,
/// too short, or unreadable).
pub fn sniff(path: &Path) -> Option<Kind> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)
        .ok()?
        .take(4096)
        .read_to_end(&mut head)
        .ok()?;
    let len = std::fs::metadata(path).ok()?.len();
    sniff_bytes(&head, len, path)
}

/// [`sniff`] on the first bytes of a file of `len` bytes (at most 4096
/// are looked at); `path` only for its extension.
pub fn sniff_bytes(head: &[u8], len: u64, path: &Path) -> Option<Kind> {
    if head.starts_with(&trace_format::record::FILE_MAGIC) {
        return Some(Kind::Trace);
    }
    if head.starts_with(trace_reader::gguf::GGUF_MAGIC) {
        return Some(Kind::Gguf);
    }
    if head.starts_with(b"\x93NUMPY") {
        return Some(Kind::Npy);
    }
    if head.starts_with(b"PK\x03\x04") {
        let has = |s: &[u8]| head.windows(s.len()).any(|w| w == s);
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        return Some(if has(b"data.pkl") {
            Kind::PyTorch
        } else if ext.eq_ignore_ascii_case("npz") || has(b".npy") {
            Kind::Npz
        } else {
            Kind::Zip
        });
    }
    // pickle protocol 2+ (torch.save with _use_new_zipfile_serialization=False)
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Some(Kind::PyTorch);
    }
    if head.len() >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().ok()?);
        if head[8] == b'{' && n >= 2 && n <= len.saturating_sub(8) {
            return Some(Kind::Safetensors);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_their_first_bytes() {
        let p = Path::new("x.bin");
        let mut st = 20u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"__metadata__\":{}}  ");
        assert_eq!(
            sniff_bytes(&st, st.len() as u64, p),
            Some(Kind::Safetensors)
        );
        // a header longer than the file is not safetensors
        assert_eq!(sniff_bytes(&st, 20, p), None);
        assert_eq!(sniff_bytes(b"GGUF\x03\0\0\0", 8, p), Some(Kind::Gguf));
        assert_eq!(
            sniff_bytes(&trace_format::record::FILE_MAGIC, 8, p),
            Some(Kind::Trace)
        );
        let zip = b"PK\x03\x04....archive/data.pkl....";
        assert_eq!(sniff_bytes(zip, 99, p), Some(Kind::PyTorch));
        let npz = b"PK\x03\x04....k.npy....";
        assert_eq!(sniff_bytes(npz, 99, p), Some(Kind::Npz));
        assert_eq!(sniff_bytes(b"\x80\x02}q\0", 99, p), Some(Kind::PyTorch));
        assert_eq!(sniff_bytes(b"hello world", 11, p), None);
        assert!(Kind::Safetensors
            .hint(Path::new("w.safetensors"))
            .unwrap()
            .contains("tracedump import w.safetensors -o OUT.tdump"));
    }
}
