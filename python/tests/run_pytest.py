#!/usr/bin/env python3
"""CTest entry of the kvq package's tests: runs pytest on this directory when python3 has
pytest and torch and sees a CUDA device and libkvq_c loads; exits 77 (CTest: skipped)
otherwise, with the reason."""
import os
import sys


def skip(reason):
    print("SKIP: " + reason)
    sys.exit(77)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    target = sys.argv[1] if len(sys.argv) > 1 else here
    try:
        import pytest
    except ImportError:
        skip("pytest is not installed")
    try:
        import torch
    except ImportError:
        skip("torch is not installed")
    if not torch.cuda.is_available():
        skip("torch sees no CUDA device")
    sys.path.insert(0, os.path.dirname(here))
    try:
        import kvq._lib
        kvq._lib.lib()
    except ImportError as e:
        skip(str(e))
    sys.exit(pytest.main(["-q", "-rs", target] + sys.argv[2:]))


if __name__ == "__main__":
    main()
