"""Fuzzing the public functions that take user data.

Each call either computes the right answer (checked against plain torch / numpy)
or raises a one-line ValueError / TypeError naming the argument: never a crash,
a silent wrong result, or C++ assertion text.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsemia as sm  # noqa: E402
from sparsemia import mia  # noqa: E402

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
_CXX_TEXT = ("Exception raised from", "INTERNAL ASSERT", "c10::", "at::", ".cpp:", "Traceback")


def assert_clean_error(exc: BaseException, *names: str) -> None:
    """A user error: ValueError/TypeError, one line, naming one of ``names``, no C++ text."""
    assert isinstance(exc, ValueError | TypeError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert "\n" not in text.strip(), text
    assert not any(t in text for t in _CXX_TEXT), text
    assert any(n in text for n in names), f"names none of {names}: {text}"


def call(fn, *names: str):
    """fn() or None if it raised a clean user error."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 (the point is to classify every exception)
        assert_clean_error(exc, *names)
        return None


# ---------------------------------------------------------------------------- SparseWeight.from_dense

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool]


@st.composite
def dense_tensors(draw):
    rank = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from(_DTYPES))
    t = torch.randn(shape) * (torch.rand(shape) > 0.5)
    special = draw(st.sampled_from([None, float("nan"), float("inf"), -float("inf")]))
    if special is not None and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = special
    return t.to(dtype) if dtype != torch.bool else t != 0


@FUZZ
@given(dense=dense_tensors(), fmt=st.sampled_from(["csr", "bsr", "nm", "coo"]), nm=st.sampled_from([(2, 4), (1, 2)]))
def test_from_dense(dense, fmt, nm):
    n, m = nm
    w = call(lambda: sm.SparseWeight.from_dense(dense, format=fmt, n=n, m=m), "dense", "format", "m", "n")
    if w is None:
        return
    assert w.shape == tuple(dense.shape) and w.dtype == dense.dtype
    back = w.to_dense()
    if fmt == "nm":  # keeps the n largest of each group of m: a subset of the nonzeros
        kept = back != 0
        assert torch.equal(torch.where(kept, dense, torch.zeros_like(dense)).nan_to_num(), back.nan_to_num())
    else:
        assert torch.equal(back.nan_to_num(), dense.nan_to_num()) and torch.equal(back.isnan(), dense.isnan())


def test_from_dense_rejects_non_tensors():
    for bad in ([[1.0, 0.0], [0.0, 1.0]], np.eye(2), None):
        with pytest.raises(TypeError) as info:
            sm.SparseWeight.from_dense(bad)
        assert_clean_error(info.value, "dense")


# ---------------------------------------------------------------------------- sparse_linear / sparse_conv2d

_FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@st.composite
def linear_case(draw):
    out_f, in_f = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    w_dtype = draw(st.sampled_from(_FLOATS))
    x_dtype = draw(st.sampled_from([w_dtype, w_dtype, *_FLOATS, torch.int64]))
    batch = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    x_in = draw(st.sampled_from([in_f, in_f, in_f + 1]))  # sometimes mismatched
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    bias = draw(st.sampled_from(["none", "ok", "wrong-size", "wrong-dtype"]))
    fmt = draw(st.sampled_from(["csr", "bsr"]))
    return out_f, in_f, w_dtype, x_dtype, batch, x_in, layout, bias, fmt


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, non-contiguous
    if layout == "strided" and x.dim() >= 1:
        return torch.stack([x, x], dim=-1)[..., 0]  # every other element of a bigger tensor
    return x


@FUZZ
@given(case=linear_case())
def test_sparse_linear(case):
    out_f, in_f, w_dtype, x_dtype, batch, x_in, layout, bias_kind, fmt = case
    dense = (torch.randn(out_f, in_f) * (torch.rand(out_f, in_f) > 0.5)).to(w_dtype)
    w = sm.SparseWeight.from_dense(dense, format=fmt, block=(1, 1) if fmt == "bsr" else (4, 4))
    x = _layout((torch.randn(*batch, x_in) * 3).to(x_dtype), layout)
    bias = {
        "none": None,
        "ok": torch.randn(out_f).to(w_dtype),
        "wrong-size": torch.randn(out_f + 1).to(w_dtype),
        "wrong-dtype": torch.randn(out_f, dtype=torch.float64 if w_dtype != torch.float64 else torch.float32),
    }[bias_kind]
    y = call(lambda: sm.ops.sparse_linear(x, w, bias), "x", "w", "bias")
    if y is None:
        return
    ref = F.linear(x.double(), dense.double(), None if bias is None else bias.double())
    assert y.dtype == w_dtype and y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, atol=_TOL[w_dtype] * max(1, in_f), rtol=_TOL[w_dtype])


@st.composite
def conv_case(draw):
    c_in, c_out, k = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(_FLOATS))
    x_dtype = draw(st.sampled_from([dtype, dtype, *_FLOATS]))
    x_c = draw(st.sampled_from([c_in, c_in, c_in + 1]))
    h, wd = draw(st.integers(0, 7)), draw(st.integers(1, 7))
    rank = draw(st.sampled_from([4, 4, 3, 5]))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    stride, padding = draw(st.integers(0, 2)), draw(st.integers(-1, 2))
    return c_in, c_out, k, dtype, x_dtype, x_c, h, wd, rank, layout, stride, padding


@FUZZ
@given(case=conv_case())
def test_sparse_conv2d(case):
    c_in, c_out, k, dtype, x_dtype, x_c, h, wd, rank, layout, stride, padding = case
    dense = (torch.randn(c_out, c_in, k, k) * (torch.rand(c_out, c_in, k, k) > 0.4)).to(dtype)
    w = sm.SparseWeight.from_dense(dense)
    shape = {4: (2, x_c, h, wd), 3: (x_c, h, wd), 5: (1, 2, x_c, h, wd)}[rank]
    x = torch.randn(shape).to(x_dtype)
    if layout == "channels_last" and rank == 4:
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[..., ::1].transpose(-1, -2).contiguous().transpose(-1, -2)
    y = call(lambda: sm.ops.sparse_conv2d(x, w, stride=stride, padding=padding),
             "x", "w", "stride", "padding", "input")
    if y is None:
        return
    ref = F.conv2d(x.double(), dense.double(), stride=stride, padding=padding)
    assert y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, atol=_TOL[dtype] * c_in * k * k * 4, rtol=_TOL[dtype] * 4)


def test_weight_on_another_device():
    dense = torch.randn(4, 3) * (torch.rand(4, 3) > 0.5)
    w = sm.SparseWeight.from_dense(dense)
    meta = w.to("meta")
    for fn in (lambda: sm.ops.sparse_linear(torch.randn(2, 3), meta),
               lambda: sm.ops.sparse_linear(torch.randn(2, 3, device="meta"), w)):
        with pytest.raises((ValueError, TypeError)) as info:
            fn()
        assert_clean_error(info.value, "x", "w", "device")


# ---------------------------------------------------------------------------- metrics and attacks


@FUZZ
@given(
    n=st.integers(0, 30),
    members=st.sampled_from(["both", "all", "none", "ints", "bad-ints"]),
    nan=st.booleans(),
    length_delta=st.sampled_from([0, 0, 1, -1]),
)
def test_attack_metrics(n, members, nan, length_delta):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=n)
    if nan and n:
        scores[rng.integers(n)] = np.nan
    is_member = {
        "both": np.arange(n + length_delta) % 2 == 0,
        "all": np.ones(n + length_delta, dtype=bool),
        "none": np.zeros(n + length_delta, dtype=bool),
        "ints": np.arange(n + length_delta) % 2,
        "bad-ints": np.arange(n + length_delta) % 3,
    }[members]
    got = call(lambda: mia.attack_metrics(scores, is_member, n_bootstrap=5), "scores", "is_member")
    if got is None:
        return
    from sklearn.metrics import roc_auc_score

    assert got.auc == pytest.approx(roc_auc_score(np.asarray(is_member).astype(bool), scores))


@st.composite
def attack_case(draw):
    n, c = draw(st.integers(1, 8)), draw(st.integers(1, 4))
    shadows = draw(st.integers(0, 8))
    bad = draw(st.sampled_from(["none", "labels-range", "labels-float", "shadow-shape", "in-shape", "nan-logits"]))
    return n, c, shadows, bad


@FUZZ
@given(case=attack_case(), online=st.booleans(), fixed=st.booleans())
def test_lira(case, online, fixed):
    n, c, shadows, bad = case
    rng = np.random.default_rng(n * 31 + shadows)
    target = rng.normal(size=(n, c))
    labels = rng.integers(0, c, size=n)
    shadow_logits = rng.normal(size=(shadows, n, c))
    shadow_in = rng.random((shadows, n)) < 0.5
    if bad == "labels-range":
        labels = labels + c
    elif bad == "labels-float":
        labels = labels + 0.5
    elif bad == "shadow-shape":
        shadow_logits = shadow_logits[:, :, :1] if c > 1 else shadow_logits[:, :0]
    elif bad == "in-shape":
        shadow_in = shadow_in[:, : n - 1]
    elif bad == "nan-logits":
        target[0, 0] = np.nan
    result = call(lambda: mia.lira(target, labels, shadow_logits, shadow_in, online=online, fixed_variance=fixed),
                  "target_logits", "labels", "shadow_logits", "shadow_in")
    if result is None:
        return
    assert bad == "none", f"accepted bad input {bad!r}"
    assert result.scores.shape == (n,) and np.isfinite(result.scores).all()


@FUZZ
@given(case=attack_case(), online=st.booleans(), population=st.integers(0, 5))
def test_rmia(case, online, population):
    n, c, shadows, bad = case
    rng = np.random.default_rng(n * 17 + shadows)
    target = rng.normal(size=(n, c))
    labels = rng.integers(0, c, size=n)
    ref = rng.normal(size=(shadows, n, c))
    ref_in = rng.random((shadows, n)) < 0.5
    pop = rng.normal(size=(population, c))
    pop_labels = rng.integers(0, c, size=population)
    pop_ref = rng.normal(size=(shadows, population, c))
    if bad == "labels-range":
        labels = labels + c
    elif bad == "labels-float":
        labels = labels + 0.5
    elif bad == "shadow-shape":
        ref = ref[:, :, :1] if c > 1 else ref[:, :0]
    elif bad == "in-shape":
        ref_in = ref_in[:, : n - 1]
    elif bad == "nan-logits":
        target[0, 0] = np.nan
    result = call(lambda: mia.rmia(target, labels, ref, ref_in, pop, pop_labels, pop_ref, online=online),
                  "target_logits", "labels", "reference_logits", "reference_in", "population")
    if result is None:
        return
    assert bad == "none", f"accepted bad input {bad!r}"
    assert result.scores.shape == (n,) and np.isfinite(result.scores).all()
