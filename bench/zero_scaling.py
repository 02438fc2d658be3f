#!/usr/bin/env python3
"""ZeRO over MPI on this machine: tokens/s and bytes communicated, world 1 vs world 2, stages 2 and 3,
and peak RSS per rank for world 1, 2 and 4 in stage 3.

    bench/zero_scaling.py                         # TinyLlama-1.1B shape, 4 blocks, seq 512, 3 steps
    bench/zero_scaling.py --layers 22 --seq 128 --steps 1 --rss-only    # the full model's RSS per rank

The same global batch everywhere: world 1 runs micro-batch 2 on 2 threads, world 2 micro-batch 1 on
one thread per rank (the two cores split between the ranks). Model: `zerolora init-model --preset
tinyllama-1.1b` (random bf16 weights) with the Llama-2 tokenizer from ../shared, trained on FastChat's
dummy_conversation.json with packing (every row full). Every number comes from the run's own
trainer_state.json and zerolora_state.json: tokens/s (median over the steps after the first), `communication` (the ring bytes
each rank sent per step, measured by dist::Comm, and dist::zero_step_volume's prediction; stage 3 runs
with stage3_max_reuse_distance 0 so every part is gathered at each use and the two must agree) and
`peak_rss_bytes_per_rank`.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
MPIRUN = ["mpirun", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]


def run(cmd, env=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if p.returncode != 0:
        sys.exit("failed: " + " ".join(cmd) + "\n" + p.stdout[-3000:])
    return p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "zerolora"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration (median reported)")
    ap.add_argument("--rss-worlds", default="1,2,4", help="stage-3 peak RSS runs (1 step each)")
    ap.add_argument("--rss-only", action="store_true")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    tok = os.path.join(SHARED, "models", "llama2-tokenizer", "tokenizer.model")
    data = os.path.join(SHARED, "data", "dummy_conversation.json")
    if not (os.path.exists(tok) and os.path.exists(data)):
        sys.exit("needs ../shared (the Llama-2 tokenizer and FastChat's dummy_conversation.json) beside the checkout")
    if not os.path.exists(a.binary):
        sys.exit(a.binary + " not found: build first (cmake -S . -B build -G Ninja && ninja -C build zerolora)")
    work = a.workdir or tempfile.mkdtemp(prefix="zl-zero-bench-")
    model = os.path.join(work, "model")
    if not os.path.exists(os.path.join(model, "config.json")):
        run([a.binary, "init-model", "--preset", "tinyllama-1.1b", "--layers", str(a.layers), "--dtype", "bf16",
             "--out", model])
        shutil.copy(tok, os.path.join(model, "tokenizer.model"))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_WAIT_POLICY="passive")

    def train(world, stage, steps, tag):
        ds = os.path.join(work, f"ds_{stage}.json")
        with open(ds, "w") as f:
            json.dump({"zero_optimization": {"stage": stage, "overlap_comm": True, "stage3_max_reuse_distance": 0,
                                             "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                             "stage3_param_persistence_threshold": "auto"},
                       "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                       "gradient_accumulation_steps": "auto", "train_batch_size": "auto"}, f)
        out = os.path.join(work, tag)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [a.binary, "train", "--model_name_or_path", model, "--data_path", data, "--output_dir", out,
               "--bf16", "True", "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj", "--lora_dropout", "0",
               "--model_max_length", str(a.seq), "--packing", "True", "--max_steps", str(steps),
               "--logging_steps", "1", "--save_strategy", "no", "--deepspeed", ds,
               "--per_device_train_batch_size", str(2 // world if world <= 2 else 1),
               "--num_threads", str(max(1, 2 // world))]
        run((MPIRUN + ["-np", str(world)] if world > 1 else []) + cmd, env)
        with open(os.path.join(out, "trainer_state.json")) as f:
            st = json.load(f)
        tps = [e["tokens_per_second"] for e in st["log_history"] if "tokens_per_second" in e]
        z = st.get("zerolora", {})  # runs from before zerolora_state.json
        zpath = os.path.join(out, "zerolora_state.json")
        if os.path.exists(zpath):
            with open(zpath) as f:
                z = json.load(f)
        return {"world": world, "stage": stage, "tokens_per_s": statistics.median(tps[1:] or tps),
                "communication": z.get("communication"), "peak_rss_bytes_per_rank": z.get("peak_rss_bytes_per_rank"),
                "zero3_frozen_bytes": z.get("zero3_frozen_bytes")}

    gib = 1 << 30
    results = []
    if not a.rss_only:
        print(f"TinyLlama-1.1B shape, {a.layers} blocks, bf16, seq {a.seq} packed, global batch 2, LoRA r 8 q,v, "
              f"{a.steps} steps per run, {a.repeats} interleaved runs each")
        print("| stage | world x threads | tokens/s median (each run) | sent per step per rank (measured) | formula | "
              "peak RSS per rank |")
        print("|---|---|---|---|---|---|")
        configs = [(int(stage), world) for stage in a.stages.split(",") for world in (1, 2)]
        runs = {c: [] for c in configs}
        for rep in range(a.repeats):  # interleaved: s2w1, s2w2, s3w1, s3w2, s2w1, ...
            for stage, world in configs:
                runs[(stage, world)].append(train(world, stage, a.steps, f"s{stage}w{world}"))
        for stage, world in configs:
            rs = runs[(stage, world)]
            r = dict(rs[-1], tokens_per_s=statistics.median(x["tokens_per_s"] for x in rs),
                     tokens_per_s_runs=[x["tokens_per_s"] for x in rs])
            results.append(r)
            c = r["communication"] or {}
            sent = f"{c['bytes_sent_per_step'] / 1e6:.2f} MB" if c else "0 (one rank)"
            pred = f"{c['predicted_bytes_per_step'] / 1e6:.2f} MB" if c else "-"
            rss = ", ".join(f"{b / gib:.2f}" for b in r["peak_rss_bytes_per_rank"]) + " GiB"
            each = " / ".join(f"{t:.1f}" for t in r["tokens_per_s_runs"])
            print(f"| {stage} | {world} x {max(1, 2 // world)} | {r['tokens_per_s']:.1f} ({each}) | {sent} | {pred} | "
                  f"{rss} |", flush=True)
    rss_worlds = [int(w) for w in a.rss_worlds.split(",") if w]
    if rss_worlds:
        print(f"\nstage 3 peak RSS per rank, 1 step, seq {a.seq}, {a.layers} blocks:")
        print("| world | peak RSS per rank | frozen bytes on a rank (slices + persistent + gather buffers) | full frozen model |")
        print("|---|---|---|---|")
    for world in rss_worlds:
        r = train(world, 3, 1, f"rss{world}")
        results.append(r)
        f = r["zero3_frozen_bytes"]
        on_rank = (f["sharded"] + f["persistent"] + f["gather_buffers"]) / gib
        rss = ", ".join(f"{b / gib:.2f}" for b in r["peak_rss_bytes_per_rank"]) + " GiB"
        print(f"| {world} | {rss} | {on_rank:.2f} GiB ({f['sharded'] / gib:.2f} + {f['persistent'] / gib:.3f} + "
              f"{f['gather_buffers'] / gib:.2f}) | {f['full_model'] / gib:.2f} GiB |", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
