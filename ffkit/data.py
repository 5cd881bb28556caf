"""Datasets by name, read from the official files without torchvision.

``load_dataset("mnist", "train")`` returns ``(x, y)``: images as a float32 tensor of shape
``(N, C, H, W)`` with values in ``[0, 1]`` and labels as int64. The files are looked for, in order,

1. in the folder named by the environment variable ``FFKIT_DATA`` (``$FFKIT_DATA/mnist/...``),
2. in ffkit's cache (``$FFKIT_CACHE``, else ``$XDG_CACHE_HOME/ffkit``, else ``~/.cache/ffkit``),
3. on the dataset's official download site; the download is checked against the published
   checksum and only then moved into the cache, so a failed or corrupt download leaves nothing
   behind.

Every file is checked against its published checksum wherever it was found; a corrupt,
truncated or foreign file raises :class:`DatasetError` naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DatasetError", "load_dataset", "batches", "loader", "read_idx", "data_dirs", "class_names", "DATASETS"]


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt, truncated, or could not be downloaded."""


@dataclass(frozen=True)
class _File:
    name: str
    md5: str
    sha256: str | None = None


@dataclass(frozen=True)
class _Spec:
    folder: str
    mirrors: tuple[str, ...]
    files: dict[str, tuple[_File, ...]]  # split -> files (IDX: images, labels; CIFAR: the archive)
    kind: str  # "idx" or "cifar"
    classes: tuple[str, ...]


_MNIST_FILES = {
    "train": (
        _File("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        _File("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
              "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    ),
    "test": (
        _File("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
              "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        _File("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
              "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ),
}

_FASHION_FILES = {
    "train": (
        _File("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
              "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        _File("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
              "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    ),
    "test": (
        _File("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
              "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        _File("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
              "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ),
}

_CIFAR_ARCHIVE = _File("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")

#: The datasets ffkit knows, by name.
DATASETS: dict[str, _Spec] = {
    "mnist": _Spec(
        folder="mnist",
        mirrors=("https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        files=_MNIST_FILES,
        kind="idx",
        classes=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": _Spec(
        folder="fashion-mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=_FASHION_FILES,
        kind="idx",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": _Spec(
        folder="cifar10",
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        files={"train": (_CIFAR_ARCHIVE,), "test": (_CIFAR_ARCHIVE,)},
        kind="cifar",
        classes=("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
    ),
}


# --------------------------------------------------------------------------- finding files


def data_dirs() -> list[Path]:
    """The folders searched, in order: ``$FFKIT_DATA`` (if set), then the cache folder."""
    dirs = []
    if os.environ.get("FFKIT_DATA"):
        dirs.append(Path(os.environ["FFKIT_DATA"]).expanduser())
    dirs.append(_cache_dir())
    return dirs


def _cache_dir() -> Path:
    if os.environ.get("FFKIT_CACHE"):
        return Path(os.environ["FFKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ffkit"


def _digest(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


@lru_cache(maxsize=64)
def _verified(path: str, size: int, mtime_ns: int, md5: str, sha256: str | None) -> bool:
    """Whether the file matches; memoised on (path, size, mtime) so a notebook hashes it once."""
    got_md5, got_sha = _digest(Path(path))
    return got_md5 == md5 and (sha256 is None or got_sha == sha256)


def _check(path: Path, expected: _File) -> None:
    st = path.stat()
    if not _verified(str(path), st.st_size, st.st_mtime_ns, expected.md5, expected.sha256):
        raise DatasetError(
            f"{path} does not match the published checksum of {expected.name} "
            f"(md5 {expected.md5}); the file is corrupt, truncated or a different file. "
            "Replace it with the official file, or delete it to have ffkit download it again."
        )


def _download(spec: _Spec, file: _File, target: Path) -> None:
    """Download ``file`` into ``target`` atomically: temp file, checksum, then rename."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in spec.mirrors:
        url = base + file.name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=file.name, leave=False) as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            md5, sha = _digest(tmp)
            if md5 != file.md5 or (file.sha256 is not None and sha != file.sha256):
                errors.append(f"{url}: checksum mismatch (got md5 {md5}, expected {file.md5})")
                continue
            os.replace(tmp, target)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DatasetError(
        f"could not obtain {spec.folder}/{file.name}: " + "; ".join(errors) + ". "
        f"Without network, put the official file at $FFKIT_DATA/{spec.folder}/{file.name} "
        "and set the environment variable FFKIT_DATA to that folder."
    )


def _locate(spec: _Spec, file: _File, download: bool) -> Path:
    for folder in data_dirs():
        path = folder / spec.folder / file.name
        if path.is_file():
            _check(path, file)
            return path
    target = _cache_dir() / spec.folder / file.name
    if not download:
        searched = ", ".join(str(d / spec.folder) for d in data_dirs())
        raise DatasetError(
            f"{file.name} not found (looked in {searched}) and download=False. "
            "Set FFKIT_DATA to a folder holding the official files."
        )
    _download(spec, file, target)
    return target


# --------------------------------------------------------------------------- parsing

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array.

    The IDX format: two zero bytes, a type code, the number of dimensions d, then d big-endian
    uint32 sizes, then the data. Anything else (bad magic, short or overlong data, a broken gzip
    stream) raises :class:`DatasetError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: corrupt or truncated file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX data has {len(raw) - header} bytes but the header {shape} needs {expected} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10 batches contain: dicts, lists, bytes and numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_cifar_batch(raw: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a broken file
        raise DatasetError(f"{label}: not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{label}: a CIFAR-10 batch must be a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DatasetError(f"{label}: expected uint8 data of shape (N, 3072) and N labels, got "
                           f"{data.dtype} {data.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{label}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar(archive: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise DatasetError(f"{archive}: the archive has no {name}")
                fh = tar.extractfile(members[name])
                assert fh is not None
                parts.append(_read_cifar_batch(fh.read(), f"{archive}:{name}"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive ({exc})") from exc
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@lru_cache(maxsize=8)
def _raw(name: str, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    spec = DATASETS[name]
    files = spec.files[split]
    if spec.kind == "cifar":
        return _read_cifar(_locate(spec, files[0], download), split)
    images = read_idx(_locate(spec, files[0], download))
    labels = read_idx(_locate(spec, files[1], download))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{name}/{split}: images of shape {images.shape} do not match labels of shape {labels.shape}"
        )
    return images[:, None], labels.astype(np.int64)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    normalize: bool = False,
    limit: int | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load a dataset split as tensors ``(x, y)``.

    ``name`` is ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``; ``split`` is ``"train"`` or
    ``"test"``. ``x`` has shape ``(N, C, H, W)``, dtype float32, values ``x = pixel / 255`` in
    ``[0, 1]``; with ``normalize=True`` each channel is standardised, ``(x - mu_c) / sigma_c``,
    with ``mu_c, sigma_c`` the mean and standard deviation of channel ``c`` over the *training*
    split (for both splits). ``limit`` keeps the first ``limit`` examples.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    images, labels = _raw(name, split, download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    y = torch.from_numpy(labels.copy())
    if normalize:
        mean, std = _channel_stats(name, download)
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x, y


@lru_cache(maxsize=8)
def _channel_stats(name: str, download: bool) -> tuple[Tensor, Tensor]:
    train = _raw(name, "train", download)[0].astype(np.float64) / 255.0
    axes = (0, 2, 3)
    return (torch.tensor(train.mean(axis=axes), dtype=torch.float32),
            torch.tensor(train.std(axis=axes), dtype=torch.float32))


def class_names(name: str) -> tuple[str, ...]:
    """Human-readable class names of a dataset, indexed by label."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name].classes


# --------------------------------------------------------------------------- batching


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of minibatches ``(x[idx], y[idx])``.

    With ``shuffle=True`` the order is a random permutation drawn from ``generator`` (pass a
    seeded ``torch.Generator`` for a repeatable order). ``drop_last`` drops a final short batch.
    Wrap in :func:`ffkit.train.cycle` for an endless stream.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths: {len(x)} and {len(y)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(x)
    if drop_last and batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} examples and drop_last=True")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def loader(
    x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = True
) -> torch.utils.data.DataLoader:
    """A ``torch.utils.data.DataLoader`` over ``(x, y)`` with a seeded shuffling order, for code that
    expects one; :func:`batches` is the faster choice inside ffkit."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
        generator=generator, drop_last=drop_last,
    )
