"""Tokenizer files -> prompt ids and caption text.

Owns: loading tokenizer.json (or vocab.txt + tokenizer_config.json) with the `tokenizers` library,
turning a prompt into decoder input ids ([DEC] followed by the prompt's word pieces, as
transformers' BLIP generate does after it swaps [CLS] for [DEC] and drops the closing [SEP]), and
turning generated ids back into a clean caption.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from .checkpoint import CheckpointError

_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")


def _from_vocab(model_dir: Path) -> Tokenizer:
    vocab_file = model_dir / "vocab.txt"
    cfg_file = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    vocab: dict[str, int] = {}
    for line in vocab_file.read_text(encoding="utf-8").splitlines():
        vocab.setdefault(line, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # BLIP's tokenizer adds [DEC] (and [ENC]) after the BERT vocabulary
    extra = [t.get("content") if isinstance(t, dict) else t for t in cfg.get("additional_special_tokens", [])]
    tok.add_special_tokens([t for t in (*_BERT_SPECIALS, *extra) if t])
    return tok


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    model_dir = Path(model_dir)
    try:
        if (model_dir / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        if (model_dir / "vocab.txt").is_file():
            return _from_vocab(model_dir)
    except Exception as exc:  # tokenizers raises plain Exceptions on malformed files
        raise CheckpointError(f"{model_dir}: cannot read tokenizer: {exc}") from exc
    raise CheckpointError(f"{model_dir}: no tokenizer.json or vocab.txt")


class TextCodec:
    """Prompt encoding and caption decoding for one checkpoint's vocabulary."""

    def __init__(self, tokenizer: Tokenizer, bos_id: int, eos_id: int, pad_id: int):
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id

    @classmethod
    def from_dir(cls, model_dir: str | Path, bos_id: int, eos_id: int, pad_id: int) -> "TextCodec":
        return cls(load_tokenizer(model_dir), bos_id, eos_id, pad_id)

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """[DEC] plus the prompt's pieces; an empty or missing prompt is just [DEC]."""
        if not prompt or not prompt.strip():
            return [self.bos_id]
        return [self.bos_id, *self.tokenizer.encode(prompt, add_special_tokens=False).ids]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def piece_ids(self, pieces: Iterable[str]) -> list[int]:
        """Ids of the word pieces that exist in this vocabulary (others are ignored)."""
        found = (self.tokenizer.token_to_id(p) for p in pieces)
        return [i for i in found if i is not None]

    def word_sequences(self, words: Iterable[str]) -> list[tuple[int, ...]]:
        """Each bad word or phrase as the id sequence the decoder would emit for it."""
        out = []
        for word in words:
            ids = tuple(self.tokenizer.encode(word, add_special_tokens=False).ids)
            if ids:
                out.append(ids)
        return out

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)
