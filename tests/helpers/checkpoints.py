"""Random-initialised BLIP checkpoints built with transformers: a construction independent of
blipcap's own model (whose parity the tests then check), with knobs the tests need (a separate LM
head, the older pytorch_model.bin layout, captions that end early). Benchmarks build with it too.
"""

from __future__ import annotations

from pathlib import Path

from blipcap.random_checkpoint import SHAPES, bert_vocab, write_bert_tokenizer, write_preprocessor


def build_random_checkpoint(path: Path, *, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                            head_scale: float = 40.0, eos_boost: float = 0.0, safetensors: bool = True,
                            tie: bool = True) -> Path:
    """A random-initialised BlipForConditionalGeneration saved in the Hub layout.

    head_scale multiplies the (tied) word embeddings so the next-token distributions are peaked and
    equal argmaxes are a meaningful check; eos_boost raises [SEP]'s bias so that some captions end.
    """
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(seed)
    text_cfg = dict(vocab_size=30524, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, bos_token_id=30522,
                    sep_token_id=102, pad_token_id=0, eos_token_id=2, tie_word_embeddings=tie)
    text_cfg.update(text or {})
    vision_cfg = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
    vision_cfg.update(vision or {})
    config = BlipConfig(text_config=text_cfg, vision_config=vision_cfg, tie_word_embeddings=tie)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        emb = model.text_decoder.bert.embeddings.word_embeddings.weight
        emb.mul_(head_scale)
        if not tie:  # an LM head of its own, unlike the input embeddings
            model.text_decoder.cls.predictions.decoder.weight.copy_(emb.roll(1, dims=1))
        model.text_decoder.cls.predictions.bias[102] += eos_boost
        # BlipVisionConfig's initializer_range is 1e-10, which makes every image look the same:
        # give the encoder real weights so the image steers the caption
        for name, param in model.vision_model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0, 0.05 if "patch" in name else 0.3 / param.shape[-1] ** 0.5)
        # let the image steer the caption: sharper cross-attention (scaled so that attention logits
        # keep the same spread at any width, which keeps wide models well-conditioned) and louder values
        sharpen = 4 * (64 / text_cfg["hidden_size"]) ** 0.5
        for layer in model.text_decoder.bert.encoder.layer:
            cross = layer.crossattention.self
            cross.query.weight.mul_(sharpen), cross.key.weight.mul_(sharpen), cross.value.weight.mul_(20)
    path.mkdir(parents=True, exist_ok=True)
    if safetensors:
        model.save_pretrained(path)
    else:  # the older Hub layout: every tensor, tied copies and the aliased decoder bias included
        config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    write_bert_tokenizer(path, bert_vocab())
    write_preprocessor(path, vision_cfg["image_size"])
    return path


def shape_config(shape: str) -> dict:
    """The ``text``/``vision`` overrides of build_random_checkpoint for a named shape (large, base, tiny)."""
    return {"text": dict(SHAPES[shape]["text"]), "vision": dict(SHAPES[shape]["vision"])}
