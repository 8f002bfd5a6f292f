"""Loading of libkvq_c (kvq's C ABI, python/csrc/kvq_c.h) through ctypes.

The library is looked for, in order, at $KVQ_LIBRARY (a file path), next to this file
(where ``cmake -DKVQ_PYTHON_INPLACE=ON`` copies it and where ``pip install ./python`` ships
it), and in the directories of $KVQ_LIBRARY_PATH. Nothing here imports torch.
"""
import ctypes
import os
import struct

ABI_VERSION = 2
_NAMES = ("libkvq_c.so", "kvq_c.dll", "libkvq_c.dylib")

# Status codes (kvq::Status).
SUCCESS = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_MISALIGNED = 2
ERROR_CAPACITY_EXCEEDED = 3
ERROR_NOT_SUPPORTED = 4
ERROR_NO_DEVICE = 5
ERROR_CUDA_RUNTIME = 6

FP16, BF16, FP32 = 0, 1, 2
PER_TOKEN, PER_CHANNEL = 0, 1
ROTATIONS = {"none": 0, "hadamard": 1, "hadamard_centered": 2}
CORRECTIONS = {"none": 0, "taylor2": 1, "taylor4": 2, "exact": 3}
MASKS = {"none": 0, "causal": 1}
# Bits of the device error words.
APPEND_ERROR_CAPACITY, APPEND_ERROR_NEGATIVE_LENGTH, APPEND_ERROR_PAGE = 1, 2, 4
ATTENTION_ERROR_PAGE = 4

# kvq_c_append_args: 6 pointers, 8 int64, 4 int32 (128 bytes, no padding).
APPEND_ARGS = struct.Struct("=6Q8q4i")
# kvq_c_attention_args: 10 pointers, 15 int64, 1 float, 7 int32 (232 bytes, no padding).
ATTENTION_ARGS = struct.Struct("=10Q15qf7i")
# kvq_c_merge_args: 5 pointers, 9 int64, 8 int32 (144 bytes, no padding).
MERGE_ARGS = struct.Struct("=5Q9q8i")
assert APPEND_ARGS.size == 128 and ATTENTION_ARGS.size == 232 and MERGE_ARGS.size == 144


class KvqError(RuntimeError):
    """A kvq C ABI call returned a status other than success."""

    def __init__(self, where, status, detail=""):
        self.status = status
        if status == ERROR_CUDA_RUNTIME and not detail and _lib is not None:
            detail = _lib.kvq_c_last_cuda_error_string().decode()
        msg = "%s failed: %s (kvq status %d)" % (where, status_string(status), status)
        super().__init__(msg + (": " + detail if detail else ""))


class Variant(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in
                ("k_bits", "k_group", "k_granularity", "v_bits", "v_group", "head_dim", "rotation")]


_lib = None
_load_error = None


def library_path():
    """The path libkvq_c is loaded from, or None where it is not found."""
    env = os.environ.get("KVQ_LIBRARY")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [here] + [d for d in os.environ.get("KVQ_LIBRARY_PATH", "").split(os.pathsep) if d]
    for d in dirs:
        for n in _NAMES:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                return p
    return None


def _bind(lib):
    i32, i64, vp = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    sig = {
        "kvq_c_abi_version": (i32, []),
        "kvq_c_append_args_size": (i32, []),
        "kvq_c_attention_args_size": (i32, []),
        "kvq_c_merge_args_size": (i32, []),
        "kvq_c_status_string": (ctypes.c_char_p, [i32]),
        "kvq_c_last_cuda_error_string": (ctypes.c_char_p, []),
        "kvq_c_variant_count": (i32, []),
        "kvq_c_variant_get": (i32, [i32, ctypes.POINTER(Variant), ctypes.POINTER(ctypes.c_uint32)]),
        "kvq_c_cache_create": (i32, [ctypes.POINTER(Variant), i32, i32, i64, i32, i32, ctypes.POINTER(vp)]),
        "kvq_c_paged_cache_create": (i32, [ctypes.POINTER(Variant), i32, i32, i32, i64, i32, vp, i64, i32, i32,
                                           ctypes.POINTER(vp)]),
        "kvq_c_cache_destroy": (None, [vp]),
        "kvq_c_cache_bytes": (i64, [vp]),
        "kvq_c_cache_capacity": (i64, [vp]),
        "kvq_c_cache_key_tokens_per_group": (i32, [vp]),
        "kvq_c_prepare_attention": (i32, [vp, i32, i32, i32]),
        "kvq_c_append": (i32, [vp, vp]),
        "kvq_c_attention": (i32, [vp, vp]),
        "kvq_c_merge_states": (i32, [vp]),
        "kvq_c_merge_states_host": (i32, [vp, vp, vp]),
        "kvq_c_dequantize_host": (i32, [vp, vp, vp, vp, vp, vp, vp]),
        "kvq_c_rotate_rows_host": (i32, [i32, vp, i64]),
        "kvq_c_quantize_append_host": (i32, [vp, vp, vp, vp, vp]),
        "kvq_c_attention_host": (i32, [vp, vp, vp, vp, vp, vp]),
    }
    for name, (res, args) in sig.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    if lib.kvq_c_abi_version() != ABI_VERSION:
        raise ImportError("libkvq_c ABI version %d, the package expects %d: rebuild the library"
                          % (lib.kvq_c_abi_version(), ABI_VERSION))
    if (lib.kvq_c_append_args_size() != APPEND_ARGS.size or lib.kvq_c_attention_args_size() != ATTENTION_ARGS.size
            or lib.kvq_c_merge_args_size() != MERGE_ARGS.size):
        raise ImportError("libkvq_c argument structs do not match the package: rebuild the library")


def lib():
    """The loaded library (ImportError with the places looked at where it is missing)."""
    global _lib, _load_error
    if _lib is not None:
        return _lib
    if _load_error is not None:
        raise ImportError(_load_error)
    path = library_path()
    if path is None:
        _load_error = ("libkvq_c not found: build it (cmake --build BUILD --target kvq_python) and set "
                       "KVQ_LIBRARY=BUILD/python/libkvq_c.so, or configure with -DKVQ_PYTHON_INPLACE=ON "
                       "before `pip install ./python`")
        raise ImportError(_load_error)
    try:
        # PyDLL: the calls keep the GIL (they only check and enqueue, a few microseconds),
        # which saves its release and reacquisition on every call.
        handle = ctypes.PyDLL(path)
        _bind(handle)
    except (OSError, AttributeError, ImportError) as e:
        _load_error = "cannot load libkvq_c from %s: %s" % (path, e)
        raise ImportError(_load_error) from e
    _lib = handle
    return _lib


def status_string(status):
    try:
        return lib().kvq_c_status_string(int(status)).decode()
    except ImportError:
        return "status %d" % status


def check(where, status, detail=""):
    if status != SUCCESS:
        raise KvqError(where, status, detail)


def compiled_variants(paged=False):
    """[(dict of the variant's keys, set of correction names)] of the library; with paged=True
    the variants whose paged form (block tables) is compiled, with its corrections."""
    L = lib()
    out = []
    names = {v: k for k, v in CORRECTIONS.items()}
    rot = {v: k for k, v in ROTATIONS.items()}
    for i in range(L.kvq_c_variant_count()):
        v = Variant()
        bits = ctypes.c_uint32()
        check("kvq_c_variant_get", L.kvq_c_variant_get(i, ctypes.byref(v), ctypes.byref(bits)))
        keys = dict(k_bits=v.k_bits, k_group=v.k_group,
                    key_granularity="per_token" if v.k_granularity == PER_TOKEN else "per_channel",
                    v_bits=v.v_bits, v_group=v.v_group, head_dim=v.head_dim, rotation=rot[v.rotation])
        shift = 8 if paged else 0
        modes = {names[m] for m in range(4) if bits.value >> (m + shift) & 1}
        if modes or not paged:
            out.append((keys, modes))
    return out
