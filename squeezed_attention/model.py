"""A Llama-family decoder in plain PyTorch with a static, preallocated KV cache.

Module names mirror transformers' LlamaForCausalLM state-dict keys, so checkpoints load strictly.
Attention is split in two partial attentions merged with log-sum-exp:
  * the FIXED CONTEXT part (dense, or only the keys a Squeezed Attention lookup kept), supplied by a
    ``ContextAttention`` object (see squeezed_attention.context_attention), and
  * the DYNAMIC part: the user input and generated tokens in this decoder's own KV cache.
With no context attached, only the dynamic part runs (plain causal decoding, used to prefill contexts).
Shapes are fixed per step and there is no Python branching on tensor values, so torch.export can capture a
step with a given (input length, cache capacity).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .config import LlamaConfig
from .errors import SqueezeError

NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------ attention math
def attention_with_lse(q, k, v, scale: float, mask=None):
    """Softmax attention that also returns the log-sum-exp of the scores (for merging partials).

    q [H, Tq, D], k/v [H, N, D], optional additive float mask broadcastable to [H, Tq, N].
    Returns out [H, Tq, D] and lse [H, Tq]. Uses the fused CPU flash kernel (it already computes the
    log-sum-exp; calling it saves materialising the [Tq, N] score matrix on long contexts).
    """
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], k.shape[1]).unsqueeze(0)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), 0.0, False, attn_mask=mask, scale=scale)[:2]
    return out[0], lse[0]


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Exact softmax attention over the union of two disjoint key sets, from their partial results.

    The weight of set a is exp(lse_a - lse) = sigmoid(lse_a - lse_b): four small ops per layer instead of a
    dozen (a decode step runs this once per layer). A set with no keys must come with lse = -inf and a
    finite output (its weight is then exactly 0).
    """
    weight_a = torch.sigmoid(lse_a - lse_b).unsqueeze(-1)
    return torch.lerp(out_b, out_a, weight_a), torch.logaddexp(lse_a, lse_b)


# ---------------------------------------------------------------------------------------------- modules
class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict keys) whose one-token products, the matrix-vector products
    of a decode step, can run on the native GEMV that splits the weight across the intra-op threads: MKL's
    sgemv behind F.linear stays on one core, and a decode step is bound by streaming the weights. Off unless
    ``native_gemv`` is set (LlamaForCausalLM.decode_friendly_layout does it where the kernel builds); export
    keeps it off (plain aten.linear)."""

    native_gemv = False

    def forward(self, x):
        if self.native_gemv and x.dim() == 2 and x.shape[0] == 1 and not torch.is_grad_enabled():
            return native.decode_gemv(x, self.weight)
        return F.linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op (same values as x*rsqrt(mean x^2+eps)*w)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVCache:
    """Preallocated keys/values for all layers: [layers, kv_heads, capacity, head_dim]."""

    def __init__(self, config: LlamaConfig, capacity: int, dtype=torch.float32):
        shape = (config.num_layers, config.num_kv_heads, capacity, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype)
        self.values = torch.zeros(shape, dtype=dtype)
        self.capacity = capacity
        self.length = 0  # tokens written so far (host-side bookkeeping, not part of any graph)

    def reset(self):
        self.length = 0


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.group = config.group_size
        self.scale = 1.0 / math.sqrt(config.head_dim)
        self.q_proj = Linear(config.hidden_size, config.num_heads * config.head_dim, bias=False)
        self.k_proj = Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.v_proj = Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=False)
        self.o_proj = Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, cache: KVCache, slot: int, causal_mask, context=None, query_sink=None):
        T = x.shape[0]
        H, Hkv, D, G = self.num_heads, self.num_kv_heads, self.head_dim, self.group
        q = self.q_proj(x).view(T, H, D).transpose(0, 1)  # [H, T, D]
        k = self.k_proj(x).view(T, Hkv, D).transpose(0, 1)
        v = self.v_proj(x).view(T, Hkv, D).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if query_sink is not None:  # calibration wants the post-RoPE queries of the observation window
            query_sink.append(q)
        layer = self.layer_index
        cache.keys[layer, :, slot:slot + T] = k
        cache.values[layer, :, slot:slot + T] = v
        keys = cache.keys[layer, :, :slot + T]
        values = cache.values[layer, :, :slot + T]
        # GQA without copying K/V: the G query heads of a KV head become G*T query rows of that head.
        q_grouped = q.reshape(Hkv, G * T, D)
        out, lse = attention_with_lse(q_grouped, keys, values, self.scale, causal_mask)
        out, lse = out.reshape(H, T, D), lse.reshape(H, T)
        if context is not None:
            ctx_out, ctx_lse = context.attend(layer, q)
            out, lse = merge_partials(ctx_out, ctx_lse, out, lse)
        return self.o_proj(out.transpose(0, 1).reshape(T, H * D))


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_index: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_index)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, cache, slot, causal_mask, context=None, query_sink=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, slot, causal_mask, context, query_sink)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The decoder. ``step`` runs T new tokens through all layers, writing their K/V into ``cache``."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.int64).float() / config.head_dim))
        freqs = torch.outer(torch.arange(config.max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    # ---------------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoint(cls, checkpoint) -> "LlamaForCausalLM":
        model = cls(checkpoint.config)
        state = dict(checkpoint.state_dict)
        if checkpoint.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = str(exc).split("size mismatch for ")[-1].split(":")[0] if "size mismatch" in str(exc) else "a tensor"
            raise SqueezeError(f"checkpoint {checkpoint.source} does not match its config ({first} has the wrong "
                               "shape); use an intact Llama-family model") from None
        missing = [m for m in missing if not (m == "lm_head.weight" and checkpoint.config.tie_word_embeddings)]
        if missing or unexpected:
            raise SqueezeError(f"checkpoint {checkpoint.source} does not match a Llama decoder "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use a Llama-family model")
        model.weights_sha256 = getattr(checkpoint, "weights_sha256", None)   # Generator checks a pack against it
        return model.eval().decode_friendly_layout()

    def decode_friendly_layout(self) -> "LlamaForCausalLM":
        """Make decode steps (one matrix-vector product per projection, bound by streaming the weights) fast.

        Where the native kernels build: projections keep the row-major layout and their one-token products
        run on the multi-threaded native GEMV (measured on this project's 2-core x86 host at 2 threads: 21-30
        GB/s vs 12-17 GB/s for MKL's single-threaded sgemv). Otherwise: the weights of wide projections (out
        >= in features: q, o, gate, up, lm_head) are stored column-major, which MKL's fp32 GEMV streams about
        1.6-2x faster than row-major (lm_head 10.9 -> 5.1 ms), while narrow ones (k/v, down) stay row-major.
        Values, shapes and state-dict keys are unchanged either way; prefill (matrix-matrix) is unaffected.
        """
        use_native = native.available()
        for module in self.modules():
            if isinstance(module, Linear):
                module.native_gemv = use_native
                if not use_native and module.out_features >= module.in_features:
                    module.weight.data = module.weight.data.t().contiguous().t()
        return self

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.config, capacity)

    # ------------------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(self, input_ids, cache: KVCache, position_offset: int = 0, context=None, logits: str = "last",
             query_sink=None, on_layer=None):
        """Run ``input_ids`` [T] as the next T tokens.

        position_offset: RoPE position of dynamic slot 0 (= the fixed-context length when one is attached).
        context: a ContextAttention over a fixed context that precedes the dynamic tokens, or None.
        logits: "last" (next-token logits [vocab]), "all" ([T, vocab]) or "none" (prefill only).
        query_sink: a list that receives every layer's post-RoPE queries [H, T, D] (for calibration).
        on_layer: called with the number of layers done after each layer (progress of a long prefill).
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 1 or input_ids.dtype.is_floating_point:
            raise SqueezeError(f"input_ids must be a 1-D tensor of token ids; got "
                               f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        T = int(input_ids.shape[0])
        if T == 0:   # a zero-row query would reach the flash-attention kernel, which dies with SIGFPE on it
            raise SqueezeError("step needs at least one token; got an empty input_ids")
        slot = cache.length
        if slot + T > cache.capacity:
            raise SqueezeError(f"{slot + T} tokens do not fit the KV cache ({cache.capacity}); use fewer tokens "
                               "(shorter prompt or --max-new-tokens)")
        if position_offset + slot + T > self.config.max_positions:
            raise SqueezeError(f"{position_offset + slot + T} tokens exceed the model window of "
                               f"{self.config.max_positions}; shorten the context or the prompt")
        positions = slice(position_offset + slot, position_offset + slot + T)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        causal_mask = None
        if T > 1:  # query t (slot+t) sees dynamic keys 0..slot+t; repeated over the G heads of each group
            allowed = torch.arange(slot + T)[None, :] <= (slot + torch.arange(T))[:, None]
            mask = torch.zeros(T, slot + T).masked_fill_(~allowed, NEG_INF)
            causal_mask = mask.repeat(self.config.group_size, 1)
        x = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, slot, causal_mask, context, query_sink)
            if on_layer is not None:
                on_layer(i + 1)
        cache.length = slot + T
        if logits == "none":
            return None
        x = x[-1:] if logits == "last" else x
        out = self.lm_head(self.model.norm(x))
        return out[0] if logits == "last" else out

    @torch.no_grad()
    def prefill_chunked(self, input_ids, cache: KVCache, chunk: int = 1024, progress=None):
        """Prefill a long token sequence in chunks (bounded memory); returns the last token's logits."""
        logits = None
        for start in range(0, int(input_ids.shape[0]), chunk):
            piece = input_ids[start:start + chunk]
            is_last = start + chunk >= input_ids.shape[0]
            logits = self.step(piece, cache, logits="last" if is_last else "none")
            if progress is not None:
                progress(int(piece.shape[0]))
        return logits
