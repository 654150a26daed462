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


def build_random_retrieval_checkpoint(path: Path, *, seed: int = 0, text: dict | None = None,
                                      vision: dict | None = None, itm_spread: float = 2.0,
                                      safetensors: bool = True) -> Path:
    """A random-initialised BlipForImageTextRetrieval saved in the Hub layout (ITM head, ITC projections).

    The tokenizer and preprocessor files are build_random_checkpoint's (BERT's ids, [DEC]=30522 and
    [ENC]=30523, both in tokenizer.json and in tokenizer_config.json's additional_special_tokens). Use
    with ``**shape_config("tiny" | "base" | "large")``.

    transformers' initialisation gives degenerate outputs (the vision weights at 1e-10, the text
    encoder's at 0.02: every image, and every text, gets nearly the same first token), so the weights
    are conditioned to make parity checks compare something: every matrix of the vision model and of
    the text encoder at std 1/sqrt(fan_in), self-attention sharpened (queries and keys x3),
    cross-attention x2 with its output x0.3, and an ITM head orthogonal to the mean first-token state
    of a few random (image, text) pairs and scaled so that the logit difference there has std
    ``itm_spread``. Measured (seed 0) on 3 shape images and 3 photos against 6 short texts, for the
    tiny, base and large shapes: mean pairwise cosine of the image embeddings 0.47-0.65, of the text
    embeddings 0.47-0.50; ITM probabilities spread over (0, 1) (a few pairs of base below 0.001 and of
    large above 0.999), moving with the image (std over images 0.14-0.21) and with the text (0.11-0.29).
    """
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval

    torch.manual_seed(seed)
    text_cfg = dict(vocab_size=30524, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64, bos_token_id=30522,
                    sep_token_id=102, pad_token_id=0, eos_token_id=2)
    text_cfg.update(text or {})
    vision_cfg = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
    vision_cfg.update(vision or {})
    config = BlipConfig(text_config=text_cfg, vision_config=vision_cfg)
    model = BlipForImageTextRetrieval(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.vision_model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0, 0.05 if "patch" in name else 1 / param.shape[-1] ** 0.5, generator=gen)
        model.vision_model.embeddings.class_embedding.normal_(0, 0.5, generator=gen)
        model.vision_model.embeddings.position_embedding.normal_(0, 0.5, generator=gen)
        hv = vision_cfg["hidden_size"]
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.weight[: 2 * hv].mul_(3)  # queries and keys; values as they are
        for name, param in model.text_encoder.encoder.named_parameters():
            if param.ndim >= 2:
                param.normal_(0, 1 / param.shape[-1] ** 0.5, generator=gen)
        for layer in model.text_encoder.encoder.layer:
            for attn, sharpen in ((layer.attention.self, 3), (layer.crossattention.self, 2)):
                attn.query.weight.mul_(sharpen), attn.key.weight.mul_(sharpen)
            # a quieter image, so that in 12 layers it does not drown the text: ITM then moves with both
            layer.crossattention.output.dense.weight.mul_(0.3)
        # The ITM head: deep post-LN stacks give every input's first token a large shared component;
        # a head orthogonal to it sees what differs between inputs. Measured on noise and on smooth
        # images (closer to photos: the large shape's states differ between the two).
        size = vision_cfg["image_size"]
        pixels = torch.randn(8, 3, size, size, generator=gen)
        smooth = torch.nn.functional.interpolate(1.5 * torch.randn(8, 3, 4, 4, generator=gen), size=size,
                                                 mode="bilinear", align_corners=False)
        pixels = torch.cat([pixels, smooth])
        ids = torch.randint(1000, 30000, (16, 12), generator=gen)
        ids[:, 0], ids[:, -1] = 30523, 102  # [ENC] ... [SEP]
        image = model.vision_model(pixel_values=pixels).last_hidden_state
        states = model.text_encoder(input_ids=ids, encoder_hidden_states=image,
                                    encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long)
                                    ).last_hidden_state[:, 0]
        mean = states.mean(0)
        w = torch.randn(text_cfg["hidden_size"], generator=gen)
        w -= (w @ mean) / (mean @ mean) * mean
        w *= itm_spread / (states @ w).std()
        model.itm_head.weight.copy_(torch.stack([-w / 2, w / 2]))
        model.itm_head.bias.zero_()
    path.mkdir(parents=True, exist_ok=True)
    if safetensors:
        model.save_pretrained(path)
    else:  # the older Hub layout
        config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    write_bert_tokenizer(path, bert_vocab())
    write_preprocessor(path, vision_cfg["image_size"])
    return path
