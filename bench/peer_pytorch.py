#!/usr/bin/env python3
"""The PyTorch peer of bench_train_step: the same LoRA training step on the same shapes.

HF transformers LlamaForCausalLM (eager attention, random weights) + PEFT LoRA (get_peft_model) +
torch.optim.AdamW over the LoRA parameters only, as FastChat's train_lora.py runs it without DeepSpeed
(fastchat-spec 1.8): base weights fp32, LoRA fp32, and with --dtype bf16 the step runs under
torch.autocast("cpu", bfloat16). --base-dtype bf16 instead stores the frozen weights in bf16 (LoRA
kept fp32), closer to what zerolora's --bf16 keeps in memory.

One step = zero_grad, forward with labels (HF's shifted mean cross-entropy), backward, AdamW step.
Timing: one warm-up step, then the median of --steps steps. Peak RSS: resource.getrusage ru_maxrss of
this process. Prints a table line and one JSON line in bench_train_step's format.

    python3 bench/peer_pytorch.py --preset tinyllama-1.1b --seq 512 --batch 1 --dtype bf16 \
        --lora-r 8 --lora-targets q_proj,v_proj [--checkpointing] [--steps 3] [--threads 0]

transformers + peft come from /opt/zerolora-refdeps (or $ZEROLORA_REFDEPS) when installed there.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

REFDEPS = os.environ.get("ZEROLORA_REFDEPS", "/opt/zerolora-refdeps")
if os.path.isdir(REFDEPS):
    sys.path.insert(0, REFDEPS)

import torch  # noqa: E402

PRESETS = {  # the same shapes as src/model/random_model.cpp preset_config
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "small": dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
}
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tinyllama-1.1b", choices=sorted(PRESETS))
    p.add_argument("--layers", type=int, default=0, help="0 = the preset's")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    p.add_argument("--base-dtype", default="auto", choices=["auto", "f32", "bf16"],
                   help="frozen weight storage; auto = f32 (HF Trainer --bf16 semantics: autocast over fp32 weights)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--lora-targets", default="q_proj,v_proj", help="comma list or 'all'")
    p.add_argument("--checkpointing", action="store_true", help="HF gradient checkpointing (non-reentrant)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--gemm", action="store_true",
                   help="also probe torch's linear GFLOP/s on the model's shapes (bf16 is very slow on AVX2 CPUs)")
    p.add_argument("--json-only", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: the model on GPU 0 with SDPA attention, bf16 autocast on cuda; peak GPU memory from "
                        "torch.cuda.max_memory_allocated")
    return p.parse_args()


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    shape = dict(PRESETS[args.preset])
    if args.layers > 0:
        shape["num_hidden_layers"] = args.layers
    config = LlamaConfig(**shape, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         initializer_range=0.02, use_cache=False,
                         attn_implementation="sdpa" if args.device == "cuda" else "eager")
    base_dtype = torch.bfloat16 if args.base_dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(base_dtype).to(args.device)  # HF's own init: N(0, 0.02)
    model.config.use_cache = False
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = ALL_TARGETS if args.lora_targets == "all" else [t for t in args.lora_targets.split(",") if t]
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.data = p.data.float()  # fp32 LoRA (and master) weights, as zerolora keeps them
                if "lora_B" in name:  # as bench_train_step: a non-zero B so the branch carries numbers
                    n = p.numel()
                    p.copy_((torch.arange(n, dtype=torch.float32) % 7 - 3).mul_(1e-3).view_as(p))
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    return model, config, trainable


def linear_params(config):
    C, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    HD = C // config.num_attention_heads
    KV = config.num_key_value_heads * HD
    per_layer = C * C * 2 + 2 * KV * C + 3 * I * C
    return per_layer * config.num_hidden_layers + V * C


def model_flops(config, args):
    """The same count as bench_train_step (docs/PERFORMANCE.md)."""
    B, T = args.batch, args.seq
    M = B * T
    C, I = config.hidden_size, config.intermediate_size
    HD = C // config.num_attention_heads
    KV = config.num_key_value_heads * HD
    lin = 4.0 * linear_params(config) * M
    attn = 6.0 * config.num_hidden_layers * B * T * T * config.num_attention_heads * HD
    shapes = {"q_proj": (C, C), "k_proj": (C, KV), "v_proj": (C, KV), "o_proj": (C, C),
              "gate_proj": (C, I), "up_proj": (C, I), "down_proj": (I, C)}  # (in, out)
    targets = ALL_TARGETS if args.lora_targets == "all" else [t for t in args.lora_targets.split(",") if t]
    lora = sum(6.0 * M * args.lora_r * sum(shapes[t]) for t in targets) * config.num_hidden_layers
    return lin + attn + lora


def gemm_rate(dtype, n, k, m, reps=3):
    x = torch.randn(m, k).to(dtype)
    w = torch.randn(n, k).mul_(0.02).to(dtype)
    torch.nn.functional.linear(x, w)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.nn.functional.linear(x, w)
        times.append(time.perf_counter() - t)
    return 2.0 * m * n * k / statistics.median(times) * 1e-9


def main():
    args = parse_args()
    torch.set_num_threads(args.threads if args.threads > 0 else (os.cpu_count() or 1))
    t0 = time.perf_counter()
    model, config, trainable = build_model(args)
    build_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    B, T = args.batch, args.seq
    ids = ((torch.arange(B * T, dtype=torch.int64) * 7919 + 17) % config.vocab_size).view(B, T).to(args.device)
    cuda = args.device == "cuda"
    autocast = args.dtype == "bf16"
    last_loss = [0.0]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        last_loss[0] = float(out.loss.detach())  # waits for the device

    t = time.perf_counter()
    step()
    warmup_s = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_gpu = torch.cuda.max_memory_allocated() if cuda else 0
    if cuda:
        print(f"  device {torch.cuda.get_device_name(0)}, peak GPU memory {peak_gpu / 2**30:.2f} GiB "
              f"(torch.cuda.max_memory_allocated)")
    med = statistics.median(times)
    flops = model_flops(config, args)
    achieved = flops / med * 1e-9
    gemm = {}
    if args.gemm:
        C, I = config.hidden_size, config.intermediate_size
        f1, f2 = 2.0 * B * T * I * C, 2.0 * B * T * C * C
        for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            m = B * T if dt == torch.float32 else min(B * T, 64)  # bf16 has no fast kernel on AVX2: keep it short
            r1, r2 = gemm_rate(dt, I, C, m), gemm_rate(dt, C, C, m)
            gemm[name] = (f1 + f2) / (f1 / r1 + f2 / r2)
    base = "bf16" if args.base_dtype == "bf16" else "f32"
    n_trainable = sum(p.numel() for p in trainable)
    if not args.json_only:
        print(f"peer_pytorch {args.preset} {args.dtype} (base weights {base}{', autocast bf16' if autocast else ''}) "
              f"layers={config.num_hidden_layers} B={B} T={T} lora={args.lora_targets}:r{args.lora_r} "
              f"ckpt={int(args.checkpointing)} threads={torch.get_num_threads()} torch {torch.__version__}")
        print(f"  step {med:.3f} s (median of {args.steps}, min {min(times):.3f}; warm-up {warmup_s:.3f} s; "
              f"build {build_s:.1f} s)  {B * T / med:.1f} tokens/s  loss {last_loss[0]:.4f}")
        print(f"  model {flops * 1e-9:.1f} GFLOP/step -> {achieved:.1f} GFLOP/s")
        if gemm:
            print(f"  torch linear probe: f32 {gemm['f32']:.1f} GFLOP/s, bf16 {gemm['bf16']:.2f} GFLOP/s")
        print(f"  peak RSS {peak_rss / 2**30:.2f} GiB, LoRA {n_trainable} params")
    print(json.dumps({
        "bench": "train_step", "impl": "pytorch", "preset": args.preset, "dtype": args.dtype, "base_dtype": base,
        "layers": config.num_hidden_layers, "batch": B, "seq": T, "lora_r": args.lora_r,
        "lora_targets": args.lora_targets, "checkpointing": args.checkpointing,
        "threads": torch.get_num_threads(), "steps": args.steps, "seconds_median": med, "seconds_min": min(times),
        "warmup_seconds": warmup_s, "tokens_per_s": B * T / med, "peak_rss_bytes": peak_rss, "loss": last_loss[0],
        "trainable_params": n_trainable, "model_gflop": flops * 1e-9, "achieved_gflops": achieved,
        "gemm_gflops_f32": gemm.get("f32", 0.0), "gemm_gflops_bf16": gemm.get("bf16", 0.0),
        "torch_version": torch.__version__, "device": args.device, "peak_gpu_bytes": peak_gpu,
    }))


if __name__ == "__main__":
    main()
