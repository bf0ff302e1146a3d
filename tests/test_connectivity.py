"""Synapse index arithmetic against torch's own linear, conv and max-pool operators."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ttfs_brian import connectivity as cm
from ttfs_brian.projection import Projection, pad_sum


def apply(conn: cm.Connectivity, x: np.ndarray) -> np.ndarray:
    """``y_i = sum_j w_ij x_j`` over the synapse list (one sample, flat indices)."""
    return np.bincount(conn.post, weights=conn.weight * x.reshape(-1)[conn.pre], minlength=conn.n_post)


def pooled(conn: cm.Connectivity, x: np.ndarray, reduce: np.ufunc, fill: float) -> np.ndarray:
    out = np.full(conn.n_post, fill)
    reduce.at(out, conn.post, x.reshape(-1)[conn.pre])
    return out


def test_linear_matches_matmul():
    rng = np.random.default_rng(0)
    weight, x = rng.normal(size=(5, 7)), rng.normal(size=7)
    conn = cm.linear(weight)
    assert conn.n_synapses == 35
    np.testing.assert_allclose(apply(conn, x), weight @ x, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="expects 7 inputs"):
        cm.linear(weight, n_pre=6)


conv_cases = st.fixed_dictionaries({
    "c_in_g": st.integers(1, 3), "groups": st.integers(1, 3), "c_out_g": st.integers(1, 2),
    "h": st.integers(3, 8), "w": st.integers(3, 8), "kh": st.integers(1, 3), "kw": st.integers(1, 3),
    "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)), "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)), "seed": st.integers(0, 1000),
})


@settings(max_examples=40, deadline=None)
@given(conv_cases)
def test_conv_matches_torch_and_padding_sums(case):
    c_in, c_out = case["c_in_g"] * case["groups"], case["c_out_g"] * case["groups"]
    kernel = (case["kh"], case["kw"])
    if any((case["h"], case["w"])[i] + 2 * case["padding"][i] < case["dilation"][i] * (kernel[i] - 1) + 1 for i in range(2)):
        return  # torch rejects a kernel larger than the padded image
    rng = np.random.default_rng(case["seed"])
    weight = rng.normal(size=(c_out, case["c_in_g"], *kernel))
    x = rng.normal(size=(c_in, case["h"], case["w"]))
    attrs = {"stride": case["stride"], "padding": case["padding"], "dilation": case["dilation"], "groups": case["groups"]}
    expected = F.conv2d(torch.as_tensor(x)[None], torch.as_tensor(weight), **attrs)[0].numpy()
    conn = cm.conv2d(weight, x.shape, expected.shape, **attrs)
    np.testing.assert_allclose(apply(conn, x).reshape(expected.shape), expected, rtol=0, atol=1e-10)
    # Padding taps: total kernel weight of the channel minus what the image itself contributes.
    ones = F.conv2d(torch.ones(1, *x.shape, dtype=torch.float64), torch.as_tensor(weight), **attrs)[0].numpy()
    total = weight.reshape(c_out, -1).sum(axis=1)[:, None, None]
    proj = Projection("x", "conv", weight, attrs)
    np.testing.assert_allclose(pad_sum(proj, x.shape, expected.shape), total - ones, rtol=0, atol=1e-10)
    # Fan-in = taps that land inside the image (a ones kernel on a ones image counts them).
    counts = F.conv2d(torch.ones(1, *x.shape, dtype=torch.float64), torch.ones(weight.shape, dtype=torch.float64),
                      **attrs)[0].numpy()
    np.testing.assert_array_equal(conn.fan_in.reshape(expected.shape), counts)
    assert conn.pre.max(initial=0) < conn.n_pre and conn.post.max(initial=0) < conn.n_post


def test_interior_neurons_have_exactly_zero_padding_sum():
    weight = np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3)
    conn = cm.conv2d(weight, (1, 5, 5), (1, 5, 5), padding=1)
    proj = Projection("x", "conv", weight, {"stride": 1, "padding": 1, "dilation": 1, "groups": 1})
    pad = pad_sum(proj, (1, 5, 5), (1, 5, 5)).reshape(5, 5)
    assert np.all(pad[1:-1, 1:-1] == 0.0)
    assert pad[0, 0] == 1 + 2 + 3 + 4 + 7  # top row and left column of the kernel
    assert np.all(conn.fan_in.reshape(5, 5)[1:-1, 1:-1] == 9) and conn.fan_in[0] == 4


pool_cases = st.fixed_dictionaries({
    "c": st.integers(1, 3), "h": st.integers(2, 9), "w": st.integers(2, 9), "k": st.integers(1, 3),
    "stride": st.integers(1, 3), "padding": st.integers(0, 1), "dilation": st.integers(1, 2),
    "ceil_mode": st.booleans(), "seed": st.integers(0, 1000),
})


@settings(max_examples=40, deadline=None)
@given(pool_cases)
def test_maxpool_matches_torch(case):
    k, p, d = case["k"], case["padding"], case["dilation"]
    if p > k // 2 or min(case["h"], case["w"]) + 2 * p < d * (k - 1) + 1:
        return  # configurations torch refuses
    rng = np.random.default_rng(case["seed"])
    x = rng.normal(size=(case["c"], case["h"], case["w"]))
    attrs = {"kernel_size": k, "stride": case["stride"], "padding": p, "dilation": d, "ceil_mode": case["ceil_mode"]}
    expected = F.max_pool2d(torch.as_tensor(x)[None], **attrs)[0].numpy()
    minimum = -F.max_pool2d(-torch.as_tensor(x)[None], **attrs)[0].numpy()
    conn = cm.maxpool2d(x.shape, expected.shape, **attrs)
    np.testing.assert_array_equal(pooled(conn, x, np.maximum, -np.inf).reshape(expected.shape), expected)
    np.testing.assert_array_equal(pooled(conn, x, np.minimum, np.inf).reshape(expected.shape), minimum)
    assert np.all(conn.fan_in >= 1) and np.all(conn.fan_in <= k * k)


def test_replicate_shifts_each_copy():
    conn = cm.linear(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    pre, post, w = cm.replicate(conn, 3)
    assert pre.size == 18
    np.testing.assert_array_equal(pre[6:12], conn.pre + 2)
    np.testing.assert_array_equal(post[12:], conn.post + 6)
    np.testing.assert_array_equal(w[6:12], conn.weight)


def test_projection_dispatch_zero_weights_and_errors():
    pool = Projection("input", "pool", None, {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                              "dilation": [1, 1], "ceil_mode": False})
    conn = cm.for_shapes(pool, (2, 4, 4), (2, 2, 2))
    assert conn.n_synapses == 32 and np.all(conn.fan_in == 4)
    dense = Projection("p", "dense", np.ones((3, 8)))
    assert cm.for_shapes(dense, (2, 2, 2), (3,)).n_synapses == 24
    weight = np.ones((3, 8))
    weight[1] = 0.0  # a synapse of weight 0 changes nothing: it is not built
    assert cm.for_shapes(Projection("p", "dense", weight), (8,), (3,)).n_synapses == 16
    shortcut = cm.for_shapes(Projection("p", "identity", np.full((2, 2, 2), 0.5), {"offset": 4}), (4, 2, 2), (2, 2, 2))
    np.testing.assert_array_equal(shortcut.pre, np.arange(4, 12))  # channels 1 and 2 of the source
    with pytest.raises(ValueError, match="does not map"):
        cm.conv2d(np.ones((4, 3, 3, 3)), (2, 5, 5), (4, 3, 3), groups=1)
