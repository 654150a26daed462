"""pipeline(): the transformers-style callable over a Captioner, for code written against
`transformers.pipeline("image-to-text", ...)`."""

from __future__ import annotations

import os
from typing import Any

from .captioner import Captioner
from .hub import DEFAULT_MODEL


def pipeline(model: str | os.PathLike = DEFAULT_MODEL, task: str = "image-to-text", **load_kwargs: Any):
    """A transformers-style callable: pipe(image_or_list, **options) -> [{"generated_text": ...}]."""
    if task not in ("image-to-text", "image-text-to-text"):
        raise ValueError(f"blipcap.pipeline supports task 'image-to-text', not {task!r}")
    if "model" in load_kwargs:
        model = load_kwargs.pop("model")
    captioner = Captioner.load(model, **load_kwargs)

    def pipe(images: Any, prompt: str | None = None, generate_kwargs: dict | None = None,
             max_new_tokens: int | None = None, **kwargs: Any):
        overrides = {**(generate_kwargs or {}), **kwargs}
        if max_new_tokens is not None:
            overrides["max_new_tokens"] = max_new_tokens
        if prompt is not None:
            overrides["prompt"] = prompt
        single = not isinstance(images, (list, tuple))
        caps = captioner.caption(images, **overrides)
        rows = [[{"generated_text": c.text}] + [{"generated_text": a.text} for a in c.alternatives] for c in caps]
        return rows[0] if single else rows

    pipe.captioner = captioner  # type: ignore[attr-defined]
    return pipe
