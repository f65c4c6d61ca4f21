"""Reading traces recorded from ggml graphs (the C adapter, SPEC.md §7).

    import tracedump

    trace = tracedump.open("llama.tdump")
    found = tracedump.ggml.attention_inputs(trace, layer=0, step=1)
    found["q"], found["k"], found["v"], found["mask"], found["out"]   # trace Tensors

:func:`attention_inputs` follows the attention op's own inputs in the graph —
no roles, no names: with flash attention the ``FLASH_ATTN_EXT`` node
(``src = [q, k, v, mask]``, its output is the attention output); without, the
``SOFT_MAX`` node whose input is ``kq = MUL_MAT(k, q)`` and the ``MUL_MAT(v,
softmax)`` that consumes it (the output). The K/V found are the views of the
KV cache exactly as llama.cpp passed them (permuted, the V cache transposed
without flash attention, quantized with a q8_0 cache).
:func:`tracedump.reference.attention` uses it when a layer has no role-tagged
tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from ._tracedump import Tensor

__all__ = ["attention_inputs", "srcs", "capture", "Capture", "adapter_library"]


def _op(t) -> Optional[str]:
    e = t.engine_op
    return e["op"] if e and e.get("engine") == "ggml" else None


def _id(t) -> Optional[int]:
    return None if t is None else t.id


def srcs(t: Tensor, by_id: Dict[int, Tensor]) -> List[Optional[Tensor]]:
    """The tensor's ggml ``src[]`` as trace Tensors, by position (None for a
    source that was not recorded: a weight, the KV cache itself)."""
    names = (t.metadata.get("ggml.srcs") or "").split(",") if t.metadata.get("ggml.srcs") else []
    parents = [by_id.get(p["id"]) for p in t.parents]
    out: List[Optional[Any]] = []
    j = 0
    for name in names:
        if j < len(parents) and parents[j] is not None and parents[j].name == name:
            out.append(parents[j])
            j += 1
        else:
            out.append(None)
    return out


def _src_name(t: Any, i: int) -> Optional[str]:
    """The name of ggml source ``i`` of ``t``, recorded or not."""
    names = (t.metadata.get("ggml.srcs") or "").split(",")
    return names[i] if i < len(names) and names[i] else None


def attention_inputs(trace: Any, layer: int, step: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """``{"q", "k", "v", "mask", "mask_name", "out", "op"}`` of layer
    ``layer``'s attention at ``step``, found in the ggml graph; None when the
    trace has no ggml attention op for that layer and step. ``mask_name`` is
    the name of the mask the op used, recorded or not (None: it used none).
    Raises ``LookupError`` when the layer has several at that step (pass
    ``step=``)."""
    ts = list(trace.filter(layer=layer) if step is None else trace.filter(layer=layer, step=step))
    by_id = {t.id: t for t in trace.values()}
    found = []
    for t in ts:
        op = _op(t)
        if op == "FLASH_ATTN_EXT":
            s = srcs(t, by_id) + [None] * 4
            if s[0] is not None and s[1] is not None and s[2] is not None:
                found.append(
                    {"q": s[0], "k": s[1], "v": s[2], "mask": s[3], "mask_name": _src_name(t, 3), "out": t, "op": t}
                )
        elif op in ("SOFT_MAX", "SOFT_MAX_EXT"):
            s = srcs(t, by_id) + [None] * 2
            kq = s[0]
            if kq is None or _op(kq) != "MUL_MAT":
                continue
            k, q = (srcs(kq, by_id) + [None, None])[:2]
            users = [u for u in ts if _op(u) == "MUL_MAT" and _id((srcs(u, by_id) + [None, None])[1]) == t.id]
            if k is None or q is None or len(users) != 1:
                continue
            v = srcs(users[0], by_id)[0]
            if v is not None:
                found.append(
                    {"q": q, "k": k, "v": v, "mask": s[1], "mask_name": _src_name(t, 1), "out": users[0], "op": t}
                )
    if not found:
        return None
    if len(found) > 1:
        steps = sorted({f["op"].step for f in found if f["op"].step is not None})
        raise LookupError(f"layer {layer}: {len(found)} ggml attention ops (steps {steps}); pass step=")
    return found[0]


# --------------------------------------------------------------------------
# recording llama-cpp-python runs


def _adapter_sources():
    """The adapter's C sources, {file name: text}: trace-writer's
    ``ggml/tracedump_ggml.{c,h}`` and ``include/tracedump.h``, embedded in
    the extension when it was built (their one source)."""
    from . import _tracedump

    return dict(_tracedump._GGML_ADAPTER_SOURCES)


def adapter_library(cc: Optional[str] = None) -> Path:
    """The ggml adapter (``tracedump_ggml.c``) compiled against the ggml
    headers and libraries of the installed llama-cpp-python, linked to this
    package's recorder; built once and cached (``$XDG_CACHE_HOME/tracedump``).
    Returns the path of the shared library."""
    import hashlib
    import os
    import shutil
    import subprocess
    from pathlib import Path

    import llama_cpp

    from . import _tracedump

    pkg = Path(llama_cpp.__file__).resolve().parent
    include, lib = pkg.parent / "include", pkg / "lib"
    if not (include / "ggml.h").exists():
        raise FileNotFoundError(f"{include}/ggml.h: llama-cpp-python did not install the ggml headers")
    ext = Path(_tracedump.__file__).resolve()
    sources = _adapter_sources()
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + sources[name].encode())
    for p in (include / "ggml.h", ext):
        h.update(str(p).encode() + str(p.stat().st_mtime_ns).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tracedump"
    out = cache / f"libtracedump_ggml-{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    src = out.with_suffix(f".{os.getpid()}.src")
    src.mkdir(exist_ok=True)
    try:
        for name, text in sources.items():
            (src / name).write_text(text)
        cmd = [
            cc or os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2", "-o", str(tmp),
            str(src / "tracedump_ggml.c"), f"-I{src}", f"-I{include}",
            f"-L{lib}", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}",
            str(ext), f"-Wl,-rpath,{ext.parent}",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling the ggml adapter failed:\n{' '.join(cmd)}\n{r.stderr}")
    os.replace(tmp, out)
    return out


def _options_struct():
    """``td_ggml_options`` (tracedump.h) as a ctypes structure."""
    import ctypes

    class Options(ctypes.Structure):
        _fields_ = [
            ("background", ctypes.c_int32),
            ("queue_bytes", ctypes.c_uint64),
            ("drop_when_full", ctypes.c_int32),
            ("name_regex", ctypes.c_char_p),
            ("layers", ctypes.POINTER(ctypes.c_int64)),
            ("n_layers", ctypes.c_size_t),
            ("steps", ctypes.POINTER(ctypes.c_int64)),
            ("n_steps", ctypes.c_size_t),
            ("stats_only", ctypes.c_int32),
        ]

    return Options


def _ints(name: str, values: Any) -> Optional[List[int]]:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be an iterable of ints, not {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
            raise TypeError(f"{name} must be an iterable of ints, not one holding {v!r}")
        out.append(int(v.__index__()))
    return out


class Capture:
    """See :func:`capture`."""

    def __init__(
        self,
        llama: Any,
        path: str | os.PathLike[str],
        include: Optional[str] = None,
        n_seq: int = 1,
        *,
        layers: Any = None,
        steps: Any = None,
        stats_only: bool = False,
        background: bool = False,
        queue_bytes: Optional[int] = None,
        drop_when_full: bool = False,
    ) -> None:
        if n_seq < 1:
            raise ValueError(f"n_seq must be at least 1, not {n_seq}")
        if queue_bytes is not None and int(queue_bytes) < 1:
            raise ValueError(f"queue_bytes must be positive, not {queue_bytes}")
        self.llama = llama
        self.path = str(path)
        self.include = include
        self.layers = _ints("layers", layers)
        self.steps = _ints("steps", steps)
        self.stats_only = bool(stats_only)
        self.background = bool(background)
        self.queue_bytes = None if queue_bytes is None else int(queue_bytes)
        self.drop_when_full = bool(drop_when_full)
        self.n_seq = n_seq
        self.step = 0
        self._positions: Dict[int, int] = {}
        self._lib = None
        self._td = None
        self._records = 0

    def __enter__(self) -> "Capture":
        import ctypes

        import llama_cpp
        from llama_cpp import _internals

        lib = ctypes.CDLL(str(adapter_library()))
        Options = _options_struct()
        lib.tracedump_ggml_open_meta.restype = ctypes.c_void_p
        lib.tracedump_ggml_open_meta.argtypes = [
            ctypes.c_char_p,
            ctypes.POINTER(Options),
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_size_t,
        ]
        lib.tracedump_ggml_step.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.tracedump_ggml_close.argtypes = [ctypes.c_void_p]
        lib.tracedump_ggml_errors.argtypes = [ctypes.c_void_p]
        lib.tracedump_ggml_errors.restype = ctypes.c_uint64
        lib.tracedump_ggml_records.argtypes = [ctypes.c_void_p]
        lib.tracedump_ggml_records.restype = ctypes.c_uint64
        lib.tracedump_ggml_last_error.argtypes = [ctypes.c_void_p]
        lib.tracedump_ggml_last_error.restype = ctypes.c_char_p
        opts = Options()
        opts.background = int(self.background)
        opts.queue_bytes = self.queue_bytes or 0
        opts.drop_when_full = int(self.drop_when_full)
        opts.name_regex = None if self.include is None else self.include.encode()
        opts.stats_only = int(self.stats_only)
        keep = []
        for field, values in (("layers", self.layers), ("steps", self.steps)):
            if values is not None:
                arr = (ctypes.c_int64 * max(len(values), 1))(*values)
                keep.append(arr)
                setattr(opts, field, ctypes.cast(arr, ctypes.POINTER(ctypes.c_int64)))
                setattr(opts, "n_" + field, len(values))
        # the build that runs (its SIMD: how ggml sums a dot product), for
        # tracedump.reference.attention's emulation of its kernels
        run_meta = {"ggml.system_info": llama_cpp.llama_print_system_info().decode(errors="replace")}
        keys = (ctypes.c_char_p * len(run_meta))(*(k.encode() for k in run_meta))
        values = (ctypes.c_char_p * len(run_meta))(*(v.encode() for v in run_meta.values()))
        td = lib.tracedump_ggml_open_meta(self.path.encode(), ctypes.byref(opts), keys, values, len(run_meta))
        if not td:
            raise RuntimeError(f"{self.path}: the ggml recorder could not open it (see stderr)")
        self._lib, self._td = lib, td
        llama = self.llama
        params = llama.context_params
        self._old = (llama._ctx, params.cb_eval, params.cb_eval_user_data, llama.n_tokens, params.n_seq_max)
        params.n_seq_max = max(params.n_seq_max, self.n_seq)
        cb_addr = ctypes.cast(lib.tracedump_ggml_cb, ctypes.c_void_p).value
        self._cb = llama_cpp.ggml_backend_sched_eval_callback(cb_addr)
        params.cb_eval = self._cb
        params.cb_eval_user_data = ctypes.c_void_p(td)
        # a context of its own with the callback: the KV cache starts empty
        ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=llama.verbose)
        decode = ctx.decode

        def traced_decode(batch):
            lib.tracedump_ggml_step(td, self.step)
            self.step += 1
            return decode(batch)

        ctx.decode = traced_decode
        llama._ctx = ctx
        llama.n_tokens = 0
        return self

    def decode(self, sequences: Any, *, logits: str = "all") -> Dict[int, Any]:
        """Decode one batch (one step) holding tokens of several sequences.

            with tracedump.ggml.capture(llm, "run.tdump", n_seq=2) as cap:
                cap.decode({0: prompt_a, 1: prompt_b})      # step 0: both prompts
                cap.decode({0: [next_a], 1: [next_b]})      # step 1

        ``sequences`` maps a sequence id (``0 <= id < n_seq``) to its token
        ids (a list of lists means ids 0, 1, …). Each sequence's positions go
        on from where its last ``decode`` left it. ``logits``: ``"all"``
        (every token's row, what a comparison wants) or ``"last"`` (each
        sequence's last token, what generation needs). Returns ``{id:
        numpy array [rows, n_vocab]}``, the logits llama.cpp computed.
        llama.cpp may split a batch of several sequences into ubatches,
        each a graph of its own: the step then holds each name once per
        graph.
        """
        import ctypes

        import llama_cpp
        import numpy as np

        if self._td is None:
            raise RuntimeError("decode() is for inside the `with` block")
        if logits not in ("all", "last"):
            raise ValueError(f"logits must be 'all' or 'last', not {logits!r}")
        if not isinstance(sequences, dict):
            sequences = dict(enumerate(sequences))
        seqs = {int(k): [int(t) for t in v] for k, v in sequences.items() if len(v)}
        for sid in seqs:
            if not 0 <= sid < self.n_seq:
                raise ValueError(f"sequence id {sid}: capture(..., n_seq={self.n_seq}) allows 0..{self.n_seq - 1}")
        n = sum(len(v) for v in seqs.values())
        if n == 0:
            raise ValueError("decode() needs at least one token")
        ctx = self.llama.ctx  # public: the context this capture installed
        batch = llama_cpp.llama_batch_init(n, 0, max(len(seqs), 1))
        try:
            rows: Dict[int, List[int]] = {}
            i = 0
            for sid, tokens in seqs.items():
                start = self._positions.get(sid, 0)
                for j, tok in enumerate(tokens):
                    batch.token[i] = tok
                    batch.pos[i] = start + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = sid
                    want = logits == "all" or j == len(tokens) - 1
                    batch.logits[i] = want
                    if want:
                        rows.setdefault(sid, []).append(i)
                    i += 1
            batch.n_tokens = n
            self._lib.tracedump_ggml_step(self._td, self.step)
            self.step += 1
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            for sid, tokens in seqs.items():
                self._positions[sid] = self._positions.get(sid, 0) + len(tokens)
            n_vocab = self.llama.n_vocab()
            out = {}
            for sid, idx in rows.items():
                out[sid] = np.stack([
                    np.ctypeslib.as_array(
                        ctypes.cast(llama_cpp.llama_get_logits_ith(ctx, r), ctypes.POINTER(ctypes.c_float)),
                        shape=(n_vocab,),
                    ).copy()
                    for r in idx
                ])
            return out
        finally:
            llama_cpp.llama_batch_free(batch)

    @property
    def records(self) -> int:
        """Tensors recorded so far (all of them, after the block)."""
        return int(self._lib.tracedump_ggml_records(self._td)) if self._td else self._records

    def __exit__(self, *exc) -> bool:
        llama = self.llama
        ctx = llama._ctx
        llama._ctx, cb, ud, _, n_seq_max = self._old
        llama.context_params.cb_eval, llama.context_params.cb_eval_user_data = cb, ud
        llama.context_params.n_seq_max = n_seq_max
        llama.n_tokens = 0  # the original context's cache no longer matches input_ids
        ctx.close()
        lib, td = self._lib, self._td
        self._records = int(lib.tracedump_ggml_records(td))
        self._td = None
        errors = int(lib.tracedump_ggml_errors(td))
        first = lib.tracedump_ggml_last_error(td).decode(errors="replace")
        if lib.tracedump_ggml_close(td) != 0:
            raise RuntimeError(f"{self.path}: closing the trace failed (see stderr)")
        if errors and exc[0] is None:
            raise RuntimeError(f"{self.path}: {errors} tensors could not be recorded; the first: {first}")
        return False


def capture(
    llama: Any,
    path: str | os.PathLike[str],
    *,
    include: Optional[str] = None,
    layers: Any = None,
    steps: Any = None,
    stats_only: bool = False,
    background: bool = False,
    queue_bytes: Optional[int] = None,
    drop_when_full: bool = False,
    n_seq: int = 1,
) -> Capture:
    """Record every tensor llama.cpp evaluates in ``llama`` (a
    ``llama_cpp.Llama``) into ``path``, with the C adapter (compiled on first
    use against llama-cpp-python's own ggml headers, :func:`adapter_library`).

        with tracedump.ggml.capture(llm, "run.tdump"):
            llm.eval(llm.tokenize(b"Hello"))     # step 0
            llm.eval([next_token])                # step 1

    Each ``llama_decode`` is a step. Inside the block ``llm`` runs on a context
    of its own with the eval callback installed (same parameters, an empty
    KV cache); the original context is back afterwards, its cache forgotten
    (``n_tokens = 0``).

    What is recorded:

    * ``include``: a regex searched in tensor names; ``layers``, ``steps``:
      iterables of ints. With ``layers``, tensors of no layer (``embd``,
      ``norm``, ``result_output``) are left out too. A name ggml made up
      (``node_N``, the flash-attention node) has the layer its sources
      agree on, or the later layer among whose nodes ggml computes it. The
      filter is answered when ggml asks about a node, so a
      tensor left out costs almost nothing (ggml does not stop the graph
      there).
    * Whatever the filter, the **graph inputs** a recorded tensor reads are
      recorded with it, once per graph: the leaves llama.cpp flags as inputs
      (``attn_inp_kq_mask``, ``inp_pos``, ``inp_tokens``…) and the views and
      conversions of them it reads through (VIEW, RESHAPE, PERMUTE,
      TRANSPOSE, CPY, CONT: the f16 copy of the mask flash attention
      reads). So ``layers=[3]`` or ``include="-3$"`` still holds the mask and
      positions :func:`tracedump.reference.attention` needs.
    * ``stats_only=True``: each tensor's statistics (count, NaN/Inf counts,
      min, max, mean, std, abs max, L2 norm; the crc of its bytes when they
      are its own and contiguous) computed in one pass where its values lie,
      instead of its bytes (``Tensor.is_stats_only``; ``tensor.stats``);
      the statistics of the KV cache's pieces a step did not change are
      not computed again, but each step still checksums every layer's
      whole cache at least once (llama.cpp also writes it outside any
      graph: a memory clear, a state load), so a step's cost grows with
      ``n_ctx`` times the layers kept (``layers``, ``steps`` and
      ``include`` bound it).

    How: ``background=True`` copies each record into a queue of at most
    ``queue_bytes`` (default 256 MiB) and a writer thread does the I/O;
    when the queue is full the recording waits, or with
    ``drop_when_full=True`` drops the record (the trace then lacks it).

    For a comparison, make ``llm`` with ``logits_all=True``: otherwise
    llama.cpp computes the last layer's FFN, the final norm and the logits
    for the last token only (the rows whose logits were asked for), and
    those tensors hold fewer rows than a reference's. ``type_k=0, type_v=0``
    (``GGML_TYPE_F32``) keep the KV cache in f32; the default f16 cache
    differs from an f32 reference by about 1e-3. ``llm.eval`` decodes in
    chunks of ``n_batch`` tokens, a step each.

    Several sequences in one batch: ``n_seq=N`` and :meth:`Capture.decode`.
    """
    return Capture(
        llama,
        path,
        include,
        n_seq,
        layers=layers,
        steps=steps,
        stats_only=stats_only,
        background=background,
        queue_bytes=queue_bytes,
        drop_when_full=drop_when_full,
    )
