"""The kernel-level choices behind blipcap's CPU path, each against the alternative it replaced.

    python -m benchmarks.bench_kernels

- linear layers: PyTorch's F.linear vs oneDNN on a pre-packed weight (backends/cpu_pack.py), fp32
  and bf16, at the decoder's 24 rows, one 577-token image and four images;
- ONNX Runtime MatMul fp32 vs dynamic int8 with per-channel weight scales (`export-onnx --int8`)
  vs 8-bit MatMulNBits (block-wise weight scales, int8 compute: accuracy_level 4; not used);
- packing BLIP-large-sized weights on one thread vs on torch's thread count (pack_linears);
- the beam reorder of a 3-beam, 8-image self-attention cache: strided in place vs whole rows into
  a second buffer (TorchSession.reorder);
- beam search's top-k over 8 rows of 3 x 30,524 scores: a full stable sort vs NumpyOps.topk;
- one decoding step's cross-attention (8 images x 3 beams, 12 layers of 577 image keys/values):
  PyTorch's scaled_dot_product_attention vs two batched products (TextBlock._rest on the CPU), and
  in ONNX Runtime MatMuls on transposed keys (graphs before) vs com.microsoft.MultiHeadAttention on
  (images, heads, 577, 64) keys/values (the export now);
- ONNX Runtime's LM head at the decoder's 24 rows: fp32 vs dynamic int8 (not used: see BENCHMARKS.md);
- that cross-attention with the image keys/values kept in float16 or bfloat16 under a float32 model
  (`image_kv_dtype`: SDPA on the narrow type) against float32, with the largest error;
- the image encoder's attention (2 images, 16 heads, 577 tokens) in ONNX Runtime's CPU provider: the
  fused fp32 MultiHeadAttention the export uses vs the ONNX Attention op in fp16 (the only reduced-
  precision attention kernel it has) vs the two products as int8 MatMulInteger (u8 x u8, u8 x s8).
Each figure is the best of several runs after a warm-up. `python -m benchmarks.bench_kernels image_kv
ort_attention` runs only the sections named.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bench_core import best_of  # noqa: E402


def best_ms(fn, repeat: int = 7) -> float:
    return 1e3 * best_of(fn, repeat)


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
        variants = [("fp32", fp32), ("dynamic int8, per-channel", int8)]
        try:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            nbits = Path(tmp) / "mm8nbits.onnx"
            quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=8, block_size=128, is_symmetric=True,
                                             accuracy_level=4)
            quantizer.process()
            onnx.save(quantizer.model.model, str(nbits))
            variants.append(("MatMulNBits 8-bit, blocks of 128, int8 compute", nbits))
        except (ImportError, TypeError) as e:  # older onnxruntime: no 8-bit MatMulNBits
            print(f"(MatMulNBits 8-bit unavailable: {e})")
        for name, path in variants:
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


def _ort_session(nodes, inputs: list[str], outputs: list[str], initializers=(), quantize: bool = False):
    """An ONNX Runtime CPU session of a one-off graph (float inputs/outputs, dynamic shapes)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.onnx"
        onnx.save(model, str(path))
        if quantize:
            quantize_dynamic(str(path), str(path), weight_type=QuantType.QInt8, per_channel=True)
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def cross_attention() -> None:
    images, beams, heads, n, hd, layers = 8, 3, 12, 577, 64, 12
    g = torch.Generator().manual_seed(0)
    q = torch.randn(images, heads, beams, hd, generator=g)
    keys = [torch.randn(images, heads, n, hd, generator=g) for _ in range(layers)]
    values = [torch.randn(images, heads, n, hd, generator=g) for _ in range(layers)]
    mb = 2 * layers * keys[0].numel() * 4 / 1e6
    print(f"\n| one decoding step's cross-attention, {images} images x {beams} beams, {layers} layers "
          f"({mb:.0f} MB of fp32 image keys/values) | ms |")
    print("| --- | --- |")
    for dtype in (torch.float32, torch.bfloat16):
        qd, kd, vd = q.to(dtype), [k.to(dtype) for k in keys], [v.to(dtype) for v in values]
        name = str(dtype).replace("torch.", "")
        with torch.inference_mode():
            a = best_ms(lambda: [F.scaled_dot_product_attention(qd, k, v) for k, v in zip(kd, vd)])
            b = best_ms(lambda: [torch.matmul(torch.matmul(qd * hd**-0.5, k.transpose(-1, -2)).softmax(-1), v)
                                 for k, v in zip(kd, vd)])
        print(f"| PyTorch {name}: scaled_dot_product_attention | {a:.1f} |")
        print(f"| PyTorch {name}: two batched products (TextBlock._rest) | {b:.1f} |")
    try:
        from onnx import helper
    except ImportError:
        return
    names = [f"{kind}{i}" for i in range(layers) for kind in ("k", "v")]
    matmuls = [node for i in range(layers) for node in (
        helper.make_node("MatMul", ["q", f"k{i}"], [f"s{i}"]), helper.make_node("Softmax", [f"s{i}"], [f"p{i}"]),
        helper.make_node("MatMul", [f"p{i}", f"v{i}"], [f"y{i}"]))]
    mha = [helper.make_node("MultiHeadAttention", ["q", f"k{i}", f"v{i}"], [f"y{i}"], domain="com.microsoft",
                            num_heads=heads) for i in range(layers)]
    outs = [f"y{i}" for i in range(layers)]
    kt_feed = {"q": q.numpy() * hd**-0.5}
    mha_feed = {"q": q.transpose(1, 2).reshape(images, beams, heads * hd).numpy()}
    for i in range(layers):
        kt_feed[f"k{i}"] = keys[i].transpose(-1, -2).contiguous().numpy()
        kt_feed[f"v{i}"] = mha_feed[f"v{i}"] = values[i].numpy()
        mha_feed[f"k{i}"] = keys[i].numpy()
    for label, nodes, feed in (("MatMul on transposed keys (graphs before)", matmuls, kt_feed),
                               ("MultiHeadAttention (the export now)", mha, mha_feed)):
        sess = _ort_session(nodes, ["q", *names], outs)
        print(f"| ONNX Runtime fp32: {label} | {best_ms(lambda: sess.run(None, feed)):.1f} |")


def image_kv() -> None:
    images, beams, heads, n, hd, layers = 8, 3, 12, 577, 64, 12
    g = torch.Generator().manual_seed(0)
    q = torch.randn(images, heads, beams, hd, generator=g) * 2
    keys = [torch.randn(images, heads, n, hd, generator=g) * 2 for _ in range(layers)]
    values = [torch.randn(images, heads, n, hd, generator=g) for _ in range(layers)]
    with torch.inference_mode():
        ref = [torch.matmul(torch.matmul(q * hd**-0.5, k.transpose(-1, -2)).softmax(-1), v) for k, v in zip(keys, values)]
        print("\n| the same step, float32 queries, image K/V kept in | ms | largest error vs fp32 |")
        print("| --- | --- | --- |")
        fp32 = best_ms(lambda: [torch.matmul(torch.matmul(q * hd**-0.5, k.transpose(-1, -2)).softmax(-1), v)
                                for k, v in zip(keys, values)])
        print(f"| float32 (two batched products, as today) | {fp32:.1f} | 0 |")
        for dtype in (torch.float16, torch.bfloat16):
            kd, vd = [k.to(dtype) for k in keys], [v.to(dtype) for v in values]
            run = lambda: [F.scaled_dot_product_attention(q.to(dtype), k, v).float() for k, v in zip(kd, vd)]  # noqa: E731
            err = max(float((a - b).abs().max()) for a, b in zip(run(), ref))
            print(f"| {str(dtype).replace('torch.', '')} (SDPA on the narrow type) | {best_ms(run):.1f} | {err:.4f} |")


def ort_attention() -> None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return
    b, t, hidden, heads, layers = 2, 577, 1024, 16, 24
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, b, t, hidden)).astype(np.float32)
    print(f"\n| ONNX Runtime, the image encoder's attention ({b} images, {heads} heads, {t} tokens) | "
          "s / image for 24 layers |")
    print("| --- | --- |")

    def timed(nodes, inputs, outputs, feed, opset=18) -> float:
        graph = helper.make_graph(nodes, "g", inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                        helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return best_of(lambda: sess.run(None, feed), 5) / b * layers

    def values(dtype, shape, names):
        return [helper.make_tensor_value_info(name, dtype, shape) for name in names]

    qkv = values(TensorProto.FLOAT, [b, t, hidden], "qkv")
    feed = dict(zip("qkv", x))
    mha = helper.make_node("MultiHeadAttention", list("qkv"), ["o"], domain="com.microsoft", num_heads=heads)
    print(f"| fp32 com.microsoft.MultiHeadAttention (the export) | "
          f"{timed([mha], qkv, values(TensorProto.FLOAT, [b, t, hidden], 'o'), feed):.3f} |")
    att = helper.make_node("Attention", list("qkv"), ["o"], q_num_heads=heads, kv_num_heads=heads)
    half = {k: v.astype(np.float16) for k, v in feed.items()}
    fp16 = timed([att], values(TensorProto.FLOAT16, [b, t, hidden], "qkv"), values(TensorProto.FLOAT16, [b, t, hidden], "o"),
                 half, opset=23)
    print(f"| fp16 ONNX Attention (opset 23) | {fp16:.3f} |")
    hd, bh = hidden // heads, b * heads
    for label, ta, tb, na, nb in (("u8 x u8", TensorProto.UINT8, TensorProto.UINT8, np.uint8, np.uint8),
                                  ("u8 x s8", TensorProto.UINT8, TensorProto.INT8, np.uint8, np.int8)):
        total = 0.0
        for sa, sb, so in (([bh, t, hd], [bh, hd, t], [bh, t, t]), ([bh, t, t], [bh, t, hd], [bh, t, hd])):
            node = helper.make_node("MatMulInteger", ["a", "b"], ["o"])
            ins = [helper.make_tensor_value_info("a", ta, sa), helper.make_tensor_value_info("b", tb, sb)]
            f = {"a": rng.integers(0, 100, sa).astype(na), "b": rng.integers(0, 100, sb).astype(nb)}
            total += timed([node], ins, values(TensorProto.INT32, so, "o"), f)
        print(f"| int8 MatMulInteger {label}: the two products alone (no quantising, no softmax) | {total:.3f} |")


def lm_head() -> None:
    try:
        from onnx import helper, numpy_helper
    except ImportError:
        return
    rows, hidden, vocab = 24, 768, 30524
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((hidden, vocab)) * 0.02).astype(np.float32), "w")
    x = rng.standard_normal((rows, hidden)).astype(np.float32)
    node = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    fp32, int8 = (_ort_session(node, ["x"], ["y"], [w], quantize=q) for q in (False, True))
    print(f"\nONNX Runtime LM head ({rows} rows x {hidden} -> {vocab}): fp32 "
          f"{best_ms(lambda: fp32.run(None, {'x': x})):.2f} ms, dynamic int8 {best_ms(lambda: int8.run(None, {'x': x})):.2f} ms")


def main() -> None:
    import sys

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    sections = [linears, onnx_int8, packing, reorder, topk, cross_attention, lm_head, image_kv, ort_attention]
    chosen = sys.argv[1:]
    for section in sections:
        if not chosen or section.__name__ in chosen:
            section()


if __name__ == "__main__":
    main()
