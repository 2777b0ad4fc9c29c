"""Service settings, read from the environment (SNAP2SHOP_*) and overridable from the CLI."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from indexer.stores import StoreConfig

ENV_PREFIX = "SNAP2SHOP_"


@dataclass(frozen=True)
class Settings:
    index: Path = Path("var/demo/index")
    # Where the catalogue photos are now; None: where they were when the index was built (its
    # manifest). Set it when the catalogue is mounted elsewhere (another machine, a container).
    image_root: Path | None = None
    model: str | None = None  # None: the model the index manifest names
    device: str = "auto"  # where the embedder runs: auto (GPU when torch sees one), cpu, cuda
    precision: str = "auto"  # auto: bf16 on a GPU, fp32 on the CPU
    index_device: str = "auto"  # where FAISS searches: auto (GPU with faiss-gpu), cpu, gpu
    # The vector store is the one the index manifest names; these only check it (store) and say where
    # its Milvus is reached from this process (milvus_uri), e.g. http://milvus:19530 inside compose.
    store: str = ""
    milvus_uri: str = ""
    collection: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 20 * 1024 * 1024
    default_k: int = 10
    max_k: int = 100
    log_level: str = "info"
    log_format: str = "json"  # json: one object per line with the request id; text: for a terminal
    # Searches admitted at once (reading, decoding, queued or embedding); past it 503 + Retry-After,
    # so a spike costs at most this many uploads of memory instead of an unbounded queue.
    max_in_flight: int = 64
    decode_threads: int = 0  # photos decoded at once off the event loop; 0: one per CPU core
    # Intra-op threads of the embedding worker's forward pass; every other thread runs torch on one.
    # 0: leave torch's threads alone (`python -m service` sets it to torch's default, one per core).
    torch_threads: int = 0
    # Embeddings computed in one forward pass at most; auto: model/batch_size.py's rule for the
    # embedder's device (16 on the CPU, 64 on a GPU), resolved where the device is known (runtime).
    batch_max_size: int | str = "auto"
    # Test-time augmentation of uploads: flip (the mirror image too, averaged: twice the forward
    # passes), none, or auto: flip for adapted models, where it measured +0.01 to +0.04 top-1, none
    # for the zero-shot model, where it measured nothing (README, "Adapt to your catalogue").
    tta: str = "auto"
    batch_max_wait_ms: float = 0.0  # wait this long for a batch to fill; 0: take what is queued
    reload_poll_s: float = 2.0  # how often to look for a newly published index version; 0: never
    admin_token: str = ""  # bearer token of the /admin endpoints; empty: they are disabled
    cors_origins: tuple[str, ...] = ()  # origins allowed to call the API from a browser; none by default

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
        if self.image_root is not None:  # a string from the environment, or a caller's "~/shop"
            object.__setattr__(self, "image_root", Path(self.image_root).expanduser())
        if self.max_upload_bytes < 1024:
            raise ValueError("max_upload_bytes must be at least 1024")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError("default_k must lie between 1 and max_k")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        from model.batch_size import parse_batch_size

        # "16" from the environment becomes 16, "auto" stays; anything else is one clear line.
        object.__setattr__(self, "batch_max_size", parse_batch_size(self.batch_max_size, "batch_max_size"))
        if self.decode_threads < 0 or self.torch_threads < 0:
            raise ValueError("decode_threads and torch_threads cannot be negative")
        if self.batch_max_wait_ms < 0 or self.reload_poll_s < 0:
            raise ValueError("batch_max_wait_ms and reload_poll_s cannot be negative")
        if self.tta not in ("auto", "none", "flip"):
            raise ValueError("tta must be auto, none or flip")
        if self.log_format not in ("json", "text"):
            raise ValueError("log_format must be json or text")
        self.store_override()  # an unknown store or a bad collection name fails at start-up
        if self.admin_token and len(self.admin_token) < 16:
            raise ValueError("admin_token must be at least 16 characters (or empty to disable /admin)")

    def store_override(self) -> "StoreConfig | None":
        from indexer.stores import StoreConfig

        if not (self.store or self.milvus_uri or self.collection):
            return None
        return StoreConfig.from_options(self.store, self.milvus_uri, self.collection)

    def __repr__(self) -> str:  # logged at start-up: never print the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["admin_token"] = "***" if self.admin_token else ""
        return "Settings(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"


def _coerce(name: str, raw: str, default):
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, Path):
        return Path(raw)
    return raw
