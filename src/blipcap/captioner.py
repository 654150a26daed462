"""Captioner: load a checkpoint, caption images (pipeline.py wraps it the transformers way).

Owns the glue of the flow in DESIGN.md: images -> pixels -> backend.encode -> search -> text, in
batches, with per-item errors that never fail the rest of a batch.
"""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .backends.base import Backend
from .checkpoint import CheckpointError, dims_from_config, read_config
from .decoding import LogitRules, pad_prompt_rows, rows_per_image, search
from .hub import DEFAULT_MODEL, resolve
from .images import DEFAULT_MAX_PIXELS, Decoded, ImageError, Preprocessor, image_list, load_image
from .options import ARTEFACT_PIECES, CaptionOptions, check_against, checkpoint_defaults, merge
from .spec import ModelSpec
from .text import TextCodec

_DEFAULT_SPEC = ModelSpec()


@dataclass
class Caption:
    text: str  # the caption ("" when error is set)
    score: float | None = None  # sum of log-probabilities of its tokens
    token_ids: list[int] = field(default_factory=list)  # generated ids, prompt and [SEP] excluded
    error: Exception | None = None  # why this item could not be captioned (errors="return")
    alternatives: list["Caption"] = field(default_factory=list)  # the other num_return_sequences, best first
    truncated: bool = False  # stopped by max_new_tokens, not by [SEP] (OpenAI's finish_reason "length")

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(eq=False)
class Staged:
    """A batch for ``caption`` whose pixels are being made (and on CUDA copied) ahead: ``Captioner.stage``."""

    loaded: list  # each image as caption() takes it, or its ImageError
    pixels: Future  # -> the good images' pixels, as the backend's encode takes them (None: no good ones)

    def __len__(self) -> int:
        return len(self.loaded)


def _defaults_from_checkpoint(model_dir: Path, config: dict) -> CaptionOptions:
    path = model_dir / "generation_config.json"
    generation = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return checkpoint_defaults(config, generation)


def _load_backend(backend: str, path: Path, dims: Any, device: str, dtype: str, providers, threads,
                  cuda_graphs: bool | None = None, image_kv_dtype: str = "auto") -> Backend:
    from .backends.onnx import read_manifest

    manifest = read_manifest(path)
    if backend == "auto":
        backend = "onnx" if manifest else "torch"
    if image_kv_dtype != "auto" and backend != "torch":
        raise ValueError(f"image_kv_dtype={image_kv_dtype!r} is for the torch backend; the {backend} backend keeps "
                         "the image keys/values as its graphs give them")
    if backend == "onnx":
        if manifest is None:
            raise CheckpointError(
                f"{path} is not an ONNX export; make one with `blipcap export-onnx --model {path} --out DIR`"
            )
        from .backends.onnx import OnnxBackend

        return OnnxBackend.load(path, dims, providers=providers, threads=threads, manifest=manifest)
    if backend == "torch":
        if manifest is not None:
            raise CheckpointError(f"{path} is an ONNX export: load it with backend='onnx'")
        from .backends.torch import TorchBackend

        return TorchBackend.load(path, dims, device=device, dtype=dtype, cuda_graphs=cuda_graphs,
                                 image_kv_dtype=image_kv_dtype)
    if backend == "tf":
        from .backends.tf import TFBackend

        return TFBackend.load(path, dims, device=device, dtype=dtype)
    raise ValueError(f"unknown backend {backend!r}; choose torch, onnx, tf or auto")


class Captioner:
    """A loaded BLIP captioning model. `Captioner.load("large")("photo.jpg")` -> caption."""

    def __init__(self, backend: Backend, codec: TextCodec, preprocessor: Preprocessor, defaults: CaptionOptions,
                 model_id: str, revision: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 allow_urls: bool = False):
        self.backend, self.codec, self.preprocessor = backend, codec, preprocessor
        self.defaults = defaults
        self.model_id, self.revision = model_id, revision
        self.max_pixels, self.allow_urls = max_pixels, allow_urls
        self._stager: ThreadPoolExecutor | None = None  # makes staged batches' pixels (stage())

    @classmethod
    def load(cls, model: str | os.PathLike | ModelSpec = DEFAULT_MODEL, *, device: str = "auto",
             dtype: str = "auto", backend: str = "auto", revision: str | None = None,
             cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
             max_pixels: int | None = DEFAULT_MAX_PIXELS, allow_urls: bool = False,
             providers: Sequence[str] | None = None, threads: int | None = None,
             cuda_graphs: bool | None = None, image_kv_dtype: str = "auto") -> "Captioner":
        """Load a short name (large, base), a Hub repo id, a local checkpoint directory, or a
        directory made by `blipcap export-onnx`; or what a ModelSpec says (then without the
        keywords that a ModelSpec holds).

        backend: "torch", "onnx", or "auto" (ONNX Runtime for an export directory, else PyTorch).
        providers/threads: ONNX Runtime execution providers and intra-op threads (onnx backend).
        cuda_graphs: torch on CUDA, replay each decoder step as a captured CUDA graph (None: yes).
        image_kv_dtype: torch, the image keys/values' type ("auto": the model's, token-identical to
        transformers; "float16"/"bfloat16" halve their memory, not token-identical: BENCHMARKS.md).
        """
        given = dict(device=device, dtype=dtype, backend=backend, revision=revision, cache_dir=cache_dir,
                     local_files_only=local_files_only, providers=providers, threads=threads,
                     cuda_graphs=cuda_graphs, image_kv_dtype=image_kv_dtype)
        if isinstance(model, ModelSpec):
            clash = [k for k, v in given.items() if v != getattr(_DEFAULT_SPEC, k)]
            if clash:
                raise TypeError(f"Captioner.load(ModelSpec, ...): put {', '.join(clash)} in the ModelSpec")
            spec = model
        else:
            spec = ModelSpec(model, **given)
        resolved = resolve(spec.model, revision=spec.revision, cache_dir=spec.cache_dir,
                           local_files_only=spec.local_files_only)
        config = read_config(resolved.path)
        dims = dims_from_config(config)
        engine = _load_backend(spec.backend, resolved.path, dims, spec.device, spec.dtype, spec.providers,
                               spec.threads, spec.cuda_graphs, spec.image_kv_dtype)
        codec = TextCodec.from_dir(resolved.path, dims.bos_id, dims.eos_id, dims.pad_id)
        pre_path = resolved.path / "preprocessor_config.json"
        pre = Preprocessor.from_file(pre_path) if pre_path.is_file() else Preprocessor.from_config({})
        defaults = _defaults_from_checkpoint(resolved.path, config)
        return cls(engine, codec, pre, defaults, resolved.model_id, resolved.revision, max_pixels, allow_urls)

    # --- public calls ------------------------------------------------------------------------------

    def __call__(self, image: Any, **overrides: Any) -> str:
        return self.caption([image], errors="raise", **overrides)[0].text

    def caption(self, images: Any, options: CaptionOptions | None = None, *, errors: str = "raise",
                batch_size: int | str = 8, **overrides: Any) -> list[Caption]:
        """Caption one image or a list; one Caption per image, in order.

        batch_size: images per model call, or "auto": the most that fit (auto_batch_size).

        errors="raise" raises the first bad image's ImageError (after checking them all);
        errors="return" gives that image a Caption with `.error` set and captions the rest.
        `prompt=` may be one string for all images or a list with one (or None) per image.
        """
        staged = images if isinstance(images, Staged) else None
        items = staged.loaded if staged is not None else image_list(images)
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        _check_batch_size(batch_size)
        prompts, opts = self._options(options, overrides, len(items))
        batch_size = self._batch_size(batch_size, opts)
        loaded = items if staged is not None else [self._prepare_image(item) for item in items]
        if errors == "raise":
            for item in loaded:
                if isinstance(item, ImageError):
                    raise item
        if staged is not None and len(loaded) <= batch_size:
            return self._caption_batch(loaded, prompts, opts, staged.pixels)
        out: list[Caption] = []
        # torch on CUDA: batch N+1's pixels are made and copied on the stager thread during batch N
        ahead = self.overlaps_input and len(items) > batch_size
        upcoming = self._stage_loaded(loaded[:batch_size]) if ahead else None
        for start in range(0, len(items), batch_size):
            pixels, end = upcoming, start + batch_size
            if ahead and end < len(items):
                upcoming = self._stage_loaded(loaded[end : end + batch_size])
            out.extend(self._caption_batch(loaded[start:end], prompts[start:end], opts, pixels))
        return out

    @property
    def overlaps_input(self) -> bool:
        """Whether a batch staged ahead (``stage``) is prepared while the model runs: torch on CUDA."""
        return bool(getattr(self.backend, "async_input", False))

    def stage(self, images: Any) -> Staged:
        """Start making one batch's pixels, and on CUDA copying them to the device, on a helper
        thread (at once, on this thread, where that would not overlap the model); then
        ``caption(staged, ...)`` captions them as one batch. Stage batch N+1 before captioning batch
        N and its preparation overlaps the model's work on N (the folder job does this on CUDA)."""
        loaded = [self._prepare_image(item) for item in image_list(images)]
        return Staged(loaded, self._stage_loaded(loaded))

    def _stage_loaded(self, loaded: list) -> Future:
        good = [item for item in loaded if not isinstance(item, ImageError)]
        if good and self.overlaps_input:
            self._stager = self._stager or ThreadPoolExecutor(1, thread_name_prefix="blipcap-stage")
            return self._stager.submit(self._pixels, good)
        done: Future = Future()
        try:
            done.set_result(self._pixels(good) if good else None)
        except Exception as e:  # raised where the batch is captioned, as without staging
            done.set_exception(e)
        return done

    def caption_stream(self, images: Iterable[Any], options: CaptionOptions | None = None, *,
                       batch_size: int | str = 8, **overrides: Any) -> Iterator[Caption]:
        """Caption an iterable of any length, yielding in order; holds one batch at a time.

        Bad items come back as Captions with `.error` set (errors="return" semantics).
        """
        if isinstance(overrides.get("prompt"), (list, tuple)):
            raise ValueError("caption_stream takes one prompt string for all images")
        _check_batch_size(batch_size)
        _, opts = self._options(options, overrides, 0)
        batch_size = self._batch_size(batch_size, opts)
        it = iter(images)
        while batch := list(itertools.islice(it, batch_size)):
            yield from self._caption_batch([self._prepare_image(x) for x in batch], [opts.prompt] * len(batch), opts)

    def merged(self, options: CaptionOptions | None = None, overrides: dict | None = None) -> CaptionOptions:
        """The options caption() uses for these options and overrides (a prompt is one string here)."""
        return merge(self.defaults, options, overrides)

    def auto_batch_size(self, options: CaptionOptions | None = None, overrides: dict | None = None) -> int:
        """The largest batch that fits the device's free memory for these options (the backend's
        estimate: image keys/values, encoder activations, the rows' caches); 8 where it has none."""
        opts = self.merged(options, overrides)
        pick = getattr(self.backend, "auto_batch_size", None)
        if pick is None or not isinstance(opts.prompt, (str, type(None))):
            return 8
        length = len(self.codec.prompt_ids(opts.prompt)) + opts.max_new_tokens
        return pick(rows_per_image(opts), length)

    def check(self, options: CaptionOptions, *, max_beams: int | None = None,
              max_new_tokens: int | None = None) -> None:
        """OptionsError unless merged `options` fit this model (vocabulary, positions) and the caps."""
        check_against(options, self.backend.dims.text, prompt_len=len(self.codec.prompt_ids(options.prompt)),
                      max_beams=max_beams, max_new_tokens=max_new_tokens)
    def export_saved_model(self, directory: str | os.PathLike) -> Path:
        """A TensorFlow SavedModel that captions greedily with this checkpoint's defaults, for
        TensorFlow Serving (backend='tf' only; signatures and limits in backends/tf_export.py)."""
        from .backends.tf_export import export_saved_model

        return export_saved_model(self.backend, directory, self.defaults, self._rules(self.defaults), self.preprocessor)

    # --- internals ---------------------------------------------------------------------------------

    def _options(self, options: CaptionOptions | None, overrides: dict, n: int) -> tuple[list, CaptionOptions]:
        prompt = overrides.get("prompt")
        if isinstance(prompt, (list, tuple)):  # one prompt per image: the options carry none
            if len(prompt) != n:
                raise ValueError(f"got {len(prompt)} prompts for {n} images")
            opts = merge(self.defaults, options, {**overrides, "prompt": None})
            return list(prompt), opts
        opts = merge(self.defaults, options, overrides)
        return [opts.prompt] * n, opts

    def _batch_size(self, batch_size: int | str, opts: CaptionOptions) -> int:
        return self.auto_batch_size(opts) if batch_size == "auto" else batch_size

    def _prepare_image(self, item: Any) -> Any:
        if isinstance(item, Decoded):
            return item  # model-ready (images.Decoder): loading it again would copy and re-check it
        try:
            return load_image(item, max_pixels=self.max_pixels, allow_urls=self.allow_urls)
        except ImageError as exc:
            return exc

    def _rules(self, opts: CaptionOptions) -> LogitRules:
        codec = self.codec
        banned = set(opts.suppress_tokens)
        if opts.suppress_artefacts:
            banned.update(codec.piece_ids(ARTEFACT_PIECES))
        sequences = []
        for seq in codec.word_sequences(opts.bad_words):
            if len(seq) == 1:
                banned.add(seq[0])
            else:
                sequences.append(seq)
        check_against(opts, self.backend.dims.text)
        return LogitRules(
            eos_id=codec.eos_id, pad_id=codec.pad_id, vocab_size=self.backend.dims.text.vocab,
            min_new_tokens=opts.min_new_tokens,
            repetition_penalty=opts.repetition_penalty, no_repeat_ngram_size=opts.no_repeat_ngram_size,
            banned_ids=tuple(sorted(banned)), banned_sequences=tuple(sequences),
        )

    def _caption_batch(self, loaded: list, prompts: Sequence[str | None], opts: CaptionOptions,
                       staged: Future | None = None) -> list[Caption]:
        good = [i for i, item in enumerate(loaded) if not isinstance(item, ImageError)]
        out: list[Caption] = [Caption("", error=item) if isinstance(item, ImageError) else None for item in loaded]
        if not good:
            return out
        pixels = staged.result() if staged is not None else self._pixels([loaded[i] for i in good])
        prompt_ids = [self.codec.prompt_ids(prompts[i]) for i in good]
        group = rows_per_image(opts)
        ids, valid = pad_prompt_rows(prompt_ids, group, self.codec.pad_id)
        memory = self.backend.encode(pixels)
        session, logits = self.backend.start(memory, group, ids, valid, opts.max_new_tokens)
        ops = self.backend.ops
        results = search(session, logits, ops.asarray(ids), ops.asarray(valid, "bool"), opts, self._rules(opts))
        for i, found, pids in zip(good, results, prompt_ids):
            caps = [Caption(self._text(pids, r.tokens, opts.keep_prompt), r.score, r.tokens, truncated=not r.finished)
                    for r in found]
            caps[0].alternatives = caps[1:]
            out[i] = caps[0]
        return out

    def _pixels(self, images: list) -> Any:
        """A batch's pixels as the backend's encode takes them; torch on CUDA: written into pinned
        memory and on their way to the device (backends/feed.py)."""
        pre, stage = self.preprocessor, getattr(self.backend, "stage", None)
        if stage is None or not pre.do_resize:
            return pre.batch(images)
        # out: the pinned staging slot; None: made as before (and by preprocessors that take no out)
        return stage((len(images), 3, *pre.size),
                     lambda out: pre.batch(images) if out is None else pre.batch(images, out=out))

    def _text(self, prompt_ids: list[int], tokens: list[int], keep_prompt: bool) -> str:
        if len(prompt_ids) == 1:
            return self.codec.detokenize(tokens)
        full = self.codec.detokenize(prompt_ids + tokens)
        if keep_prompt:
            return full
        # decode together so word pieces join across the seam, then drop the prompt's text
        head = self.codec.detokenize(prompt_ids)
        return full[len(head):].strip() if full.startswith(head) else self.codec.detokenize(tokens)


def _check_batch_size(batch_size: Any) -> None:
    # 0 or -1 used to slice the list into nothing: images silently dropped (issue 13)
    if batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")
