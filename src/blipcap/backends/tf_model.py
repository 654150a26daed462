"""The BLIP captioning model in TensorFlow 2, written for inference: nn.py's twin.

A ViT image encoder (pre-LN) and a BERT-style text decoder (post-LN) with causal self-attention,
cross-attention to the image and an LM head, as pure functions of the weights (no Keras layers).
Decoding state is explicit, as in the ONNX decoder graph: `decode` takes the whole preallocated
self-attention cache with a validity mask and returns the new tokens' keys/values for the caller to
write in; the image keys/values (`memory`) are computed once per image, and a decode batch's rows
are image-major (`group` rows per image: beams or samples), so cross-attention folds a group's
queries into one sequence over its image's keys/values, never copied per row.

Both entry points are tf.functions with fixed input signatures (unknown batch, sequence and cache
lengths), so each is traced once per model and the captioning loop never retraces.
"""

from __future__ import annotations

import numpy as np

from ..checkpoint import ModelDims
from .tf import tensorflow

tf = tensorflow()  # a one-line error naming the extra where TensorFlow is missing


def _to_tf_layout(name: str, a: np.ndarray) -> np.ndarray:
    """nn.py's (PyTorch) layout -> the layout the TF functions multiply with, once at load."""
    if name == "vision.patch_embed.weight":  # (D, 3, p, p) -> (3*p*p, D): patches become one matmul
        return np.ascontiguousarray(a.reshape(a.shape[0], -1).T)
    if name.endswith(".weight") and a.ndim == 2 and "embed" not in name:  # nn.Linear (out, in) -> (in, out)
        return np.ascontiguousarray(a.T)
    return a


def _heads(x: tf.Tensor, heads: int, hidden: int) -> tf.Tensor:
    b, t = tf.shape(x)[0], tf.shape(x)[1]
    return tf.transpose(tf.reshape(x, [b, t, heads, hidden // heads]), [0, 2, 1, 3])  # (B, heads, T, head_dim)


def _merge(x: tf.Tensor, hidden: int) -> tf.Tensor:
    b, t = tf.shape(x)[0], tf.shape(x)[2]
    return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [b, t, hidden])  # (B, T, hidden)


def _attend(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, head_dim: int) -> tf.Tensor:
    """Unmasked attention of (B, heads, T, hd) queries over (B, heads, N, hd) keys/values."""
    scores = tf.matmul(q * head_dim**-0.5, k, transpose_b=True)
    return tf.matmul(tf.nn.softmax(scores, axis=-1), v)


class TFBlip(tf.Module):
    """The weights (tf.Variables in TF layout, named as nn.py's parameters) and the two functions."""

    def __init__(self, dims: ModelDims, state: dict[str, np.ndarray]):
        super().__init__(name="blip")
        self.dims = dims
        # SavedModel tracks a dict of variables; dots are not welcome in its keys. `state` is emptied
        # as the variables are made, so the numpy copy and the TF copy never both exist whole.
        self.w = {}
        for name in list(state):
            a = _to_tf_layout(name, state.pop(name))
            self.w[name.replace(".", "/")] = tf.Variable(a, trainable=False, name=name.replace(".", "_"))
        v, t = dims.vision, dims.text
        hd = t.hidden // t.heads
        self.memory = tf.function(self._memory, input_signature=[
            tf.TensorSpec([None, 3, v.image_size, v.image_size], tf.float32, name="pixels")])
        self.decode = tf.function(self._decode, input_signature=[
            tf.TensorSpec([None, None], tf.int64, name="tokens"),  # (rows, T)
            tf.TensorSpec([None, None], tf.int64, name="positions"),  # (rows, T)
            tf.TensorSpec([None, None], tf.bool, name="new_valid"),  # (rows, T): False for left padding
            tf.TensorSpec([None, None], tf.bool, name="past_valid"),  # (rows, L): filled, non-padding slots
            tf.TensorSpec([t.layers, None, t.heads, None, hd], tf.float32, name="past_k"),  # (layers, rows, h, L, hd)
            tf.TensorSpec([t.layers, None, t.heads, None, hd], tf.float32, name="past_v"),
            tf.TensorSpec([t.layers, None, t.heads, v.num_patches + 1, hd], tf.float32, name="cross_k"),
            tf.TensorSpec([t.layers, None, t.heads, v.num_patches + 1, hd], tf.float32, name="cross_v"),
        ])

    # --- building blocks ---------------------------------------------------------------------------

    def _p(self, name: str) -> tf.Variable:
        return self.w[name.replace(".", "/")]

    def _linear(self, x: tf.Tensor, name: str) -> tf.Tensor:
        w, b = self._p(f"{name}.weight"), self._p(f"{name}.bias")
        shape = tf.shape(x)
        y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), w) + b  # one 2-D GEMM, not a batched one
        return tf.reshape(y, tf.concat([shape[:-1], [w.shape[1]]], axis=0))

    def _norm(self, x: tf.Tensor, name: str, eps: float) -> tf.Tensor:
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)  # biased variance, as nn.LayerNorm
        return (x - mean) * tf.math.rsqrt(var + eps) * self._p(f"{name}.weight") + self._p(f"{name}.bias")

    def _ffn(self, x: tf.Tensor, name: str) -> tf.Tensor:
        return self._linear(tf.nn.gelu(self._linear(x, f"{name}.fc1"), approximate=False), f"{name}.fc2")

    # --- the image: pixels -> every decoder layer's cross-attention keys/values -------------------

    def _vision(self, pixels: tf.Tensor) -> tf.Tensor:
        d = self.dims.vision
        b, p, g = tf.shape(pixels)[0], d.patch_size, d.image_size // d.patch_size
        # the stride-p, p x p convolution as one matmul over flattened patches, (c, kh, kw) order as
        # the PyTorch kernel (TF's CPU convolutions want NHWC; this needs no layout change)
        x = tf.reshape(pixels, [b, 3, g, p, g, p])
        x = tf.reshape(tf.transpose(x, [0, 2, 4, 1, 3, 5]), [b, g * g, 3 * p * p])  # (B, P, 3*p*p)
        x = self._linear(x, "vision.patch_embed")  # (B, P, D)
        cls = tf.broadcast_to(self.w["vision/cls_token"], [b, 1, d.hidden])
        x = tf.concat([cls, x], axis=1) + self.w["vision/pos_embed"]  # (B, 1 + P, D)
        for i in range(d.layers):
            blk = f"vision.blocks.{i}"
            qkv = self._linear(self._norm(x, f"{blk}.ln1", d.eps), f"{blk}.qkv")
            q, k, v = (_heads(part, d.heads, d.hidden) for part in tf.split(qkv, 3, axis=-1))  # (B, h, N, hd)
            x = x + self._linear(_merge(_attend(q, k, v, d.hidden // d.heads), d.hidden), f"{blk}.proj")
            x = x + self._ffn(self._norm(x, f"{blk}.ln2", d.eps), blk)
        return self._norm(x, "vision.ln_post", d.eps)

    def _memory(self, pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(B, 3, H, W) -> image keys and values, each (layers, B, heads, N, hd)."""
        memory = self._vision(pixels)
        keys, values = [], []
        for i in range(self.dims.text.layers):
            k, v = tf.split(self._linear(memory, f"text.blocks.{i}.cross_kv"), 2, axis=-1)
            keys.append(_heads(k, self.dims.text.heads, self.dims.text.hidden))
            values.append(_heads(v, self.dims.text.heads, self.dims.text.hidden))
        return tf.stack(keys), tf.stack(values)

    # --- the text: new tokens + explicit past -> next-token logits and the new keys/values --------

    def _decode(self, tokens, positions, new_valid, past_valid, past_k, past_v, cross_k, cross_v):
        """-> logits (rows, V) for each row's last token, new keys and values (layers, rows, h, T, hd)."""
        d = self.dims.text
        hd = d.hidden // d.heads
        rows, t = tf.shape(tokens)[0], tf.shape(tokens)[1]
        idx = tf.range(t)
        causal = idx[:, None] >= idx[None, :]
        # (rows, 1, T, T): causal minus padding; a slot always sees itself, so a padded query never
        # has an empty row (NaNs would leak through the values)
        new_mask = ((causal[None] & new_valid[:, None, :]) | (idx[:, None] == idx[None, :])[None])[:, None]
        past_mask = past_valid[:, None, None, :]  # (rows, 1, 1, L)
        x = tf.gather(self.w["text/tok_embed/weight"], tokens) + tf.gather(self.w["text/pos_embed/weight"], positions)
        x = self._norm(x, "text.ln_embed", d.eps)  # (rows, T, D)
        images = tf.shape(cross_k)[1]
        keys, values = [], []
        for i in range(d.layers):
            blk = f"text.blocks.{i}"
            qkv = tf.split(self._linear(x, f"{blk}.self_qkv"), 3, axis=-1)
            q, k, v = (_heads(part, d.heads, d.hidden) for part in qkv)  # each (rows, h, T, hd)
            # scores against the cache and against the new tokens separately, one softmax over both:
            # the cache is read in place, never concatenated with the new keys (a copy per step)
            q = q * hd**-0.5
            s_past = tf.where(past_mask, tf.matmul(q, past_k[i], transpose_b=True), -np.inf)  # (rows, h, T, L)
            s_new = tf.where(new_mask, tf.matmul(q, k, transpose_b=True), -np.inf)  # (rows, h, T, T)
            p = tf.nn.softmax(tf.concat([s_past, s_new], axis=-1), axis=-1)
            past_len = tf.shape(past_k)[3]
            a = tf.matmul(p[..., :past_len], past_v[i]) + tf.matmul(p[..., past_len:], v)  # (rows, h, T, hd)
            x = self._norm(x + self._linear(_merge(a, d.hidden), f"{blk}.self_out"), f"{blk}.ln_self", d.eps)
            # cross-attention: image-major rows, so a group's queries are one sequence per image
            cq = tf.reshape(self._linear(x, f"{blk}.cross_q"), [images, -1, d.hidden])  # (B_img, group*T, D)
            a = _merge(_attend(_heads(cq, d.heads, d.hidden), cross_k[i], cross_v[i], hd), d.hidden)
            x = self._norm(x + self._linear(tf.reshape(a, [rows, t, d.hidden]), f"{blk}.cross_out"),
                           f"{blk}.ln_cross", d.eps)
            x = self._norm(x + self._ffn(x, blk), f"{blk}.ln_ffn", d.eps)
            keys.append(k)
            values.append(v)
        h = x[:, -1]  # only the newest position is ever needed
        h = self._norm(tf.nn.gelu(self._linear(h, "text.head.dense"), approximate=False), "text.head.ln", d.eps)
        return self._linear(h, "text.head.decoder"), tf.stack(keys), tf.stack(values)
