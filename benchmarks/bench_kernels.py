"""The kernel-level choices behind blipcap's CPU path, each against the alternative it replaced.

    python benchmarks/bench_kernels.py

- linear layers: PyTorch's F.linear vs oneDNN on a pre-packed weight (backends/cpu_pack.py), fp32
  and bf16, at the decoder's 24 rows, one 577-token image and four images;
- ONNX Runtime MatMul fp32 vs dynamic int8 with per-channel weight scales (`export-onnx --int8`);
- packing BLIP-large-sized weights on one thread vs on torch's thread count (pack_linears);
- the beam reorder of a 3-beam, 8-image self-attention cache: strided in place vs whole rows into
  a second buffer (TorchSession.reorder);
- beam search's top-k over 8 rows of 3 x 30,524 scores: a full stable sort vs NumpyOps.topk.
Each figure is the best of several runs after a warm-up.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def best_ms(fn, repeat: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def linears() -> None:
    from blipcap.backends.cpu_pack import PackedLinear, packing_available

    if not packing_available():
        print("oneDNN linear ops unavailable in this PyTorch build: nothing to compare")
        return
    print("| linear 1024 -> 4096 | rows | F.linear GFLOP/s | packed oneDNN GFLOP/s | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        dense = torch.nn.Linear(1024, 4096).to(dtype)
        packed = PackedLinear(dense)
        for rows in (24, 577, 4 * 577):
            x = torch.randn(rows, 1024, generator=g).to(dtype)
            flop = 2 * rows * 1024 * 4096
            with torch.inference_mode():
                a = best_ms(lambda: F.linear(x, dense.weight, dense.bias))
                b = best_ms(lambda: packed(x))
            print(f"| {str(dtype).replace('torch.', '')} | {rows} | {flop / a / 1e6:.0f} | {flop / b / 1e6:.0f} | "
                  f"{a / b:.2f}x |")


def onnx_int8() -> None:
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        print("onnx/onnxruntime not installed: skipping the ONNX MatMul comparison")
        return
    rows, k, n = 4 * 577, 1024, 4096
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], [numpy_helper.from_array(w, "w")])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "mm.onnx", Path(tmp) / "mm8.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(fp32))
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        flop = 2 * rows * k * n
        print(f"\n| ONNX Runtime MatMul {k} -> {n}, {rows} rows | GFLOP/s (GOP/s for int8) |")
        print("| --- | --- |")
        for name, path in (("fp32", fp32), ("dynamic int8, per-channel", int8)):
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            print(f"| {name} | {flop / best_ms(lambda: sess.run(None, {'x': x})) / 1e6:.0f} |")


def packing() -> None:
    from blipcap.backends.cpu_pack import packing_available

    if not packing_available():
        return
    weights = [torch.randn(4096, 1024) for _ in range(24)] + [torch.randn(1024, 4096) for _ in range(24)]

    def pack(w):
        return torch.ops.mkldnn._reorder_linear_weight(w)

    def serial():
        return [pack(w) for w in weights]

    threads = torch.get_num_threads()
    with ThreadPoolExecutor(threads) as pool:
        a = best_ms(serial, repeat=3)
        b = best_ms(lambda: list(pool.map(pack, weights)), repeat=3)
    print(f"\npacking 48 ViT-L MLP weights (805 MB fp32): one thread {a:.0f} ms, {threads} threads {b:.0f} ms")


def reorder() -> None:
    cache = torch.randn(12, 2, 24, 12, 21, 64)  # layers, k/v, 8 images x 3 beams, heads, slots, head_dim
    spare = torch.empty_like(cache)
    rows = torch.randint(0, 24, (24,), generator=torch.Generator().manual_seed(0))
    start = 15

    def strided():
        cache[:, :, :, :, :start] = cache[:, :, rows, :, :start]

    a = best_ms(strided, repeat=20)
    b = best_ms(lambda: torch.index_select(cache, 2, rows, out=spare), repeat=20)
    print(f"beam reorder of a {cache.numel() * 4 / 2**20:.1f} MiB cache: strided in place {a:.2f} ms, "
          f"whole rows into a second buffer {b:.2f} ms")


def topk() -> None:
    from blipcap.arrays import NumpyOps

    scores = np.random.default_rng(0).standard_normal((8, 3 * 30524)).astype(np.float32)
    a = best_ms(lambda: np.argsort(-scores, axis=-1, kind="stable")[:, :6], repeat=20)
    b = best_ms(lambda: NumpyOps().topk(scores, 6), repeat=20)
    print(f"beam top-6 of 8 x {scores.shape[1]} scores: full stable sort {a:.1f} ms, NumpyOps.topk {b:.1f} ms")


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    linears()
    onnx_int8()
    packing()
    reorder()
    topk()


if __name__ == "__main__":
    main()
