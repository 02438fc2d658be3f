#!/usr/bin/env bash
# The README's main job: installs, builds, then `zerolora demo` — a small random model, a byte-level BPE
# tokenizer and a synthetic conversation set made on the spot, 20 held-out questions answered before and after
# LoRA fine-tuning (the score, e.g. 0/20 -> 20/20), the loss curve, the adapter and the command to chat with it.
# Extra arguments go to `zerolora demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
ninja -C build -j2 zerolora
./build/zerolora demo --output_dir "${ZEROLORA_DEMO_DIR:-zerolora-demo}" "$@"
