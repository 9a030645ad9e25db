#!/usr/bin/env python3
"""Static cost of the logits kernels' hot loops, from their SASS (docs/benchmarks.md).

Input: the output of `cuobjdump -sass` and `cuobjdump -res-usage` for the sm_90
code of kernels/c_api.cu (scripts/sass-report.sh produces both). For every
forward_kernel, backward_kernel and stats_kernel instantiation it finds the hot loop (the
innermost loop that holds the most 16-byte global loads) and reports, per logit
element: SASS instructions, MUFU instructions, the 16-byte loads a thread has
issued before it first uses a loaded register or stores, registers and spills;
then the predicted ceiling as a fraction of the copy rate on H100 and H200.
Exit status 1 when a budget is exceeded.
"""
import argparse
import re
import sys

# Budgets of SASS instructions per logit element, by kernel: the (16-bit,
# fp32) logits budgets without a soft-cap, then with one.
#   Without a soft-cap: the identity instantiations (the untransformed
#   kernels) and a scale, which folds into the FFMA's constant (issue 21).
#   With one (issue 21), a tanh per element: 16-bit logits use the MUFU's
#   tanh (one MUFU more) and are held to 8 SASS and 2 MUFU per element in the
#   forward (and the entropy), the backward to its budget plus the tanh and
#   the (1 - tanh^2) factor; float logits use tanhf, accurate to a few ulp
#   (docs/math.md 2.1): about twenty instructions and two MUFU more (its ex2
#   and reciprocal).
SASS_BUDGET = {
    # issue 10
    "forward": ((6.5, 9.0), (8.0, 32.0)),
    "backward": ((8.5, 10.0), (11.0, 36.0)),
    # issue 16: the per-token primitive's optional entropy pass (a second read
    # of the logits): per element one FFMA, one ex2, one max and one FFMA, the
    # forward's count plus one; held to the forward's budgets.
    "entropy": ((6.5, 9.0), (8.0, 32.0)),
    # issue 22: TRL 1.x's per-token statistics (stats_kernel<..., true>: the
    # entropy pass plus one FFMA for sum p^2, one FADD for the mean and the
    # top-1 key's compares and min per element) and the backward with the
    # entropy's upstream (with_entropy: one FFMA and one max more per
    # element). New kernels: their budgets are their first measured counts
    # (2026-12-07, CUDA 13.0, sm_90), rounded up. The backward stays under
    # the model's bandwidth ceiling; the 16-bit statistics pass is issue-bound
    # in it (about 82% of H100's copy rate, 57% of H200's: the top-1 key costs
    # most), an optional second read that is a first version to tune.
    "stats": ((17.0, 16.5), (19.0, 33.0)),
    "backward_entropy": ((8.0, 7.5), (12.0, 26.0)),
}
SOFTCAP_MUFU_BUDGET = {2: 2.0, 4: 3.0}
# A soft-capped element costs about twice the issue slots, so a thread needs
# fewer bytes in flight to cover the memory latency: by Little's law a card
# needs about copy rate x latency / SMs = 3.35 TB/s x 0.7 us / 132 = 18 KB
# in flight per SM (H100), and two 16-byte loads per thread at the 1536
# threads per SM these kernels' registers allow are 48 KB.
SOFTCAP_MIN_LOADS_IN_FLIGHT = 2
MUFU_BUDGET = 1.0
MIN_LOADS_IN_FLIGHT = 4
MAX_SPILLS = 0
# The backward with the entropy's upstream (issue 22) holds three more row
# constants: the compiler keeps 2 loads in flight (1 with a 16-bit soft-cap)
# and spills one to five registers outside the hot loop (a store before it, a
# load after). Held there until it is tuned on a GPU (docs/benchmarks.md).
ENTROPY_BWD_MIN_LOADS_IN_FLIGHT = {False: 2, True: 1}
ENTROPY_BWD_MAX_SPILLS = 5

# Cards: SMs, boost clock, measured (H200) or assumed (H100) copy rate. Per SM
# and clock: 4 schedulers issue one warp instruction each (128 thread
# instructions), the MUFU pipes do 16 ex2 per clock.
CARDS = [
    ("H100 SXM", 132, 1.98e9, 3.0e12),
    ("H200", 132, 1.98e9, 4.3e12),
]
ISSUE_PER_SM_CLK = 128
MUFU_PER_SM_CLK = 16
# A streaming kernel does not issue every cycle (its warps also wait on memory
# and on dependencies): the fractions of the peak rates it is assumed to
# sustain. Assumptions of the model, to be refitted from GPU runs.
ISSUE_EFFICIENCY = 0.6
MUFU_EFFICIENCY = 0.8

DTYPES = {"13__nv_bfloat16": ("bf16", 2), "6__half": ("fp16", 2), "f": ("fp32", 4)}

INSN_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
REG_RE = re.compile(r"(?<![A-Za-z_])R(\d+)(\.64)?")
FUNC_RE = re.compile(r"Function\s*:?\s*([^\s:]+)")
RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def function_lines(text, line_re):
    """(function, match of line_re) for every matching line below a
    `Function` header of cuobjdump's output, and (function, None) for each
    header."""
    cur = None
    for line in text.splitlines():
        m = FUNC_RE.search(line)
        if m:
            cur = m.group(1)
            yield cur, None
            continue
        m = line_re.search(line)
        if m and cur is not None:
            yield cur, m


def parse_sass(text):
    """{function: [(address, instruction text)]}"""
    funcs = {}
    for name, m in function_lines(text, INSN_RE):
        if m is None:
            funcs[name] = []
        else:
            funcs[name].append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def parse_res(text):
    """{function: (registers, stack, local)}"""
    return {name: (int(m.group(1)), int(m.group(2)), int(m.group(4)))
            for name, m in function_lines(text, RES_RE) if m is not None}


def opcode(insn):
    """Opcode with modifiers, without the predicate."""
    parts = insn.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def operands(insn):
    parts = insn.split(None, 2 if insn.startswith("@") else 1)
    rest = parts[-1] if len(parts) > (2 if insn.startswith("@") else 1) else ""
    return [o.strip() for o in rest.split(",")]


def regs_of(operand):
    out = set()
    for m in REG_RE.finditer(operand):
        r = int(m.group(1))
        out.add(r)
        if m.group(2):
            out.add(r + 1)
    return out


def is_load16(insn):
    op = opcode(insn)
    return op.startswith("LDG") and ".128" in op


def is_store(insn):
    return opcode(insn).startswith(("STG", "ST.", "STS", "STL"))


def loops(insns):
    """(start index, end index) of every backward branch's range."""
    index = {a: i for i, (a, _) in enumerate(insns)}
    out = []
    for i, (a, ins) in enumerate(insns):
        if opcode(ins).startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", ins)
            if m:
                target = int(m.group(1), 16)
                if target <= a and target in index:
                    out.append((index[target], i))
    return out


def hot_loop(insns):
    """The loop with the most 16-byte loads (on a tie, the longest)."""
    best = None
    for s, e in loops(insns):
        n = sum(1 for _, ins in insns[s:e + 1] if is_load16(ins))
        if n == 0:
            continue
        key = (n, e - s)  # on a tie the longer loop: the worse figure is the one checked
        if best is None or key > best[0]:
            best = (key, s, e)
    return None if best is None else (best[1], best[2])


def loads_before_use(body):
    """16-byte loads issued before the first use of a loaded register or a store."""
    loaded, n = set(), 0
    for _, ins in body:
        if is_store(ins):
            break
        ops = operands(ins)
        srcs = set()
        for o in ops[1:]:
            srcs |= regs_of(o)
        if srcs & loaded:
            break
        if is_load16(ins):
            r = regs_of(ops[0])
            base = min(r) if r else None
            if base is not None:
                loaded |= {base, base + 1, base + 2, base + 3}
            n += 1
    return n


MAPS = {"identity_map": "", "scale_map": "scale", "softcap_map": "softcap"}


def kernel_info(name):
    """(kind, dtype name, element bytes, output element bytes, map) or None;
    map is "" (identity), "scale" or "softcap"."""
    m = re.search(r"(forward|backward|stats)_kernelI(13__nv_bfloat16|6__half|f)", name)
    if not m:
        return None
    kind = m.group(1)
    # stats_kernel<T, Map, STATS, 256>: STATS false is the entropy pass alone.
    if kind == "stats":
        kind = "stats" if re.search(r"Lb1ELi\d+E", name[m.end():]) else "entropy"
    dname, size = DTYPES[m.group(2)]
    out_size = size
    # backward_kernel<T, Out, Map, 256>: Out is mangled S3_ (the same type as T) or f.
    if kind == "backward" and name[m.end():].startswith("f"):
        out_size = 4
    mm = re.search(r"(identity_map|scale_map|softcap_map)", name[m.end():])
    tmap = MAPS[mm.group(1)] if mm else ""
    # backward_kernel<T, Out, with_entropy<Map>, 256>: the entropy's upstream.
    if kind == "backward" and "with_entropy" in name[m.end():]:
        kind = "backward_entropy"
    return kind, dname, size, out_size, tmap


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sass")
    ap.add_argument("res")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    with open(args.sass) as f:
        funcs = parse_sass(f.read())
    with open(args.res) as f:
        res = parse_res(f.read())

    rows, failures = [], []
    for name, insns in funcs.items():
        info = kernel_info(name)
        if info is None:
            continue
        kind, dname, size, out_size, tmap = info
        label = f"{kind} {dname}" + ("" if not kind.startswith("backward") else
                                     f" -> {'fp32' if out_size == 4 and size == 2 else dname}")
        if tmap:
            label += f" [{tmap}]"
        loop = hot_loop(insns)
        if loop is None:
            failures.append(f"{label}: no loop with 16-byte loads found")
            continue
        s, e = loop
        body = [x for x in insns[s:e + 1] if opcode(x[1]) != "NOP"]
        n_load = sum(1 for _, ins in body if is_load16(ins))
        elems = n_load * (16 // size)
        sass = len(body) / elems
        mufu = sum(1 for _, ins in body if opcode(ins).startswith("MUFU")) / elems
        inflight = loads_before_use(body)
        regs, stack, local = res.get(name, (0, 0, 0))
        spills = sum(1 for _, ins in insns if opcode(ins).startswith(("STL", "LDL"))) + local
        bytes_per_elem = size + (out_size if kind.startswith("backward") else 0)
        ceil = []
        for card, sms, clk, copy in CARDS:
            elem_rate = copy / bytes_per_elem  # elements/s at the copy rate
            issue = elem_rate * sass / (sms * clk * ISSUE_PER_SM_CLK)
            mu = elem_rate * mufu / (sms * clk * MUFU_PER_SM_CLK)
            by_issue = ISSUE_EFFICIENCY / max(issue, 1e-9)
            by_mufu = MUFU_EFFICIENCY / max(mu, 1e-9)
            frac = min(1.0, by_issue, by_mufu)
            bound = "bandwidth" if frac >= 1.0 else ("issue" if by_issue <= by_mufu else "MUFU")
            ceil.append((issue, mu, frac, bound))
        rows.append((kind, dname, label, len(body), elems, sass, mufu, inflight, regs, spills, ceil))
        softcap = tmap == "softcap"
        budget = SASS_BUDGET[kind][softcap][{2: 0, 4: 1}[size]]  # 16-bit, float32
        mufu_budget = SOFTCAP_MUFU_BUDGET[size] if softcap else MUFU_BUDGET
        if sass > budget:
            failures.append(f"{label}: {sass:.2f} SASS/element > budget {budget}")
        if mufu > mufu_budget:
            failures.append(f"{label}: {mufu:.3f} MUFU/element > budget {mufu_budget}")
        min_loads = SOFTCAP_MIN_LOADS_IN_FLIGHT if softcap else MIN_LOADS_IN_FLIGHT
        max_spills = MAX_SPILLS
        if kind == "backward_entropy":
            min_loads = ENTROPY_BWD_MIN_LOADS_IN_FLIGHT[softcap and size == 2]
            max_spills = ENTROPY_BWD_MAX_SPILLS
        if inflight < min_loads:
            failures.append(f"{label}: {inflight} 16-byte loads in flight < {min_loads}")
        if spills > max_spills:
            failures.append(f"{label}: {spills} spill instructions/bytes > {max_spills}")

    order = {"forward": 0, "backward": 1, "backward_entropy": 2, "entropy": 3, "stats": 4}
    rows.sort(key=lambda r: (order[r[0]], r[2]))
    hdr = ["kernel", "loop insns / elems", "SASS/elem", "MUFU/elem", "16B loads in flight",
           "regs", "spills"] + [f"{c[0]} issue% / MUFU% -> ceiling" for c in CARDS]
    lines = []
    for r in rows:
        cells = [r[2], f"{r[3]} / {r[4]}", f"{r[5]:.2f}", f"{r[6]:.3f}", str(r[7]), str(r[8]),
                 str(r[9])]
        for issue, mu, frac, bound in r[10]:
            cells.append(f"{100 * issue:.0f}% / {100 * mu:.0f}% -> {100 * frac:.0f}% ({bound})")
        lines.append(cells)
    if args.markdown:
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h)
                  for i, h in enumerate(hdr)]
        print("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
        for cells in lines:
            print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))
    print()
    print("budgets: SASS/elem forward 16-bit <= 6.5, fp32 <= 9; backward 16-bit <= 8.5, "
          f"fp32 <= 10; entropy 16-bit <= 6.5, fp32 <= 9; MUFU/elem <= {MUFU_BUDGET}; 16-byte loads in flight >= "
          f"{MIN_LOADS_IN_FLIGHT}; spills <= {MAX_SPILLS}")
    print("  [scale]: the same; [softcap]: SASS/elem forward and entropy 16-bit <= 8, fp32 <= 32; "
          "backward 16-bit <= 11, fp32 <= 36; MUFU/elem 16-bit <= 2, fp32 <= 3; "
          f"16-byte loads in flight >= {SOFTCAP_MIN_LOADS_IN_FLIGHT}")
    print("  stats 16-bit <= 17, fp32 <= 16.5 ([softcap] 19, 33); backward_entropy 16-bit <= 8, "
          "fp32 <= 7.5 ([softcap] 12, 26), loads in flight >= 2 (16-bit [softcap] 1), spills <= "
          f"{ENTROPY_BWD_MAX_SPILLS}")
    if not rows:
        failures.append("no forward_kernel/backward_kernel found in the SASS")
    if failures:
        print("SASS budget exceeded:")
        for f in failures:
            print("  " + f)
        return 1
    print("all hot loops within budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
