#!/usr/bin/env python3
"""HF Trainer checkpoints <-> zerolora, both ways, on stories260K (goldens: tests/golden/hf_checkpoint/).

  PYTHONPATH=/opt/zerolora-refdeps python3 tools/hf_checkpoint_roundtrip.py make [--base DIR]
      Trains a LoRA adapter (PEFT) with the real HF Trainer (float32, CPU) for 8 steps on one fixed batch of
      random tokens (4 rows = the whole data set, so every step sees every row: the sampler's row order
      changes only the summation order), saving checkpoint-3 and checkpoint-6. Then resumes a fresh Trainer
      from checkpoint-3 (trainer.train(resume_from_checkpoint=...)) and logs steps 4..8. Writes:
        checkpoint-3/     HF's folder as saved (adapter, optimizer.pt, scheduler.pt, rng_state.pth,
                          trainer_state.json, training_args.bin, README.md)
        batch.safetensors input_ids, labels, attention_mask (I32 [4, 32])
        adapter_init.safetensors, adapter_step6.safetensors, adapter_step8.safetensors (PEFT key names)
        golden.json       hyper-parameters; losses/grad_norms/learning_rates of the straight run (steps
                          1..8) and of the resumed run (steps 4..8); what optimizer.pt/scheduler.pt hold
  PYTHONPATH=/opt/zerolora-refdeps python3 tools/hf_checkpoint_roundtrip.py hf-resumes-ours DIR
      DIR holds checkpoint-3 and checkpoint-6 written by zerolora (the C++ test HfCheckpoint.ResumesAndHfResumesOurs
      writes them when ZEROLORA_HF_ROUNDTRIP_OUT=DIR). HF Trainer resumes from each: the optimizer/scheduler
      state it loads is compared with what zerolora saved (exactly), and the losses of the steps after it
      with HF's own continuation (golden.json). Writes tests/golden/hf_checkpoint/hf_resumes_ours.json and
      exits 1 when a check fails.
Deterministic: one thread, fixed seeds.
Install: pip install --target /opt/zerolora-refdeps torch==2.4.1 transformers==4.44.2 peft==0.12.0
accelerate==0.33.0 'numpy<2' (PyPI's torch wheel; only its CPU path is used).
"""
import copy
import json
import os
import shutil
import sys
import tempfile

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.normpath(os.path.join(HERE, "..", "tests", "golden", "hf_checkpoint"))
BASE_DEFAULT = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "models", "stories260K-hf"))

TARGETS = ["v_proj", "q_proj", "down_proj", "o_proj", "up_proj", "k_proj", "gate_proj"]  # PEFT stores a set
R, ALPHA = 4, 8
LR, WARMUP, MAX_STEPS, SAVE_STEPS = 5e-3, 2, 8, 3
WEIGHT_DECAY, MAX_GRAD_NORM = 0.01, 1.0
ROWS, T, PROMPT = 4, 32, 6
SEED = 1234


def make_batch(vocab):
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, vocab, (ROWS, T), generator=g)
    ids[:, 0] = 1  # BOS
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    mask = torch.ones(ROWS, T, dtype=torch.long)
    # row 3 is shorter: 20 tokens, then padding (id 0, no attention, no loss)
    ids[3, 20:] = 0
    labels[3, 20:] = -100
    mask[3, 20:] = 0
    return ids, labels, mask


class Rows(torch.utils.data.Dataset):
    def __init__(self, ids, labels, mask):
        self.ids, self.labels, self.mask = ids, labels, mask

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i], "attention_mask": self.mask[i]}


def make_model(base):
    torch.manual_seed(SEED)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def adapter_tensors(model):
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def make_trainer(model, data, out):
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=ROWS, max_steps=MAX_STEPS, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=WARMUP, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM,
        logging_steps=1, save_steps=SAVE_STEPS, save_strategy="steps", report_to=[], seed=SEED, data_seed=SEED,
        use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, save_safetensors=True,
        disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=data)


def train_logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


def make(base):
    os.makedirs(GOLDEN, exist_ok=True)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(base).vocab_size
    ids, labels, mask = make_batch(vocab)
    data = Rows(ids, labels, mask)
    save_file({"input_ids": ids.to(torch.int32).contiguous(), "labels": labels.to(torch.int32).contiguous(),
               "attention_mask": mask.to(torch.int32).contiguous()}, os.path.join(GOLDEN, "batch.safetensors"))
    with tempfile.TemporaryDirectory() as tmp:
        straight_dir, resumed_dir = os.path.join(tmp, "straight"), os.path.join(tmp, "resumed")
        model = make_model(base)
        init = adapter_tensors(model)
        # PEFT's init draws A from torch's global generator; the golden fixes it so the C++ side can start equal
        save_file(init, os.path.join(GOLDEN, "adapter_init.safetensors"), metadata={"format": "pt"})
        trainer = make_trainer(model, data, straight_dir)
        trainer.train()
        straight = train_logs(trainer)
        save_file(adapter_tensors(model), os.path.join(GOLDEN, "adapter_step8.safetensors"), metadata={"format": "pt"})
        ck6 = load_file(os.path.join(straight_dir, "checkpoint-6", "adapter_model.safetensors"))
        save_file(ck6, os.path.join(GOLDEN, "adapter_step6.safetensors"), metadata={"format": "pt"})

        # HF's own resume from checkpoint-3
        model2 = make_model(base)
        trainer2 = make_trainer(model2, data, resumed_dir)
        shutil.copytree(os.path.join(straight_dir, "checkpoint-3"), os.path.join(resumed_dir, "checkpoint-3"))
        trainer2.train(resume_from_checkpoint=os.path.join(resumed_dir, "checkpoint-3"))
        resumed = [e for e in train_logs(trainer2) if e["step"] > 3]

        dst = os.path.join(GOLDEN, "checkpoint-3")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(os.path.join(straight_dir, "checkpoint-3"), dst)
        opt = torch.load(os.path.join(dst, "optimizer.pt"), weights_only=True)
        sch = torch.load(os.path.join(dst, "scheduler.pt"), weights_only=True)

    golden = {
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "peft": __import__("peft").__version__},
        "r": R, "lora_alpha": ALPHA, "target_modules": sorted(TARGETS), "learning_rate": LR,
        "lr_scheduler_type": "linear", "warmup_steps": WARMUP, "max_steps": MAX_STEPS, "save_steps": SAVE_STEPS,
        "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "betas": [0.9, 0.999], "eps": 1e-8,
        "straight": [{k: e[k] for k in ("step", "loss", "grad_norm", "learning_rate")} for e in straight],
        "resumed": [{k: e[k] for k in ("step", "loss", "grad_norm", "learning_rate")} for e in resumed],
        "optimizer_pt": {
            "param_groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]],
            "num_states": len(opt["state"]),
            "step": float(opt["state"][0]["step"]),
            "exp_avg_sum": float(sum(s["exp_avg"].double().sum() for s in opt["state"].values())),
            "exp_avg_sq_sum": float(sum(s["exp_avg_sq"].double().sum() for s in opt["state"].values())),
        },
        "scheduler_pt": {k: v for k, v in sch.items()},
    }
    with open(os.path.join(GOLDEN, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True, default=str)
        f.write("\n")
    for e in straight:
        print("straight", e["step"], e["loss"], e["grad_norm"], e["learning_rate"])
    for e in resumed:
        print("resumed ", e["step"], e["loss"], e["grad_norm"], e["learning_rate"])


def hf_resumes_ours(ours, base):
    with open(os.path.join(GOLDEN, "golden.json")) as f:
        golden = json.load(f)
    hf = {e["step"]: e for e in golden["resumed"]}
    from transformers import AutoConfig

    ids, labels, mask = make_batch(AutoConfig.from_pretrained(base).vocab_size)
    data = Rows(ids, labels, mask)
    report, ok = {}, True
    for step in (3, 6):
        src = os.path.join(ours, f"checkpoint-{step}")
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, f"checkpoint-{step}")
            shutil.copytree(src, dst)
            model = make_model(base)
            trainer = make_trainer(model, data, tmp)
            loaded = {}
            # what HF's _load_optimizer_and_scheduler put into the optimizer and scheduler, before the first step
            real_load = trainer._load_optimizer_and_scheduler

            def spy(checkpoint):
                real_load(checkpoint)
                # deep copies: the optimizer's steps update these tensors in place afterwards
                loaded["optimizer"] = copy.deepcopy(trainer.optimizer.state_dict())
                loaded["scheduler"] = copy.deepcopy(trainer.lr_scheduler.state_dict())

            trainer._load_optimizer_and_scheduler = spy
            trainer.train(resume_from_checkpoint=dst)
            saved_opt = torch.load(os.path.join(src, "optimizer.pt"), weights_only=True)
            saved_sch = torch.load(os.path.join(src, "scheduler.pt"), weights_only=True)
            st_loaded, st_saved = loaded["optimizer"]["state"], saved_opt["state"]
            same_state = len(st_loaded) == len(st_saved) and all(
                torch.equal(st_loaded[i][k].cpu(), st_saved[i][k]) for i in st_saved for k in ("exp_avg", "exp_avg_sq", "step"))
            sched_ok = loaded["scheduler"]["last_epoch"] == step and loaded["scheduler"]["_last_lr"] == saved_sch["_last_lr"]
            lr_ok = abs(loaded["optimizer"]["param_groups"][0]["lr"] - saved_sch["_last_lr"][0]) < 1e-15
            steps = [e for e in train_logs(trainer) if e["step"] > step]
            # our steps 4..step were computed by zerolora (f32, its own kernels); HF continues from them. HF logs
            # the loss rounded to 4 decimals (compared to 1e-4 + 1e-5 relative) and the gradient norm unrounded
            # (compared to 1e-5 relative: the f32 rounding carried in the parameters, observed ~1e-7)
            diffs = [abs(e["grad_norm"] - hf[e["step"]]["grad_norm"]) / abs(hf[e["step"]]["grad_norm"]) for e in steps]
            losses_ok = len(steps) == MAX_STEPS - step and max(diffs) < 1e-5 and all(
                abs(e["loss"] - hf[e["step"]]["loss"]) <= 1e-4 + 1e-5 * abs(e["loss"]) for e in steps)
            report[f"checkpoint-{step}"] = {
                "optimizer_state_loaded_exactly": same_state, "scheduler_state_loaded": sched_ok,
                "param_group_lr_is_last_lr": lr_ok, "num_param_states": len(st_saved),
                "continuation": [{"step": e["step"], "loss": e["loss"], "hf_own_loss": hf[e["step"]]["loss"],
                                  "grad_norm": e["grad_norm"], "hf_own_grad_norm": hf[e["step"]]["grad_norm"],
                                  "grad_norm_rel_diff": d} for e, d in zip(steps, diffs)],
                "continuation_matches_hf": losses_ok}
            ok = ok and same_state and sched_ok and lr_ok and losses_ok
    report["all_ok"] = ok
    with open(os.path.join(GOLDEN, "hf_resumes_ours.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    argv = sys.argv[1:]
    base = BASE_DEFAULT
    if "--base" in argv:
        i = argv.index("--base")
        base = argv[i + 1]
        del argv[i:i + 2]
    if argv == ["make"]:
        make(base)
    elif len(argv) == 2 and argv[0] == "hf-resumes-ours":
        sys.exit(hf_resumes_ours(argv[1], base))
    else:
        sys.exit(__doc__)
