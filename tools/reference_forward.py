#!/usr/bin/python3
"""Golden set 1: forward parity on three small random HF models -> tests/golden/parity/<name>/.

For each model folder this writes
  config.json, generation_config.json, model.safetensors   (HF save_pretrained, float32, metadata {"format":"pt"})
  golden.safetensors  input_ids I32 [2,T], lengths I32 [2], logits F32 [2,T,V]
  golden.json         loss and metadata (see tools/README.md)
Reference = transformers model classes in float64 (see reference_common.hf_float64), cross-checked against the
plain float64 implementation in reference_common.plain_forward.  Deterministic: rerun gives identical files.

Usage: /usr/bin/python3 tools/reference_forward.py [--out tests/golden/parity]
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_common as rc  # noqa: E402
from reference_common import torch  # noqa: E402

T = 13
ROW1_LEN = 8

MODELS = {
    "qwen2_gqa_tied": dict(
        cls="Qwen2", seed=1001, proj_std=0.08,
        config=dict(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=True, max_position_embeddings=128, use_sliding_window=False,
                    bos_token_id=1, eos_token_id=2, torch_dtype="float32")),
    "llama3_rope_untied": dict(
        cls="Llama", seed=1002, proj_std=0.08,
        config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, max_position_embeddings=512,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                    bos_token_id=1, eos_token_id=2, torch_dtype="float32")),
    "llama_linear_rope_mha": dict(
        cls="Llama", seed=1003, proj_std=0.08,
        config=dict(vocab_size=151, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, max_position_embeddings=128,
                    rope_scaling={"type": "linear", "factor": 2.0}, attention_bias=True,
                    bos_token_id=1, eos_token_id=2, torch_dtype="float32")),
}


def make_model(spec):
    import transformers
    Config = getattr(transformers, spec["cls"] + "Config")
    Model = getattr(transformers, spec["cls"] + "ForCausalLM")
    cfg = Config(**spec["config"])
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Model(cfg).float().eval()
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                val = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                val = 0.1 * torch.randn(p.shape, generator=gen)
            elif "embed_tokens" in name or name == "lm_head.weight":
                val = 0.1 * torch.randn(p.shape, generator=gen)
            else:
                val = spec["proj_std"] * torch.randn(p.shape, generator=gen)
            p.copy_(val)
    return model


def make_inputs(V, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, T), generator=gen, dtype=torch.int64)
    ids[1, ROW1_LEN:] = 0
    lengths = torch.tensor([T, ROW1_LEN], dtype=torch.int64)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, lengths, mask, labels


def run_one(name, spec, out_root, vers):
    import transformers
    out = os.path.join(out_root, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model = make_model(spec)
    model.save_pretrained(out, safe_serialization=True)

    # Reload from disk so the reference uses exactly the stored float32 weights.
    Model = getattr(transformers, spec["cls"] + "ForCausalLM")
    m64 = Model.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager").double().eval()
    cfg = m64.config.to_dict()
    V = cfg["vocab_size"]
    ids, lengths, mask, labels = make_inputs(V, spec["seed"] + 7)

    with torch.no_grad():
        with rc.hf_float64():
            logits = rc.hf_logits(m64, ids, mask)
        loss = rc.causal_lm_loss(logits, labels)
        nll_sum, ntok = rc.causal_lm_nll(logits, labels)
        # HF as-is (float32 islands in norm/softmax, logits .float(), loss in float32)
        hf_plain_out = m64(input_ids=ids, attention_mask=mask, labels=labels)
        logits_unpatched = rc.hf_logits(m64, ids, mask)

        W = rc.load_file(os.path.join(out, "model.safetensors"))
        plain_fp32rope = rc.plain_forward(W, cfg, ids, mask, rope_fp32=True)
        plain_exact = rc.plain_forward(W, cfg, ids, mask, rope_fp32=False)

    valid = mask.bool()
    def vdiff(a):
        return rc.f((a - logits)[valid].abs().max())

    d_plain = vdiff(plain_fp32rope)
    d_exact = vdiff(plain_exact)
    d_unpatched = vdiff(logits_unpatched)
    assert d_plain < 1e-9, (name, d_plain)
    assert d_exact < 1e-5, (name, d_exact)
    assert abs(loss.item() - nll_sum.item() / ntok) < 1e-12

    rc.save_tensors(os.path.join(out, "golden.safetensors"), {
        "input_ids": ids.to(torch.int32),
        "lengths": lengths.to(torch.int32),
        "logits": logits.to(torch.float32),
    })
    info = {
        "loss": rc.f(loss),
        "logits_dtype": "float32",
        "reference": "transformers %s %sForCausalLM (eager attention) on torch %s, computed in float64; "
                     "RMSNorm and softmax kept in float64 (HF would downcast them to float32), RoPE angles "
                     "in float32 as HF computes them; stored as float32" % (
                         vers["transformers"], spec["cls"], vers["torch"]),
        "max_abs_logit": rc.f(logits[valid].abs().max()),
        "T": T,
        "vocab_size": V,
        "lengths": lengths.tolist(),
        "pad_id": 0,
        "num_target_tokens": ntok,
        "loss_definition": "labels = input_ids at valid positions, -100 on padding; HF shift "
                           "(logits[:, :-1] vs labels[:, 1:]); mean over non-ignored targets",
        "hf_builtin_loss": rc.f(hf_plain_out.loss),
        "check_max_abs_diff_valid_logits": {
            "plain_torch_float64_fp32_rope": d_plain,
            "plain_torch_float64_exact_rope": d_exact,
            "hf_unpatched_float32_norm_softmax": d_unpatched,
        },
        "versions": vers,
    }
    if spec["config"].get("rope_scaling", {}).get("rope_type") == "llama3":
        hd = cfg["hidden_size"] // cfg["num_attention_heads"]
        regions = rc.llama3_regions(cfg, hd)
        rules = {r["rule"] for r in regions}
        assert rules == {"keep", "divide", "blend"}, regions
        info["llama3_rope_regions"] = regions
    rc.write_json(os.path.join(out, "golden.json"), info)
    print("%-24s V=%d loss=%.6f max|logit|=%.3f diff(plain fp32rope)=%.2e diff(exact)=%.2e "
          "diff(hf unpatched)=%.2e" % (name, V, info["loss"], info["max_abs_logit"], d_plain, d_exact,
                                        d_unpatched))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(rc.REPO_ROOT, "tests", "golden", "parity"))
    args = ap.parse_args()
    vers = rc.versions()
    vers.pop("peft", None)
    for name, spec in MODELS.items():
        run_one(name, spec, args.out, vers)


if __name__ == "__main__":
    main()
