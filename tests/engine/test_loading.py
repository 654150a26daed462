"""Checkpoint resolution and strict loading: local directories, the HF cache, offline errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch as st

from blipcap import Captioner, ModelNotAvailableError
from blipcap.checkpoint import CheckpointError, dims_from_config
from blipcap.hub import MODELS, resolve

# The real Salesforce/blip-image-captioning-large config.json, as published on the Hub.
LARGE_CONFIG = {
    "architectures": ["BlipForConditionalGeneration"], "image_text_hidden_size": 256, "model_type": "blip",
    "projection_dim": 512, "initializer_factor": 1.0, "initializer_range": 0.02, "logit_scale_init_value": 2.6592,
    "text_config": {"encoder_hidden_size": 1024, "initializer_factor": 1.0, "model_type": "blip_text_model",
                    "num_attention_heads": 12},
    "vision_config": {"dropout": 0.0, "hidden_size": 1024, "initializer_factor": 1.0, "initializer_range": 0.02,
                      "intermediate_size": 4096, "model_type": "blip_vision_model", "num_attention_heads": 16,
                      "num_channels": 3, "num_hidden_layers": 24},
}


def test_large_config_gets_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    ours = dims_from_config(LARGE_CONFIG)
    ref = transformers.BlipConfig(**{k: v for k, v in LARGE_CONFIG.items() if k != "architectures"})
    t, v = ref.text_config, ref.vision_config
    assert (ours.text.vocab, ours.text.hidden, ours.text.layers, ours.text.heads, ours.text.mlp) == (
        t.vocab_size, t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size)
    assert (ours.text.max_positions, ours.text.eps, ours.text.encoder_hidden) == (
        t.max_position_embeddings, t.layer_norm_eps, t.encoder_hidden_size)
    assert (ours.vision.hidden, ours.vision.layers, ours.vision.heads, ours.vision.image_size) == (
        v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.image_size)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (t.bos_token_id, t.sep_token_id, t.pad_token_id) == (
        30522, 102, 0)


def test_config_without_encoder_hidden_size_uses_the_vision_width():
    cfg = json.loads(json.dumps(LARGE_CONFIG))
    del cfg["text_config"]["encoder_hidden_size"]
    cfg["vision_config"]["hidden_size"] = 768  # as the base checkpoint
    assert dims_from_config(cfg).text.encoder_hidden == 768


def test_non_blip_config_is_refused():
    with pytest.raises(CheckpointError, match="model_type"):
        dims_from_config({"model_type": "clip"})


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(path: Path, edit) -> None:
    tensors = st.load_file(str(path / "model.safetensors"))
    edit(tensors)
    st.save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_unexpected_tensor_is_named(random_ckpt, tmp_path):
    import torch

    path = _copy(random_ckpt, tmp_path / "c")
    _edit_weights(path, lambda t: t.__setitem__("text_decoder.bert.pooler.dense.weight", torch.zeros(2, 2)))
    with pytest.raises(CheckpointError, match="text_decoder.bert.pooler.dense.weight"):
        Captioner.load(path, device="cpu")


def test_missing_tensor_is_named(random_ckpt, tmp_path):
    path = _copy(random_ckpt, tmp_path / "c")
    _edit_weights(path, lambda t: t.pop("vision_model.encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match="vision_model.encoder.layers.1.mlp.fc2.bias"):
        Captioner.load(path, device="cpu")


def test_wrong_shape_is_named(random_ckpt, tmp_path):
    path = _copy(random_ckpt, tmp_path / "c")
    key = "text_decoder.bert.encoder.layer.0.attention.self.key.weight"
    _edit_weights(path, lambda t: t.__setitem__(key, t[key][:, :10].contiguous()))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        Captioner.load(path, device="cpu")


def test_config_that_disagrees_with_the_weights_is_refused(random_ckpt, tmp_path):
    path = _copy(random_ckpt, tmp_path / "c")
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"]["num_hidden_layers"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unexpected tensor 'text_decoder.bert.encoder.layer.1"):
        Captioner.load(path, device="cpu")


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_incomplete_directory_is_a_clear_error(random_ckpt, tmp_path, missing):
    path = _copy(random_ckpt, tmp_path / "c")
    (path / missing).unlink()
    if missing == "tokenizer.json":
        (path / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match=missing.split(".")[0]):
        Captioner.load(path, device="cpu")


def _fake_hub_cache(cache: Path, repo_id: str, src: Path, files: list[str], commit: str = "a" * 40) -> Path:
    """The huggingface_hub cache layout, as a download of `files` would have left it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in files:
        shutil.copy(src / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


NEEDED = ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"]


def test_cached_short_name_loads_offline(random_ckpt, tmp_path):
    snap = _fake_hub_cache(tmp_path, MODELS["base"], random_ckpt, NEEDED)
    resolved = resolve("base", cache_dir=tmp_path, local_files_only=True)
    assert resolved.path == snap and resolved.model_id == MODELS["base"] and resolved.revision == "a" * 40
    cap = Captioner.load("base", cache_dir=tmp_path, local_files_only=True, device="cpu")
    assert cap.model_id == "Salesforce/blip-image-captioning-base"


def test_cached_pytorch_bin_is_used_when_there_is_no_safetensors(tmp_path):
    from tests.helpers.checkpoints import build_random_checkpoint

    src = build_random_checkpoint(tmp_path / "src", safetensors=False)
    files = ["config.json", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json", "preprocessor_config.json"]
    _fake_hub_cache(tmp_path / "cache", "someone/blip-finetune", src, files)
    cap = Captioner.load("someone/blip-finetune", cache_dir=tmp_path / "cache", local_files_only=True, device="cpu")
    assert cap.caption([b"\x89PNG"], errors="return")[0].error is not None  # loaded; bad bytes refused per item


def test_pinned_revision_that_is_not_cached_is_not_available(random_ckpt, tmp_path):
    _fake_hub_cache(tmp_path, MODELS["base"], random_ckpt, NEEDED)
    with pytest.raises(ModelNotAvailableError, match="revision v2"):
        resolve("base", revision="v2", cache_dir=tmp_path, local_files_only=True)


def test_uncached_model_offline_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotAvailableError) as info:
        resolve("large", cache_dir=tmp_path, local_files_only=True)
    message = str(info.value)
    assert "Salesforce/blip-image-captioning-large" in message
    assert "local checkpoint directory" in message and "download" in message


def test_nonsense_model_name_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="neither a local directory"):
        resolve(str(tmp_path / "no-such-dir"))


def test_loading_does_not_import_torch_dynamo(tiny_fixture):
    """Building the model must not trigger torch._dynamo's import (1.3 s of a 1.8 s BLIP-large load
    when nn.Embedding ran its random init on the meta device); a load-time check without timing."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from blipcap import Captioner\n"
        f"Captioner.load({str(tiny_fixture)!r}, backend='torch', device='cpu')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
