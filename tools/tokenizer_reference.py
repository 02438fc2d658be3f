#!/usr/bin/python3
"""Independent reference outputs (goldens) for zerolora's tokenizer and vicuna masking tests.

Writes small JSON files under tests/golden/tokenizer/, read by tests/tokenizer and tests/data.
CI never runs this script; rerun it by hand when the test strings change.

  bpe            Hugging Face `tokenizers` (PyPI) on the byte-level BPE tokenizer.json files in
                 ../shared/models: ids with and without special tokens, and decoded text.
                   /usr/bin/python3 -m pip install --target /tmp/tokbpe tokenizers
                   PYTHONPATH=/tmp/tokbpe /usr/bin/python3 tools/tokenizer_reference.py bpe
  tiny           trains tests/golden/tokenizer/tiny_llama_sp.model, a 600-piece SentencePiece BPE model
                 made like Llama's (byte fallback, identity normaliser, dummy prefix, spaces kept), on
                 synthetic vicuna-style text, and writes synthetic_conversations.json; tests use both
                 when ../shared is absent. Needs only python3-sentencepiece.
                   /usr/bin/python3 tools/tokenizer_reference.py tiny
  sentencepiece  transformers' slow LlamaTokenizer (the tokenizer FastChat trains with), pinned to
                 transformers 4.36.2, in both `legacy` modes, on the Llama-2, stories260K and tiny models;
                 plus FastChat train.py's `preprocess` (vicuna_v1.1 masking, fastchat-spec §2.4)
                 re-implemented here on top of it, run on ../shared/data/dummy_conversation.json (Llama-2)
                 and on synthetic_conversations.json (tiny model).
                   /usr/bin/python3 -m pip install --target /tmp/hf436 transformers==4.36.2 tokenizers==0.15.2 protobuf
                   PYTHONPATH=/tmp/hf436 /usr/bin/python3 tools/tokenizer_reference.py sentencepiece
Run from the repository root.
"""
import json
import os
import random
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
OUT = os.path.join(ROOT, "tests", "golden", "tokenizer")

FIXED_STRINGS = [
    "Hello world",
    "Hello, world! How's it going?",
    "I'm, you're, we've, they'll, she'd, it's, don't",
    "IT'S I'M WE'VE THEY'LL SHE'D",
    "'s'S'\u017f x'Re 'll'LL 'd'D 'x",
    "12345 1234567 3.14159 2024-01-01 \u0663\u0664\u0665 \u2460\u2461\u2462 \u00bd",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   spaces\tand\ttabs",
    "\n\nnewlines\r\n\r\nwindows\n",
    " \n \n  \n",
    "x  \n  y",
    "a\r\rb",
    "unicode: caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u03a9\u03bc\u03ad\u03b3\u03b1 \u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440 "
    "\u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \uc548\ub155\ud558\uc138\uc694 \u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",
    "emoji \U0001F600\U0001F44D\U0001F3FD \U0001F1EB\U0001F1F7 family \U0001F468\u200d\U0001F469\u200d\U0001F467",
    "combining e\u0301 vs \u00e9, A\u030a \u00c5, \ud55c vs \u1112\u1161\u11ab, q\u0323\u0307 \u1e0b\u0323",
    "code: def f(x):\n    return x**2  # comment\n",
    "URL https://example.com/a?b=c&d=e#f",
    "mixed123abc456 x1y2z3 a1234b",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <|endoftext|> spaced",
    "",
    " ",
    "a",
    "\u00a0nbsp\u3000ideographic\u2003em",
    "zero\u200bwidth",
    "control \x00\x01\x7f chars",
    "\u01c5 D\u017e titlecase",
    "long word: " + "supercalifragilisticexpialidocious" * 3,
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48",
    "\U0001D518\U0001D52B\U0001D526\U0001D520\U0001D52C\U0001D521\U0001D522 math",
    "!!!??? ... --- ,,, ;;",
    " !x ?y",
    "A chat between a curious user and an artificial intelligence assistant. USER: Who are you? ASSISTANT: I am Vicuna.</s>",
]

# Characters the random strings are drawn from: every class the pre-tokenizer regexes distinguish.
RANDOM_POOL = list("abcXYZ019 '\t\n\r.,!?-_") + ["'s", "'ll", "\u00e9", "e\u0301", "\u4f60", "\u0663", "\u00bd",
                                                   "\u3000", "\u00a0", "\U0001F600", "\u05e9", "  ", "\n\n",
                                                   "<|eot_id|>", "<|im_end|>", "\u017f", "\u0394", "\u2028"]


def test_strings():
    rng = random.Random(1234)
    strings = list(FIXED_STRINGS)
    for _ in range(60):
        n = rng.randint(1, 40)
        strings.append("".join(rng.choice(RANDOM_POOL) for _ in range(n)))
    return strings


def write(name, obj):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote", os.path.relpath(path, ROOT), file=sys.stderr)


def bpe():
    import tokenizers

    files = {
        "bpe_llama3.json": "models/llama3-tokenizer/tokenizer.json",
        "bpe_tiktoken_small.json": "models/tokenizer-fixtures/tiktoken_small.tokenizer.json",
        "bpe_qwen_style.json": "models/tokenizer-fixtures/tiny_bpe_qwen_style.tokenizer.json",
    }
    for out_name, rel in files.items():
        tok = tokenizers.Tokenizer.from_file(os.path.join(SHARED, rel))
        cases = []
        for s in test_strings():
            with_special = tok.encode(s, add_special_tokens=True).ids
            without = tok.encode(s, add_special_tokens=False).ids
            cases.append({
                "text": s,
                "ids": with_special,
                "ids_no_bos": without,
                "decoded": tok.decode(without, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(without, skip_special_tokens=True),
            })
        write(out_name, {"generator": f"tools/tokenizer_reference.py bpe (tokenizers {tokenizers.__version__})",
                         "tokenizer": rel, "cases": cases})


# ---- tiny SentencePiece model and synthetic conversations -------------------------------------------

WORDS = ("the a an user assistant model language help helpful answer question you I we are is was be can "
         "will name Vicuna LMSYS hello world nice day today what who how why where when good great thanks "
         "please sure okay yes no time data train trained researchers").split()


def synthetic_sentence(rng, lo, hi, end):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + rng.choice(end)


def synthetic_conversations(rng, n):
    rows = []
    for k in range(n):
        msgs = []
        for _ in range(rng.randint(1, 3)):
            msgs.append({"from": "human", "value": synthetic_sentence(rng, 2, 8, "?!.")})
            msgs.append({"from": "gpt", "value": synthetic_sentence(rng, 3, 15, ".!")})
        rows.append({"id": f"synthetic_{k}", "conversations": msgs})
    # the answer starts with characters that cannot join the separator's space (fastchat-spec §2.5)
    rows.append({"id": "synthetic_newline_answer", "conversations": [
        {"from": "human", "value": "Say hello"}, {"from": "gpt", "value": "\nHello"},
        {"from": "human", "value": "Again"}, {"from": "gpt", "value": "\u4f60\u597d"}]})
    return rows


def tiny():
    import io
    import sentencepiece as spm

    rng = random.Random(0)
    lines = []
    for conv in synthetic_conversations(rng, 3000):
        lines.append(vicuna_prompt(conv))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=600, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, character_coverage=1.0,
        num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tiny_llama_sp.model"), "wb") as f:
        f.write(model.getvalue())
    print("wrote tests/golden/tokenizer/tiny_llama_sp.model", file=sys.stderr)
    write("synthetic_conversations.json", synthetic_conversations(random.Random(7), 60))


# ---- transformers slow LlamaTokenizer + FastChat preprocess ------------------------------------------

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IGNORE = -100


def vicuna_prompt(conversation):
    """fastchat-spec §2.4 step 2 / §3.2: the vicuna_v1.1 ADD_COLON_TWO rendering."""
    roles = {"human": "USER", "gpt": "ASSISTANT"}
    source = conversation["conversations"]
    if roles[source[0]["from"]] != "USER":
        source = source[1:]
    ret = VICUNA_SYSTEM + " "
    for j, sentence in enumerate(source):
        role = roles[sentence["from"]]
        assert role == ["USER", "ASSISTANT"][j % 2]
        if sentence["value"]:
            ret += role + ": " + sentence["value"] + (" " if j % 2 == 0 else "</s>")
        else:
            ret += role + ":"
    return ret


def fastchat_preprocess(prompt, tok, max_len, offsets_legacy):
    """fastchat-spec §2.4 steps 3-5 for one prompt. offsets_legacy picks the offset rule (normally tok.legacy)."""
    ids = tok(prompt, max_length=max_len, truncation=True).input_ids
    pad = tok.unk_token_id
    labels = list(ids)
    total_len = sum(1 for i in ids if i != pad)
    sep = " ASSISTANT: "
    turns = prompt.split("</s>")
    cur_len = 1
    labels[0] = IGNORE
    for i, turn in enumerate(turns):
        if turn == "":
            break
        turn_len = len(tok(turn).input_ids)
        parts = turn.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        instruction_len = len(tok(parts[0]).input_ids) - 2
        if i != 0 and not offsets_legacy:
            instruction_len -= 1
        for k in range(cur_len, min(cur_len + instruction_len, len(labels))):
            labels[k] = IGNORE
        cur_len += turn_len
        if i != 0 and not offsets_legacy:
            cur_len -= 1
    for k in range(cur_len, len(labels)):
        labels[k] = IGNORE
    mismatch = cur_len < max_len and cur_len != total_len
    if mismatch:
        labels = [IGNORE] * len(labels)
    return ids, labels, mismatch


def spans(labels):
    out, start = [], None
    for k, v in enumerate(labels + [IGNORE]):
        if v != IGNORE and start is None:
            start = k
        elif v == IGNORE and start is not None:
            out.append([start, k])
            start = None
    return out


def crc_of_ids(ids):
    return zlib.crc32(b"".join(int(i).to_bytes(4, "little", signed=True) for i in ids))


def sentencepiece():
    import transformers
    from transformers import LlamaTokenizer

    models = {
        "llama2": "models/llama2-tokenizer/tokenizer.model",
        "stories260K": "models/stories260K-hf/tokenizer.model",
        "tiny": "tests/golden/tokenizer/tiny_llama_sp.model",
    }
    sp_strings = test_strings() + [
        "USER: x</s>USER: y", "a </s> b", " </s>a", "</s>", "<s>x</s>", "x<unk>y", "  two", " Hello",
        "\u2581already\u2581marked", "tab\tafter</s>\tx", "end with space ",
    ]
    result = {"generator": f"tools/tokenizer_reference.py sentencepiece (transformers {transformers.__version__})",
              "models": {}}
    for name, rel in models.items():
        per_mode = {}
        for legacy in (True, False):
            path = os.path.join(ROOT if rel.startswith("tests/") else SHARED, rel)
            tok = LlamaTokenizer(path, legacy=legacy)
            cases = []
            for s in sp_strings:
                ids = tok(s).input_ids
                cases.append({"text": s, "ids": ids})
            per_mode["legacy" if legacy else "non_legacy"] = cases
        result["models"][name] = {"model": rel, **per_mode}
    write("sentencepiece_slow_llama.json", result)

    # FastChat preprocess on the dummy data (Llama-2) and on the synthetic conversations (tiny model,
    # also truncated at 64 tokens), both modes, plus the other mode's offsets.
    dummy = json.load(open(os.path.join(SHARED, "data", "dummy_conversation.json")))
    write("vicuna_dummy_llama2.json", vicuna_golden(os.path.join(SHARED, models["llama2"]), models["llama2"], dummy,
                                                    512, result["generator"]))
    synthetic = json.load(open(os.path.join(OUT, "synthetic_conversations.json")))
    tiny_path = os.path.join(OUT, "tiny_llama_sp.model")
    write("vicuna_synthetic_tiny.json", vicuna_golden(tiny_path, models["tiny"], synthetic, 512, result["generator"]))
    write("vicuna_synthetic_tiny_truncated.json",
          vicuna_golden(tiny_path, models["tiny"], synthetic, 64, result["generator"]))


def vicuna_golden(model_path, model_name, data, max_len, generator):
    from transformers import LlamaTokenizer

    golden = {"generator": generator, "model": model_name, "model_max_length": max_len}
    for legacy in (True, False):
        tok = LlamaTokenizer(model_path, legacy=legacy)
        rows, mismatches, wrong_mode_mismatches = [], 0, 0
        for conv in data:
            prompt = vicuna_prompt(conv)
            ids, labels, mismatch = fastchat_preprocess(prompt, tok, max_len, legacy)
            mismatches += mismatch
            wrong_mode_mismatches += fastchat_preprocess(prompt, tok, max_len, not legacy)[2]
            rows.append({"id": conv["id"], "n": len(ids), "ids_crc32": crc_of_ids(ids), "mismatch": mismatch,
                         "spans": spans(labels)})
        key = "legacy" if legacy else "non_legacy"
        golden[key] = {"mismatches": mismatches, "mismatches_with_other_offsets": wrong_mode_mismatches, "rows": rows}
        print(f"{model_name} max_len {max_len} {key}: {mismatches} mismatches, {wrong_mode_mismatches} with the "
              f"other mode's offsets", file=sys.stderr)
    return golden


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "bpe":
        bpe()
    elif what == "tiny":
        tiny()
    elif what == "sentencepiece":
        sentencepiece()
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
