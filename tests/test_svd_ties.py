"""Reverse mode's split of tied singular values (:func:`physim.solvers._linalg.split_ties`).

At a tie the SVD adjoint's symmetric term is 0 / 0; reverse mode evaluates the consumers of the
SVD (the return mapping, the stress) at singular values moved ``tau`` apart, so the adjoint gets
their divided difference over ``tau`` instead of the clamped gap's nothing. These tests check
what makes that divided difference accurate: the split is centred on the tied values (their sum,
the volumetric strain that sizes sand's Drucker-Prager cone, is kept), so the divided difference
of a smooth consumer is off by O(tau^2), not O(tau), and untied values are left alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import taichi as ti

from physim.solvers._linalg import SVD_TIE_SPLIT, split_ties

TAU = 1e-3  # large, so that O(tau) and O(tau^2) are far apart and far above f64 round-off

#: descending singular values: exact and near ties of each neighbour pair, all three tied, none
CASES_3D = [
    [1.0, 1.0, 1.0],
    [1.0005, 1.0, 0.9995],  # all three within 2 tau, no pair closer than tau / 2
    [1.0, 0.9996, 0.9992],
    [1.0004, 1.0, 0.9],  # the first pair (uniaxial compression: the lateral pair ties)
    [1.002, 1.002, 0.97],
    [1.1, 1.0002, 1.0],  # the second pair
    [1.03, 0.985, 0.985],
    [1.2, 1.0, 0.8],  # no tie: unchanged
    [1.0, 0.998, 0.996],  # 2 tau apart: unchanged
]
CASES_2D = [[1.0, 1.0], [1.0, 0.9999], [0.9993, 0.9991], [1.01, 0.99], [1.0, 0.998]]


def _split(cases):
    n = len(cases[0])
    field = ti.Vector.field(n, ti.f64, shape=len(cases))

    m = len(cases)

    @ti.kernel
    def run():
        for i in range(m):
            field[i] = split_ties(field[i], TAU)

    field.from_numpy(np.asarray(cases, dtype=np.float64))
    run()
    return field.to_numpy()


@pytest.mark.parametrize("cases", [CASES_3D, CASES_2D], ids=["3d", "2d"])
def test_split_ties_is_centred_on_the_tie(cases):
    out = _split(cases)
    for sig, new in zip(np.asarray(cases), out, strict=True):
        gaps, new_gaps = -np.diff(sig), -np.diff(new)
        tied = gaps < TAU
        if not tied.any():
            assert np.array_equal(new, sig), (sig, new)
            continue
        # every pair that tied is now tau apart (all three: mean + tau, mean, mean - tau), the
        # others keep a gap of at least tau / 2, in the same order
        np.testing.assert_allclose(new_gaps[tied], TAU, rtol=1e-9, err_msg=str(sig))
        assert (new_gaps >= TAU / 2 - 1e-15).all(), (sig, new)
        # the sum is kept: the volumetric log strain, tr log sigma, moves O(tau^2), not O(tau)
        # (moving the larger of a pair alone, as the 3D split did before, moved it by tau)
        assert abs(new.sum() - sig.sum()) < 1e-14, (sig, new)
        assert abs(np.log(new).sum() - np.log(sig).sum()) <= 1.01 * TAU**2 / new.min() ** 2, (sig, new)
        # an untied value stays where it was
        for k in range(len(sig)):
            if not (k > 0 and tied[k - 1]) and not (k < len(tied) and tied[k]):
                assert new[k] == sig[k], (sig, new, k)


def test_split_divided_difference_is_second_order():
    """What the SVD adjoint gets at a tie: the consumer's divided difference over the split,
    here of the Hencky strain log(s) (the elastic and sand stress's), whose exact limit at a tie
    at s is 1 / s. Centred, the error is tau^2 / (12 s^2) (8e-8 at tau 1e-3); moving one value
    tau up, as the 3D split did before, gave tau / (2 s) (5e-4: at sand's elastic strains,
    ~7e-4, that first-order error is as large as the strain in f32's old split of 3e-4)."""
    for sig in ([1.0, 1.0, 0.9], [1.02, 0.98, 0.98], [0.99, 0.99]):
        pair = [0, 1] if sig[0] == sig[1] else [1, 2]
        new = _split([sig])[0]
        a, b = new[pair[0]], new[pair[1]]
        dd = (np.log(a) - np.log(b)) / (a - b)
        exact = 1.0 / sig[pair[0]]
        assert abs(dd - exact) / exact < TAU**2 / 12 * 1.01 / sig[pair[0]] ** 2, (sig, new, dd, exact)


def test_f32_split_is_far_below_sands_strain():
    """The f32 split: its divided difference's cancellation error is ~ round-off / tau relative
    (6e-8 / 1e-5 = 6e-3 at most), its truncation error (tau / strain)^2; sand settling under
    gravity has elastic strains ~ rho g h / E = 7e-4 (benchmarks/README.md, "Precision"). 3e-4,
    the split before 934b31c, was as large as that strain."""
    strain = 1.5 * 9.8 * 0.16 / 3.5e3
    assert SVD_TIE_SPLIT["f32"] <= strain / 30
    assert SVD_TIE_SPLIT["f32"] >= 50 * np.finfo(np.float32).eps  # cancellation <= 2 %
    assert SVD_TIE_SPLIT["f64"] >= 50 * np.finfo(np.float64).eps
