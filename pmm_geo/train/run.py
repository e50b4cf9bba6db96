r"""The layout of a run directory, and serving from a saved run: top-k
recommendations from the saved student alone (no features, no teacher)."""
import json
import os
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from pmm_geo.ranking import recommend_items

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, TrainConfig

class RunDir:
    r"""The files of one training run.

    ================  ====================================================
    ``config.json``   the :class:`TrainConfig` the run used
    ``metrics.json``  ``{"<model>": {"val", "test", "epochs", ...}}``
    ``log.jsonl``     one JSON record per epoch / evaluation / event
    ``train_state.pt`` the resumable training state (latest epoch)
    ``<model>.pt``    each trained model at its selected epoch (class,
                      constructor arguments, weights, final embeddings,
                      train interactions): ``teacher``, ``student``, ...
    ``curves.png``    training curves (when matplotlib is installed)
    ================  ====================================================
    """
    CONFIG = 'config.json'
    METRICS = 'metrics.json'
    LOG = 'log.jsonl'
    STATE = 'train_state.pt'
    CURVES = 'curves.png'

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def model_file(self, name: str) -> str:
        return self.file(f'{name}.pt')

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def has_run(self) -> bool:
        r"""Whether the directory already holds (part of) a run."""
        return any(os.path.exists(self.file(f))
                   for f in (self.STATE, self.METRICS))

    def read_config(self) -> TrainConfig:
        path = self.file(self.CONFIG)
        if not os.path.isfile(path):
            raise CheckpointError(f'{self.path} is not a pmm-geo run '
                                  f'directory (no {self.CONFIG})')
        return TrainConfig.from_json(path)

    def read_metrics(self) -> Dict[str, Any]:
        path = self.file(self.METRICS)
        if not os.path.isfile(path):
            hint = (' (the run has not finished: continue it with '
                    "'pmm-geo train DATA_DIR --out RUN_DIR --resume')"
                    if os.path.exists(self.file(self.STATE)) else '')
            raise CheckpointError(f'no {self.METRICS} in {self.path}{hint}')
        try:
            with open(path, encoding='utf-8') as f:
                return json.load(f)
        except json.JSONDecodeError as error:
            raise CheckpointError(f'{path}: not valid JSON ({error})') \
                from None


class Recommender:
    r"""Top-k recommendation from the final embeddings of a saved model,
    excluding the items each user interacted with in training.

    Args:
        user_emb (torch.Tensor): Final user embeddings :obj:`[U, d]`.
        item_emb (torch.Tensor): Final item embeddings :obj:`[I, d]`.
        train_edge_index (torch.Tensor): Train interactions :obj:`[2, E]`.
    """
    def __init__(self, user_emb: Tensor, item_emb: Tensor,
                 train_edge_index: Tensor):
        self.user_emb, self.item_emb = user_emb, item_emb
        self.train_edge_index = train_edge_index.long()
        self.num_users, self.num_items = user_emb.size(0), item_emb.size(0)

    @torch.no_grad()
    def recommend(self, users: Tensor, k: int = 20) -> Tensor:
        r"""Returns :obj:`[len(users), k]` item ids, best first, never a
        train item of the user (rows padded with :obj:`-1` when a user has
        fewer than :obj:`k` unseen items)."""
        users = torch.as_tensor(users).long().view(-1)
        check_users(users, self.num_users)
        check_k(k, self.num_items)
        return recommend_items(self.user_emb, self.item_emb, int(k), users,
                               self.train_edge_index)


def check_users(users: Tensor, num_users: int) -> None:
    if users.numel() == 0:
        raise ValueError('no users given')
    bad = users[(users < 0) | (users >= num_users)]
    if bad.numel() > 0:
        raise ValueError(f'unknown user {int(bad[0])} (the run has users '
                         f'0..{num_users - 1})')


def check_k(k: int, num_items: int) -> None:
    if not 1 <= int(k) <= num_items:
        raise ValueError(f'k must be in 1..{num_items} (the number of '
                         f'items), got {k}')


def _model_checkpoint(run_dir: str, which: Optional[str]):
    from .registry import get_model
    run = RunDir(run_dir)
    if not run.exists():
        raise CheckpointError(f'no run directory {run.path}')
    if which is None:
        try:
            which = get_model(run.read_config().model).served
        except (ConfigError, ValueError) as error:
            raise CheckpointError(str(error)) from None
    path = run.model_file(which)
    if not os.path.isfile(path):
        raise CheckpointError(f"no model '{which}' in {run.path} (no "
                              f'{os.path.basename(path)})')
    return load_checkpoint(path, what=f'{which} checkpoint'), path


def _build(ckpt: Dict[str, Any], path: str) -> torch.nn.Module:
    import pmm_geo.nn
    cls = getattr(pmm_geo.nn, str(ckpt.get('class')), None)
    if cls is None or 'init' not in ckpt:
        raise CheckpointError(f'{path}: no model class and constructor '
                              f"arguments recorded (class {ckpt.get('class')!r}"
                              f'; saved by an older pmm_geo?)')
    model = cls(**ckpt['init'])
    model.load_state_dict(ckpt['state_dict'])
    return model.eval()


def load_model(run_dir: str, which: Optional[str] = None
               ) -> torch.nn.Module:
    r"""Rebuilds a trained model of a run, ready for serving: its
    :mod:`pmm_geo.nn` class, constructor arguments and weights (at the
    selected epoch) from :obj:`RUN_DIR/<which>.pt` alone, in eval mode.

    The student (and :obj:`lightgcn`) then needs nothing but the train
    graph, :func:`load_graph`; the teacher and :obj:`lattice` also take the
    item features in their forward pass.

    .. code-block:: python

        student = pmm_geo.load_model('runs/sci')  # LightGCNStudent
        graph = pmm_geo.load_graph('runs/sci')
        top = student.recommend(graph, k=20, user_index=torch.tensor([0, 7]))

    Args:
        run_dir (str): The run directory.
        which (str, optional): The model: :obj:`'student'`,
            :obj:`'teacher'`, :obj:`'lightgcn'`, :obj:`'lattice'`, ...
            (default: the one the run serves, the student for
            :obj:`promptmm`)
    """
    ckpt, path = _model_checkpoint(run_dir, which)
    return _build(ckpt, path)


def load_graph(run_dir: str, which: Optional[str] = None):
    r"""The train interactions a saved model propagates over, as the
    :class:`~pmm_geo.data.BipartiteAdjacency` its methods take (read from
    the model's checkpoint: no data directory needed)."""
    from pmm_geo.data import BipartiteAdjacency
    ckpt, _ = _model_checkpoint(run_dir, which)
    user_emb, item_emb = ckpt['user_emb'], ckpt['item_emb']
    return BipartiteAdjacency(ckpt['train_edge_index'], user_emb.size(0),
                              item_emb.size(0))


def load_recommender(run_dir: str, model: Optional[str] = None
                     ) -> Recommender:
    r"""Loads the served model of a run (the student for :obj:`promptmm`)
    for recommendation: only its checkpoint is read (final embeddings and
    the train interactions); no data directory, features or teacher.

    A model that needs no item features (the student, :obj:`lightgcn`) is
    rebuilt with :func:`load_model` and its embeddings recomputed over the
    saved train graph, i.e. exactly what it serves; the others serve their
    saved final embeddings.
    """
    ckpt, path = _model_checkpoint(run_dir, model)
    edge_index = ckpt['train_edge_index']
    user_emb, item_emb = ckpt['user_emb'], ckpt['item_emb']
    if ckpt.get('needs_features') is False:
        from pmm_geo.data import BipartiteAdjacency
        with torch.no_grad():
            user_emb, item_emb = _build(ckpt, path).get_embedding(
                BipartiteAdjacency(edge_index, user_emb.size(0),
                                   item_emb.size(0)))
    return Recommender(user_emb, item_emb, edge_index)


__all__ = ['RunDir', 'Recommender', 'load_model', 'load_graph',
           'load_recommender']
