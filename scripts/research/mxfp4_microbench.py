"""Times specqd's MXFP4 kernel against OpenVINO's MXFP4 and BF16 FullyConnected on the 1.5B layer shapes.

Each measurement cycles through enough copies of the weights (>= 64 MB of MXFP4) that they come from memory,
not cache, as they do in a real forward pass. Usage (in the .venv of scripts/setup.sh, which builds the kernel):
    python scripts/research/mxfp4_microbench.py [--json PATH]
"""
import argparse
import ctypes
import json
import math
import time

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from specqd.runtime.mxfp4_kernel import library_path

SHAPES = [(1536, 1536), (1536, 256), (1536, 8960), (8960, 1536), (1536, 151936)]  # (inner, outputs)
TOKENS = [1, 2, 4, 8, 16, 64]  # activation rows: tokens per step
WORKING_SET = 64 << 20
CONFIG = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1,
          "PERFORMANCE_HINT": "LATENCY"}


def random_mxfp4(rng, inner, outputs):
    nibbles = rng.integers(0, 256, size=(outputs, inner // 2), dtype=np.uint8)
    scales = rng.integers(115, 125, size=(outputs, inner // 32), dtype=np.uint8)
    return nibbles, scales


def mxfp4_weight(nibbles, scales):
    """The decompression subgraph NNCF writes into an MXFP4 IR, feeding a MatMul."""
    outputs, half = nibbles.shape
    w = ops.constant(ov.Tensor(nibbles.reshape(outputs, -1, 16), ov.Shape([outputs, half // 16, 32]), ov.Type.f4e2m1))
    s = ops.constant(ov.Tensor(scales.reshape(outputs, -1, 1), ov.Shape([outputs, half // 16, 1]), ov.Type.f8e8m0))
    product = ops.multiply(ops.convert(w, "f16"), ops.convert(s, "f16"))
    return ops.convert(ops.reshape(product, [outputs, half * 2], False), "f32")


def bf16_weight(rng, inner, outputs):
    values = rng.standard_normal((outputs, inner), dtype=np.float32) * 0.02
    return ops.convert(ops.constant(values, ov.Type.bf16), "f32")


def ov_model(weights, inner):
    """One input, many parallel FullyConnected branches (one per weight copy)."""
    x = ops.parameter([1, -1, inner], ov.Type.f32)
    return ov.Model([ops.matmul(x, w, False, True) for w in weights], [x])


def timed(fn, repeats=9):
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    lib = ctypes.CDLL(str(library_path()))
    lib.specqd_mxfp4_pack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                      ctypes.c_void_p, ctypes.c_void_p]
    lib.specqd_mxfp4_matmul.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p,
                                        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
    core = ov.Core()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'inner x outputs':>16} {'n':>3} {'ov bf16':>9} {'ov mxfp4':>9} {'specqd':>9} {'vs mxfp4':>8} {'vs bf16':>8}")
    for inner, outputs in SHAPES:
        copies = max(1, math.ceil(WORKING_SET / (inner * outputs * 17 // 32)))
        packed = [random_mxfp4(rng, inner, outputs) for _ in range(copies)]
        bf16_copies = max(1, math.ceil(WORKING_SET / (inner * outputs * 2)))
        mx = core.compile_model(ov_model([mxfp4_weight(n, s) for n, s in packed], inner), "CPU", CONFIG)
        bf = core.compile_model(ov_model([bf16_weight(rng, inner, outputs) for _ in range(bf16_copies)], inner),
                                "CPU", CONFIG)
        mx_req, bf_req = mx.create_infer_request(), bf.create_infer_request()
        for nib, sc in packed:  # in place is fine: the OpenVINO models hold their own copies
            nib_in, sc_in = nib.copy(), sc.copy()
            lib.specqd_mxfp4_pack(nib_in.ctypes.data, sc_in.ctypes.data, inner, outputs, nib.ctypes.data, sc.ctypes.data)
        for n in TOKENS:
            x = rng.standard_normal((1, n, inner), dtype=np.float32)
            y = np.empty((n, outputs), np.float32)

            def ours():
                for nib, sc in packed:
                    lib.specqd_mxfp4_matmul(x.ctypes.data, n, inner, nib.ctypes.data, sc.ctypes.data, outputs,
                                            y.ctypes.data, 0)

            t_mx = timed(lambda: mx_req.infer([x])) / copies * 1e3
            t_bf = timed(lambda: bf_req.infer([x])) / bf16_copies * 1e3
            t_ours = timed(ours) / copies * 1e3
            rows.append({"inner": inner, "outputs": outputs, "n": n, "ov_bf16_ms": t_bf, "ov_mxfp4_ms": t_mx,
                             "specqd_ms": t_ours})
            print(f"{inner:>7} x {outputs:<6} {n:>3} {t_bf:9.3f} {t_mx:9.3f} {t_ours:9.3f} {t_mx / t_ours:7.2f}x "
                  f"{t_bf / t_ours:7.2f}x", flush=True)
        del mx, bf, mx_req, bf_req
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shapes": rows}, f, indent=1)


if __name__ == "__main__":
    main()
