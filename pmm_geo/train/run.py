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

#: The model each run serves (`pmm-geo recommend`): PromptMM serves its
#: student; the baselines serve themselves.
SERVED = {'promptmm': 'student', 'lightgcn': 'lightgcn', 'lattice': 'lattice'}


class RunDir:
    r"""The files of one training run.

    ================  ====================================================
    ``config.json``   the :class:`TrainConfig` the run used
    ``metrics.json``  ``{"<model>": {"val", "test", "epochs", ...}}``
    ``log.jsonl``     one JSON record per epoch / evaluation / event
    ``train_state.pt`` the resumable training state (latest epoch)
    ``<model>.pt``    each trained model at its selected epoch
                      (``teacher``, ``student``, ``lightgcn``, ``lattice``)
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


def load_recommender(run_dir: str, model: Optional[str] = None
                     ) -> Recommender:
    r"""Loads the served model of a run (the student for :obj:`promptmm`)
    for recommendation: only its checkpoint is read (final embeddings and
    the train interactions); no data directory, features or teacher.

    For a LightGCN student the embeddings are recomputed from the saved
    weights over the saved train graph, i.e. exactly what
    :class:`~pmm_geo.nn.LightGCNStudent` serves.
    """
    run = RunDir(run_dir)
    if not run.exists():
        raise CheckpointError(f'no run directory {run.path}')
    if model is None:
        try:
            model = SERVED[run.read_config().model]
        except ConfigError as error:
            raise CheckpointError(str(error)) from None
    ckpt = load_checkpoint(run.model_file(model), what=f'{model} checkpoint')
    edge_index = ckpt['train_edge_index']
    user_emb, item_emb = ckpt['user_emb'], ckpt['item_emb']
    if ckpt.get('class') == 'LightGCNStudent':
        from pmm_geo.data import BipartiteAdjacency
        from pmm_geo.nn.models.student import LightGCNStudent
        init = ckpt['init']
        student = LightGCNStudent(**init)
        student.load_state_dict(ckpt['state_dict'])
        student.eval()
        with torch.no_grad():
            user_emb, item_emb = student.get_embedding(BipartiteAdjacency(
                edge_index, init['num_users'], init['num_items']))
    return Recommender(user_emb, item_emb, edge_index)


__all__ = ['RunDir', 'Recommender', 'load_recommender', 'SERVED']
