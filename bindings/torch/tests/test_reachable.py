"""Every input of the library's C ABI (include/geopref/c_api.h, parsed here:
each field of each argument struct of each entry) is reachable from
geopref_torch: an argument of the operator(s) that run that entry, an output
they return, or listed below with the reason it is not a caller's input in
PyTorch (a size taken from a tensor, torch's own stream and cuBLAS handle).
A field or entry added to the C ABI without a way in from PyTorch fails
here, as test_options.py fails for an option without a keyword. Then every
operator has a public function, and the inputs PyTorch reached last
(token weights, the accumulators, the vocab slice, the options of the
log-prob functions) are keywords of each function that runs them (the
vocab-linear step's accumulators: geopref_torch.distributed.vocab_linear_loss's).
"""
import inspect
import os
import re

import torch

import geopref_torch as gp
import geopref_torch.distributed as gpd

C_API = os.path.join(os.path.dirname(__file__), "..", "..", "..", "include", "geopref", "c_api.h")


def parse_c_api(path=C_API):
    """({struct: [(type, field)]}, {entry: [argument struct types]}) of c_api.h."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    structs = {}
    for m in re.finditer(r"typedef struct (\w+) \{(.*?)\}\s*(\w+);", src, flags=re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            typ, names = re.match(r"((?:const )?\w+(?:\s*\*)*)\s*(.*)", decl).groups()
            typ = typ.replace("const ", "").replace("*", "").strip()
            for n in names.split(","):
                fields.append((typ, re.sub(r"\[.*\]", "", n.strip().lstrip("*"))))
        structs[m.group(3)] = fields
    entries = {}
    for m in re.finditer(r"GEOPREF_C_EXPORT\s+[\w ]+?\b(geopref_\w+)\s*\((.*?)\);", src, flags=re.S):
        entries[m.group(1)] = [t for t in re.findall(r"(geopref_\w+)\s*\*", m.group(2))
                               if t not in ("geopref_status", "geopref_options")]
    return structs, entries


# The operators that run each entry (between them they take every field).
ENTRY_OPS = {
    "geopref_train_step": ("pref_loss", "pref_loss_grad_seq"),
    "geopref_sequence_logps": ("sequence_logps",),
    "geopref_logits_grad": ("logits_grad",),
    "geopref_token_logps": ("token_logps",),
    "geopref_token_logps_grad": ("token_logps_grad",),
    "geopref_fused_linear_step": ("linear_pref_loss", "linear_pref_loss_grad",
                                  "linear_pref_loss_accumulate"),
    "geopref_fused_linear_logps": ("linear_sequence_logps",),
    "geopref_fused_linear_one_pass": ("linear_one_pass", "linear_pref_loss", "linear_pref_loss_grad",
                                      "linear_pref_loss_accumulate"),
    "geopref_linear_token_logps": ("linear_token_logps",),
    "geopref_linear_token_logps_grad": ("linear_token_logps_grad",
                                        "linear_token_logps_accumulate"),
    "geopref_vocab_parallel_stats": ("vocab_parallel_stats",),
    "geopref_vocab_parallel_train_step": ("vocab_parallel_train_step", "vocab_parallel_logps"),
    "geopref_vocab_linear_stats": ("vocab_linear_stats",),
    "geopref_vocab_linear_step": ("vocab_linear_step", "vocab_linear_accumulate"),
}

# Entries that take no caller's input PyTorch lacks.
NOT_ENTRIES = {
    "geopref_device_status": "read by every CUDA operator with check=True",
    "geopref_status_string": "the message of every error the operators raise",
    "geopref_parse_loss": "loss_type names (loss_names() lists the library's)",
    "geopref_version": "no input",
    "geopref_options_init": "the options' defaults come from options_fields()",
}
NOT_ENTRY_SUFFIXES = ("_init", "_workspace_size")  # the operators allocate the workspace

# Where each field comes from: "arg:X" an argument of the operator, "out:X"
# an output it returns ("|" separates alternatives, any one of which must
# exist in one of the entry's operators), or "none:" why it is no input.
# "entry:field" overrides "struct.field", which overrides "field".
FIELDS = {
    # ABI 1.0: every argument struct's size, set by its geopref_*_init
    "struct_size": "none: set by the geopref_*_init every CUDA operator calls",
    # tokens / rows / linear inputs: tensors and their shapes, strides, dtypes
    "logits": "arg:logits", "logits_dtype": "arg:logits", "n_rows": "arg:logits|arg:hidden",
    "vocab": "arg:logits|arg:weight", "ld": "arg:logits", "labels": "arg:labels",
    "label_type": "arg:labels", "offsets": "arg:offsets", "offset_type": "arg:offsets",
    "n_seqs": "arg:offsets", "token_weights": "arg:token_weights",
    "logit_transform": "arg:logit_transform", "ignore_index": "arg:ignore_index",
    "hidden": "arg:hidden", "ld_hidden": "arg:hidden", "weight": "arg:weight",
    "ld_weight": "arg:weight", "bias": "arg:bias", "dtype": "arg:hidden",
    "hidden_size": "arg:hidden", "chunk_bytes": "arg:chunk_bytes",
    "cublas_handle": "none: torch's cuBLAS handle for the current stream",
    # pairs and the upstream gradient
    "n_pairs": "arg:pairs", "pairs": "arg:pairs", "soft_labels": "arg:soft_labels",
    "ref_logps": "arg:ref_logps", "weights": "arg:weights",
    "grad_loss": "arg:grad_output", "grad_output": "arg:grad_output",
    "host_offsets": "arg:host_offsets", "host_pairs": "arg:host_pairs",
    # outputs
    "loss": "out:loss", "stats": "out:metrics", "stat_sums": "out:metric_sums",
    "seq_logps": "out:seq_logps", "seq_counts": "out:counts|out:seq_scale", "lse": "out:lse",
    "token_logps": "none: a sequence entry's per-token log-probs; token_logps and "
                   "linear_token_logps return them",
    "grad_seq_logps": "out:grad_seq|arg:grad_seq",
    "entropy": "out:entropy",
    "grad_logits": "out:grad_logits|none: the backward is logits_grad's (autograd)",
    "grad_ld": "none: gradients are dense tensors",
    "grad_float32": "none: autograd needs the logits' dtype (float32 logits: float32)",
    "grad_hidden": "out:grad_hidden", "ld_grad_hidden": "none: gradients are dense tensors",
    "grad_weight": "out:grad_weight|arg:grad_weight_acc",
    "ld_grad_weight": "none: gradients are dense tensors",
    "grad_weight_float32": "arg:grad_weight_acc", "grad_bias": "out:grad_bias|arg:grad_bias_acc",
    "accumulate": "arg:grad_weight_acc|arg:grad_bias_acc",
    # vocab parallel
    "slice": "arg:vocab_slice", "records": "arg:records|out:records",
    # the per-token backward
    "geopref_token_grad_args.lse": "arg:lse", "geopref_grad_args.lse": "arg:lse",
    "geopref_linear_token_grad_args.lse": "arg:lse",
    "grad_token_logps": "arg:grad", "geopref_token_logps_args.token_logps": "out:logps",
    "geopref_linear_token_logps_args.token_logps": "out:logps",
    "geopref_grad_args.grad_logits": "none: returned (logits_grad's output)",
    "geopref_token_grad_args.grad_logits": "none: returned (token_logps_grad's output)",
    # ABI 1.2: TRL 1.x's per-token statistics and the entropy's upstream
    "log_sum_sq_probs": "out:log_sum_sq_probs", "mean_logits": "out:mean_logits",
    "is_top1": "out:is_top1", "grad_entropy": "arg:grad_entropy",
    "geopref_token_grad_args.entropy": "arg:entropy",
    "geopref_linear_token_grad_args.entropy": "arg:entropy",
    # what the fused and vocab-parallel steps keep to themselves: their
    # gradients come from the same call, no backward needs lse or g_s
    "geopref_linear_train_args.lse": "none: the fused step's backward is in the call",
    "geopref_linear_train_args.seq_counts": "none: the fused step's backward is in the call",
    "geopref_linear_train_args.grad_seq_logps": "none: the fused step's backward is in the call",
    "geopref_vocab_parallel_train_step:lse": "none: the step's backward is in the call",
    "geopref_vocab_parallel_train_step:grad_seq_logps": "none: the step's backward is in the call",
    # fields the entry never reads (issue 21)
    "geopref_vocab_parallel_stats:token_weights": "none: the stats entries never read it",
    "geopref_vocab_linear_stats:token_weights": "none: the stats entries never read it",
    "geopref_vocab_linear_step:host_offsets": "none: vocab_linear_step never reads it",
    "geopref_vocab_linear_step:host_pairs": "none: vocab_linear_step never reads it",
}

# Structs whose fields are checked one by one when embedded; the others are
# one argument (logit_transform: test_logit_transform.py checks its fields,
# vocab_slice: below) or an output.
NESTED = ("geopref_tokens", "geopref_train_args", "geopref_linear_inputs",
          "geopref_linear_train_args", "geopref_token_rows", "geopref_linear_token_rows")

# Not reached yet: none (issue 21 reached the last two, vocab_linear_step's
# grad_weight_float32 and accumulate: vocab_linear_accumulate, which
# geopref_torch.distributed.vocab_linear_loss runs with its accumulators).
KNOWN_GAPS = set()


def schema(op):
    s = getattr(torch.ops.geopref, op).default._schema
    return {a.name for a in s.arguments}, {r.name for r in s.returns}


def reached(rule, ops):
    for alt in rule.split("|"):
        kind, _, name = alt.partition(":")
        if kind == "none":
            return True
        for op in ops:
            args, outs = schema(op)
            if (kind == "arg" and name in args) or (kind == "out" and name in outs):
                return True
    return False


def fields_of(structs, struct, prefix=""):
    for typ, name in structs[struct]:
        if typ in NESTED:
            yield from fields_of(structs, typ, prefix + name + ".")
        else:
            yield struct, name


def test_every_c_abi_input_reaches_an_operator():
    structs, entries = parse_c_api()
    assert len(entries) > 20 and "geopref_train_args" in structs  # the parse found the header
    unknown = [e for e in entries if e not in ENTRY_OPS and e not in NOT_ENTRIES
               and not e.endswith(NOT_ENTRY_SUFFIXES)]
    assert not unknown, f"C ABI entries with no geopref operator: {unknown}"
    missing = set()
    for entry, ops in ENTRY_OPS.items():
        assert entry in entries, f"{entry} is no longer in c_api.h: update ENTRY_OPS"
        for op in ops:
            assert hasattr(torch.ops.geopref, op), f"no operator geopref::{op}"
        for arg_struct in entries[entry]:
            for struct, field in fields_of(structs, arg_struct):
                rule = FIELDS.get(f"{entry}:{field}",
                                  FIELDS.get(f"{struct}.{field}", FIELDS.get(field)))
                assert rule is not None, f"{struct}.{field} ({entry}): no row in FIELDS"
                if not reached(rule, ops):
                    missing.add((entry, field))
    assert missing == KNOWN_GAPS, (f"unreachable from PyTorch: {sorted(missing - KNOWN_GAPS)}; "
                                   f"reachable now, drop from KNOWN_GAPS: "
                                   f"{sorted(KNOWN_GAPS - missing)}")


def test_the_vocab_slice_is_the_c_struct():
    structs, _ = parse_c_api()
    assert tuple(n for _, n in structs["geopref_vocab_slice"]) == gp.VocabSlice._fields


# Every operator that runs an entry, by the public function that calls it.
PUBLIC = {
    "pref_loss": gp.dpo_loss, "sequence_logps": gp.sequence_logps, "token_logps": gp.token_logps,
    "linear_pref_loss": gp.fused_linear_preference_loss,
    "linear_pref_loss_accumulate": gp.fused_linear_preference_loss,
    "linear_sequence_logps": gp.fused_linear_logps, "linear_one_pass": gp.fused_linear_one_pass,
    "linear_token_logps": gp.linear_token_logps,
    "vocab_parallel_stats": gp.vocab_parallel_stats,
    "vocab_parallel_train_step": gp.vocab_parallel_loss,
    "vocab_parallel_logps": gp.vocab_parallel_logps,
    "vocab_linear_stats": gp.vocab_linear_stats, "vocab_linear_step": gp.vocab_linear_loss,
}
BACKWARDS = {"pref_loss_grad_seq", "logits_grad", "token_logps_grad", "linear_pref_loss_grad",
             "linear_token_logps_grad", "linear_token_logps_accumulate",
             "vocab_linear_accumulate"}  # run by autograd

KEYWORDS = {
    "token_weights": (gp.dpo_loss, gp.sequence_logps, gp.fused_linear_preference_loss,
                      gp.fused_linear_logps, gp.vocab_parallel_loss, gp.vocab_parallel_logps,
                      gp.vocab_linear_loss),
    "grad_weight_accumulator": (gp.fused_linear_preference_loss, gpd.vocab_linear_loss),
    "grad_bias_accumulator": (gp.fused_linear_preference_loss, gpd.vocab_linear_loss),
    "outputs": (gp.token_logps, gp.linear_token_logps),  # ABI 1.2's statistics
    "vocab_slice": (gp.vocab_parallel_stats, gp.vocab_parallel_loss, gp.vocab_parallel_logps,
                    gp.vocab_linear_stats, gp.vocab_linear_loss),
}
WITH_OPTIONS = (gp.dpo_loss, gp.sequence_logps, gp.fused_linear_preference_loss,
                gp.fused_linear_logps, gp.vocab_parallel_loss, gp.vocab_parallel_logps,
                gp.vocab_linear_loss)


def test_every_operator_has_a_public_function():
    ops = {op for ops in ENTRY_OPS.values() for op in ops}
    assert not ops - set(PUBLIC) - BACKWARDS, sorted(ops - set(PUBLIC) - BACKWARDS)
    for name in set(gp.__all__):
        assert hasattr(gp, name), name
    for fn in PUBLIC.values():
        assert fn.__name__ in gp.__all__, fn.__name__


def test_the_new_inputs_are_keywords():
    for keyword, fns in KEYWORDS.items():
        for fn in fns:
            assert keyword in inspect.signature(fn).parameters, f"{fn.__name__}: no {keyword}"
    for fn in WITH_OPTIONS:
        params = inspect.signature(fn).parameters
        missing = [k for k in gp.OPTIONS_KEYWORDS if k not in params]
        assert not missing, f"{fn.__name__} lacks the option keywords {missing}"
        for f in gp.LOGIT_TRANSFORM_FIELDS:
            assert f.keyword in params, f"{fn.__name__} lacks {f.keyword}"


def test_no_backward_reads_its_inputs_by_position():
    # The autograd code names every input after the schema (_ops._named);
    # the positional pattern (inputs[9:14]) is gone.
    src = inspect.getsource(gp._ops)
    assert not re.search(r"inputs\[\d", src), "a setup_context reads its inputs by position"


def test_the_readme_documents_every_new_input():
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    names = set(KEYWORDS) | {"metric_sums", "metrics_from_sums"} | {
        fn.__name__ for fn in PUBLIC.values()}
    missing = sorted(n for n in names if f"{n}" not in text)
    assert not missing, f"README.md does not document {missing}"
