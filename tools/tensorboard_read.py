#!/usr/bin/env python3
"""Reference for zerolora's TensorBoard output (src/train/tensorboard.*), with the real packages.

  PYTHONPATH=/opt/zerolora-refdeps python3 tools/tensorboard_read.py golden
      Feeds tests/golden/tensorboard/entries.json to HF's own TensorBoardCallback.on_log (transformers,
      torch.utils.tensorboard.SummaryWriter) under a fixed clock and writes, beside entries.json,
      events.golden (the event file it wrote) and scalars.json (per entry: [tag, float32 value] in the order
      written). tests/train/test_tensorboard.cpp compares ours with both.
  PYTHONPATH=/opt/zerolora-refdeps python3 tools/tensorboard_read.py read PATH
      Reads an event file or a run folder (e.g. <output_dir>/runs/<date>_<host>) with tensorboard's
      EventAccumulator and prints {tag: [[step, value, wall_time], ...]} as JSON.
  PYTHONPATH=/opt/zerolora-refdeps python3 tools/tensorboard_read.py check PATH METRICS_JSONL
      Reads PATH as above and checks that it holds exactly the scalars HF would write for every entry of a
      zerolora metrics.jsonl (rewrite_logs, int/float values, at the entry's step); exits 1 on a difference.

Install: pip install --target /opt/zerolora-refdeps torch==2.4.1 transformers==4.44.2 tensorboard 'numpy<2'
(torch CPU or CUDA wheel: only its SummaryWriter is used).
"""
import json
import os
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "golden", "tensorboard")


def hf_scalars(entry):
    """What HF's TensorBoardCallback.on_log writes for one log entry: rewrite_logs, then int/float only."""
    from transformers.integrations.integration_utils import rewrite_logs

    logs = {k: v for k, v in entry.items() if k != "step"}  # HF adds "step" to log_history only
    return [(k, v) for k, v in rewrite_logs(logs).items() if isinstance(v, (int, float))]


def golden():
    from transformers import TrainingArguments
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import TrainerControl, TrainerState

    with open(os.path.join(GOLDEN, "entries.json")) as f:
        spec = json.load(f)
    clock = [spec["file_version_wall_time"]]
    real_time = time.time
    time.time = lambda: clock[0]  # SummaryWriter and EventFileWriter stamp events with time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, logging_dir=os.path.join(tmp, "runs"), report_to=["tensorboard"])
            callback = TensorBoardCallback()
            state = TrainerState()
            control = TrainerControl()
            callback._init_summary_writer(args)
            scalars = []
            for log in spec["logs"]:
                clock[0] = log["wall_time"]
                state.global_step = log["entry"]["step"]
                logs = {k: v for k, v in log["entry"].items() if k != "step"}
                callback.on_log(args, state, control, logs=dict(logs))
                scalars.append([[k, struct.unpack("<f", struct.pack("<f", float(v)))[0]] for k, v in hf_scalars(log["entry"])])
            callback.tb_writer.close()
            files = [os.path.join(args.logging_dir, n) for n in os.listdir(args.logging_dir)]
            assert len(files) == 1, files
            with open(files[0], "rb") as f:
                data = f.read()
    finally:
        time.time = real_time
    with open(os.path.join(GOLDEN, "events.golden"), "wb") as f:
        f.write(data)
    with open(os.path.join(GOLDEN, "scalars.json"), "w") as f:
        json.dump(scalars, f, indent=1)
        f.write("\n")
    print(f"wrote events.golden ({len(data)} bytes) and scalars.json ({sum(map(len, scalars))} scalars)")


def read(path):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [[e.step, e.value, e.wall_time] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def check(path, metrics_jsonl):
    got = read(path)
    want = {}
    with open(metrics_jsonl) as f:
        for line in f:
            if line.strip():
                entry = json.loads(line)
                for tag, v in hf_scalars(entry):
                    want.setdefault(tag, []).append([entry["step"], struct.unpack("<f", struct.pack("<f", float(v)))[0]])
    bad = 0
    for tag in sorted(set(got) | set(want)):
        g = [[s, v] for s, v, _ in got.get(tag, [])]
        if g != want.get(tag, []):
            print(f"{tag}: tensorboard read {g}, HF would write {want.get(tag)}")
            bad += 1
    print(f"{len(want)} tags, {sum(map(len, want.values()))} scalars: {'all equal' if not bad else f'{bad} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "golden":
        golden()
    elif len(sys.argv) == 3 and sys.argv[1] == "read":
        print(json.dumps(read(sys.argv[2]), indent=1))
    elif len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
