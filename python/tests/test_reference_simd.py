"""Which summation order reference.attention's ggml emulation takes from a
trace's ggml.system_info (llama_print_system_info()). The orders themselves
are checked against ggml's own vec_dot in tests/llama/test_reference_fa.py."""

from tracedump.reference._kernels import _ggml_simd

AVX2 = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | OPENMP = 1 | "


def test_system_info_names_the_order():
    assert _ggml_simd(AVX2) == ("avx", 8)
    assert _ggml_simd(AVX2 + "AVX512 = 1 | ") == ("avx512", 16)
    assert _ggml_simd("CUDA : ARCHS = 890 | " + AVX2) == ("avx", 8)
    # a SIMD the emulation does not model, or nothing said: unknown
    assert _ggml_simd("CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | ") is None
    assert _ggml_simd("CPU : SSE3 = 1 | SSSE3 = 1 | ") is None
    assert _ggml_simd("") is None and _ggml_simd(None) is None
    # no SIMD at all: one by one in double
    assert _ggml_simd("CPU : LLAMAFILE = 1 | OPENMP = 1 | ") == ("scalar", 0)
