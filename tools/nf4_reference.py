#!/usr/bin/python3
"""NF4 + double quantisation as bitsandbytes does it (deepspeed-peft-spec §5), in numpy float32, and the
goldens that tests/kernels/test_nf4.cpp compares the C++ kernels with bit for bit.

bitsandbytes itself is not installed; this is its published algorithm (functional.py quantize_4bit /
quantize_blockwise / create_dynamic_map, csrc/kernels.cu kQuantizeBlockwise, dQuantizeNF4, dQuantize,
kDequantizeBlockwise), written out step by step:

  first level (quantize_4bit, quant_type "nf4", blocksize 64)
    flatten row-major; per block of 64 (the last one partial): absmax = max |w| (fp32);
    x = w * (1 / absmax)             -- a reciprocal, then a product, as the CUDA kernel does
    q = number of thresholds t_j < x, t_j = the literals of bitsandbytes' dQuantizeNF4 decision tree
        (the midpoints of code[j], code[j+1], see NF4_TREE_LITERALS); NaN (absmax 0) -> 0
    byte k = q[2k] << 4 | q[2k+1]; an odd count is padded with the code of the value 0.0
  double quantisation (compress_statistics=True)
    offset = mean(absmax), rounded once to fp32 (torch's fp32 .mean() sums in fp32 in a device-dependent
             order and can differ in the last bit; the offset is stored, so a checkpoint stays consistent)
    c = absmax - offset (fp32)
    per block of 256 absmax values: absmax2 = max |c|; x = c * (1 / absmax2)
    qabsmax = index of the nearest value of the signed 8-bit dynamic map (number of map midpoints < x;
              checked against an emulation of the CUDA dQuantize binary search below); NaN -> 0
  dequantisation
    absmax' = fp32(dynamic_map[qabsmax] * absmax2) + offset      (two fp32 roundings, no FMA)
    w'      = fp32(nf4_code[q] * absmax')

The dynamic map is bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) run as
written, with torch (its torch.linspace(.., float32) values decide the last bits of the map).

Writes tests/golden/nf4/: manifest.json (shapes, offsets, file names), nf4_code.f32, dynamic_map.f32 and per
case <name>.{input,absmax,absmax2,dequant}.f32 / <name>.{packed,absmax_q}.u8
(raw little-endian). Also prints the dynamic map as a C++ table (--print-cpp-table).
Run: /usr/bin/python3 tools/nf4_reference.py   (about 1 s; reruns give byte-identical files)
"""
import json
import math
import os
import sys
from fractions import Fraction

import numpy as np
import torch

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "golden", "nf4")
BLOCK = 64
NESTED_BLOCK = 256

# deepspeed-peft-spec §5, index = 4-bit code
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0
], dtype=F32)

# The thresholds of bitsandbytes' dQuantizeNF4 decision tree (csrc/kernels.cu), as the float literals
# `0.8614784181118011f` etc. that nvcc (and any C++ compiler) rounds straight from decimal to fp32. Each
# literal is the double midpoint of two code values; for 4 of the 15 that midpoint is an exact fp32 tie, and
# the decimal -> fp32 rounding lands one ulp away from the fp32 midpoint (code[j] + code[j+1]) * 0.5f (and
# from np.float32(double), which rounds twice). So the literals are used, converted with one rounding.
NF4_TREE_LITERALS = [
    "0.03979014977812767", "0.3893125355243683", "0.6427869200706482", "0.8614784181118011", "0.5016634166240692",
    "0.2035212516784668", "0.2920137718319893", "0.1202552504837513", "-0.33967943489551544",
    "-0.13791173323988914", "-0.045525018125772476", "-0.23460740596055984", "-0.6106329262256622",
    "-0.4599952697753906", "-0.8480964004993439"]


def decimal_to_f32(text):
    """the fp32 nearest to the decimal text (ties to even), rounding once, as a C++ float literal."""
    exact = Fraction(text)
    guess = F32(float(text))
    candidates = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    def key(c):
        return (abs(Fraction(float(c)) - exact), int(np.array([c], dtype=F32).view(np.uint32)[0]) & 1)
    return min(candidates, key=key)


NF4_TREE_THRESHOLDS = np.sort(np.array([decimal_to_f32(t) for t in NF4_TREE_LITERALS], dtype=F32))


def create_normal_map_check():
    """bitsandbytes create_normal_map(offset=0.9677083, use_extra_value=True), with erfinv instead of scipy."""
    def ppf(p):
        return math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * p - 1.0, dtype=torch.float64)).item()
    v1 = [ppf(float(p)) for p in torch.linspace(0.9677083, 0.5, 9)[:-1]]
    v3 = [-ppf(float(p)) for p in torch.linspace(0.9677083, 0.5, 8)[:-1]]
    values = np.sort(np.array(v1 + [0.0] + v3))
    values /= values.max()
    assert np.abs(values - NF4_CODE.astype(np.float64)).max() < 1e-6, "NF4 code book does not match its construction"


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, as published."""
    data = []
    non_sign_bits = total_bits - (1 if signed else 1)
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    gap = 256 - len(data)
    for i in range(gap):
        data.append(0)
    data.sort()
    return torch.Tensor(data).numpy().astype(F32)


def midpoints(code):
    return ((code[:-1] + code[1:]) * F32(0.5)).astype(F32)


def nearest_by_midpoints(x, mids):
    """number of midpoints strictly below x; NaN -> 0 (what bitsandbytes' kernels return for 0 * inf)."""
    q = np.searchsorted(mids, x, side="left").astype(np.int64)
    q[np.isnan(x)] = 0
    return q


def cuda_dquantize(code, x):
    """bitsandbytes' dQuantize<0> (the CUDA binary search with midpoints), one value at a time."""
    pivot, upper_pivot, lower_pivot = 127, 255, 0
    lower, upper = F32(-1.0), F32(1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        if x > val:
            lower_pivot, lower = pivot, val
            pivot += i
        else:
            upper_pivot, upper = pivot, val
            pivot -= i
        val = code[pivot]
        i >>= 1
    if upper_pivot == 255:
        upper = code[upper_pivot]
    if lower_pivot == 0:
        lower = code[lower_pivot]
    if x > val:
        return upper_pivot if x > (upper + val) * F32(0.5) else pivot
    return lower_pivot if x < (lower + val) * F32(0.5) else pivot


def blockwise_absmax(x, block):
    n = x.size
    nb = (n + block - 1) // block
    padded = np.zeros(nb * block, dtype=F32)
    padded[:n] = np.abs(x)
    return padded.reshape(nb, block).max(axis=1).astype(F32)


def reciprocal(a):
    with np.errstate(divide="ignore"):
        return (F32(1.0) / a).astype(F32)


def quantize_nf4(w, dynamic_map):
    x = w.reshape(-1).astype(F32)
    n = x.size
    nb = (n + BLOCK - 1) // BLOCK
    absmax = blockwise_absmax(x, BLOCK)
    inv = reciprocal(absmax)
    padded = np.zeros(nb * BLOCK, dtype=F32)  # 0.0 pads the last block, hence also an odd count
    padded[:n] = x
    with np.errstate(invalid="ignore"):
        scaled = (padded.reshape(nb, BLOCK) * inv[:, None]).reshape(-1).astype(F32)
    q = nearest_by_midpoints(scaled, NF4_TREE_THRESHOLDS)
    q = q[:n + (n % 2)]
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)

    # double quantisation of the absmax values
    offset = F32(math.fsum(float(a) for a in absmax) / nb)
    centered = (absmax - offset).astype(F32)
    absmax2 = blockwise_absmax(centered, NESTED_BLOCK)
    inv2 = reciprocal(absmax2)
    nn_ = absmax2.size
    padded_c = np.zeros(nn_ * NESTED_BLOCK, dtype=F32)
    padded_c[:nb] = centered
    with np.errstate(invalid="ignore"):
        scaled_c = (padded_c.reshape(nn_, NESTED_BLOCK) * inv2[:, None]).reshape(-1)[:nb].astype(F32)
    absmax_q = nearest_by_midpoints(scaled_c, midpoints(dynamic_map))
    for v, qv in zip(scaled_c, absmax_q):  # the CUDA search picks the same code (no exact ties here)
        assert cuda_dquantize(dynamic_map, v) == qv
    absmax_q = absmax_q.astype(np.uint8)

    absmax_deq = ((dynamic_map[absmax_q] * np.repeat(absmax2, NESTED_BLOCK)[:nb]).astype(F32) + offset).astype(F32)
    codes = q[:n]
    dequant = (NF4_CODE[codes] * np.repeat(absmax_deq, BLOCK)[:n]).astype(F32)
    return dict(packed=packed, absmax=absmax, absmax_q=absmax_q, absmax2=absmax2, offset=offset,
                dequant=dequant)


def make_cases():
    cases = []
    # 185 elements: two full blocks and a partial one, odd count (padded low nibble)
    rng = np.random.default_rng(1)
    cases.append(("odd_partial", 5, 37, (rng.standard_normal((5, 37)) * 0.02).astype(F32)))
    # 12 blocks: an all-zero block, a block with one non-zero value, values exactly at +-absmax and 0,
    # values on the NF4 decision thresholds
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((8, 96)) * 0.05).astype(F32)
    flat = w.reshape(-1)
    flat[3 * BLOCK:4 * BLOCK] = 0.0
    flat[5 * BLOCK:6 * BLOCK] = 0.0
    flat[5 * BLOCK + 17] = -0.125
    flat[7 * BLOCK:7 * BLOCK + 8] = [0.5, -0.5, 0.0, 0.25, -0.25, 0.5, 0.0, -0.0]
    flat[7 * BLOCK + 8:8 * BLOCK] = 0.0
    # block 8 has absmax 1, so its values are their own normalised values: every decision threshold, the fp32
    # midpoint where that differs from the threshold by an ulp, and the next float above the threshold
    flat[8 * BLOCK] = 1.0
    for j, t in enumerate(NF4_TREE_THRESHOLDS):
        flat[8 * BLOCK + 1 + 3 * j:8 * BLOCK + 4 + 3 * j] = [t, midpoints(NF4_CODE)[j], np.nextafter(t, F32(2))]
    cases.append(("zero_block", 8, 96, w))
    # 269 blocks -> two nested blocks (256 + 13), rows with very different scales (outlier rows)
    rng = np.random.default_rng(3)
    scales = np.exp(rng.standard_normal((66, 1)) * 1.5).astype(F32) * F32(0.01)
    cases.append(("two_nested", 66, 260, (rng.standard_normal((66, 260)) * scales).astype(F32)))
    # a single full block: offset = absmax, absmax2 = 0 (the NaN path of the nested quantisation)
    rng = np.random.default_rng(4)
    cases.append(("single_block", 1, 64, rng.uniform(-3, 3, (1, 64)).astype(F32)))
    return cases


def hex_literal(v):
    """a C++ hex float literal, exact: -0x1.fc6666p-1f"""
    mantissa, exponent = float(v).hex().split("p")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}f"


def write(path, array):
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())


def main():
    create_normal_map_check()
    ulps = (NF4_TREE_THRESHOLDS.view(np.int32) - midpoints(NF4_CODE).view(np.int32))
    assert np.abs(ulps).max() <= 1 and np.count_nonzero(ulps) == 4, ulps  # see NF4_TREE_LITERALS
    dynamic_map = create_dynamic_map()
    assert dynamic_map[127] == 0 and dynamic_map[255] == 1.0 and (np.diff(dynamic_map) > 0).all()
    if "--print-cpp-table" in sys.argv:
        for r in range(0, 256, 6):
            print("    " + " ".join(hex_literal(v) + "," for v in dynamic_map[r:r + 6]))
        return

    os.makedirs(OUT_DIR, exist_ok=True)
    write(os.path.join(OUT_DIR, "nf4_code.f32"), NF4_CODE)
    write(os.path.join(OUT_DIR, "dynamic_map.f32"), dynamic_map)
    manifest = {"generator": "tools/nf4_reference.py", "blocksize": BLOCK, "nested_blocksize": NESTED_BLOCK,
                "nf4_code": "nf4_code.f32", "dynamic_map": "dynamic_map.f32", "cases": []}
    for name, N, K, w in make_cases():
        r = quantize_nf4(w, dynamic_map)
        files = {}
        for key, arr in [("input", w.reshape(-1)), ("packed", r["packed"]), ("absmax", r["absmax"]),
                         ("absmax_q", r["absmax_q"]), ("absmax2", r["absmax2"]), ("dequant", r["dequant"])]:
            fname = f"{name}.{key}.{'u8' if arr.dtype == np.uint8 else 'f32'}"
            write(os.path.join(OUT_DIR, fname), arr)
            files[key] = fname
        offset_bits = int(np.array([r["offset"]], dtype=F32).view(np.uint32)[0])
        manifest["cases"].append({"name": name, "N": N, "K": K, "absmax_offset_bits": offset_bits,
                                  "absmax_offset": float(r["offset"]), "files": files})
        err = np.abs(r["dequant"] - w.reshape(-1)).max()
        print(f"{name}: N={N} K={K} blocks={r['absmax'].size} nested={r['absmax2'].size} "
              f"offset={float(r['offset']):.6g} max|w-w'|={err:.3g}")
    with open(os.path.join(OUT_DIR, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
