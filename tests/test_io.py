import json

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import spherejax as sj


def _field(key, d=3, heads=2, normalization="softmax"):
    kq, kk, kv = jr.split(key, 3)
    return sj.SelfAttention(
        jr.normal(kq, (heads, 2, d)),
        jr.normal(kk, (heads, 2, d)),
        jr.normal(kv, (heads, d, d)),
        2.5,
        normalization=normalization,
    )


def test_round_trip_restores_the_field_exactly(tmp_path, getkey):
    field = _field(getkey())
    hp = sj.io.field_hyperparams(field)
    path = tmp_path / "field.sjx"
    sj.io.save(path, field, hp)
    # rebuilt from the stored hyperparameters alone
    loaded = sj.io.load(path, like=sj.io.field_from_hyperparams)
    assert eqx.tree_equal(loaded, field)
    x = sj.Sphere().random(getkey(), (7, 3))
    np.testing.assert_array_equal(loaded(0.0, x), field(0.0, x))
    header = sj.io.load_header(path)
    assert header["hyperparams"] == hp
    assert header["class"] == "SelfAttention"
    assert header["spherejax_version"] == sj.__version__
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.sjx"]


def test_load_into_a_skeleton_and_a_float32_skeleton(tmp_path, getkey):
    field = _field(getkey())
    path = tmp_path / "f.sjx"
    sj.io.save(path, field, {"note": "no hyperparams needed with a skeleton"})
    skeleton = _field(getkey())  # same shapes, other values
    loaded = sj.io.load(path, like=skeleton)
    np.testing.assert_array_equal(loaded.V, field.V)
    skeleton32 = jax_tree_astype(skeleton, jnp.float32)
    loaded32 = sj.io.load(path, like=skeleton32)
    assert loaded32.V.dtype == jnp.float32
    np.testing.assert_allclose(loaded32.V, field.V, rtol=1e-6)


def jax_tree_astype(tree, dtype):
    import jax

    return jax.tree.map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


def test_mismatched_skeletons_are_refused(tmp_path, getkey):
    field = _field(getkey())
    path = tmp_path / "f.sjx"
    sj.io.save(path, field)
    with pytest.raises(ValueError, match="shape"):
        sj.io.load(path, like=_field(getkey(), d=4))  # other parameter shapes
    with pytest.raises(ValueError, match="different structure or options"):
        sj.io.load(path, like=_field(getkey(), normalization="unnormalized"))
    with pytest.raises(ValueError, match="holds a `SelfAttention`"):
        sj.io.load(path, like=sj.FeedForward.random(getkey(), 3, 4))


def test_truncated_corrupted_and_foreign_files_are_refused(tmp_path, getkey):
    field = _field(getkey())
    path = tmp_path / "f.sjx"
    sj.io.save(path, field)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.sjx"
    truncated.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        sj.io.load(truncated, like=field)

    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    corrupted = tmp_path / "corrupted.sjx"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted"):
        sj.io.load(corrupted, like=field)

    foreign = tmp_path / "foreign.eqx"
    eqx.tree_serialise_leaves(foreign, field)  # plain equinox file, no header
    with pytest.raises(ValueError, match="not a spherejax model file"):
        sj.io.load(foreign, like=field)

    header, _, payload = data.partition(b"\n")
    h = json.loads(header)
    h["format_version"] = 99
    future = tmp_path / "future.sjx"
    future.write_bytes(json.dumps(h).encode() + b"\n" + payload)
    with pytest.raises(ValueError, match="format version 99"):
        sj.io.load(future, like=field)

    with pytest.raises(ValueError, match="no such file"):
        sj.io.load(tmp_path / "missing.sjx", like=field)


def test_bad_saves_are_refused_and_write_nothing(tmp_path, getkey):
    field = _field(getkey())
    with pytest.raises(ValueError, match="JSON"):
        sj.io.save(tmp_path / "a.sjx", field, {"beta": float("nan")})
    with pytest.raises(ValueError, match="round trip"):
        sj.io.save(tmp_path / "b.sjx", field, {"shape": (2, 3)})
    bad = eqx.tree_at(lambda f: f.beta, field, jnp.asarray(jnp.inf))
    with pytest.raises(ValueError, match="NaN or inf"):
        sj.io.save(tmp_path / "c.sjx", bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_saves_leave_no_temporary_file(tmp_path, getkey):
    field = _field(getkey())
    (tmp_path / "taken.sjx").mkdir()  # the target is a folder: the rename fails
    with pytest.raises(IsADirectoryError):
        sj.io.save(tmp_path / "taken.sjx", field)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.sjx"]
    assert list((tmp_path / "taken.sjx").iterdir()) == []


def test_a_planted_symlink_does_not_redirect_a_save(tmp_path, getkey):
    # symlinks at every name a predictable temporary file could take
    import os

    field = _field(getkey())
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("f.sjx.tmp", f"f.sjx.tmp-{os.getpid()}", ".f.sjx.tmp"):
        (tmp_path / name).symlink_to(victim)
    sj.io.save(tmp_path / "f.sjx", field)
    assert victim.read_text() == "keep me"
    assert eqx.tree_equal(sj.io.load(tmp_path / "f.sjx", like=field), field)


def test_reads_are_bounded_by_declared_and_checked_sizes(tmp_path, getkey):
    import resource

    field = _field(getkey())
    path = tmp_path / "f.sjx"
    sj.io.save(path, field, sj.io.field_hyperparams(field))
    text, _, payload = path.read_bytes().partition(b"\n")
    header = json.loads(text)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with pytest.raises(ValueError, match="not a spherejax model file"):
        sj.io.load("/dev/zero", like=field)  # no newline within the header limit

    def edited(name, **changes):
        p = tmp_path / name
        p.write_bytes(json.dumps({**header, **changes}).encode() + b"\n" + payload)
        return p

    hp = header["hyperparams"]
    # hyperparameters claiming d = 6000: refused from the shapes alone
    with pytest.raises(ValueError, match=r"expects \[2, 2, 6000\]"):
        sj.io.load(
            edited("d.sjx", hyperparams={**hp, "d": 6000}), sj.io.field_from_hyperparams
        )
    # leaves claiming 6000 x 6000 parameters in a small file
    leaves = [{"shape": [6000, 6000], "dtype": "float64"}] + header["leaves"][1:]
    with pytest.raises(ValueError, match="shapes need 288000"):
        sj.io.load(edited("leaves.sjx", leaves=leaves), like=field)
    # a payload size beyond the limit, or of the wrong type
    with pytest.raises(ValueError, match="announces"):
        sj.io.load(edited("size.sjx", payload_bytes=1 << 40), like=field)
    with pytest.raises(
        ValueError, match="`payload_bytes` is missing or not an integer"
    ):
        sj.io.load(edited("type.sjx", payload_bytes="12"), like=field)
    # missing or mistyped hyperparameters name the key
    with pytest.raises(ValueError, match="lack the key 'heads'"):
        no_heads = {k: v for k, v in hp.items() if k != "heads"}
        sj.io.load(edited("h.sjx", hyperparams=no_heads), sj.io.field_from_hyperparams)
    with pytest.raises(ValueError, match="'k' must be a positive integer"):
        sj.io.load(
            edited("k.sjx", hyperparams={**hp, "k": 2.5}), sj.io.field_from_hyperparams
        )
    # nothing of the claimed sizes was allocated (6000 x 6000 float64 = 288 MB)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert grown_kb < 100_000


def test_a_full_disk_leaves_no_temporary_file(tmp_path, getkey, monkeypatch):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        sj.io.save(tmp_path / "f.sjx", _field(getkey()))
    assert list(tmp_path.iterdir()) == []


def test_field_hyperparams_refuses_biases_and_key_masks(getkey):
    Q = jr.normal(getkey(), (2, 3))
    field = sj.SelfAttention(Q, Q, jnp.eye(3), 1.0, query_bias=jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="query_bias"):
        sj.io.field_hyperparams(field)
    masked = sj.SelfAttention(Q, Q, jnp.eye(3), 1.0, key_mask=jnp.array([1, 1, 0]) > 0)
    with pytest.raises(ValueError, match="key_mask"):
        sj.io.field_hyperparams(masked)
    assert sj.io.field_hyperparams(sj.SelfAttention(Q, Q, jnp.eye(3), 1.0))["k"] == 2


def test_load_refuses_a_pickled_parameter(tmp_path):
    # a file whose first parameter is a pickled object array (header and checksum
    # consistent): `load` names it an invalid model file, never unpickles it
    import hashlib
    import io

    field = sj.SelfAttention.identity(3, 1.0)
    sj.io.save(tmp_path / "field.sjx", field, sj.io.field_hyperparams(field))
    header = json.loads((tmp_path / "field.sjx").read_bytes().partition(b"\n")[0])
    first = [True]

    def pickled(f, leaf):
        if eqx.is_array(leaf) and first[0]:
            first[0] = False
            np.save(f, np.empty(leaf.shape, dtype=object), allow_pickle=True)
        else:
            eqx.default_serialise_filter_spec(f, leaf)

    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, field, filter_spec=pickled)
    payload = buffer.getvalue()
    header["payload_bytes"] = len(payload)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    bad = tmp_path / "pickled.sjx"
    bad.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    with pytest.raises(ValueError, match="not a valid model file: a parameter"):
        sj.io.load(bad, field)
