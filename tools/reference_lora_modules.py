#!/usr/bin/python3
"""Golden set: PEFT LoRA on lm_head / embed_tokens and PEFT's `bias` modes -> tests/golden/lora_modules/<name>/.

Each case folder holds base/ (qwen2_bias_lora_only and llama_tied_lm_head use another case's; a tiny random HF model: config.json, model.safetensors), adapter/ (what PEFT
0.12's save_pretrained writes for it, unchanged), and
  golden.safetensors  input_ids I32 [2,T], lengths I32 [2], logits F32 [2,T,V] of PeftModel.from_pretrained(base,
                      adapter) (the reloaded adapter: what eval/generate see), merged.* = every tensor of
                      merge_and_unload()'s model (F32), grad.<PEFT name> = d loss / d trainable tensor of the
                      training-time model (HF's mean loss) where golden.json says "grads": true
  golden.json         loss, versions, the LoRA settings, what PEFT saved (keys)

  llama_lm_embed    untied Llama; targets q_proj v_proj lm_head embed_tokens (r 4, alpha 8), bias none
  llama_tied        tied Llama; targets q_proj lm_head embed_tokens: PEFT wraps lm_head around the shared matrix,
                    and merge_and_unload adds both deltas into it in place (the merged embedding carries lm_head's
                    delta too)
  llama_tied_lm_head  llama_tied's base with targets q_proj lm_head: the training gradients of a tied lm_head's LoRA
  qwen2_bias_all    Qwen2 (q/k/v biases) with targets q_proj v_proj, bias "all": biases trained (set to base +
                    0.05 randn), saved as ...q_proj.base_layer.bias / ...k_proj.bias; grads include the biases
  qwen2_bias_lora_only  the same with bias "lora_only": q/v biases train but PEFT saves none of them, so the
                    reloaded adapter computes with the base's biases (golden logits = the reload's)

LoRA values: 0.2 * randn (float32-representable). Reference = transformers + PEFT in float64 (the models
.double(), RMSNorm/softmax kept in float64 as reference_common.hf_float64). Deterministic.

PEFT writes adapter_config.json's target_modules from a Python set: its order follows string hashing, so the
committed files come from PYTHONHASHSEED=0 (any other seed changes only that order).

Usage: PYTHONHASHSEED=0 PYTHONPATH=/opt/zerolora-refdeps python3 tools/reference_lora_modules.py [--out tests/golden/lora_modules]
(torch 2.4.1, transformers 4.44.2, peft 0.12.0).
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_common as rc  # noqa: E402
from reference_common import torch  # noqa: E402
import reference_forward as rf  # noqa: E402

LLAMA_CFG = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=64,
                 bos_token_id=1, eos_token_id=2, torch_dtype="float32")
QWEN2_CFG = dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=64,
                 tie_word_embeddings=False, use_sliding_window=False, bos_token_id=1, eos_token_id=2,
                 torch_dtype="float32")
CASES = {
    "llama_lm_embed": dict(spec=dict(cls="Llama", seed=3001, proj_std=0.08,
                                     config=dict(LLAMA_CFG, tie_word_embeddings=False)),
                           targets=["q_proj", "v_proj", "lm_head", "embed_tokens"], bias="none", grads=True),
    "llama_tied": dict(spec=dict(cls="Llama", seed=3002, proj_std=0.08,
                                 config=dict(LLAMA_CFG, tie_word_embeddings=True)),
                       targets=["q_proj", "lm_head", "embed_tokens"], bias="none", grads=True),
    "llama_tied_lm_head": dict(spec=dict(cls="Llama", seed=3002, proj_std=0.08,
                                         config=dict(LLAMA_CFG, tie_word_embeddings=True)),
                               targets=["q_proj", "lm_head"], bias="none", grads=True, base_from="llama_tied"),
    "qwen2_bias_all": dict(spec=dict(cls="Qwen2", seed=3003, proj_std=0.08, config=QWEN2_CFG),
                           targets=["q_proj", "v_proj"], bias="all", grads=True),
    "qwen2_bias_lora_only": dict(spec=dict(cls="Qwen2", seed=3003, proj_std=0.08, config=QWEN2_CFG),
                                 targets=["q_proj", "v_proj"], bias="lora_only", grads=False,
                                 base_from="qwen2_bias_all"),
}
T, ROW1 = 11, 7


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def make_inputs(V, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, T), generator=gen, dtype=torch.int64)
    ids[1, ROW1:] = 0
    lengths = torch.tensor([T, ROW1], dtype=torch.int64)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)
    return ids, lengths, mask, ids.masked_fill(mask == 0, -100)


def logits_of(causal_lm, ids, mask):
    with rc.hf_float64():
        return rc.hf_logits(causal_lm, ids, mask)


def run(name, case, out_root, vers):
    import transformers
    import peft
    from safetensors.torch import load_file
    out = os.path.join(out_root, name)
    fresh_dir(out)
    base_dir, adapter_dir = os.path.join(out, "base"), os.path.join(out, "adapter")
    spec = case["spec"]
    if "base_from" in case:  # the same base model as another case (one copy committed)
        base_dir = os.path.join(out_root, case["base_from"], "base")
    else:
        rf.make_model(spec).save_pretrained(base_dir, safe_serialization=True)
    Model = getattr(transformers, spec["cls"] + "ForCausalLM")
    load = lambda: Model.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    lcfg = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=case["targets"], bias=case["bias"])
    model = peft.get_peft_model(load(), peft.LoraConfig(task_type="CAUSAL_LM", **lcfg))
    gen = torch.Generator().manual_seed(spec["seed"] + 11)
    trainable = {}
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if not p.requires_grad:
                continue
            if "lora_" in pname:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:  # a trainable bias: as if trained
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            trainable[pname.replace(".default", "")] = p
    model.save_pretrained(adapter_dir)
    os.remove(os.path.join(adapter_dir, "README.md"))  # PEFT's model card: not read by anything here
    saved = sorted(load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).keys())
    V = spec["config"]["vocab_size"]
    ids, lengths, mask, labels = make_inputs(V, spec["seed"] + 7)
    tensors = {"input_ids": ids.to(torch.int32), "lengths": lengths.to(torch.int32)}

    # training-time gradients (the in-memory model, float64)
    train_loss = None
    if case["grads"]:
        model.double().train()
        logits = logits_of(model.base_model.model, ids, mask)
        loss = rc.causal_lm_loss(logits, labels)
        loss.backward()
        train_loss = loss.item()
        for k, p in trainable.items():
            tensors["grad." + k] = p.grad.detach().to(torch.float32)

    # what a reload computes (eval / generate / forward), and what merge_and_unload writes
    reloaded = peft.PeftModel.from_pretrained(load(), adapter_dir).double().eval()
    with torch.no_grad():
        logits = logits_of(reloaded.base_model.model, ids, mask)
        loss = rc.causal_lm_loss(logits, labels)
        _, ntok = rc.causal_lm_nll(logits, labels)
        merged = reloaded.merge_and_unload()
        merged_logits = logits_of(merged, ids, mask)
    if train_loss is not None and case["bias"] != "lora_only":
        assert abs(train_loss - loss.item()) < 1e-12, (train_loss, loss.item())
    tensors["logits"] = logits.to(torch.float32)
    for k, v in merged.state_dict().items():
        if k == "lm_head.weight" and spec["config"].get("tie_word_embeddings"):
            continue  # the same matrix as the embedding
        tensors["merged." + k] = v.detach().to(torch.float32)
    rc.save_tensors(os.path.join(out, "golden.safetensors"), tensors)
    info = {"loss": rc.f(loss), "num_target_tokens": int(ntok), "T": T, "vocab_size": V, "lengths": lengths.tolist(),
            "lora": lcfg, "lora_values": "0.2 * randn; trainable biases base + 0.05 * randn",
            "grads": case["grads"], "adapter_keys": saved, "base": os.path.relpath(base_dir, out),
            "merged_model_loss": rc.f(rc.causal_lm_loss(merged_logits, labels)),
            "reference": "transformers %s + peft %s on torch %s, float64" % (
                vers["transformers"], vers.get("peft", "?"), vers["torch"]),
            "versions": vers}
    rc.write_json(os.path.join(out, "golden.json"), info)
    print("%-22s loss=%.6f merged=%.6f saved=%d keys" % (name, loss.item(), info["merged_model_loss"], len(saved)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(rc.REPO_ROOT, "tests", "golden", "lora_modules"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    vers = rc.versions()
    try:
        import peft
        vers["peft"] = peft.__version__
    except ImportError:
        pass
    for name, case in CASES.items():
        run(name, case, args.out, vers)


if __name__ == "__main__":
    main()
