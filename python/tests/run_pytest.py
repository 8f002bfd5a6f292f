#!/usr/bin/env python3
"""CTest entry of the kvq package's tests: runs pytest on this directory when python3 has
pytest and torch and sees a CUDA device and libkvq_c loads; exits 77 (CTest: skipped)
otherwise, with the reason.

    run_pytest.py [--cpu] [TARGET [pytest args...]]

--cpu runs the host-only tests (test_reference_cpu.py, test_validation_pure.py,
test_distributed_cpu.py, test_ops_fake_cpu.py, test_cpu_backend.py), which need torch and
libkvq_c but no CUDA device."""
import os
import sys


def skip(reason):
    print("SKIP: " + reason)
    sys.exit(77)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    argv = sys.argv[1:]
    cpu = bool(argv) and argv[0] == "--cpu"
    if cpu:
        argv = argv[1:]
    target = argv[0] if argv else here
    extra = argv[1:]
    try:
        import pytest
    except ImportError:
        skip("pytest is not installed")
    try:
        import torch
    except ImportError:
        skip("torch is not installed")
    if not cpu and not torch.cuda.is_available():
        skip("torch sees no CUDA device")
    sys.path.insert(0, os.path.dirname(here))
    try:
        import kvq._lib
        kvq._lib.lib()
    except ImportError as e:
        skip(str(e))
    if cpu:
        targets = [os.path.join(target, n) for n in
                   ("test_reference_cpu.py", "test_validation_pure.py", "test_distributed_cpu.py",
                    "test_ops_fake_cpu.py", "test_cpu_backend.py")]
    else:
        targets = [target]
    sys.exit(pytest.main(["-q", "-rs"] + targets + extra))


if __name__ == "__main__":
    main()
