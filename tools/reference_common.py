"""Shared helpers for the zerolora PyTorch reference scripts (NOT used by the C++ build or CI).

Two independent computations live here:

* HF path: the real `transformers` model classes (LlamaForCausalLM / Qwen2ForCausalLM, plus PEFT for LoRA),
  run in float64.  transformers 4.45 keeps three float32 "islands" even in a float64 model:
  RMSNorm variance (x.to(float32)), the attention softmax (softmax(..., dtype=float32)) and the
  RoPE angles/cos/sin (inv_freq and position products are forced to float32).  `hf_float64()` patches the
  first two so they run in the input dtype (float64); RoPE is deliberately left as HF computes it
  (float32 angles, cast to float64), i.e. exactly what HF does in every dtype.  Logits are taken as
  `lm_head(model.model(...))` because LlamaForCausalLM.forward in 4.45 calls `.float()` on the logits.

* Plain path: `plain_forward`, a from-scratch float64 implementation of the HF LLaMA / Qwen2 equations
  (RMSNorm, rotate-half RoPE with default/linear/llama3 scaling, GQA, optional q/k/v/o biases, SwiGLU MLP,
  tied/untied head, optional LoRA on any projection).  With rope_fp32=True it mimics HF's float32 RoPE
  angles (used for tight cross-checks); with rope_fp32=False everything is float64 ("exact math").

Extra python packages (transformers, peft, accelerate, tokenizers, huggingface_hub, safetensors) are looked
up first in $ZEROLORA_REFDEPS (default /opt/zerolora-refdeps), see tools/README.md.
"""
import contextlib
import json
import math
import os
import sys

_REFDEPS = os.environ.get("ZEROLORA_REFDEPS", "/opt/zerolora-refdeps")
if os.path.isdir(_REFDEPS) and _REFDEPS not in sys.path:
    sys.path.insert(0, _REFDEPS)

import torch  # noqa: E402

torch.set_num_threads(1)  # deterministic reductions, and the machine is shared
torch.set_default_dtype(torch.float32)

from safetensors.torch import save_file, load_file  # noqa: E402,F401

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def versions():
    import transformers
    import safetensors
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "safetensors": safetensors.__version__}
    try:
        import peft
        out["peft"] = peft.__version__
    except Exception:  # pragma: no cover
        pass
    return out


# ----------------------------------------------------------------------------------------------------------
# HF float64 patches
# ----------------------------------------------------------------------------------------------------------
def _rmsnorm_forward_same_dtype(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def hf_float64():
    """Run HF LLaMA/Qwen2 without the float32 RMSNorm/softmax downcasts (only matters for float64 models)."""
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2
    F = torch.nn.functional
    orig_softmax = F.softmax
    orig_norms = [(modeling_llama.LlamaRMSNorm, modeling_llama.LlamaRMSNorm.forward),
                  (modeling_qwen2.Qwen2RMSNorm, modeling_qwen2.Qwen2RMSNorm.forward)]

    def softmax(input, dim=None, _stacklevel=3, dtype=None):
        if dtype == torch.float32 and input.dtype == torch.float64:
            dtype = torch.float64
        return orig_softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    F.softmax = softmax
    for cls, _ in orig_norms:
        cls.forward = _rmsnorm_forward_same_dtype
    try:
        yield
    finally:
        F.softmax = orig_softmax
        for cls, fwd in orig_norms:
            cls.forward = fwd


def hf_logits(causal_lm, input_ids, attention_mask):
    """Logits in the model's dtype: lm_head(model.model(...)) (avoids the .float() in 4.45's forward)."""
    out = causal_lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return causal_lm.lm_head(out[0])


def causal_lm_nll(logits, labels):
    """HF's causal-LM loss pieces: shift by one, ignore_index -100. Returns (sum of token NLL, token count)."""
    V = logits.shape[-1]
    shift_logits = logits[..., :-1, :].contiguous().view(-1, V)
    shift_labels = labels[..., 1:].contiguous().view(-1)
    loss_sum = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
    count = int((shift_labels != -100).sum())
    return loss_sum, count


def causal_lm_loss(logits, labels):
    """Exactly HF: CrossEntropyLoss() (mean over non-ignored) of logits[:, :-1] vs labels[:, 1:]."""
    V = logits.shape[-1]
    return torch.nn.CrossEntropyLoss()(logits[..., :-1, :].contiguous().view(-1, V),
                                       labels[..., 1:].contiguous().view(-1))


# ----------------------------------------------------------------------------------------------------------
# Plain float64 implementation of the HF equations
# ----------------------------------------------------------------------------------------------------------
def rope_inv_freq(cfg, head_dim, fp32=False):
    """inv_freq per HF modeling_rope_utils (default / linear / llama3). Returns float64 tensor [head_dim/2]."""
    theta = float(cfg.get("rope_theta", 10000.0))
    if fp32:  # HF: 1.0 / (base ** (arange(0, d, 2).float() / d)) in float32
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    else:
        i = torch.arange(0, head_dim, 2, dtype=torch.float64)
        inv = 1.0 / torch.pow(torch.tensor(theta, dtype=torch.float64), i / head_dim)
    rs = cfg.get("rope_scaling")
    if rs:
        rtype = rs.get("rope_type", rs.get("type"))
        if rtype == "linear":
            inv = inv / float(rs["factor"])
        elif rtype == "llama3":
            factor = float(rs["factor"])
            low = float(rs["low_freq_factor"])
            high = float(rs["high_freq_factor"])
            old = float(rs["original_max_position_embeddings"])
            low_wl = old / low
            high_wl = old / high
            out = inv.clone()
            for j in range(inv.shape[0]):
                f = inv[j]
                wl = 2 * math.pi / f
                if wl < high_wl:
                    out[j] = f
                elif wl > low_wl:
                    out[j] = f / factor
                else:
                    s = (old / wl - low) / (high - low)
                    out[j] = (1 - s) * f / factor + s * f
            inv = out
        elif rtype in (None, "default"):
            pass
        else:
            raise ValueError("unsupported rope type %r" % rtype)
    return inv.to(torch.float64) if not fp32 else inv


def llama3_regions(cfg, head_dim):
    """For documentation: which llama3 rule (keep/divide/blend) applies to each frequency index."""
    rs = cfg["rope_scaling"]
    theta = float(cfg["rope_theta"])
    old = float(rs["original_max_position_embeddings"])
    low_wl = old / float(rs["low_freq_factor"])
    high_wl = old / float(rs["high_freq_factor"])
    regions = []
    for j in range(head_dim // 2):
        f = theta ** (-2.0 * j / head_dim)
        wl = 2 * math.pi / f
        regions.append({"index": j, "wavelen": round(wl, 6),
                        "rule": "keep" if wl < high_wl else ("divide" if wl > low_wl else "blend")})
    return regions


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def plain_forward(W, cfg, input_ids, attention_mask, lora=None, lora_scale=1.0, rope_fp32=False, sliding_window=None):
    """Float64 forward. W: dict HF name -> tensor (any float dtype, cast to float64).
    lora: optional dict module-path (e.g. 'model.layers.0.self_attn.q_proj') -> (A [r,in], B [out,r]) float64.
    sliding_window: optional W (every layer), or a list with one W or None per layer: query i sees keys j with
    i - W < j <= i (HF's sliding_window_overlay) in the layers that have one.
    Returns logits [B, T, V] float64."""
    d = torch.float64
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    eps = float(cfg["rms_norm_eps"])
    L = cfg["num_hidden_layers"]
    Bsz, T = input_ids.shape
    g = {k: v.to(d) for k, v in W.items()}

    def lin(x, name):
        y = x @ g[name + ".weight"].t()
        if name + ".bias" in g:
            y = y + g[name + ".bias"]
        if lora is not None and name in lora:
            A, Bm = lora[name]
            y = y + lora_scale * ((x @ A.t()) @ Bm.t())
        return y

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv = rope_inv_freq(cfg, hd, fp32=rope_fp32)
    if rope_fp32:
        pos = torch.arange(T, dtype=torch.int64).float()
        freqs = (inv.float()[:, None] @ pos[None, :]).t()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(d), emb.sin().to(d)
    else:
        pos = torch.arange(T, dtype=d)
        freqs = pos[:, None] * inv[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()

    am = attention_mask.to(torch.bool)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    windows = sliding_window if isinstance(sliding_window, (list, tuple)) else [sliding_window] * L
    allowed_full = causal[None, :, :] & am[:, None, :]  # [B, Tq, Tk]

    def allowed_in(window):
        if window is None:
            return allowed_full
        a = allowed_full & ~torch.ones(T, T, dtype=torch.bool).tril(-window)[None, :, :]
        # a padded query may see no key at all: let it see itself (its row is ignored)
        return a | (~am[:, :, None] & torch.eye(T, dtype=torch.bool)[None, :, :])

    x = g["model.embed_tokens.weight"][input_ids]
    for i in range(L):
        p = "model.layers.%d." % i
        h = rms(x, g[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(Bsz, T, nh, hd).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(Bsz, T, nkv, hd).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(Bsz, T, nkv, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed_in(windows[i])[:, None, :, :], float("-inf"))
        a = torch.softmax(s, dim=-1) @ v
        a = a.transpose(1, 2).reshape(Bsz, T, nh * hd)
        x = x + lin(a, p + "self_attn.o_proj")
        h = rms(x, g[p + "post_attention_layernorm.weight"])
        m = torch.nn.functional.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj")
        x = x + lin(m, p + "mlp.down_proj")
    x = rms(x, g["model.norm.weight"])
    head = g["lm_head.weight"] if "lm_head.weight" in g else g["model.embed_tokens.weight"]
    return x @ head.t()


# ----------------------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------------------
def save_tensors(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def f(x):
    """Python float for JSON (repr round-trips exactly)."""
    return float(x)
