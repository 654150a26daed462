"""Checkpoint files -> our parameters as numpy arrays, for the TensorFlow backend (no TF, no torch).

Owns which weights file the TF backend reads (model.safetensors, else tf_model.h5, else
pytorch_model.bin, so a TF install needs torch only for the last) and the name table of `tf_model.h5`
as transformers 4.x's TFBlipForConditionalGeneration saves it (Keras 2 h5 weights: one group per
top-level layer, datasets named `<model scope>/<layer path>/<weight>:0`). The h5 is first mapped
onto the Hub's PyTorch names and layouts, so both formats then go through checkpoint.py's one
strict mapping (rename table, fused projections, shapes checked, unknown keys named).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import CheckpointError, ModelDims, map_tensors, read_numpy_tensors, rename_table

TF_H5 = "tf_model.h5"


def param_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Our parameter name -> shape in nn.py's (PyTorch) layout: what the strict mapping checks."""
    v, t = dims.vision, dims.text
    shapes: dict[str, tuple[int, ...]] = {
        "vision.patch_embed.weight": (v.hidden, 3, v.patch_size, v.patch_size),
        "vision.patch_embed.bias": (v.hidden,),
        "vision.cls_token": (1, 1, v.hidden),
        "vision.pos_embed": (1, v.num_patches + 1, v.hidden),
        "text.tok_embed.weight": (t.vocab, t.hidden),
        "text.pos_embed.weight": (t.max_positions, t.hidden),
        "text.head.decoder.weight": (t.vocab, t.hidden),
        "text.head.decoder.bias": (t.vocab,),
    }

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def norm(name: str, n: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n,), (n,)

    for i in range(v.layers):
        b = f"vision.blocks.{i}"
        norm(f"{b}.ln1", v.hidden), norm(f"{b}.ln2", v.hidden)
        linear(f"{b}.qkv", v.hidden, 3 * v.hidden), linear(f"{b}.proj", v.hidden, v.hidden)
        linear(f"{b}.fc1", v.hidden, v.mlp), linear(f"{b}.fc2", v.mlp, v.hidden)
    norm("vision.ln_post", v.hidden)
    norm("text.ln_embed", t.hidden)
    for i in range(t.layers):
        b = f"text.blocks.{i}"
        linear(f"{b}.self_qkv", t.hidden, 3 * t.hidden), linear(f"{b}.self_out", t.hidden, t.hidden)
        linear(f"{b}.cross_q", t.hidden, t.hidden), linear(f"{b}.cross_kv", t.encoder_hidden, 2 * t.hidden)
        linear(f"{b}.cross_out", t.hidden, t.hidden)
        linear(f"{b}.fc1", t.hidden, t.mlp), linear(f"{b}.fc2", t.mlp, t.hidden)
        for ln in ("ln_self", "ln_cross", "ln_ffn"):
            norm(f"{b}.{ln}", t.hidden)
    linear("text.head.dense", t.hidden, t.hidden)
    norm("text.head.ln", t.hidden)
    return shapes


def tf_weights_file(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    for name in ("model.safetensors", TF_H5, "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise CheckpointError(f"{model_dir}: no model.safetensors, {TF_H5} or pytorch_model.bin")


def load_numpy_state(model_dir: str | Path, dims: ModelDims) -> dict[str, np.ndarray]:
    """Our parameter name -> float32 array in nn.py's layout, strictly mapped from the checkpoint."""
    path = tf_weights_file(model_dir)
    hub = read_h5(path, dims) if path.name == TF_H5 else read_numpy_tensors(path)
    cat = lambda parts: np.concatenate(parts, axis=0)  # noqa: E731
    state = map_tensors(hub, dims, param_shapes(dims), path, cat=cat, equal=np.array_equal)
    return {name: np.asarray(a, dtype=np.float32) for name, a in state.items()}


# --- tf_model.h5 -----------------------------------------------------------------------------------
# Keras names each weight by its layer path; transformers' TF BLIP mirrors the PyTorch module tree,
# with these differences (as its own pt<->tf conversion undoes them): list items are `layer_._3`,
# not `layer.3`; Dense kernels are (in, out), the transpose of nn.Linear's weight; the patch
# Conv2D kernel is (kh, kw, in, out), PyTorch's (out, in, kh, kw); LayerNorm has gamma/beta,
# Embedding `embeddings`, where PyTorch has weight/bias and weight.

def h5_table(dims: ModelDims) -> dict[str, tuple[str, str]]:
    """h5 weight path (model scope and `:0` removed) -> (Hub PyTorch name, how to convert it)."""
    hub_names = {name for sources in rename_table(dims).values() for name in sources}
    table: dict[str, tuple[str, str]] = {}
    for hub in sorted(hub_names):
        parts = hub.split(".")
        path = "/".join(_keras_segments(parts[:-1]))
        leaf = parts[-1]
        if hub.endswith(("class_embedding", "position_embedding")):  # tf.Variables, not layers
            table[f"{path}/{leaf}" if path else leaf] = (hub, "as_is")
        elif hub.endswith("cls.predictions.bias"):
            table[f"{path}/bias"] = (hub, "as_is")
        elif "patch_embedding" in hub:
            table[f"{path}/{'kernel' if leaf == 'weight' else 'bias'}"] = (hub, "conv" if leaf == "weight" else "as_is")
        elif hub.endswith("_embeddings.weight"):
            table[f"{path}/embeddings"] = (hub, "as_is")
        elif "LayerNorm" in hub or "layer_norm" in hub or "post_layernorm" in hub:
            table[f"{path}/{'gamma' if leaf == 'weight' else 'beta'}"] = (hub, "as_is")
        else:
            table[f"{path}/{'kernel' if leaf == 'weight' else 'bias'}"] = (hub, "dense" if leaf == "weight" else "as_is")
    return table


def _keras_segments(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p.isdigit():  # `layers.3` in PyTorch is the layer `layers_._3` in Keras
            out[-1] = f"{out[-1]}_._{p}"
        else:
            out.append(p)
    return out


def read_h5(path: Path, dims: ModelDims) -> dict[str, np.ndarray]:
    """The weights of a transformers 4.x TF BLIP `tf_model.h5`, under the Hub's PyTorch names and
    layouts; strict: a weight the table cannot place is named in the error."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading tf_model.h5 requires h5py: pip install 'blipcap[tf]'") from None
    table = h5_table(dims)
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        layers = [_text(n) for n in f.attrs.get("layer_names", [])]
        if not layers:
            raise CheckpointError(f"{path}: not a Keras h5 weights file (no layer_names attribute)")
        for layer in layers:
            for full in (_text(n) for n in f[layer].attrs.get("weight_names", [])):
                # "<model scope>/vision_model/encoder/layers_._0/mlp/fc1/kernel:0": the scope is the
                # model's Keras name, which may carry a suffix (_1, ...), so it is dropped
                key = full.split("/", 1)[-1].removesuffix(":0")
                if key not in table:
                    raise CheckpointError(f"{path}: weight {full!r} has no place in a BLIP captioning model")
                hub, how = table[key]
                out[hub] = _convert(np.asarray(f[layer][full]), how)
    return out


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _convert(a: np.ndarray, how: str) -> np.ndarray:
    if how == "dense":  # (in, out) -> nn.Linear's (out, in)
        return np.ascontiguousarray(a.T)
    if how == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    return a
