#!/usr/bin/python3
"""Golden set 3: model families beside Llama -> tests/golden/families/<name>/.

  mistral_window    MistralForCausalLM with sliding_window 8 over 40 tokens (row 1 right-padded to 29): the
                    window changes the result (the loss with full attention is recorded beside it).
                    Files as tools/reference_forward.py writes them: config.json, model.safetensors,
                    golden.safetensors (input_ids I32 [2,T], lengths I32 [2], logits F32 [2,T,V]), golden.json.
  qwen2_lora_grad   Qwen2ForCausalLM (q/k/v biases, GQA, tied) with a PEFT LoRA adapter (r 4, alpha 8, all seven
                    projections, dropout 0, B non-zero) and the gradient of HF's mean loss with respect to every
                    adapter tensor: lora.safetensors (PEFT names), grads.safetensors (the same names, F32),
                    golden.safetensors and golden.json as above (logits with the adapter).

  qwen2_window_layers Qwen2ForCausalLM with use_sliding_window, sliding_window 6, max_window_layers 1 of 3 layers
                    (layers 1 and 2 slide) over 24 tokens: logits and loss, plus the losses of the two wrong
                    readings (no window; the window in every layer). Needs transformers >= 4.48 (see run_qwen2_window);
                    committed from 4.56.2 (tokenizers 0.22.1) put first on PYTHONPATH, the others from 4.44.2.

Reference = transformers in float64 (RMSNorm and softmax kept in float64: reference_common.hf_float64, extended
here to MistralRMSNorm), cross-checked against reference_common.plain_forward (float64, with the window).
Deterministic: a rerun gives identical files.

Usage: PYTHONPATH=... python3 tools/reference_families.py [--out tests/golden/families]
"""
import argparse
import contextlib
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_common as rc  # noqa: E402
from reference_common import torch  # noqa: E402
import reference_forward as rf  # noqa: E402

MISTRAL = dict(
    cls="Mistral", seed=2001, proj_std=0.08,
    config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=False, max_position_embeddings=256, sliding_window=8,
                bos_token_id=1, eos_token_id=2, torch_dtype="float32"))
MISTRAL_T, MISTRAL_ROW1 = 40, 29

QWEN2 = dict(
    cls="Qwen2", seed=2002, proj_std=0.08,
    config=dict(vocab_size=120, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=True, max_position_embeddings=128, use_sliding_window=False,
                bos_token_id=1, eos_token_id=2, torch_dtype="float32"))
QWEN2_T, QWEN2_ROW1 = 13, 8
QWEN2_WINDOW = dict(
    cls="Qwen2", seed=2003, proj_std=0.08,
    config=dict(vocab_size=110, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=False, max_position_embeddings=128, use_sliding_window=True,
                sliding_window=6, max_window_layers=1, bos_token_id=1, eos_token_id=2, torch_dtype="float32"))
QWEN2_WINDOW_T, QWEN2_WINDOW_ROW1 = 24, 17
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@contextlib.contextmanager
def float64_everywhere():
    """reference_common.hf_float64 plus Mistral's RMSNorm (same equations as Llama's)."""
    from transformers.models.mistral import modeling_mistral
    orig = modeling_mistral.MistralRMSNorm.forward
    modeling_mistral.MistralRMSNorm.forward = rc._rmsnorm_forward_same_dtype
    try:
        with rc.hf_float64():
            yield
    finally:
        modeling_mistral.MistralRMSNorm.forward = orig


def make_inputs(V, T, row1, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, T), generator=gen, dtype=torch.int64)
    ids[1, row1:] = 0
    lengths = torch.tensor([T, row1], dtype=torch.int64)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, lengths, mask, labels


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def golden_json(loss, logits, valid, T, V, lengths, ntok, cls, vers, **extra):
    info = {
        "loss": rc.f(loss),
        "logits_dtype": "float32",
        "reference": "transformers %s %sForCausalLM (eager attention) on torch %s, computed in float64; "
                     "RMSNorm and softmax kept in float64, RoPE angles in float32 as HF computes them; stored "
                     "as float32" % (vers["transformers"], cls, vers["torch"]),
        "max_abs_logit": rc.f(logits[valid].abs().max()),
        "T": T,
        "vocab_size": V,
        "lengths": lengths.tolist(),
        "pad_id": 0,
        "num_target_tokens": ntok,
        "loss_definition": "labels = input_ids at valid positions, -100 on padding; HF shift "
                           "(logits[:, :-1] vs labels[:, 1:]); mean over non-ignored targets",
        "versions": vers,
    }
    info.update(extra)
    return info


def run_mistral(out_root, vers):
    import transformers
    out = os.path.join(out_root, "mistral_window")
    fresh_dir(out)
    rf.make_model(MISTRAL).save_pretrained(out, safe_serialization=True)
    m64 = transformers.MistralForCausalLM.from_pretrained(out, torch_dtype=torch.float32,
                                                          attn_implementation="eager").double().eval()
    cfg = m64.config.to_dict()
    V, W = cfg["vocab_size"], cfg["sliding_window"]
    ids, lengths, mask, labels = make_inputs(V, MISTRAL_T, MISTRAL_ROW1, MISTRAL["seed"] + 7)
    with torch.no_grad():
        with float64_everywhere():
            logits = rc.hf_logits(m64, ids, mask)
        loss = rc.causal_lm_loss(logits, labels)
        _, ntok = rc.causal_lm_nll(logits, labels)
        Wts = rc.load_file(os.path.join(out, "model.safetensors"))
        plain = rc.plain_forward(Wts, cfg, ids, mask, rope_fp32=True, sliding_window=W)
        full = rc.plain_forward(Wts, cfg, ids, mask, rope_fp32=True)
        full_loss = rc.causal_lm_loss(full, labels)
    valid = mask.bool()
    d_plain = rc.f((plain - logits)[valid].abs().max())
    assert d_plain < 1e-9, d_plain
    # the window matters here: full attention is a different model (rows past the window differ)
    assert abs(full_loss.item() - loss.item()) > 1e-3, (full_loss.item(), loss.item())
    rc.save_tensors(os.path.join(out, "golden.safetensors"), {
        "input_ids": ids.to(torch.int32), "lengths": lengths.to(torch.int32), "logits": logits.to(torch.float32)})
    info = golden_json(loss, logits, valid, MISTRAL_T, V, lengths, ntok, "Mistral", vers,
                       sliding_window=W, full_attention_loss=rc.f(full_loss),
                       check_max_abs_diff_valid_logits={"plain_torch_float64_fp32_rope_window": d_plain})
    rc.write_json(os.path.join(out, "golden.json"), info)
    print("mistral_window  loss=%.6f (full attention %.6f) diff(plain)=%.2e" % (loss.item(), full_loss.item(), d_plain))


def run_qwen2_lora(out_root, vers):
    import transformers
    import peft
    out = os.path.join(out_root, "qwen2_lora_grad")
    fresh_dir(out)
    rf.make_model(QWEN2).save_pretrained(out, safe_serialization=True)
    base = transformers.Qwen2ForCausalLM.from_pretrained(out, torch_dtype=torch.float32,
                                                         attn_implementation="eager").double().eval()
    cfg = base.config.to_dict()
    V = cfg["vocab_size"]
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="CAUSAL_LM", **LORA)).double()
    gen = torch.Generator().manual_seed(QWEN2["seed"] + 11)
    lora = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_" not in name:
                continue
            p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64).float().double())
            key = name.replace(".default", "")  # PEFT's saved names drop the adapter name
            lora[key] = p
    ids, lengths, mask, labels = make_inputs(V, QWEN2_T, QWEN2_ROW1, QWEN2["seed"] + 7)
    model.train()  # dropout is 0: train mode changes nothing but enables the gradients' bookkeeping
    with float64_everywhere():
        logits = rc.hf_logits(model.base_model.model, ids, mask)
    loss = rc.causal_lm_loss(logits, labels)
    loss.backward()
    _, ntok = rc.causal_lm_nll(logits.detach(), labels)
    grads = {k: p.grad.detach().to(torch.float32) for k, p in lora.items()}
    # cross-check the forward with the plain implementation and the adapter
    Wts = rc.load_file(os.path.join(out, "model.safetensors"))
    plain_lora = {}
    for k, p in lora.items():
        mod = k.replace("base_model.model.", "").rsplit(".lora_", 1)[0]
        A_or_B = "A" if ".lora_A." in k else "B"
        plain_lora.setdefault(mod, {})[A_or_B] = p.detach()
    plain_lora = {m: (ab["A"], ab["B"]) for m, ab in plain_lora.items()}
    with torch.no_grad():
        plain = rc.plain_forward(Wts, cfg, ids, mask, lora=plain_lora, lora_scale=LORA["lora_alpha"] / LORA["r"],
                                 rope_fp32=True)
    valid = mask.bool()
    d_plain = rc.f((plain - logits.detach())[valid].abs().max())
    assert d_plain < 1e-9, d_plain
    rc.save_tensors(os.path.join(out, "lora.safetensors"), {k: p.detach().to(torch.float32) for k, p in lora.items()})
    rc.save_tensors(os.path.join(out, "grads.safetensors"), grads)
    rc.save_tensors(os.path.join(out, "golden.safetensors"), {
        "input_ids": ids.to(torch.int32), "lengths": lengths.to(torch.int32),
        "logits": logits.detach().to(torch.float32)})
    info = golden_json(loss.detach(), logits.detach(), valid, QWEN2_T, V, lengths, ntok, "Qwen2", vers,
                       lora={k: v for k, v in LORA.items()}, lora_values="0.2 * randn (float32-representable)",
                       grads="d loss / d adapter tensor (loss = HF's mean), float32",
                       check_max_abs_diff_valid_logits={"plain_torch_float64_fp32_rope_lora": d_plain})
    rc.write_json(os.path.join(out, "golden.json"), info)
    gmax = max(float(g.abs().max()) for g in grads.values())
    print("qwen2_lora_grad loss=%.6f max|grad|=%.3e diff(plain)=%.2e" % (loss.item(), gmax, d_plain))


def run_qwen2_window(out_root, vers):
    """Qwen2 with use_sliding_window: layers >= max_window_layers slide (1 and 2 here), layer 0 attends fully.
    transformers applies the window outside flash-attention only from 4.48 on (layer_types): before that its
    eager path ignored it, so this golden needs a newer transformers than the others."""
    import transformers
    if not hasattr(transformers.Qwen2Config(), "layer_types"):
        sys.exit("qwen2_window_layers needs transformers >= 4.48 (eager Qwen2 applies sliding_window there); "
                 "this is %s: install one with pip --target DIR and put DIR first on PYTHONPATH" %
                 transformers.__version__)
    out = os.path.join(out_root, "qwen2_window_layers")
    fresh_dir(out)
    rf.make_model(QWEN2_WINDOW).save_pretrained(out, safe_serialization=True)
    m64 = transformers.Qwen2ForCausalLM.from_pretrained(out, torch_dtype=torch.float32,
                                                        attn_implementation="eager").double().eval()
    cfg = m64.config.to_dict()
    assert cfg["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"], cfg["layer_types"]
    V, W = cfg["vocab_size"], cfg["sliding_window"]
    ids, lengths, mask, labels = make_inputs(V, QWEN2_WINDOW_T, QWEN2_WINDOW_ROW1, QWEN2_WINDOW["seed"] + 7)
    with torch.no_grad():
        with float64_everywhere():
            logits = rc.hf_logits(m64, ids, mask)
        loss = rc.causal_lm_loss(logits, labels)
        _, ntok = rc.causal_lm_nll(logits, labels)
        Wts = rc.load_file(os.path.join(out, "model.safetensors"))
        plain = rc.plain_forward(Wts, cfg, ids, mask, rope_fp32=True, sliding_window=[None, W, W])
        every = rc.causal_lm_loss(rc.plain_forward(Wts, cfg, ids, mask, rope_fp32=True, sliding_window=W), labels)
        full = rc.causal_lm_loss(rc.plain_forward(Wts, cfg, ids, mask, rope_fp32=True), labels)
    valid = mask.bool()
    d_plain = rc.f((plain - logits)[valid].abs().max())
    assert d_plain < 1e-9, d_plain
    # both readings that differ from HF's give another loss: the window in every layer, and none
    assert abs(every.item() - loss.item()) > 1e-3 and abs(full.item() - loss.item()) > 1e-3
    rc.save_tensors(os.path.join(out, "golden.safetensors"), {
        "input_ids": ids.to(torch.int32), "lengths": lengths.to(torch.int32), "logits": logits.to(torch.float32)})
    info = golden_json(loss, logits, valid, QWEN2_WINDOW_T, V, lengths, ntok, "Qwen2", vers,
                       sliding_window=W, layer_types=cfg["layer_types"], full_attention_loss=rc.f(full),
                       window_in_every_layer_loss=rc.f(every),
                       check_max_abs_diff_valid_logits={"plain_torch_float64_fp32_rope_window": d_plain})
    rc.write_json(os.path.join(out, "golden.json"), info)
    print("qwen2_window_layers loss=%.6f (full %.6f, window in every layer %.6f) diff(plain)=%.2e" % (
        loss.item(), full.item(), every.item(), d_plain))


RUNS = {"mistral_window": run_mistral, "qwen2_lora_grad": run_qwen2_lora, "qwen2_window_layers": run_qwen2_window}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(rc.REPO_ROOT, "tests", "golden", "families"))
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), help="goldens to write (default: all)")
    args = ap.parse_args()
    vers = rc.versions()
    for name in args.only or RUNS:
        RUNS[name](args.out, vers)


if __name__ == "__main__":
    main()
