"""Service settings, read from the environment (SNAP2SHOP_*) and overridable from the CLI."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

ENV_PREFIX = "SNAP2SHOP_"


@dataclass(frozen=True)
class Settings:
    index: Path = Path("var/demo/index")
    model: str | None = None  # None: the model the index manifest names
    device: str = "auto"  # where the embedder runs: auto (GPU when torch sees one), cpu, cuda
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 on the CPU
    index_device: str = "auto"  # where FAISS searches: auto (GPU with faiss-gpu), cpu, gpu
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 20 * 1024 * 1024
    default_k: int = 10
    max_k: int = 100
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _coerce(f.name, raw, getattr(cls, f.name))
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {f.name}") from None
        settings = cls(**values)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1024:
            raise ValueError("max_upload_bytes must be at least 1024")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError("default_k must lie between 1 and max_k")


def _coerce(name: str, raw: str, default):
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, Path):
        return Path(raw)
    return raw
