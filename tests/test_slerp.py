import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from slerpmerge import slerp
from slerpmerge.slerp import slerp_pairs

DIM = 8
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
vectors = arrays(np.float32, (DIM,), elements=finite)
ts = st.floats(0.0, 1.0)


def reference(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """float64 SLERP straight from the formula, linear where the angle is ill-conditioned or undefined."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    cos = np.clip(a @ b / (na * nb), -1, 1)
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def near_threshold(a, b) -> bool:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.norm() == 0 or b.norm() == 0:
        return False
    return abs(abs(float(a @ b / (a.norm() * b.norm()))) - 0.9995) < 1e-4


def ill_conditioned(a, b) -> bool:
    """Near θ = π the weights grow as 1/sin θ and amplify any rounding (and near the linear threshold either
    branch is right): no two ways of computing agree closely there."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.norm() == 0 or b.norm() == 0:
        return False
    cos = float(a @ b / (a.norm() * b.norm()))
    return cos < -0.99 or near_threshold(a, b)


def close(x: torch.Tensor, y, scale: float, rtol: float = 1e-4) -> bool:
    return bool(torch.allclose(x.double(), torch.as_tensor(y).double(), rtol=rtol, atol=rtol * max(scale, 1e-30)))


@given(vectors, vectors)
def test_endpoints(a, b):
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    scale = float(max(a.abs().max(), b.abs().max()))
    assert close(slerp(a, b, 0.0), a, scale)
    assert close(slerp(a, b, 1.0), b, scale)


@given(vectors, vectors, ts)
def test_symmetric(a, b, t):
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    scale = float(max(a.abs().max(), b.abs().max()))
    assert close(slerp(a, b, t), slerp(b, a, 1 - t), scale)


@given(vectors, vectors, ts)
def test_matches_float64_reference(a, b, t):
    if near_threshold(a, b):
        return  # either branch is right there, and they differ by design
    got = slerp(torch.from_numpy(a), torch.from_numpy(b), t)
    scale = float(max(np.abs(a).max(), np.abs(b).max()))
    assert close(got, reference(a, b, t), scale, rtol=2e-3)


@given(vectors, vectors, ts)
def test_equal_norms_keep_their_norm(a, b, t):
    a, b = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    na, nb = a.norm(), b.norm()
    if na < 1e-3 or nb < 1e-3:
        return
    b = b * (na / nb)
    cos = float(a @ b / (na * na))
    if abs(cos) > 0.9995:  # linear branch: not on the sphere by design
        return
    assert abs(float(slerp(a, b, t).norm()) - float(na)) <= 1e-6 * float(na)


def test_known_angle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([2**-0.5, 2**-0.5]))
    third = slerp(a, b, 1 / 3)
    assert torch.allclose(third, torch.tensor([np.cos(np.pi / 6), np.sin(np.pi / 6)], dtype=torch.float32))


def adversarial(dtype):
    """Zeros, the dtype's tiniest and largest values, colinear and opposite pairs."""
    info = torch.finfo(dtype)
    ramp = torch.arange(DIM, dtype=torch.float64)
    big, tiny = info.max * 0.9, info.tiny
    torch.set_default_dtype(torch.float64)  # build every case exactly, then cast
    cases = [
        (torch.zeros(DIM), torch.zeros(DIM)),
        (torch.zeros(DIM), torch.ones(DIM)),
        (torch.full((DIM,), tiny), torch.full((DIM,), -tiny)),
        (torch.full((DIM,), big), torch.full((DIM,), big)),
        (torch.full((DIM,), big), torch.full((DIM,), -big)),
        (ramp, 2 * ramp),
        (ramp, -ramp),
        (torch.ones(DIM), -torch.ones(DIM) + 1e-2),
        (torch.full((DIM,), big), -torch.full((DIM,), big / 2) + big / 100),
    ]
    torch.set_default_dtype(torch.float32)
    return [(a.to(dtype), b.to(dtype)) for a, b in cases]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_adversarial_inputs_stay_finite(dtype):
    for a, b in adversarial(dtype):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        for t in (0.0, 0.3, 0.5, 1.0):
            out = slerp(a, b, t)
            assert out.dtype == dtype
            assert torch.isfinite(out).all(), (a, b, t, out)


def test_opposite_and_zero_are_defined():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(slerp(a, -a, 0.5), torch.zeros(3))
    assert torch.allclose(slerp(torch.zeros(3), a, 0.25), 0.25 * a)


@given(arrays(np.float32, (3, 4, DIM), elements=st.floats(-100, 100, width=32)),
       arrays(np.float32, (3, 4, DIM), elements=st.floats(-100, 100, width=32)))
@settings(max_examples=30)
def test_batched_equals_one_by_one(a, b):
    a, b = torch.from_numpy(a), torch.from_numpy(b)
    t = torch.rand(3, 4, 1)
    out = slerp(a, b, t)
    for i in range(3):
        for j in range(4):
            if ill_conditioned(a[i, j], b[i, j]):
                continue
            # Batched and single matmuls round differently: a tolerance relative to the pair's scale, far below
            # what mixing up rows would give.
            scale = float(max(a[i, j].abs().max(), b[i, j].abs().max()))
            assert close(out[i, j], slerp(a[i, j], b[i, j], float(t[i, j])), scale, rtol=1e-4)


def test_half_precision_is_computed_in_float32():
    a = torch.randn(16, 64, dtype=torch.bfloat16)
    b = torch.randn(16, 64, dtype=torch.bfloat16)
    want = slerp(a.float(), b.float(), 0.5).to(torch.bfloat16)
    assert torch.equal(slerp(a, b, 0.5), want)


def test_rejects_mismatched_or_integer_vectors():
    with pytest.raises(ValueError, match="last dimension"):
        slerp(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="floating"):
        slerp(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))


def test_pairs_form_and_the_midpoint_closed_form_agree_with_the_angle_formula():
    torch.manual_seed(0)
    a, b = torch.randn(5, 7, DIM), torch.randn(5, 7, DIM) * 3
    b[0, 0] = a[0, 0]  # parallel: the linear branch
    b[0, 1] = -a[0, 1]  # opposite
    b[0, 2] = 0  # zero
    pairs = torch.stack([a, b], dim=-2)
    assert torch.equal(slerp_pairs(pairs, 0.3), slerp(a, b, 0.3))
    assert torch.equal(slerp_pairs(pairs, 0.5), slerp(a, b, 0.5))
    # 0.5 as a float takes (2 + 2 cos θ)^(-1/2); as a tensor, the sines of the angle
    torch.testing.assert_close(slerp(a, b, 0.5), slerp(a, b, torch.tensor(0.5)), atol=1e-5, rtol=1e-5)
    assert torch.equal(slerp(a, b, 0.5)[0, 0], a[0, 0])
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, D\)"):
        slerp_pairs(torch.ones(3, 4))


def test_a_tiny_vector_is_not_a_zero_vector():
    """Its squared norm underflows float32; its direction still sets the angle."""
    a = np.full(DIM, 7e-29, dtype=np.float32)
    b = np.ones(DIM, dtype=np.float32)
    b[0] = 0
    for t in (0.25, 0.5):
        assert close(slerp(torch.from_numpy(a), torch.from_numpy(b), t), reference(a, b, t), 1.0, rtol=1e-5)
