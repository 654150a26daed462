"""A TF backend's model -> a TensorFlow SavedModel with greedy search in the graph.

Owns the serving graph, for TensorFlow Serving or any TF program, with no blipcap (or Python
search) at run time. Two signatures, both returning {"ids": (B, max_new_tokens) int64}, the
generated ids after the prompt with [SEP] kept where a caption ends and [PAD] after it:

- `serving_default(pixels)`: pixels (B, 3, S, S) float32, preprocessed as blipcap's Preprocessor
  (resize to S x S, rescale, normalise; S and the mean/std are in blipcap_saved_model.json);
- `with_prompt(pixels, prompt_ids)`: prompt_ids (B, P) int64, each row [DEC] followed by the
  prompt's ids, left-padded with [PAD] to the longest row (the rows blipcap itself decodes).

What is baked in at export: the checkpoint's max_new_tokens and min_new_tokens and the banned ids
(suppress_tokens, one-token bad words, BLIP-large's "ara" artefact piece). Beam search, sampling,
repetition penalty and n-gram blocking stay in Python (`Captioner.caption`); exporting options that
need them is refused rather than silently changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..decoding import CaptionOptions, LogitRules
from .tf import tensorflow

tf = tensorflow()  # a one-line error naming the extra where TensorFlow is missing

MANIFEST = "blipcap_saved_model.json"


def export_saved_model(backend: Any, directory: str | Path, opts: CaptionOptions, rules: LogitRules,
                       preprocessor: Any = None) -> Path:
    """Write the SavedModel of `backend` (a TFBackend) greedy-decoding with `opts`/`rules` to `directory`."""
    if getattr(backend, "name", None) != "tf":
        raise ValueError("export_saved_model needs the TensorFlow backend: Captioner.load(..., backend='tf')")
    unsupported = [name for name, on in (("num_beams > 1", opts.num_beams > 1), ("do_sample", opts.do_sample),
                                         ("repetition_penalty", rules.repetition_penalty != 1.0),
                                         ("no_repeat_ngram_size", rules.no_repeat_ngram_size > 0),
                                         ("multi-token bad_words", bool(rules.banned_sequences))) if on]
    if unsupported:
        raise ValueError(f"the SavedModel decodes greedily with banned ids only; these options stay in Python: "
                         f"{', '.join(unsupported)}")
    directory = Path(directory)
    module = Greedy(backend.model, opts.max_new_tokens, rules)
    tf.saved_model.save(module, str(directory), signatures={
        "serving_default": module.default, "with_prompt": module.with_prompt})
    dims = backend.dims
    manifest = {
        "format": "blipcap-tf-saved-model", "signatures": {
            "serving_default": {"pixels": "float32 (B, 3, S, S)"},
            "with_prompt": {"pixels": "float32 (B, 3, S, S)", "prompt_ids": "int64 (B, P), [DEC] first, left-padded with [PAD]"},
            "outputs": {"ids": "int64 (B, max_new_tokens): generated ids, [SEP] then [PAD] after a finished caption"}},
        "image_size": dims.vision.image_size, "max_new_tokens": opts.max_new_tokens,
        "min_new_tokens": rules.min_new_tokens, "banned_ids": list(rules.banned_ids),
        "bos_id": dims.bos_id, "eos_id": rules.eos_id, "pad_id": rules.pad_id,
    }
    if preprocessor is not None:
        manifest["preprocessor"] = {"size": list(preprocessor.size), "resample": preprocessor.resample,
                                    "rescale_factor": preprocessor.rescale_factor,
                                    "mean": list(preprocessor.mean), "std": list(preprocessor.std)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return directory


class Greedy(tf.Module):
    """The exported module: the model's variables and the two greedy signatures."""

    def __init__(self, model: Any, max_new: int, rules: LogitRules):
        super().__init__(name="blipcap_greedy")
        self.model = model
        d = model.dims
        self.max_new, self.min_new = int(max_new), int(rules.min_new_tokens)
        self.bos, self.eos, self.pad = int(d.bos_id), int(rules.eos_id), int(rules.pad_id)
        ban = np.zeros(d.text.vocab, np.float32)
        ban[list(rules.banned_ids)] = -np.inf
        eos = np.zeros(d.text.vocab, np.float32)
        eos[self.eos] = -np.inf
        self.ban, self.eos_ban = tf.constant(ban), tf.constant(eos)
        pixels = tf.TensorSpec([None, 3, d.vision.image_size, d.vision.image_size], tf.float32, name="pixels")
        prompt = tf.TensorSpec([None, None], tf.int64, name="prompt_ids")
        self.default = tf.function(self._default, input_signature=[pixels])
        self.with_prompt = tf.function(self._generate, input_signature=[pixels, prompt])

    def _default(self, pixels):
        return self._generate(pixels, tf.fill([tf.shape(pixels)[0], 1], tf.constant(self.bos, tf.int64)))

    def _generate(self, pixels, prompt_ids):
        d = self.model.dims.text
        hd = d.hidden // d.heads
        cross_k, cross_v = self.model.memory(pixels)
        rows, p = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
        valid = prompt_ids != self.pad
        n_pad = tf.reduce_sum(tf.cast(~valid, tf.int64), axis=1)
        positions = tf.maximum(tf.range(tf.cast(p, tf.int64))[None, :] - n_pad[:, None], 0)
        empty = tf.zeros([d.layers, rows, d.heads, 0, hd])
        logits, keys, values = self.model.decode(prompt_ids, positions, valid, tf.zeros([rows, 0], tf.bool),
                                                 empty, empty, cross_k, cross_v)

        def body(t, logits, keys, values, past_valid, next_pos, finished, out):
            # the Python search's greedy rules: banned ids, [SEP] banned before min_new_tokens
            scores = logits + self.ban + tf.where(t < self.min_new, self.eos_ban, tf.zeros_like(self.eos_ban))
            token = tf.where(finished, tf.constant(self.pad, tf.int64), tf.argmax(scores, axis=-1))
            out = tf.concat([out, token[:, None]], axis=1)
            finished = finished | (token == self.eos)
            # the cache grows by concatenation here: a graph for serving, not the hot Python path
            step = self.model.decode(token[:, None], next_pos[:, None], tf.ones([rows, 1], tf.bool),
                                     past_valid, keys, values, cross_k, cross_v)
            return (t + 1, step[0], tf.concat([keys, step[1]], axis=3), tf.concat([values, step[2]], axis=3),
                    tf.concat([past_valid, tf.ones([rows, 1], tf.bool)], axis=1), next_pos + 1, finished, out)

        def more(t, logits, keys, values, past_valid, next_pos, finished, out):
            return (t < self.max_new) & ~tf.reduce_all(finished)

        cache = tf.TensorShape([d.layers, None, d.heads, None, hd])
        state = (tf.constant(0), logits, keys, values, valid, tf.cast(p, tf.int64) - n_pad,
                 tf.zeros([rows], tf.bool), tf.zeros([rows, 0], tf.int64))
        invariants = (tf.TensorShape([]), tf.TensorShape([None, d.vocab]), cache, cache, tf.TensorShape([None, None]),
                      tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([None, None]))
        t, *_, ids = tf.while_loop(more, body, state, shape_invariants=invariants)
        # (B, steps), steps < max_new when every caption ended early: pad to a fixed width
        ids = tf.pad(ids, [[0, 0], [0, self.max_new - t]], constant_values=self.pad)
        return {"ids": tf.ensure_shape(ids, [None, self.max_new])}
