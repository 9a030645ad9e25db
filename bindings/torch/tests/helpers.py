"""What several test files of geopref_torch share: the random layouts and
targets of their problems, and the check that torch.compile(fullgraph=True)
runs an operator without a graph break and to the same bits as eager."""
import torch


def random_offsets(g, n_seqs, T, layout):
    """(offsets [S + 1], N rows) of S sequences from generator g. layout
    "padded": every sequence T rows, offsets = s * T. "packed": uneven
    lengths in [1, T], sequence 1 empty, and two trailing rows outside every
    sequence."""
    if layout == "padded":
        lengths = [T] * n_seqs
    else:
        lengths = torch.randint(1, T + 1, (n_seqs,), generator=g).tolist()
        lengths[1] = 0
    offsets = torch.tensor([0] + lengths).cumsum(0)
    return offsets, int(offsets[-1]) + (0 if layout == "padded" else 2)


def random_targets(g, N, V, P):
    """(labels [N] in [0, V) with about a quarter -100, soft labels [P] in
    [0, 1), reference log-probs [2P] in (-3, 0]), float64, from generator g."""
    labels = torch.randint(0, V, (N,), generator=g)
    labels[torch.rand(N, generator=g) < 0.25] = -100
    soft = torch.rand(P, generator=g, dtype=torch.float64)
    ref = -3 * torch.rand(2 * P, generator=g, dtype=torch.float64)
    return labels, soft, ref


def assert_compiled_matches_eager(step, leaves, args_of, backend):
    """step(*args_of(leaves())) -> a tuple whose first element is the loss:
    from a reset dynamo, one graph and no graph break (torch._dynamo.explain),
    and compiled with fullgraph=True on `backend` the same outputs and the
    same gradients of the leaves as eager, bit for bit (both runs call the
    same kernels on the same inputs)."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(step)(*args_of(leaves()))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    got_in, want_in = leaves(), leaves()
    got, want = compiled(*args_of(got_in)), step(*args_of(want_in))
    got[0].backward()
    want[0].backward()
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=0, rtol=0)
    for a, e in zip(got_in, want_in):
        torch.testing.assert_close(a.grad, e.grad, atol=0, rtol=0)
