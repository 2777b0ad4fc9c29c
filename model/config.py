"""The embedder's configuration: everything needed to rebuild the network and its preprocessing.

The config travels inside every checkpoint and every index manifest, so indexing, serving and
training derive the same network and the same pixel pipeline from one place (as timm's
`pretrained_cfg` does).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

# 2: query-side preprocessing and the adapted head (python -m model adapt).
CONFIG_FORMAT_VERSION = 2

POOLINGS = ("max", "gem", "avg")
RESIZE_POLICIES = ("letterbox", "squash", "center-crop")
MAX_CONTEXT_WIDEN = 4.0  # past it the "context" crop is mostly street
MAX_FRAME_WEIGHT = 2.0   # past it the street outweighs the garment crops


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded RGB photo becomes the network's input tensor."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # letterbox keeps the whole garment and its proportions, which matters for shop photos that
    # are tall (dresses) or wide (bags); squash and center-crop are there for models trained so.
    resize: str = "letterbox"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if not 16 <= self.input_size <= 2048:
            raise ValueError(f"input_size must be between 16 and 2048, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict:
        return asdict(self) | {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})

    def matches(self, other: "Preprocessing", tol: float = 1e-6) -> bool:
        return (
            self.input_size == other.input_size
            and self.resize == other.resize
            and all(abs(a - b) <= tol for a, b in zip(self.mean + self.std, other.mean + other.std))
        )


@dataclass(frozen=True)
class AdapterConfig:
    """A head fitted on the frozen backbone's feature maps by `python -m model adapt`.

    Catalogue side: feature map -> foreground-weighted GeM -> learned whitening to `dim` ->
    (residual linear) -> L2. Query side: the same, but first, when `locate` is on, the garment is
    found on the query's feature map and cropped out of the query at the catalogue's input size, so
    the garment is seen at the scale it has in a shop photo (a shopper's garment is smaller and
    surrounded by street). Shop photos and shoppers' photos are two domains: each side has its own
    residual head.
    """

    dim: int
    foreground: bool = True            # weight pooling by a learned per-cell garment probability
    foreground_hidden: int = 64        # width of the 1x1-convolution foreground net
    locate: bool = True                # query side: crop to the garment before embedding
    crop_margin: float = 0.1           # of the garment box's longer side, added on every side
    # Query side, when locating: the garment box is also embedded widened this many times about its
    # centre, and the query's embedding is the normalised mean of both (context around a tight or
    # misplaced box); 1.0: the crop alone, as checkpoints made before the setting.
    context_widen: float = 1.0
    # Query side, when locating: the whole frame's embedding (from the map the garment was found
    # on: no further backbone pass) is added with this weight to the crops' (each crop weighs 1);
    # 0.0: the crops alone, as checkpoints made before the setting.
    frame_weight: float = 0.0
    gem_p: float = 3.0
    residual: bool = True              # per-side residual linear heads after the whitening

    def __post_init__(self) -> None:
        if not 1 <= self.dim <= 65536:
            raise ValueError(f"adapter dim must be a positive integer, got {self.dim}")
        if self.locate and not self.foreground:
            raise ValueError("locating the garment needs the foreground head (foreground=True)")
        if not 0 <= self.crop_margin <= 1:
            raise ValueError(f"crop_margin must be within 0..1, got {self.crop_margin}")
        if not 1 <= self.context_widen <= MAX_CONTEXT_WIDEN:
            raise ValueError(f"context_widen must be within 1..{MAX_CONTEXT_WIDEN:g}, got {self.context_widen}")
        if not 0 <= self.frame_weight <= MAX_FRAME_WEIGHT:
            raise ValueError(f"frame_weight must be within 0..{MAX_FRAME_WEIGHT:g}, got {self.frame_weight}")
        if self.foreground_hidden < 1 or self.gem_p < 1:
            raise ValueError("foreground_hidden must be positive and gem_p at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EmbedderConfig:
    """Architecture of the embedder: backbone -> global pooling -> optional FC to `dim` -> L2 norm.

    `dim=None` means no projection: the embedding is the pooled backbone feature (an untrained
    head must not add a random projection that would scramble pretrained features).
    """

    backbone: str = "efficientnet-lite0"
    pooling: str = "max"
    dim: int | None = None
    gem_p: float = 3.0
    bnneck: bool = False
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    # How a shopper's upload is preprocessed; None: as the catalogue (`preprocessing`). Its own
    # input size matters: the garment fills less of a street photo than of a shop photo.
    query_preprocessing: Preprocessing | None = None
    adapter: AdapterConfig | None = None
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.dim is not None and not 1 <= self.dim <= 65536:
            raise ValueError(f"dim must be a positive integer, got {self.dim}")
        if self.adapter is not None and (self.dim is not None or self.bnneck):
            raise ValueError("an adapted head replaces the FC head: dim and bnneck must be unset")

    @property
    def query_prep(self) -> Preprocessing:
        """The preprocessing of shoppers' photos (the catalogue's when none of its own is set)."""
        return self.query_preprocessing or self.preprocessing

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        data["query_preprocessing"] = self.query_preprocessing.to_dict() if self.query_preprocessing else None
        data["adapter"] = self.adapter.to_dict() if self.adapter else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "EmbedderConfig":
        version = data.get("format_version", CONFIG_FORMAT_VERSION)
        if version > CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"config format version {version} is newer than this snap2shop understands "
                f"({CONFIG_FORMAT_VERSION}); upgrade snap2shop"
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "preprocessing" in values:
            values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        if values.get("query_preprocessing") is not None:
            values["query_preprocessing"] = Preprocessing.from_dict(values["query_preprocessing"])
        if values.get("adapter") is not None:
            values["adapter"] = AdapterConfig.from_dict(values["adapter"])
        return cls(**values)
