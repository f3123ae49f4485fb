"""Reading `safetensors` checkpoints tensor by tensor, with numpy only.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header
mapping each tensor name to its `dtype`, `shape` and `data_offsets` (relative to
the end of the header), then the raw little-endian data. Reading one tensor is a
seek and a read of its bytes, so a checkpoint is loaded one tensor at a time and
the host never holds more than the tensors asked for (bfloat16 through the
`ml_dtypes` type that JAX itself uses). A sharded checkpoint lists its shards in
`model.safetensors.index.json` (`weight_map`: tensor name -> file).
"""

import json
import pathlib
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np


_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}


def _header(path: pathlib.Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{str(path)!r} is not a safetensors file (too short).")
        (size,) = struct.unpack("<Q", raw)
        if size > 100_000_000:
            raise ValueError(f"{str(path)!r} is not a safetensors file (bad header).")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise ValueError(
                f"{str(path)!r} is not a safetensors file (unreadable header)."
            ) from e
    header.pop("__metadata__", None)
    return header, 8 + size


class SafetensorsCheckpoint(Mapping):
    """The tensors of one or several `.safetensors` files, by name, read from disk
    only when indexed (`checkpoint[name]` is a numpy array in the stored dtype)."""

    def __init__(self, files: Mapping[str, pathlib.Path]):
        self._where: dict[str, tuple[pathlib.Path, dict, int]] = {}
        for path in dict.fromkeys(files.values()):
            header, start = _header(path)
            for name, entry in header.items():
                self._where[name] = (path, entry, start)
        missing = [k for k, p in files.items() if k not in self._where]
        if missing:
            raise ValueError(
                f"the index names tensors its shards do not hold: {missing[:5]}."
            )

    @classmethod
    def from_directory(cls, path: pathlib.Path) -> "SafetensorsCheckpoint":
        single = path / "model.safetensors"
        index = path / "model.safetensors.index.json"
        if single.is_file():
            header, _ = _header(single)
            return cls({k: single for k in header})
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{str(index)!r} has no `weight_map`.")
        files = {}
        for name, shard in weight_map.items():
            f = path / shard
            if not f.is_file():
                raise FileNotFoundError(
                    f"the shard {shard!r} named in {index.name} (tensor {name!r}) is "
                    f"missing from {str(path)!r}: copy every shard the index lists "
                    "into the directory."
                )
            files[name] = f
        return cls(files)

    def __getitem__(self, name: str) -> np.ndarray:
        path, entry, start = self._where[name]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(
                f"tensor {name!r} of {str(path)!r} has the unsupported dtype "
                f"{entry['dtype']!r}; supported: {sorted(_DTYPES)}."
            )
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        with open(path, "rb") as f:
            f.seek(start + begin)
            data = f.read(end - begin)
        if len(data) != end - begin or (end - begin) != dtype.itemsize * int(
            np.prod(shape, dtype=np.int64)
        ):
            raise ValueError(
                f"tensor {name!r} of {str(path)!r} is truncated or inconsistent "
                "with its shape."
            )
        return np.frombuffer(data, dtype).reshape(shape)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name][1]["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name) -> bool:
        return name in self._where
