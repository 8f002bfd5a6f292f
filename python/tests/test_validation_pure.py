#!/usr/bin/env python3
"""The argument checks of kvq's ops (kvq/_validate.py) on tensor doubles: no torch, no GPU."""
import importlib.util
import os
import unittest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kvq", "_validate.py")
_spec = importlib.util.spec_from_file_location("kvq_validate_pure", _PATH)
V = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V)


class Device:
    def __init__(self, type, index=None):
        self.type, self.index = type, index


class T:
    """A tensor double: shape, dtype (printed like torch's), device and strides."""

    def __init__(self, shape, dtype="torch.bfloat16", device=("cuda", 0), strides=None):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = Device(*device)
        if strides is None:
            strides, acc = [], 1
            for s in reversed(self.shape):
                strides.insert(0, acc)
                acc *= s
        self._strides = tuple(strides)

    def stride(self):
        return self._strides


class Meta:
    batch, kv_heads, head_dim, capacity = 2, 4, 128, 256
    dtype_name, device_index = "bfloat16", 0
    corrections = frozenset({"none", "taylor2"})


M = Meta()


def ok_q(nq=16, hq=8):
    return T((2, nq, hq, 128))


def ok_kv(n=16):
    return T((2, n, 4, 128))


class AttentionChecks(unittest.TestCase):
    def check(self, q=None, k=None, v=None, correction="taylor2", mask="none", scale=0.08):
        return V.check_attention(M, q or ok_q(), k or ok_kv(), v or ok_kv(), correction, mask, scale)

    def test_valid(self):
        full = (16 * 8 * 128, 8 * 128, 128)
        self.assertEqual(self.check(), (2, 16, 8, 16, full, (16 * 4 * 128, 4 * 128, 128), (16 * 4 * 128, 4 * 128, 128)))
        self.assertEqual(self.check(k=ok_kv(0), v=ok_kv(0))[:4], (2, 16, 8, 0))

    def test_cpu_tensor(self):
        with self.assertRaisesRegex(ValueError, "q is on cpu"):
            self.check(q=T((2, 16, 8, 128), device=("cpu",)))

    def test_cpu_cache(self):
        cpu = Meta()
        cpu.device_index = -1
        self.assertEqual(V.check_attention(cpu, T((2, 16, 8, 128), device=("cpu",)), T((2, 16, 4, 128), device=("cpu",)),
                                           T((2, 16, 4, 128), device=("cpu",)), "taylor2", "none", 0.08)[:4],
                         (2, 16, 8, 16))
        with self.assertRaisesRegex(ValueError, "q is on cuda:0 but the cache is on cpu"):
            V.check_attention(cpu, ok_q(), ok_kv(), ok_kv(), "taylor2", "none", 0.08)

    def test_other_device(self):
        with self.assertRaisesRegex(ValueError, "cuda:1 but the cache is on cuda:0"):
            self.check(k=T((2, 16, 4, 128), device=("cuda", 1)))

    def test_dtypes(self):
        with self.assertRaisesRegex(TypeError, "float32"):
            self.check(q=T((2, 16, 8, 128), dtype="torch.float32"))
        with self.assertRaisesRegex(TypeError, "cache was made for bfloat16"):
            self.check(v=T((2, 16, 4, 128), dtype="torch.float16"))

    def test_shapes(self):
        with self.assertRaisesRegex(ValueError, "4-D"):
            self.check(q=T((2, 16, 1024)))
        with self.assertRaisesRegex(ValueError, "batch 3"):
            self.check(q=T((3, 16, 8, 128)))
        with self.assertRaisesRegex(ValueError, "head_dim 64"):
            self.check(q=T((2, 16, 8, 64)))
        with self.assertRaisesRegex(ValueError, "not a multiple of the cache's 4 kv heads"):
            self.check(q=ok_q(hq=6))
        with self.assertRaisesRegex(ValueError, "not a multiple"):
            self.check(q=ok_q(hq=2))
        with self.assertRaisesRegex(ValueError, "k_chunk has 8 heads, expected 4"):
            self.check(k=T((2, 16, 8, 128)))
        with self.assertRaisesRegex(ValueError, "v_chunk has 15 tokens, expected 16"):
            self.check(v=ok_kv(15))

    def test_strides(self):
        # [B, N, H, D] viewed from [B, H, N, D] storage: fine (strides multiples of 8).
        self.assertEqual(self.check(q=T((2, 16, 8, 128), strides=(16 * 8 * 128, 128, 16 * 128, 1)))[2], 8)
        with self.assertRaisesRegex(ValueError, "unit stride along head_dim"):
            self.check(q=T((2, 16, 8, 128), strides=(16 * 8 * 128, 8, 16 * 8, 16 * 8 * 16)))
        with self.assertRaisesRegex(ValueError, "head stride 132 is not a multiple of 8"):
            self.check(q=T((2, 16, 8, 128), strides=(16 * 8 * 132, 8 * 132, 132, 1)))
        with self.assertRaisesRegex(ValueError, "negative stride"):
            self.check(q=T((2, 16, 8, 128), strides=(16 * 8 * 128, -8 * 128, 128, 1)))
        # A size-1 dimension's stride is never used.
        one = T((2, 1, 8, 128), strides=(8 * 128, 3, 128, 1))
        self.assertEqual(V.effective_strides(one), (8 * 128, 0, 128))
        self.assertEqual(self.check(q=one)[4], (8 * 128, 0, 128))

    def test_modes(self):
        with self.assertRaisesRegex(ValueError, "'exact' is not compiled"):
            self.check(correction="exact")
        with self.assertRaisesRegex(ValueError, "mask must be"):
            self.check(mask="sliding")
        for bad in (0.0, -1.0, float("inf"), float("nan")):
            with self.assertRaisesRegex(ValueError, "scale"):
                self.check(scale=bad)

    def test_not_a_tensor(self):
        with self.assertRaisesRegex(TypeError, "must be a torch.Tensor"):
            self.check(q=[1, 2, 3])


class AppendChecks(unittest.TestCase):
    def test_valid_and_unaligned_strides(self):
        self.assertEqual(V.check_append(M, ok_kv(10), ok_kv(10))[0], 10)
        # Append accepts strides that are not multiples of 8 (scalar loads).
        odd = T((2, 10, 4, 128), strides=(10 * 4 * 130, 4 * 130, 130, 1))
        self.assertEqual(V.check_append(M, odd, odd), (10, (5200, 520, 130), (5200, 520, 130)))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "k has 8 heads, expected 4"):
            V.check_append(M, T((2, 10, 8, 128)), ok_kv(10))
        with self.assertRaisesRegex(ValueError, "v has 9 tokens, expected 10"):
            V.check_append(M, ok_kv(10), ok_kv(9))
        with self.assertRaisesRegex(ValueError, "capacity 256"):
            V.check_append(M, ok_kv(300), ok_kv(300))
        with self.assertRaisesRegex(ValueError, "k is on cpu"):
            V.check_append(M, T((2, 10, 4, 128), device=("cpu",)), ok_kv(10))


class MergeChecks(unittest.TestCase):
    # 3 parts of [batch 2, num_q 5, heads 4, head_dim 64]
    def o(self, **kw):
        return T((3, 2, 5, 4, 64), **kw)

    def lse(self, shape=(3, 2, 4, 5), **kw):
        return T(shape, dtype="torch.float32", **kw)

    def test_valid(self):
        self.assertEqual(V.check_merge(self.o(), self.lse()),
                         ((3, 2, 5, 4, 64), (2 * 5 * 4 * 64, 5 * 4 * 64, 4 * 64, 64), 2 * 4 * 5))
        # float32 parts; parts gathered along a leading axis of a larger buffer (part stride 2x).
        self.assertEqual(V.check_merge(self.o(dtype="torch.float32"), self.lse())[0][0], 3)
        strided = self.o(strides=(2 * 2 * 5 * 4 * 64, 5 * 4 * 64, 4 * 64, 64, 1))
        self.assertEqual(V.check_merge(strided, self.lse())[1][0], 2 * 2 * 5 * 4 * 64)
        one = T((1, 2, 5, 4, 64))
        self.assertEqual(V.check_merge(one, self.lse((1, 2, 4, 5)))[1][0], 0)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "5-D"):
            V.check_merge(T((2, 5, 4, 64)), self.lse())
        with self.assertRaisesRegex(ValueError, "o_parts is on cpu but lse_parts on cuda:0"):
            V.check_merge(self.o(device=("cpu",)), self.lse())
        with self.assertRaisesRegex(ValueError, "o_parts is on meta"):
            V.check_merge(self.o(device=("meta",)), self.lse(device=("meta",)))
        with self.assertRaisesRegex(ValueError, "o_parts is on cuda:0 but lse_parts on cuda:1"):
            V.check_merge(self.o(), self.lse(device=("cuda", 1)))
        with self.assertRaisesRegex(TypeError, "o_parts has dtype int8"):
            V.check_merge(self.o(dtype="torch.int8"), self.lse())
        with self.assertRaisesRegex(TypeError, "lse_parts has dtype bfloat16"):
            V.check_merge(self.o(), T((3, 2, 4, 5)))
        with self.assertRaisesRegex(ValueError, r"lse_parts must be \[parts, batch, heads, num_q\]"):
            V.check_merge(self.o(), self.lse((3, 2, 5, 4)))
        with self.assertRaisesRegex(ValueError, "at least one part"):
            V.check_merge(T((0, 2, 5, 4, 64)), self.lse((0, 2, 4, 5)))
        with self.assertRaisesRegex(ValueError, "head_dim 48"):
            V.check_merge(T((3, 2, 5, 4, 48)), self.lse())
        with self.assertRaisesRegex(ValueError, "unit stride along head_dim"):
            V.check_merge(self.o(strides=(2 * 5 * 4 * 64, 5 * 4 * 64, 4 * 64, 1, 4)), self.lse())
        with self.assertRaisesRegex(ValueError, "dense"):
            V.check_merge(self.o(), self.lse(strides=(40, 20, 1, 4)))
        with self.assertRaisesRegex(TypeError, "must be a torch.Tensor"):
            V.check_merge([1.0], self.lse())


if __name__ == "__main__":
    unittest.main()
