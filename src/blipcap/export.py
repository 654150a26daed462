"""Export a checkpoint to ONNX: an image-encoder graph and a decoder-step graph, validated.

Owns `export_onnx`: the encoder (pixels -> the cross-attention keys/values of every decoder layer)
and the decoder step (new tokens + an explicit past -> last-position logits + the new keys/values),
both with dynamic batch and sequence axes; optional int8 dynamic quantisation of the MatMuls and
fp16 weights; the tokenizer/preprocessor/config files copied beside them and a manifest. Every
export is run once against the PyTorch model and fails loudly if they disagree.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .checkpoint import dims_from_config, read_config
from .backends.onnx import GRAPH_VERSION, MANIFEST
from .hub import resolve

OPSET = 18
ENCODER, DECODER = "encoder.onnx", "decoder.onnx"
_COPIED = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "vocab.txt",
           "tokenizer_config.json", "special_tokens_map.json")


class ExportError(RuntimeError):
    """The exported graphs do not reproduce the PyTorch model."""


def _example_inputs(dims, rows: int = 2, images: int = 1, t: int = 3, past: int = 5):
    import torch

    from .backends.nn import ExplicitStep

    text = dims.text
    hd = text.hidden // text.heads
    n = dims.vision.num_patches + 1
    fixed = [
        torch.full((rows, t), dims.bos_id, dtype=torch.long),  # tokens
        torch.arange(t).repeat(rows, 1),  # positions
        torch.ones(rows, t, dtype=torch.bool),  # new_valid
        torch.zeros(rows, past, dtype=torch.bool),  # past_valid
    ]
    per_layer = [
        torch.zeros(rows, text.heads, hd, past),  # past_kt
        torch.zeros(rows, text.heads, past, hd),  # past_v
        torch.zeros(images, text.heads, n, hd),  # cross_k
        torch.zeros(images, text.heads, n, hd),  # cross_v
    ] * text.layers
    return dict(zip(ExplicitStep.input_names(text.layers), fixed + per_layer))


def _decoder_axes(names: list[str]) -> dict:
    axes = {"tokens": {0: "rows", 1: "new"}, "positions": {0: "rows", 1: "new"}, "new_valid": {0: "rows", 1: "new"},
            "past_valid": {0: "rows", 1: "past"}, "logits": {0: "rows"},
            "present_kt": {1: "rows", 4: "new"}, "present_v": {1: "rows", 3: "new"}}
    for name in names:
        if name.startswith("past_kt."):
            axes[name] = {0: "rows", 3: "past"}
        elif name.startswith("past_v."):
            axes[name] = {0: "rows", 2: "past"}
        elif name.startswith(("cross_k.", "cross_v.")):
            axes[name] = {0: "images"}
    return axes


def _export(module, args: tuple, path: Path, input_names, output_names, dynamic: dict) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _quantize_int8(path: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul"])
    tmp.replace(path)


def _to_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # float32 inputs and outputs stay, so callers (and the numpy cache) are the same for every dtype
    onnx.save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), str(path))


def export_onnx(model: str, out: str | Path, *, revision: str | None = None, int8: bool = False,
                fp16: bool = False, per_channel: bool = True, validate: bool = True) -> Path:
    """Export `model` (short name, Hub id or directory) to the directory `out`; returns `out`."""
    import torch

    from .backends.nn import EncoderGraph, ExplicitStep
    from .backends.torch import TorchBackend

    if int8 and fp16:
        raise ValueError("choose one of int8 and fp16")
    resolved = resolve(model, revision=revision)
    dims = dims_from_config(read_config(resolved.path))
    backend = TorchBackend.load(resolved.path, dims, device="cpu", dtype="float32", pack=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    encoder = EncoderGraph(backend.model).eval()
    size = dims.vision.image_size
    pixels = torch.zeros(1, 3, size, size)
    memory_names = EncoderGraph.output_names(dims.text.layers)
    _export(encoder, (pixels,), out / ENCODER, ["pixels"], memory_names,
            {"pixels": {0: "images"}, **{name: {0: "images"} for name in memory_names}})
    step = ExplicitStep(backend.model.text).eval()
    ex = _example_inputs(dims)
    _export(step, tuple(ex.values()), out / DECODER, list(ex), ["logits", "present_kt", "present_v"],
            _decoder_axes(list(ex)))
    dtype = "float32"
    if int8:
        for name in (ENCODER, DECODER):
            _quantize_int8(out / name, per_channel)
        dtype = "int8"
    elif fp16:
        for name in (ENCODER, DECODER):
            _to_fp16(out / name)
        dtype = "float16"
    for name in _COPIED:
        if (resolved.path / name).is_file():
            shutil.copy(resolved.path / name, out / name)
    manifest = {
        "format": "blipcap-onnx", "source_model": resolved.model_id, "source_revision": resolved.revision,
        "graph_version": GRAPH_VERSION, "opset": OPSET, "dtype": dtype, "blipcap_version": __version__,
        "encoder": ENCODER, "decoder": DECODER,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if validate:
        _validate(backend, out, dims, dtype)
    return out


# Agreement the export must reach against the PyTorch model: fp32 graphs reproduce the logits;
# quantised graphs must still pick the same next token almost always.
_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "int8": None}


def _validate(backend, out: Path, dims, dtype: str) -> None:
    import torch

    from .backends.onnx import OnnxBackend

    onnx_backend = OnnxBackend.load(out, dims)
    rng = np.random.default_rng(0)
    size = dims.vision.image_size
    pixels = rng.normal(0, 1, (2, 3, size, size)).astype(np.float32)
    prompts = np.array([[0, dims.bos_id, 1000 % dims.text.vocab], [dims.bos_id, 5 % dims.text.vocab, 7]])
    valid = prompts != 0
    valid[1] = True
    ref_session, ref_logits = backend.start(backend.encode(pixels), 1, prompts, valid, 3)
    got_session, got_logits = onnx_backend.start(onnx_backend.encode(pixels), 1, prompts, valid, 3)
    ref, got = [ref_logits.numpy()], [got_logits]
    token = ref_logits.argmax(-1)
    for _ in range(2):
        ref.append(ref_session.step(token).numpy())
        got.append(got_session.step(token.numpy()))
        token = torch.from_numpy(ref[-1]).argmax(-1)
    ref_a, got_a = np.stack(ref), np.stack(got)
    scale = float(np.abs(ref_a).max()) or 1.0
    err = float(np.abs(ref_a - got_a).max()) / scale
    agree = float((ref_a.argmax(-1) == got_a.argmax(-1)).mean())
    limit = _TOLERANCE[dtype]
    if not np.isfinite(got_a).all() or (limit is not None and err > limit) or (limit is None and agree < 0.5):
        raise ExportError(
            f"the exported {dtype} graphs disagree with the PyTorch model: max relative logit error {err:.2e}, "
            f"top-1 agreement {agree:.0%} ({out})"
        )
