"""CaptionOptions, and the one path every entry point takes to them.

Untyped options (JSON, form fields, a CLI namespace, Python keyword arguments) become a
CaptionOptions through `parse_overrides`/`CaptionOptions.from_mapping`, which read the types from
the dataclass's own annotations (there is no second type table). `merge` lays options over a
checkpoint's defaults (`checkpoint_defaults`), and `check_against` checks them against a loaded
model and a server's caps. Every refusal is an `OptionsError` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping

SEED_LIMIT = 2**63  # seeds are int64 for torch and numpy alike
SMALLEST = 1e-6  # temperature, repetition_penalty, top_p below this are 0 in float32 arithmetic


class OptionsError(ValueError):
    """Options that cannot be used; `.field` names the option (None when no single one is at fault)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnknownOptionError(OptionsError, TypeError):
    """An option name CaptionOptions does not have (a TypeError too, as an unexpected keyword is)."""


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond float range
        return False


@dataclass(frozen=True)
class CaptionOptions:
    # search: greedy when num_beams == 1 and do_sample is False
    num_beams: int = 1
    do_sample: bool = False
    num_return_sequences: int = 1  # captions per image, best first (<= num_beams for beam search)

    # length: new tokens after [DEC] and the prompt, counting the closing [SEP]
    max_new_tokens: int | None = None  # None: the checkpoint's max_length - 1 (19 for BLIP checkpoints)
    min_new_tokens: int = 0

    # beam search
    length_penalty: float = 1.0  # score = sum log-prob / length ** length_penalty
    early_stopping: bool | str = False  # True, False (transformers' heuristic) or "never"

    # sampling (do_sample=True)
    temperature: float = 1.0
    top_k: int = 50  # 0 disables
    top_p: float = 1.0
    seed: int | None = None  # same seed, same captions

    # logit rules
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    suppress_tokens: tuple[int, ...] = ()  # token ids never generated
    bad_words: tuple[str, ...] = ()  # words (or phrases) never generated
    suppress_artefacts: bool = True  # BLIP-large's "arafed"/"araffe" family, see ARTEFACT_PIECES

    # conditional captioning
    prompt: str | None = None  # text the caption continues, e.g. "a photography of"
    keep_prompt: bool = False  # return the prompt as part of the caption

    def __post_init__(self) -> None:
        # tuples keep the dataclass hashable when callers pass lists
        object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))
        bad = (self.bad_words,) if isinstance(self.bad_words, str) else self.bad_words
        object.__setattr__(self, "bad_words", tuple(bad))
        self._verify()

    def _verify(self) -> None:
        def refuse(field: str, message: str) -> None:
            raise OptionsError(message, field)

        if self.num_beams < 1:
            refuse("num_beams", f"num_beams must be >= 1, got {self.num_beams}")
        if self.num_return_sequences < 1:
            refuse("num_return_sequences", f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.do_sample and self.num_beams > 1:
            refuse("do_sample", "beam sampling is not supported: use do_sample=True with num_beams=1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            refuse("num_return_sequences",
                   f"num_return_sequences={self.num_return_sequences} cannot exceed num_beams={self.num_beams}")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            refuse("num_return_sequences", "greedy search returns one caption: use num_beams > 1 or do_sample=True")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            refuse("max_new_tokens", f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            refuse("min_new_tokens", f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            refuse("min_new_tokens", "min_new_tokens cannot exceed max_new_tokens")
        # NaN compares false with everything, and inf or a denormal turns the logits into NaN:
        # each float is checked to be finite before its range
        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            if not _finite(getattr(self, name)):
                refuse(name, f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature <= 0:
            refuse("temperature", f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            refuse("top_k", f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            refuse("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            refuse("repetition_penalty", f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            if getattr(self, name) < SMALLEST:
                refuse(name, f"{name} must be at least {SMALLEST:g}, got {getattr(self, name)}")
        if self.no_repeat_ngram_size < 0:
            refuse("no_repeat_ngram_size", f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.early_stopping not in (True, False, "never"):
            refuse("early_stopping", f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            refuse("seed", f"seed must be in [0, 2**63), got {self.seed}")

    def replace(self, **overrides: Any) -> "CaptionOptions":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UnknownOptionError(f"unknown caption option(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CaptionOptions":
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
        return base.replace(**overrides)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, base: "CaptionOptions | None" = None) -> "CaptionOptions":
        """Untyped options over `base` (default: CaptionOptions()); OptionsError unless valid."""
        return _parse(raw, base)[1]


PRESETS = {
    # the checkpoint's own defaults for BLIP: greedy, up to 19 new tokens
    "default": CaptionOptions(),
    # the BLIP paper's captioning setting: beam search with 3 beams, max 20, min 5
    "quality": CaptionOptions(num_beams=3, max_new_tokens=20, min_new_tokens=5),
}

# BLIP-large was trained on web alt text full of the non-word "arafed" ("araffe", "arafe", ...),
# which it emits as the word piece "ara" followed by "##fed", "##ffe", ... Suppressing the leading
# piece removes the whole family; real words that start with this piece are very rare in captions.
ARTEFACT_PIECES = ("ara",)

_FIELDS = {f.name: f for f in dataclasses.fields(CaptionOptions)}
_TYPES = typing.get_type_hints(CaptionOptions)


# --- untyped -> typed ------------------------------------------------------------------------------

def parse_overrides(raw: Mapping[str, Any], *, base: CaptionOptions | None = None) -> dict[str, Any]:
    """Untyped options -> the same names with typed values, checked by name, type and (over
    `base`, default CaptionOptions()) by value. For callers that merge over a checkpoint later."""
    return _parse(raw, base)[0]


def _parse(raw: Mapping[str, Any], base: CaptionOptions | None) -> tuple[dict[str, Any], CaptionOptions]:
    if not isinstance(raw, Mapping):
        raise OptionsError("options must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise UnknownOptionError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}",
                                 unknown[0])
    typed = {}
    for name, value in raw.items():
        ok, converted = _convert(_TYPES[name], value)
        if not ok:
            raise OptionsError(f"option {name} must be {_describe(_TYPES[name])}, got {_shown(value)}", name)
        typed[name] = converted
    try:
        return typed, (base or CaptionOptions()).replace(**typed)
    except UnknownOptionError:
        raise
    except OptionsError as e:  # impossible values or combinations, in the server's words
        raise OptionsError(f"invalid options: {e}", e.field) from e


def _convert(tp: Any, value: Any) -> tuple[bool, Any]:
    """(accepted, value as the field holds it) for one annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _convert(arg, value)
            if ok:
                return True, converted
        return False, None
    if origin is tuple:  # tuple[X, ...]: a JSON list, or (as the dataclass takes it) one bare string
        if args[0] is str and isinstance(value, str):
            return True, (value,)
        if not isinstance(value, (list, tuple)):
            return False, None
        items = [_convert(args[0], v) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if tp is type(None):
        return value is None, None
    if tp is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):  # a bool is an int to Python, never to an option
        return False, None
    if tp is int:  # a JSON 3.0 is not an integer here (the server has always refused it)
        return isinstance(value, numbers.Integral), int(value) if isinstance(value, numbers.Integral) else None
    if tp is float:  # an int stays an int: options digests of finished jobs must not change
        return isinstance(value, numbers.Real), value
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"CaptionOptions has a field of type {tp!r} that options.py cannot parse")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return ", or ".join(_describe(a) for a in args if a is not type(None))
    if origin is tuple:
        return {int: "a list of integers", str: "a list of strings"}.get(args[0], f"a list of {args[0].__name__}")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text[:50]


# --- merging over a checkpoint ---------------------------------------------------------------------

def checkpoint_defaults(config: Mapping[str, Any], generation: Mapping[str, Any] | None = None) -> CaptionOptions:
    """A checkpoint's generation settings (generation_config.json's, else config.json's) as options."""
    gen: dict[str, Any] = {}
    for source in (config.get("text_config") or {}, config, generation or {}):
        gen.update({k: v for k, v in source.items() if v is not None})
    opts: dict[str, Any] = {}
    for key in ("num_beams", "do_sample", "length_penalty", "early_stopping", "temperature", "top_k", "top_p",
                "repetition_penalty", "no_repeat_ngram_size", "num_return_sequences"):
        if key in gen:
            opts[key] = gen[key]
    # transformers counts max_length/min_length from [DEC]; we count new tokens after it
    opts["max_new_tokens"] = gen.get("max_new_tokens") or int(gen.get("max_length") or 20) - 1
    if gen.get("min_new_tokens"):
        opts["min_new_tokens"] = gen["min_new_tokens"]
    elif gen.get("min_length"):
        opts["min_new_tokens"] = max(0, int(gen["min_length"]) - 1)
    return CaptionOptions(**opts)


def merge(defaults: CaptionOptions, options: CaptionOptions | None = None,
          overrides: Mapping[str, Any] | None = None) -> CaptionOptions:
    """The options a caption uses: `options` (default: the checkpoint's `defaults`), its unset
    max_new_tokens taken from `defaults`, then `overrides` (untyped, parsed as parse_overrides does)."""
    base = options or defaults
    if base.max_new_tokens is None:
        base = base.replace(max_new_tokens=defaults.max_new_tokens)
    merged = _parse(overrides or {}, base)[1]
    if merged.max_new_tokens is None:  # an override of null: the checkpoint's budget
        merged = merged.replace(max_new_tokens=defaults.max_new_tokens)
    return merged


# --- against a loaded model ------------------------------------------------------------------------

def check_against(options: CaptionOptions, dims: Any, *, prompt_len: int | None = None,
                  max_beams: int | None = None, max_new_tokens: int | None = None) -> None:
    """OptionsError unless merged `options` fit the model (`dims`: its TextDims) and the caps:
    suppress_tokens within the vocabulary, the prompt (`prompt_len` ids, [DEC] included) plus
    max_new_tokens within the position table, beams and tokens within a server's limits."""
    if max_beams is not None and (options.num_beams > max_beams or options.num_return_sequences > max_beams):
        raise OptionsError(f"num_beams and num_return_sequences are limited to {max_beams} here", "num_beams")
    if max_new_tokens is not None and options.max_new_tokens > max_new_tokens:
        raise OptionsError(f"max_new_tokens is limited to {max_new_tokens} here", "max_new_tokens")
    if any(not 0 <= t < dims.vocab for t in options.suppress_tokens):
        raise OptionsError(f"suppress_tokens must be ids in [0, {dims.vocab})", "suppress_tokens")
    if prompt_len is not None:
        used = prompt_len + options.max_new_tokens
        if used > dims.max_positions:
            raise OptionsError(f"prompt and max_new_tokens need {used} positions; the model has "
                               f"{dims.max_positions}", "max_new_tokens")
