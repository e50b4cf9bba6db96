r"""Item content to features: text through a sentence-transformers model,
images through a convolutional network, written as
:obj:`<modality>_feat.npy` aligned with a prepared dataset's
:obj:`item2id.json` (:obj:`pmm-geo features`).

The encoders need the optional :obj:`content` extra
(:obj:`pip install 'pmm_geo[content]'`); the rest of :obj:`pmm_geo` does
not.
"""
from .features import FeatureReport, IMAGE_EXTENSIONS, encode_item_features
from .image import DEFAULT_IMAGE_MODEL, ImageEncoder
from .text import DEFAULT_TEXT_MODEL, ModelLoadError, TextEncoder

__all__ = [
    'encode_item_features',
    'FeatureReport',
    'TextEncoder',
    'ImageEncoder',
    'ModelLoadError',
    'DEFAULT_TEXT_MODEL',
    'DEFAULT_IMAGE_MODEL',
    'IMAGE_EXTENSIONS',
]
