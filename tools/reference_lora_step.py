#!/usr/bin/python3
"""Golden set 2: LoRA + AdamW optimizer steps on stories260K -> tests/golden/lora_step/<variant>/.

Reference = transformers LlamaForCausalLM + PEFT LoRA (real classes) in float64, torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_; cross-checked against an independent plain-torch float64 forward
(reference_common.plain_forward) with a hand-written AdamW/clipping.  Deterministic.

Per variant folder:
  adapter_init.safetensors, adapter_after.safetensors  PEFT saved key names, F32, metadata {"format":"pt"}
  grads_step{s}.safetensors   accumulated gradient of step s (before clipping), PEFT key names, F32
  batches.safetensors         input_ids_{k}, labels_{k}, attention_mask_{k}: I32 [2, 24]
  adapter_config.json         written by PEFT save_pretrained (target_modules sorted, see README)
  golden.json                 hyper-parameters, losses, grad norms, ... (see tools/README.md)

Usage: /usr/bin/python3 tools/reference_lora_step.py [--out tests/golden/lora_step] [--base DIR]
"""
import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_common as rc  # noqa: E402
from reference_common import torch  # noqa: E402

BASE_DEFAULT = "/work/shared/models/stories260K-hf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R = 4
ALPHA = 8
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
WD = 0.01
T = 24
PROMPT = 5           # labels -100 on positions 0..4
BOS = 1
PAD = 0
# micro-batch k: (seed, [len row0, len row1]).  Micro-batch 1 has a shorter row 1 so that the token-weighted
# GA loss differs from the mean of micro-batch means (31 vs 25 target tokens).
MICRO_BATCHES = [(2001, [24, 17]), (2002, [24, 11])]
CLIP_MAX_NORM = 0.25

VARIANTS = {
    # name: (windows = list of optimizer steps, each a list of micro-batch indices), max_grad_norm, token_weighted
    "single": ([[0]], None, False),
    "accum2": ([[0, 1]], None, False),
    "accum2_tokens": ([[0, 1]], None, True),
    "clip": ([[0]], CLIP_MAX_NORM, False),
    "two_steps": ([[0], [1]], None, False),
    "clip_two_steps": ([[0], [1]], CLIP_MAX_NORM, False),
}


def make_batch(seed, lengths):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 512, (len(lengths), T), generator=gen, dtype=torch.int64)
    ids[:, 0] = BOS
    mask = torch.zeros(len(lengths), T, dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, n:] = PAD
        mask[r, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :PROMPT] = -100
    return ids, labels, mask


def peft_key(module_path, which):
    return "base_model.model.%s.lora_%s.weight" % (module_path, which)


def lora_modules(n_layers):
    out = []
    for i in range(n_layers):
        for t in TARGETS:
            sub = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out.append("model.layers.%d.%s.%s" % (i, sub, t))
    return out


def make_init(base_cfg):
    """A ~ U(-1/sqrt(in), 1/sqrt(in)), B ~ N(0, 0.02), float32, seeded, in module order."""
    H, I = base_cfg["hidden_size"], base_cfg["intermediate_size"]
    nh = base_cfg["num_attention_heads"]
    nkv = base_cfg["num_key_value_heads"]
    hd = base_cfg.get("head_dim") or H // nh
    dims = {"q_proj": (H, nh * hd), "k_proj": (H, nkv * hd), "v_proj": (H, nkv * hd), "o_proj": (nh * hd, H),
            "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
    gen = torch.Generator().manual_seed(3001)
    init = {}
    for mp in lora_modules(base_cfg["num_hidden_layers"]):
        fin, fout = dims[mp.rsplit(".", 1)[1]]
        bound = 1.0 / math.sqrt(fin)
        init[peft_key(mp, "A")] = (torch.rand(R, fin, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).float()
        init[peft_key(mp, "B")] = (0.02 * torch.randn(fout, R, generator=gen, dtype=torch.float64)).float()
    return init


def build_peft(base_dir, init):
    from transformers import LlamaForCausalLM
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, attn_implementation="eager")
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none", target_modules=list(TARGETS),
                     task_type="CAUSAL_LM")
    pm = get_peft_model(base, cfg)
    res = set_peft_model_state_dict(pm, init)
    assert not res.unexpected_keys, res.unexpected_keys
    missing = [k for k in res.missing_keys if "lora_" in k]
    assert not missing, missing
    pm = pm.double()
    pm.train()
    return pm


def peft_state(pm):
    from peft import get_peft_model_state_dict
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(pm).items()}


def peft_grads(pm):
    out = {}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            out[n.replace(".default.weight", ".weight")] = p.grad.detach().clone()
    return out


def run_hf(pm, batches, windows, max_norm, token_weighted):
    params = [p for _, p in pm.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    causal_lm = pm.get_base_model()
    losses, norms, coefs, grads = [], [], [], []
    for window in windows:
        opt.zero_grad(set_to_none=True)
        ga = len(window)
        total_tokens = sum(int((batches[k][1][:, 1:] != -100).sum()) for k in window)
        logged = 0.0
        for k in window:
            ids, labels, mask = batches[k]
            with rc.hf_float64():
                logits = rc.hf_logits(causal_lm, ids, mask)
            if token_weighted:
                s, _ = rc.causal_lm_nll(logits, labels)
                loss = s / total_tokens
            else:
                loss = rc.causal_lm_loss(logits, labels) / ga
            logged += loss.item()
            loss.backward()
        grads.append(peft_grads(pm))
        if max_norm is not None:
            n = torch.nn.utils.clip_grad_norm_(params, max_norm)
            coefs.append(min(1.0, max_norm / (n.item() + 1e-6)))
        else:
            n = torch.norm(torch.stack([p.grad.detach().norm(2) for p in params]), 2)
        norms.append(n.item())
        losses.append(logged)
        opt.step()
    return losses, norms, coefs, grads


def run_plain(W, base_cfg, init, batches, windows, max_norm, token_weighted):
    """Independent path: plain forward + autograd + hand-written clip/AdamW (torch formulas)."""
    params = {k: v.to(torch.float64).clone().requires_grad_(True) for k, v in init.items()}
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    scale = ALPHA / R
    mods = lora_modules(base_cfg["num_hidden_layers"])
    losses, norms, grads = [], [], []
    for step, window in enumerate(windows, start=1):
        for p in params.values():
            p.grad = None
        lora = {mp: (params[peft_key(mp, "A")], params[peft_key(mp, "B")]) for mp in mods}
        total_tokens = sum(int((batches[k][1][:, 1:] != -100).sum()) for k in window)
        logged = 0.0
        for k in window:
            ids, labels, mask = batches[k]
            logits = rc.plain_forward(W, base_cfg, ids, mask, lora=lora, lora_scale=scale, rope_fp32=True)
            s, c = rc.causal_lm_nll(logits, labels)
            loss = s / total_tokens if token_weighted else (s / c) / len(window)
            logged += loss.item()
            loss.backward()
        g = {k: p.grad.detach().clone() for k, p in params.items()}
        grads.append({k: t.clone() for k, t in g.items()})
        total = math.sqrt(sum(float((t * t).sum()) for t in g.values()))
        norms.append(total)
        losses.append(logged)
        if max_norm is not None:
            coef = max_norm / (total + 1e-6)
            if coef < 1.0:
                g = {k: t * coef for k, t in g.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.mul_(1 - LR * WD)
                m[k] = BETAS[0] * m[k] + (1 - BETAS[0]) * g[k]
                v2[k] = BETAS[1] * v2[k] + (1 - BETAS[1]) * g[k] * g[k]
                bc1 = 1 - BETAS[0] ** step
                bc2 = 1 - BETAS[1] ** step
                p.sub_((LR / bc1) * m[k] / (v2[k].sqrt() / math.sqrt(bc2) + EPS))
    return losses, norms, grads, {k: p.detach() for k, p in params.items()}


def write_adapter_config(pm, out_dir):
    """PEFT's own save_pretrained; then target_modules sorted (PEFT writes a python set in hash order)."""
    with tempfile.TemporaryDirectory() as td:
        pm.save_pretrained(td)
        with open(os.path.join(td, "adapter_config.json")) as fh:
            cfg = json.load(fh)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as fh:
        fh.write(json.dumps(cfg, indent=2, sort_keys=True))  # byte format of PEFT 0.10 config.save_pretrained


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(rc.REPO_ROOT, "tests", "golden", "lora_step"))
    ap.add_argument("--base", default=BASE_DEFAULT)
    args = ap.parse_args()
    vers = rc.versions()
    with open(os.path.join(args.base, "config.json")) as fh:
        base_cfg = json.load(fh)
    W = rc.load_file(os.path.join(args.base, "model.safetensors"))
    init = make_init(base_cfg)
    batches = [make_batch(seed, lens) for seed, lens in MICRO_BATCHES]
    pm0 = build_peft(args.base, init)
    assert set(peft_state(pm0)) == set(init)

    for name, (windows, max_norm, token_weighted) in VARIANTS.items():
        out = os.path.join(args.out, name)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.makedirs(out)
        pm = copy.deepcopy(pm0)
        losses, norms, coefs, grads = run_hf(pm, batches, windows, max_norm, token_weighted)
        after = peft_state(pm)
        p_losses, p_norms, p_grads, p_after = run_plain(W, base_cfg, init, batches, windows, max_norm,
                                                        token_weighted)
        # cross-checks between the two independent computations
        d_loss = max(abs(a - b) for a, b in zip(losses, p_losses))
        d_norm = max(abs(a - b) / b for a, b in zip(norms, p_norms))
        d_grad = max(float(((grads[s][k] - p_grads[s][k]).abs().max()) / grads[s][k].abs().max())
                     for s in range(len(windows)) for k in init)
        d_after = max(float((after[k] - p_after[k]).abs().max()) for k in init)
        assert d_loss < 1e-12 and d_norm < 1e-10 and d_grad < 1e-9 and d_after < 1e-12, \
            (name, d_loss, d_norm, d_grad, d_after)
        if max_norm is not None:
            assert all(c < 1.0 for c in coefs), (name, coefs)

        used = sorted({k for w in windows for k in w})
        bt = {}
        for k in used:
            ids, labels, mask = batches[k]
            bt["input_ids_%d" % k] = ids.to(torch.int32)
            bt["labels_%d" % k] = labels.to(torch.int32)
            bt["attention_mask_%d" % k] = mask.to(torch.int32)
        rc.save_tensors(os.path.join(out, "batches.safetensors"), bt)
        rc.save_tensors(os.path.join(out, "adapter_init.safetensors"), init)
        rc.save_tensors(os.path.join(out, "adapter_after.safetensors"), {k: v.float() for k, v in after.items()})
        for s, g in enumerate(grads):
            rc.save_tensors(os.path.join(out, "grads_step%d.safetensors" % s), {k: v.float() for k, v in g.items()})
        write_adapter_config(pm, out)

        sample_keys = [peft_key("model.layers.0.self_attn.q_proj", "A"),
                       peft_key("model.layers.0.self_attn.q_proj", "B"),
                       peft_key("model.layers.4.mlp.down_proj", "A"),
                       peft_key("model.layers.4.mlp.down_proj", "B")]
        info = {
            "r": R,
            "lora_alpha": ALPHA,
            "lora_scaling": ALPHA / R,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": TARGETS,
            "lr": LR,
            "lr_schedule": "constant (no warmup, no decay)",
            "weight_decay": WD,
            "betas": list(BETAS),
            "eps": EPS,
            "max_grad_norm": max_norm,
            "gradient_accumulation_steps": len(windows[0]),
            "token_weighted": token_weighted,
            "optimizer_steps": len(windows),
            "micro_batches_per_step": windows,
            "losses": losses,
            "grad_norms": norms,
            "clip_coefs": coefs if max_norm is not None else None,
            "lora_grad_sample": {("step0:" + k): [rc.f(x) for x in grads[0][k].flatten()[:4]]
                                 for k in sample_keys},
            "min_abs_grad": [min(float(g[k].abs().min()) for k in g) for g in grads],
            "num_grad_elements": sum(int(t.numel()) for t in init.values()),
            "num_grad_elements_abs_below": [{"%g" % th: sum(int((g[k].abs() < th).sum()) for k in g)
                                             for th in (1e-6, 1e-5, 1e-4)} for g in grads],
            "micro_batches": [{"index": k, "lengths": MICRO_BATCHES[k][1],
                               "num_target_tokens": int((batches[k][1][:, 1:] != -100).sum())} for k in used],
            "base_model": "stories260K-hf (tied embeddings, vocab 512, dim 64, 5 layers, 8 heads, 4 kv heads)",
            "data": "T=24, ids uniform in [3,512) seeded, BOS=1 at position 0, row 1 right-padded with id 0 "
                    "(attention_mask 0); labels = input_ids with -100 on padding and on positions 0..4",
            "adapter_init": "A ~ U(-1/sqrt(in), 1/sqrt(in)), B ~ N(0, 0.02), float32, seed 3001",
            "loss_definition": ("token_weighted: sum of target-token NLL over the window / total target tokens"
                                if token_weighted else
                                "per micro-batch HF causal-LM mean loss / gradient_accumulation_steps, "
                                "gradients summed (transformers < 4.46)"),
            "losses_definition": "per optimizer step, the loss the HF Trainer logs (sum over the window of "
                                 "the per-micro-batch backward losses), computed at the parameters before "
                                 "that step",
            "grad_norms_definition": "L2 norm over all LoRA parameters of the accumulated gradient, before "
                                     "clipping (what clip_grad_norm_ returns)",
            "clip_rule": "coef = max_grad_norm / (total_norm + 1e-6), gradients multiplied by coef when < 1",
            "adamw": "torch.optim.AdamW (decoupled: p *= 1 - lr*wd; m,v updated; "
                     "p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)), amsgrad false",
            "reference": "transformers %s LlamaForCausalLM + PEFT %s LoRA on torch %s, float64 compute "
                         "(RMSNorm/softmax in float64, RoPE angles float32 as HF), torch.optim.AdamW; "
                         "stored as float32" % (vers["transformers"], vers.get("peft"), vers["torch"]),
            "check_vs_plain_torch": {"max_abs_loss_diff": d_loss, "max_rel_grad_norm_diff": d_norm,
                                     "max_grad_diff_rel_to_tensor_max": d_grad,
                                     "max_abs_adapter_after_diff": d_after},
            "versions": vers,
        }
        rc.write_json(os.path.join(out, "golden.json"), info)
        print("%-15s losses=%s grad_norms=%s coefs=%s min|g|=%s  check: dloss=%.1e dnorm=%.1e dgrad=%.1e "
              "dafter=%.1e" % (name, ["%.6f" % x for x in losses], ["%.5f" % x for x in norms],
                               coefs or "-", ["%.2e" % x for x in info["min_abs_grad"]],
                               d_loss, d_norm, d_grad, d_after))


if __name__ == "__main__":
    main()
