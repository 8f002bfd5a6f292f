"""Module-level skips of the GPU test modules: without torch, a CUDA device or libkvq_c."""
import pytest


def require_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device", allow_module_level=True)
    try:
        import kvq._lib
        kvq._lib.lib()
    except ImportError as e:
        pytest.skip(str(e), allow_module_level=True)
    return torch
