#!/usr/bin/python3
"""Check that an adapter folder loads in PEFT: check_peft_adapter.py ADAPTER_DIR BASE_DIR

Loads BASE_DIR with transformers AutoModelForCausalLM (float32), then PeftModel.from_pretrained(ADAPTER_DIR).
Fails (exit 1) on: an adapter tensor key that PEFT does not expect, an expected LoRA key that the file lacks,
any shape mismatch, a value that did not arrive in the model unchanged, or any load exception.
Prints "OK <n> tensors loaded" on success.  Needs transformers + peft (see tools/README.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_common as rc  # noqa: E402
from reference_common import torch  # noqa: E402


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    adapter_dir, base_dir = sys.argv[1], sys.argv[2]
    from transformers import AutoModelForCausalLM
    from peft import PeftConfig, PeftModel
    from peft.utils import get_peft_model_state_dict

    st_path = os.path.join(adapter_dir, "adapter_model.safetensors")
    bin_path = os.path.join(adapter_dir, "adapter_model.bin")
    if os.path.exists(st_path):
        from safetensors import safe_open
        with safe_open(st_path, framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != "pt":
                fail("safetensors __metadata__ format is %r, expected 'pt'" % meta.get("format"))
        file_sd = rc.load_file(st_path)
    elif os.path.exists(bin_path):
        file_sd = torch.load(bin_path, map_location="cpu")
    else:
        fail("no adapter_model.safetensors or adapter_model.bin in %s" % adapter_dir)

    try:
        cfg = PeftConfig.from_pretrained(adapter_dir)
    except Exception as e:  # noqa: BLE001
        fail("adapter_config.json does not load: %r" % (e,))
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    try:
        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    except Exception as e:  # noqa: BLE001
        fail("PeftModel.from_pretrained raised %s: %s" % (type(e).__name__, e))

    # What PEFT would save for this config/model = the keys it expects.
    expected = get_peft_model_state_dict(model, save_embedding_layers=False)
    missing = sorted(set(expected) - set(file_sd))
    unexpected = sorted(set(file_sd) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(file_sd) if tuple(expected[k].shape) != tuple(file_sd[k].shape))
    changed = sorted(k for k in set(expected) & set(file_sd)
                     if k not in bad_shape and not torch.equal(expected[k].float(), file_sd[k].float()))
    problems = []
    if missing:
        problems.append("missing keys (%d): %s" % (len(missing), missing[:10]))
    if unexpected:
        problems.append("unexpected keys (%d): %s" % (len(unexpected), unexpected[:10]))
    if bad_shape:
        problems.append("shape mismatch: %s" % ["%s file %s vs model %s" % (k, tuple(file_sd[k].shape),
                                                                             tuple(expected[k].shape))
                                                 for k in bad_shape[:10]])
    if changed:
        problems.append("values not loaded unchanged: %s" % changed[:10])
    if problems:
        fail("; ".join(problems))
    # A forward pass must run.
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3, 4]]) % base.config.vocab_size
        out = model(input_ids=ids)
        if not torch.isfinite(out.logits).all():
            fail("non-finite logits with the adapter")
    print("OK %d tensors loaded (peft_type=%s, r=%s, lora_alpha=%s, target_modules=%s)" % (
        len(file_sd), cfg.peft_type, getattr(cfg, "r", None), getattr(cfg, "lora_alpha", None),
        sorted(getattr(cfg, "target_modules", None) or [])))


if __name__ == "__main__":
    main()
