"""Tests of ffkit.data on small IDX and CIFAR files that the tests write themselves."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import ffkit
from ffkit import data


# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def checksum(blob: bytes) -> data._File:
    return data._File("x", hashlib.md5(blob).hexdigest(), hashlib.sha256(blob).hexdigest())


def make_idx_dataset(rng: np.random.Generator, n: int = 12) -> dict[str, tuple[np.ndarray, bytes, bytes]]:
    """Tiny train and test splits: (images, gzipped image file, gzipped label file)."""
    out = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        out[split] = (images, gzip.compress(idx_bytes(images), mtime=0), gzip.compress(idx_bytes(labels), mtime=0), labels)
    return out


@pytest.fixture
def fresh_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Isolate the cache folder and drop memoised results between tests."""
    monkeypatch.setenv("FFKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FFKIT_DATA", raising=False)
    data._raw.cache_clear()
    data._channel_stats.cache_clear()
    data._verified.cache_clear()
    yield tmp_path
    data._raw.cache_clear()
    data._channel_stats.cache_clear()
    data._verified.cache_clear()


@pytest.fixture
def tiny_mnist(monkeypatch: pytest.MonkeyPatch, fresh_caches: Path):
    """A tiny 'mnist' in $FFKIT_DATA whose checksums replace the official ones."""
    rng = np.random.default_rng(0)
    splits = make_idx_dataset(rng)
    root = fresh_caches / "data"
    (root / "mnist").mkdir(parents=True)
    files = {}
    for split, (_, img, lab, _) in splits.items():
        prefix = "train" if split == "train" else "t10k"
        names = (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
        (root / "mnist" / names[0]).write_bytes(img)
        (root / "mnist" / names[1]).write_bytes(lab)
        files[split] = tuple(
            data._File(name, checksum(blob).md5, checksum(blob).sha256) for name, blob in zip(names, (img, lab))
        )
    spec = data._Spec("mnist", ("https://example.invalid/",), files, "idx", tuple("0123456789"))
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    monkeypatch.setenv("FFKIT_DATA", str(root))
    return root, splits


class FakeResponse(io.BytesIO):
    def __init__(self, blob: bytes) -> None:
        super().__init__(blob)
        self.headers = {"Content-Length": str(len(blob))}


# ----------------------------------------------------------------------------- read_idx


def test_read_idx_roundtrip_plain_and_gzip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "a.idx").write_bytes(idx_bytes(arr))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.idx"), arr)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.idx.gz"), arr)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    arr = np.array([1, -2, 70000], dtype=">i4")
    blob = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + arr.tobytes()
    (tmp_path / "b.idx").write_bytes(blob)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b.idx"), [1, -2, 70000])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-7], "truncated"),
        (lambda b: b + b"\x00", "needs"),
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b[:6], "header"),
    ],
)
def test_read_idx_rejects_broken_files(tmp_path: Path, mutate, message: str) -> None:
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    path = tmp_path / "broken.idx"
    path.write_bytes(mutate(good))
    with pytest.raises(data.DatasetError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip_names_file(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.ones((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DatasetError, match="corrupt or truncated") as info:
        data.read_idx(path)
    assert "cut.gz" in str(info.value)


# ----------------------------------------------------------------------------- load_dataset


def test_load_from_ffkit_data(tiny_mnist) -> None:
    _, splits = tiny_mnist
    x, y = ffkit.load_dataset("mnist", "train")
    images, _, _, labels = splits["train"]
    assert x.shape == (12, 1, 4, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    assert y.tolist() == labels.tolist()
    x5, y5 = ffkit.load_dataset("mnist", "test", limit=5)
    assert len(x5) == len(y5) == 5


def test_normalize_uses_training_statistics(tiny_mnist) -> None:
    _, splits = tiny_mnist
    train = splits["train"][0].astype(np.float64) / 255
    mu, sigma = train.mean(), train.std()
    x, _ = ffkit.load_dataset("mnist", "train", normalize=True)
    assert abs(float(x.mean())) < 1e-5
    assert float(x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    xt, _ = ffkit.load_dataset("mnist", "test", normalize=True)
    raw_t = torch.from_numpy(splits["test"][0].astype(np.float32) / 255)
    torch.testing.assert_close(xt[:, 0], ((raw_t - mu) / sigma).float(), rtol=1e-5, atol=1e-5)


def test_wrong_checksum_in_ffkit_data_is_an_error(tiny_mnist) -> None:
    root, _ = tiny_mnist
    path = root / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(12, dtype=np.uint8))))
    with pytest.raises(data.DatasetError, match="checksum") as info:
        ffkit.load_dataset("mnist", "train")
    assert "train-labels-idx1-ubyte.gz" in str(info.value)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        ffkit.load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        ffkit.load_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="limit"):
        ffkit.load_dataset("mnist", limit=0)


def test_download_goes_to_cache_atomically(tiny_mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    root, splits = tiny_mnist
    monkeypatch.delenv("FFKIT_DATA")
    served = {
        "train-images-idx3-ubyte.gz": splits["train"][1],
        "train-labels-idx1-ubyte.gz": splits["train"][2],
    }
    requested = []

    def fake_urlopen(url: str, timeout: float):
        requested.append(url)
        return FakeResponse(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    x, _ = ffkit.load_dataset("mnist", "train")
    assert len(x) == 12 and len(requested) == 2
    cache = data._cache_dir() / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(served)  # no .part files left


def test_corrupt_download_leaves_nothing_in_cache(tiny_mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FFKIT_DATA")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: FakeResponse(b"not the file"))
    with pytest.raises(data.DatasetError, match="checksum mismatch"):
        ffkit.load_dataset("mnist", "train")
    cache = data._cache_dir() / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_interrupted_download_leaves_nothing_in_cache(tiny_mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FFKIT_DATA")

    class Broken(FakeResponse):
        def read(self, n: int = -1) -> bytes:
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Broken(b""))
    with pytest.raises(data.DatasetError, match="connection reset"):
        ffkit.load_dataset("mnist", "train")
    cache = data._cache_dir() / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_no_network_says_how_to_provide_files(tiny_mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FFKIT_DATA")

    def offline(url: str, timeout: float):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DatasetError, match="FFKIT_DATA") as info:
        ffkit.load_dataset("mnist", "test")
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    with pytest.raises(data.DatasetError, match="download=False"):
        ffkit.load_dataset("mnist", "test", download=False)


def test_corrupt_cached_file_is_reported(tiny_mnist, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FFKIT_DATA")
    cache = data._cache_dir() / "mnist"
    cache.mkdir(parents=True)
    (cache / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(data.DatasetError, match="delete it"):
        ffkit.load_dataset("mnist", "train")


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_archive(path: Path, batches: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def cifar_batch(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, list[int]]:
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    return pickle.dumps({b"data": pixels, b"labels": labels, b"batch_label": b"test"}), pixels, labels


@pytest.fixture
def tiny_cifar(monkeypatch: pytest.MonkeyPatch, fresh_caches: Path):
    rng = np.random.default_rng(1)
    root = fresh_caches / "data"
    (root / "cifar10").mkdir(parents=True)
    contents = {f"data_batch_{i}": cifar_batch(rng, 3) for i in range(1, 6)}
    contents["test_batch"] = cifar_batch(rng, 4)
    archive = root / "cifar10" / "cifar-10-python.tar.gz"
    cifar_archive(archive, {k: v[0] for k, v in contents.items()})

    def use(path: Path) -> None:
        blob = path.read_bytes()
        f = data._File("cifar-10-python.tar.gz", hashlib.md5(blob).hexdigest())
        spec = data._Spec("cifar10", ("https://example.invalid/",), {"train": (f,), "test": (f,)}, "cifar", ())
        monkeypatch.setitem(data.DATASETS, "cifar10", spec)

    use(archive)
    monkeypatch.setenv("FFKIT_DATA", str(root))
    return archive, contents, use


def test_cifar_reads_pickled_batches(tiny_cifar) -> None:
    _, contents, _ = tiny_cifar
    x, y = ffkit.load_dataset("cifar10", "train")
    assert x.shape == (15, 3, 32, 32)
    expected = np.concatenate([contents[f"data_batch_{i}"][1] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    torch.testing.assert_close(x, torch.from_numpy(expected.astype(np.float32) / 255))
    xt, yt = ffkit.load_dataset("cifar10", "test")
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == contents["test_batch"][2]


def test_cifar_refuses_foreign_pickles(tiny_cifar) -> None:
    archive, contents, use = tiny_cifar

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batches = {k: v[0] for k, v in contents.items()}
    batches["test_batch"] = pickle.dumps({b"data": Evil(), b"labels": []})
    cifar_archive(archive, batches)
    use(archive)
    with pytest.raises(data.DatasetError, match="refusing to unpickle"):
        ffkit.load_dataset("cifar10", "test")


def test_cifar_rejects_wrong_shapes_and_truncation(tiny_cifar) -> None:
    archive, contents, use = tiny_cifar
    batches = {k: v[0] for k, v in contents.items()}
    batches["test_batch"] = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    cifar_archive(archive, batches)
    use(archive)
    with pytest.raises(data.DatasetError, match="3072"):
        ffkit.load_dataset("cifar10", "test")
    archive.write_bytes(archive.read_bytes()[:200])
    use(archive)
    with pytest.raises(data.DatasetError, match="corrupt or truncated") as info:
        ffkit.load_dataset("cifar10", "test")
    assert "cifar-10-python.tar.gz" in str(info.value)


# ----------------------------------------------------------------------------- batching


def test_batches_cover_an_epoch_once() -> None:
    x = torch.arange(10.0).view(10, 1)
    y = torch.arange(10)
    g = torch.Generator().manual_seed(3)
    seen = torch.cat([yb for _, yb in data.batches(x, y, 3, generator=g)])
    assert len(seen) == 9 and len(set(seen.tolist())) == 9  # drop_last drops one example
    full = torch.cat([yb for _, yb in data.batches(x, y, 3, shuffle=False, drop_last=False)])
    assert full.tolist() == list(range(10))
    a = [yb.tolist() for _, yb in data.batches(x, y, 4, generator=torch.Generator().manual_seed(1))]
    b = [yb.tolist() for _, yb in data.batches(x, y, 4, generator=torch.Generator().manual_seed(1))]
    assert a == b
    for xb, yb in data.batches(x, y, 4, generator=g):
        assert torch.equal(xb[:, 0].long(), yb)


def test_batches_and_loader_reject_bad_input() -> None:
    x, y = torch.zeros(5, 2), torch.zeros(4)
    with pytest.raises(ValueError, match="different lengths"):
        next(data.batches(x, y, 2))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, x, 0))
    with pytest.raises(ValueError, match="exceeds"):
        next(data.batches(x, x, 6))
    xs, ys = next(iter(data.loader(torch.arange(6.0), torch.arange(6), 3, shuffle=False)))
    assert ys.tolist() == [0, 1, 2]
