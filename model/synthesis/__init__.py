"""Synthetic shopper photos made from catalogue photos, for training without street photos.

consumer_views: the synthesizer (ConsumerViewConfig, ConsumerViewSynthesizer); view_styles: its
named configs (VIEW_STYLES) that adapt's view sets are drawn in; cutout: the product's mask out of
its studio backdrop; scenes: the procedural backgrounds, colours and noise it places the product
on; company: other products set into the scene behind it; low_light: a dim scene as a phone
renders it (the hand's smear, shot noise, gain, denoising).
Training and adaptation use it; the network never does."""
from .consumer_views import ConsumerViewConfig, ConsumerViewSynthesizer
from .cutout import cutout_mask, product_mask
from .view_styles import VIEW_STYLES

__all__ = ["VIEW_STYLES", "ConsumerViewConfig", "ConsumerViewSynthesizer", "cutout_mask", "product_mask"]
