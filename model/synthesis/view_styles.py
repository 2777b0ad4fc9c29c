"""Named styles of synthesised views: adapt draws its view set n in style n mod their number."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .consumer_views import ConsumerViewConfig

# Named recipes for adapt's view sets (set n draws with style n mod len): one look, however random,
# teaches one distance between street and shop. "default" fills the frame as most shoppers do;
# "hard" is the far end of what a phone gives: a smaller garment, dimmer or harsher light, motion
# of the hand, heavier compression. Its ranges overlap the default's rather than jump past them.
VIEW_STYLES: Mapping[str, ConsumerViewConfig] = MappingProxyType({
    "default": ConsumerViewConfig(),
    "hard": ConsumerViewConfig(
        long_side=(320, 640), garment_fraction=(0.25, 0.75), p_occlusion=0.45, max_occluded_fraction=0.3,
        brightness=(0.5, 1.4), contrast=(0.65, 1.3), gamma=(0.65, 1.5), max_temperature=0.16,
        saturation=(0.6, 1.3), p_blur=0.65, max_blur=1.8, noise_sigma=(1.0, 9.0), p_rescale=0.45,
        rescale=(0.35, 0.8), jpeg_quality=(22, 80)),
    # "company": other products around the one asked for, as in a photo of a whole outfit or a street.
    "company": ConsumerViewConfig(p_company=0.8),
    # "night": a dim shop or street, the phone's long exposure and gain (low_light.py).
    "night": ConsumerViewConfig(p_low_light=0.7),
})
