"""Make tests/fixtures/tiny-tf-h5: a tiny BLIP saved by transformers 4.x's TensorFlow classes as
`tf_model.h5`, and its PyTorch twin, so the tests prove blipcap reads the h5 layout that
TFBlipForConditionalGeneration really writes (not one we imagined).

transformers 5 dropped TensorFlow, so this runs in an environment of its own (not committed):

    python3 -m venv .venv-tfh5
    .venv-tfh5/bin/pip install 'tensorflow-cpu==2.15.1' 'transformers==4.46.3' torch==2.13.0 h5py 'numpy<2'
    .venv-tfh5/bin/python tools/make_tf_h5_fixture.py       # --out tests/fixtures/tiny-tf-h5

It builds a random BlipForConditionalGeneration in PyTorch (peaked next-token distributions and an
encoder that steers the caption, as tests/conftest.py does, so equal captions mean something),
saves it as `pt/` (model.safetensors), then lets transformers convert it to TF
(`TFBlipForConditionalGeneration.from_pretrained(pt, from_pt=True)`) and save `tf/tf_model.h5`.
Both directories carry the same config, tokenizer and preprocessor files. As a check of the
conversion itself, TF's and PyTorch's greedy `generate` must agree on a few images before anything
is written. Deterministic: the same seed gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

# vocabulary of the trained fixture (36 ids: BERT specials, 30 words, [DEC]=35 ... see its README)
VOCAB_FROM = ROOT / "tests" / "fixtures" / "tiny-blip"


def config_dict() -> dict:
    # as small as a BLIP gets while keeping every kind of tensor: tens of KB per weights file
    text = dict(vocab_size=36, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=35, sep_token_id=3, pad_token_id=0, eos_token_id=3)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8,
                  # BlipVisionConfig has no num_channels, but transformers 4.46's TF base class reads it
                  # to build its input signature (and raises without it); PyTorch ignores the extra key
                  num_channels=3)
    return dict(text_config=text, vision_config=vision)


def build_torch_model(seed: int):
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(seed)
    cfg = config_dict()
    model = BlipForConditionalGeneration(BlipConfig(**cfg)).eval()
    with torch.no_grad():
        # peaked next-token distributions, an encoder with real weights, sharp cross-attention:
        # the caption then depends on the image, so equal captions are a meaningful check
        emb = model.text_decoder.bert.embeddings.word_embeddings.weight
        head = model.text_decoder.cls.predictions.decoder.weight
        emb.mul_(40.0)
        if head.data_ptr() != emb.data_ptr():  # transformers 4.46 does not tie them here: sharpen both
            head.mul_(40.0)
        for name, param in model.vision_model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0, 0.05 if "patch" in name else 0.3 / param.shape[-1] ** 0.5)
        for layer in model.text_decoder.bert.encoder.layer:
            cross = layer.crossattention.self
            cross.query.weight.mul_(8), cross.key.weight.mul_(8), cross.value.weight.mul_(20)
            # at width 16 the image's share of the residual stream is otherwise too small to change
            # the caption: 6 colour fields got 1 distinct caption at x1, 5 at x20
            layer.crossattention.output.dense.weight.mul_(20)
    return model


def copy_side_files(dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(VOCAB_FROM / name, dst / name)
    pre = json.loads((VOCAB_FROM / "preprocessor_config.json").read_text())
    pre["size"] = {"height": config_dict()["vision_config"]["image_size"],
                   "width": config_dict()["vision_config"]["image_size"]}
    (dst / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tiny-tf-h5")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import tensorflow as tf
    import torch
    import transformers
    from transformers import TFBlipForConditionalGeneration

    pt_dir, tf_dir = args.out / "pt", args.out / "tf"
    for d in (pt_dir, tf_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    model = build_torch_model(args.seed)
    model.save_pretrained(pt_dir, safe_serialization=True)
    tf_model = TFBlipForConditionalGeneration.from_pretrained(pt_dir, from_pt=True)
    tf_model.save_pretrained(tf_dir, safe_serialization=False)  # tf_model.h5, as the Hub ships it
    for d in (pt_dir, tf_dir):
        copy_side_files(d)
    if (tf_dir / "model.safetensors").exists():
        raise SystemExit("expected tf_model.h5 only in the TF directory")

    # the conversion itself must hold: both frameworks' greedy generate give the same ids
    rng = np.random.default_rng(1)
    pix = rng.normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        pt_ids = model.generate(pixel_values=torch.from_numpy(pix), max_new_tokens=10).numpy()
    tf_back = TFBlipForConditionalGeneration.from_pretrained(tf_dir)
    tf_ids = tf_back.generate(pixel_values=tf.constant(pix), max_new_tokens=10).numpy()
    if pt_ids.shape != tf_ids.shape or not (pt_ids == tf_ids).all():
        raise SystemExit(f"TF and PyTorch generate disagree:\n{pt_ids}\n{tf_ids}")
    (args.out / "MADE_WITH.json").write_text(json.dumps({
        "tool": "tools/make_tf_h5_fixture.py", "seed": args.seed, "transformers": transformers.__version__,
        "tensorflow": tf.__version__, "torch": torch.__version__.split("+")[0],
        "greedy_ids_pt_equal_tf": pt_ids.tolist(),
    }, indent=1) + "\n")
    print(f"wrote {args.out}; greedy ids (PyTorch == TF):\n{pt_ids}")


if __name__ == "__main__":
    main()
