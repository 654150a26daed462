"""Checkpoint files -> frozen model dimensions and our parameter tensors.

Owns: reading config.json (with the defaults transformers would fill in), the rename table from the
Hub's parameter names to ours, and strict loading: every checkpoint tensor must land on exactly one
of our parameters with the right shape, and every parameter must be filled, else the error names the
key. Weights are memory-mapped from safetensors; pytorch_model.bin is read with weights_only=True.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing file, bad config, mismatched tensor)."""


@dataclass(frozen=True)
class VisionDims:
    hidden: int  # width of the ViT residual stream
    layers: int  # number of transformer blocks
    heads: int  # attention heads per block
    mlp: int  # hidden width of the MLP
    image_size: int  # square input side the position embeddings were trained for
    patch_size: int  # side of one patch
    eps: float  # LayerNorm epsilon

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextDims:
    vocab: int  # LM head rows, including [DEC] and [ENC]
    hidden: int  # width of the BERT residual stream
    layers: int  # decoder blocks (self-attn, cross-attn, FFN)
    heads: int  # attention heads (self and cross)
    mlp: int  # FFN hidden width
    max_positions: int  # learned absolute position embeddings
    encoder_hidden: int  # width of the image memory the cross-attention reads
    eps: float  # LayerNorm epsilon

    def check_length(self, prompt_len: int, max_new: int) -> int:
        """The cache length a decode needs; ValueError when it exceeds the position table."""
        if prompt_len + max_new > self.max_positions:
            raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new}) exceeds the model's "
                             f"{self.max_positions} positions")
        return prompt_len + max_new


@dataclass(frozen=True)
class ModelDims:
    vision: VisionDims
    text: TextDims
    bos_id: int  # [DEC]: starts every caption
    eos_id: int  # [SEP]: ends a caption (transformers passes sep_token_id as eos)
    pad_id: int  # [PAD]
    tie_word_embeddings: bool  # LM head shares the word embedding matrix when the checkpoint omits it


# BlipTextConfig / BlipVisionConfig defaults, applied to fields a config.json leaves out
# (the large checkpoint's text_config names only encoder_hidden_size and num_attention_heads).
_TEXT_DEFAULTS = dict(
    vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=8, max_position_embeddings=512, layer_norm_eps=1e-12,
    bos_token_id=30522, sep_token_id=102, pad_token_id=0, hidden_act="gelu",
)
_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    image_size=384, patch_size=16, layer_norm_eps=1e-5, hidden_act="gelu",
)


def read_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{model_dir}: no config.json (not a BLIP checkpoint directory)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read config: {exc}") from exc


def dims_from_config(config: dict[str, Any]) -> ModelDims:
    """Frozen dimensions from a BlipForConditionalGeneration config.json dict."""
    model_type = config.get("model_type")
    if model_type not in (None, "blip"):
        raise CheckpointError(f"config.json has model_type {model_type!r}; blipcap loads BLIP ('blip') checkpoints")
    text = {**_TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vision = {**_VISION_DEFAULTS, **(config.get("vision_config") or {})}
    for name, cfg in (("text_config", text), ("vision_config", vision)):
        if cfg["hidden_act"] != "gelu":
            raise CheckpointError(f"{name}.hidden_act={cfg['hidden_act']!r} is not supported (BLIP uses 'gelu')")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise CheckpointError(f"{name}: hidden_size is not a multiple of num_attention_heads")
    image_size, patch_size = vision["image_size"], vision["patch_size"]
    if isinstance(image_size, (list, tuple)) or isinstance(patch_size, (list, tuple)):
        raise CheckpointError("non-square image_size/patch_size is not supported")
    v = VisionDims(
        hidden=vision["hidden_size"], layers=vision["num_hidden_layers"], heads=vision["num_attention_heads"],
        mlp=vision["intermediate_size"], image_size=image_size, patch_size=patch_size,
        eps=vision["layer_norm_eps"],
    )
    t = TextDims(
        vocab=text["vocab_size"], hidden=text["hidden_size"], layers=text["num_hidden_layers"],
        heads=text["num_attention_heads"], mlp=text["intermediate_size"],
        max_positions=text["max_position_embeddings"],
        # transformers' BlipConfig always sets this from the vision width; the base checkpoint omits it.
        encoder_hidden=v.hidden, eps=text["layer_norm_eps"],
    )
    # transformers 5 ties the LM head to the word embeddings unless both configs say otherwise
    tie = bool(config.get("tie_word_embeddings", True) or text.get("tie_word_embeddings", True))
    return ModelDims(
        vision=v, text=t, bos_id=text["bos_token_id"], eos_id=text["sep_token_id"],
        pad_id=text["pad_token_id"], tie_word_embeddings=tie,
    )


# --- the rename table ------------------------------------------------------------------------------
# Each of our parameters is one Hub tensor, or several concatenated along dim 0 (fused projections).

def rename_table(dims: ModelDims) -> dict[str, tuple[str, ...]]:
    """Our parameter name -> the Hub tensor names it is made of (concatenated on dim 0 when several)."""
    table: dict[str, tuple[str, ...]] = {}

    def linear(ours: str, *hub: str) -> None:
        table[f"{ours}.weight"] = tuple(f"{h}.weight" for h in hub)
        table[f"{ours}.bias"] = tuple(f"{h}.bias" for h in hub)

    ve = "vision_model.embeddings"
    table["vision.patch_embed.weight"] = (f"{ve}.patch_embedding.weight",)
    table["vision.patch_embed.bias"] = (f"{ve}.patch_embedding.bias",)
    table["vision.cls_token"] = (f"{ve}.class_embedding",)
    table["vision.pos_embed"] = (f"{ve}.position_embedding",)
    for i in range(dims.vision.layers):
        hub, ours = f"vision_model.encoder.layers.{i}", f"vision.blocks.{i}"
        linear(f"{ours}.ln1", f"{hub}.layer_norm1")
        linear(f"{ours}.qkv", f"{hub}.self_attn.qkv")
        linear(f"{ours}.proj", f"{hub}.self_attn.projection")
        linear(f"{ours}.ln2", f"{hub}.layer_norm2")
        linear(f"{ours}.fc1", f"{hub}.mlp.fc1")
        linear(f"{ours}.fc2", f"{hub}.mlp.fc2")
    linear("vision.ln_post", "vision_model.post_layernorm")

    bert = "text_decoder.bert"
    table["text.tok_embed.weight"] = (f"{bert}.embeddings.word_embeddings.weight",)
    table["text.pos_embed.weight"] = (f"{bert}.embeddings.position_embeddings.weight",)
    linear("text.ln_embed", f"{bert}.embeddings.LayerNorm")
    for i in range(dims.text.layers):
        hub, ours = f"{bert}.encoder.layer.{i}", f"text.blocks.{i}"
        sa, ca = f"{hub}.attention", f"{hub}.crossattention"
        linear(f"{ours}.self_qkv", f"{sa}.self.query", f"{sa}.self.key", f"{sa}.self.value")
        linear(f"{ours}.self_out", f"{sa}.output.dense")
        linear(f"{ours}.ln_self", f"{sa}.output.LayerNorm")
        linear(f"{ours}.cross_q", f"{ca}.self.query")
        linear(f"{ours}.cross_kv", f"{ca}.self.key", f"{ca}.self.value")
        linear(f"{ours}.cross_out", f"{ca}.output.dense")
        linear(f"{ours}.ln_cross", f"{ca}.output.LayerNorm")
        linear(f"{ours}.fc1", f"{hub}.intermediate.dense")
        linear(f"{ours}.fc2", f"{hub}.output.dense")
        linear(f"{ours}.ln_ffn", f"{hub}.output.LayerNorm")
    head = "text_decoder.cls.predictions"
    linear("text.head.dense", f"{head}.transform.dense")
    linear("text.head.ln", f"{head}.transform.LayerNorm")
    table["text.head.decoder.weight"] = (f"{head}.decoder.weight",)
    table["text.head.decoder.bias"] = (f"{head}.bias",)
    return table


# Tensors a checkpoint may carry that hold nothing we need: non-persistent buffers saved by old
# transformers versions, and the decoder bias, which transformers ties to cls.predictions.bias.
_IGNORABLE_SUFFIXES = ("position_ids",)
_ALIASES = {"text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias"}


def weights_file(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise CheckpointError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def _read_tensors(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))  # memory-mapped: pages are read when first touched
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read safetensors file: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read PyTorch weights: {exc}") from exc


def read_numpy_tensors(path: Path) -> dict[str, Any]:
    """A weights file as numpy arrays, for backends without torch: safetensors needs no torch
    (memory-mapped reads); pytorch_model.bin is a torch pickle, so it does."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read safetensors file: {exc}") from exc
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install 'blipcap[torch]'), "
                              "or give the model as model.safetensors") from None
    return {name: t.float().numpy() if t.dtype.is_floating_point else t.numpy()
            for name, t in _read_tensors(path).items()}


class MappedPages:
    """Drops the resident pages of a memory-mapped weights file behind tensors already copied.

    A mapped checkpoint costs no memory until its pages are touched, but touched pages stay resident
    while the mapping lives, which is as long as any tensor from the file does. A loader that turns
    weights into new tensors (fused, converted to another dtype, re-laid-out for oneDNN) calls
    `release(source)` once the copy exists, so peak memory stays near one copy of the weights.
    Only address ranges that /proc/self/maps shows as mappings of this very file are touched, and
    MADV_DONTNEED on an unmodified file mapping only unmaps pages: reading the tensor again would
    fault them back in from the page cache with the same bytes. A no-op off Linux.
    """

    _MADV_DONTNEED = 4

    def __init__(self, path: str | Path):
        self.ranges: list[tuple[int, int]] = []
        self._madvise = None
        target = str(Path(path).resolve())
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].strip() == target:
                        lo, hi = (int(x, 16) for x in fields[0].split("-"))
                        self.ranges.append((lo, hi))
            if self.ranges:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._madvise = libc.madvise
        except (OSError, AttributeError):
            self.ranges = []

    def release(self, tensor: Any) -> bool:
        if self._madvise is None:
            return False
        import mmap

        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return False
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, end // page * page  # whole pages inside the tensor only
        return hi > lo and self._madvise(lo, hi - lo, self._MADV_DONTNEED) == 0


def load_state_dict(model_dir: str | Path, dims: ModelDims, expected_shapes: dict[str, tuple[int, ...]],
                    convert: Callable[[Any], Any] | None = None) -> tuple[dict, MappedPages]:
    """Our parameter name -> tensor, strictly mapped from the checkpoint's tensors, and the file's
    MappedPages (for a caller that copies the weights further, e.g. packs them).

    `expected_shapes` is our model's parameter shapes; a checkpoint tensor that is unknown, a
    parameter that has no tensor, or a shape that differs raises CheckpointError naming the key.
    `convert` (to a device or dtype) is applied once every check has passed, one tensor at a time;
    a mapped source whose copy now exists has its pages dropped, as have the parts of fused tensors.
    """
    import torch

    path = weights_file(model_dir)
    hub = _read_tensors(path)
    pages = MappedPages(path)

    def cat(parts: list) -> Any:
        fused = torch.cat(parts, dim=0)
        for part in parts:
            pages.release(part)
        return fused

    state = map_tensors(hub, dims, expected_shapes, path, cat=cat, equal=torch.equal)
    if convert is not None:
        for name in list(state):  # one at a time, so each source can go before the next is copied
            source = state[name]
            state[name] = convert(source)
            if state[name].data_ptr() != source.data_ptr():
                pages.release(source)
    return state, pages


def map_tensors(hub: dict[str, Any], dims: ModelDims, expected_shapes: dict[str, tuple[int, ...]], path: Path,
                *, cat: Callable[[list], Any], equal: Callable[[Any, Any], bool]) -> dict[str, Any]:
    """The strict mapping of Hub-named tensors (torch or numpy) onto our parameter names.

    `hub` is consumed (aliases folded in place); `cat` fuses parts on dim 0, `equal` compares two
    tensors. Unknown tensors, missing ones and wrong shapes raise CheckpointError naming the key.
    """
    for alias, canonical in _ALIASES.items():
        if alias in hub:
            if canonical in hub and not equal(hub[alias], hub[canonical]):
                raise CheckpointError(f"{path}: {alias} differs from {canonical}, which it should be tied to")
            hub.setdefault(canonical, hub.pop(alias))
    table = rename_table(dims)
    lm_head = "text_decoder.cls.predictions.decoder.weight"
    if lm_head not in hub and dims.tie_word_embeddings:
        table["text.head.decoder.weight"] = ("text_decoder.bert.embeddings.word_embeddings.weight",)

    used: set[str] = set()
    state: dict[str, Any] = {}
    for ours, sources in table.items():
        missing = [s for s in sources if s not in hub]
        if missing:
            raise CheckpointError(f"{path}: missing tensor {missing[0]!r} (needed for {ours})")
        want = expected_shapes.get(ours)
        if want is None:
            raise CheckpointError(f"internal: rename table names unknown parameter {ours}")
        # a fused parameter stacks its parts on dim 0: each part is an equal slice of it
        part_shape = (want[0] // len(sources), *want[1:])
        for source in sources:
            if tuple(hub[source].shape) != part_shape:
                raise CheckpointError(
                    f"{path}: tensor {source!r} has shape {tuple(hub[source].shape)}, expected {part_shape}"
                )
        used.update(sources)
        parts = [hub[s] for s in sources]
        state[ours] = parts[0] if len(parts) == 1 else cat(parts)
    unknown = sorted(k for k in hub if k not in used and not k.endswith(_IGNORABLE_SUFFIXES))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise CheckpointError(f"{path}: unexpected tensor {unknown[0]!r}{more}; is this a BLIP captioning checkpoint?")
    not_filled = sorted(set(expected_shapes) - set(state))
    if not_filled:
        raise CheckpointError(f"internal: parameter {not_filled[0]} has no entry in the rename table")
    return state
