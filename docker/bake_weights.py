"""Build step: make backbone weights part of the image, so a container never downloads at run time.

Usage: python docker/bake_weights.py resnet50 [resnet18 ...]
Loads each backbone's ImageNet weights through the same code the app uses; torchvision fetches
into $TORCH_HOME (or finds the file copied there from docker/weights/). Fails the build with the
app's own message when a file can be neither found nor fetched.
"""
from __future__ import annotations

import sys

from model import WeightsUnavailableError, build_from_backbone


def main(names: list[str]) -> int:
    for name in names:
        try:
            build_from_backbone(name, "imagenet")
        except WeightsUnavailableError as exc:
            print(f"error: {exc}\n(or put the file in docker/weights/ of the build context)", file=sys.stderr)
            return 1
        print(f"{name}: ImageNet weights in place")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
