"""Random-initialised BLIP checkpoints in the Hub layout, for benchmarks anyone can reproduce offline.

Owns the BLIP-large and -base shapes, a synthetic BERT-format tokenizer with the real special-token
ids ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, [DEC]=30522), the BLIP preprocessor
config, and `build_random_checkpoint`, which initialises blipcap's own model and saves it under the
Hub's tensor names (so transformers loads it too). The weights are conditioned like the test
suite's: peaked next-token distributions and an image that steers the caption, so token agreement
between engines measures numerics, not coin flips between equal logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

BLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
BLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Words tests use in prompts and bad words; "ara" + "##fed" is how BERT spells BLIP-large's "arafed".
WORDS = ["a", "an", "the", "of", "picture", "photography", "photo", "image", "dog", "cat", "on", "in",
         "beach", "with", "ara", "##fed", "##ffe", "red", "blue", "man", "woman", "sitting"]

_TEXT = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
             num_attention_heads=12, max_position_embeddings=512, bos_token_id=30522, sep_token_id=102,
             pad_token_id=0, eos_token_id=2, layer_norm_eps=1e-12, hidden_act="gelu", tie_word_embeddings=True,
             model_type="blip_text_model")
SHAPES = {
    "large": dict(text=_TEXT, vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          num_attention_heads=16, image_size=384, patch_size=16)),
    "base": dict(text=_TEXT, vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                         num_attention_heads=12, image_size=384, patch_size=16)),
    # for tests of this module and quick looks at the tooling
    "tiny": dict(text=dict(_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=64),
                 vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8)),
}


def bert_vocab(size: int = 30522) -> list[str]:
    """A BERT-uncased-shaped vocabulary: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += WORDS
    vocab += [f"w{i}" for i in range(size - len(vocab))]
    return vocab


def write_bert_tokenizer(path: Path, vocab: list[str]) -> None:
    """tokenizer.json (+ tokenizer_config.json and vocab.txt) in BLIP's format: BERT plus [DEC], [ENC]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512,
         "additional_special_tokens": ["[DEC]", "[ENC]"]}))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")


def write_preprocessor(path: Path, size: int) -> None:
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": BLIP_MEAN, "image_std": BLIP_STD, "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor", "resample": 3, "rescale_factor": 1 / 255,
        "size": {"height": size, "width": size},
    }))


def build_random_checkpoint(path: str | Path, shape: str = "large", seed: int = 0) -> Path:
    """A random BLIP of `shape` ("large", "base" or "tiny") saved to `path` in the Hub layout."""
    import torch
    from safetensors.torch import save_file

    from .backends.nn import BlipCaptioner
    from .checkpoint import dims_from_config, rename_table

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["BlipForConditionalGeneration"], "model_type": "blip",
              "text_config": dict(SHAPES[shape]["text"]),
              "vision_config": dict(SHAPES[shape]["vision"], model_type="blip_vision_model", layer_norm_eps=1e-5,
                                    hidden_act="gelu")}
    dims = dims_from_config(config)
    gen = torch.Generator().manual_seed(seed)
    model = BlipCaptioner(dims)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln" in name or name.endswith(("ln_post.weight", "ln_embed.weight")):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            elif name.startswith("vision."):  # weights that let the image matter
                std = 0.05 if "patch" in name else (0.5 if name.endswith(("cls_token", "pos_embed"))
                                                    else 0.3 / math.sqrt(param.shape[-1]))
                param.normal_(0, std, generator=gen)
            else:
                param.normal_(0, 0.02, generator=gen)
        model.text.tok_embed.weight.mul_(40.0)  # peaked next-token distributions (tied LM head)
        sharpen = 4 * (64 / dims.text.hidden) ** 0.5
        for block in model.text.blocks:  # sharper cross-attention, louder values: the image steers
            h = dims.text.hidden
            block.cross_q.weight.mul_(sharpen)
            block.cross_kv.weight[:h].mul_(sharpen)
            block.cross_kv.weight[h:].mul_(20.0)
    ours = dict(model.state_dict())
    hub = {}
    for name, sources in rename_table(dims).items():
        if name == "text.head.decoder.weight":
            continue  # tied: the checkpoint stores only the word embeddings
        for source, part in zip(sources, ours[name].chunk(len(sources), dim=0)):
            hub[source] = part.contiguous()
    save_file(hub, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_bert_tokenizer(path, bert_vocab())
    write_preprocessor(path, dims.vision.image_size)
    return path
