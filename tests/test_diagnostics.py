"""`clusters` / `cluster_count`: the separation criterion on the cases a reader
checks by eye (a uniform sample, a contracting group, k separated groups), and
single linkage (`separation=0`) against independent numpy / scipy references."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage

import spherejax as sj


def _circle(angles):
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _gap_count(angles, tol):
    """numpy: angular gaps on the circle wider than arccos(1 - tol) (at least 1)."""
    s = np.sort(np.mod(angles, 2 * np.pi))
    gaps = np.diff(np.concatenate([s, s[:1] + 2 * np.pi]))
    return max(int((gaps > np.arccos(1 - tol)).sum()), 1)


def _partition(labels):
    return sorted(sorted(np.flatnonzero(labels == k).tolist()) for k in set(labels))


@pytest.mark.parametrize("seed", range(4))
def test_uniform_sample_on_the_circle_is_one_cluster(seed):
    angles = np.random.default_rng(seed).uniform(0, 2 * np.pi, 128)
    x = _circle(angles)
    # single linkage at 1 - cos = 1e-3 (a 2.6 degree gap against a mean spacing of
    # 2.8 degrees) splits at random gaps: dozens of clusters, as many as gaps
    single = sj.cluster_count(x, 1e-3, separation=0.0)
    assert single == _gap_count(angles, 1e-3) and single > 30
    # every gap wider than tol is narrower than the arcs on either side: one cluster
    assert sj.cluster_count(x) == 1
    assert sj.cluster_count(x, 1e-3) == 1
    assert sj.cluster_count(x, 1e-2, separation=0.0) > 1  # single linkage still splits


def test_contracting_group_in_high_dimension_is_one_cluster():
    rng = np.random.default_rng(0)
    n, d = 256, 64
    x = np.zeros((n, d))
    x[:, 0] = 1.0
    x += 0.0068 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    cos = x @ x.T
    assert cos.min() >= 0.994  # the whole group lies within 6.3 degrees
    np.fill_diagonal(cos, -1.0)
    assert 1 - cos.max() > 1e-3  # yet no two tokens are within 2.6 degrees:
    assert sj.cluster_count(x, 1e-3, separation=0.0) == n  # single linkage: n
    assert sj.cluster_count(x) == 1
    np.testing.assert_array_equal(sj.clusters(x), np.zeros(n, dtype=int))


@pytest.mark.parametrize("centres", [(0.0, 120.0, 240.0), (10.0, 100.0, 250.0, 300.0)])
def test_separated_groups_are_counted(centres):
    # k arcs of width 12 degrees (10 tokens each) around the given angles,
    # equidistant or not: every gap is wider than the arcs
    rng = np.random.default_rng(1)
    angles = np.concatenate([np.deg2rad(c + rng.uniform(-6, 6, 10)) for c in centres])
    truth = np.repeat(np.arange(len(centres)), 10)
    perm = rng.permutation(len(angles))
    labels = sj.clusters(_circle(angles[perm]))
    assert _partition(labels) == _partition(truth[perm])
    assert labels[0] == 0 and np.all(np.diff(np.maximum.accumulate(labels)) <= 1)


def test_two_scales_and_a_wide_group():
    deg = np.deg2rad
    # two pairs of points groups: finest separated structure, four clusters
    tight = np.concatenate(
        [deg(c + np.array([-0.5, 0.0, 0.5])) for c in (0, 20, 120, 140)]
    )
    assert sj.cluster_count(_circle(tight)) == 4
    # a dense arc of 60 degrees (spacing 1 degree, below tol) and one token:
    # 10 degrees beyond its end the gap is narrower than the arc (one cluster),
    # 70 degrees beyond it is wider (two)
    arc = deg(np.arange(0.0, 61.0))
    assert sj.cluster_count(_circle(np.append(arc, deg(70.0)))) == 1
    assert sj.cluster_count(_circle(np.append(arc, deg(130.0)))) == 2
    assert sj.cluster_count(_circle(np.append(arc, deg(70.0))), separation=0.0) == 2


def test_antipodal_groups_and_radius():
    rng = np.random.default_rng(2)
    u = rng.standard_normal(3)
    u /= np.linalg.norm(u)
    x = np.concatenate([np.tile(u, (5, 1)), np.tile(-u, (7, 1))])
    x = x * rng.uniform(0.5, 3.0, (12, 1))  # any norms: only directions count
    np.testing.assert_array_equal(sj.clusters(x, 1e-6), [0] * 5 + [1] * 7)


@pytest.mark.parametrize("tol", [0.02, 0.1])
def test_single_linkage_matches_scipy(tol):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 3)) * np.array([1.0, 1.0, 0.1])
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    angle = np.arccos(np.clip(u @ u.T, -1, 1))[np.triu_indices(60, 1)]
    ref = fcluster(linkage(angle, "single"), np.arccos(1 - tol), criterion="distance")
    labels = sj.clusters(x, tol, separation=0.0)
    assert _partition(labels) == _partition(ref)
    assert sj.cluster_count(x, tol) <= ref.max()


def test_clusters_rejects_bad_arguments():
    x = _circle(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="`tol` must be non-negative"):
        sj.clusters(x, -1.0)
    with pytest.raises(ValueError, match="`separation` must be finite and non-neg"):
        sj.clusters(x, separation=float("inf"))
    assert sj.cluster_count(np.zeros((0, 3))) == 0
    assert sj.cluster_count(x[:1]) == 1
