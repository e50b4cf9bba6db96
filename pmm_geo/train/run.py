r"""The layout of a run directory, and serving from a saved run: top-k
recommendations from the saved student alone (no features, no teacher)."""
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pmm_geo.ranking import excluded_links, topk_items

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
    excluding (by default) the items each user interacted with in training;
    load once with :func:`load_recommender`, then score batches of users.

    With the id maps of a dataset made by :obj:`pmm-geo prepare`
    (:obj:`user2id.json`, :obj:`item2id.json`, copied into the run
    directory by :obj:`pmm-geo train`), :meth:`recommend_ids` takes and
    returns the original ids.

    Args:
        user_emb (torch.Tensor): Final user embeddings :obj:`[U, d]`.
        item_emb (torch.Tensor): Final item embeddings :obj:`[I, d]`.
        train_edge_index (torch.Tensor): Train interactions :obj:`[2, E]`.
        user_ids (list of str, optional): The original id of each user
            index. (default: :obj:`None`)
        item_ids (list of str, optional): The original id of each item
            index. (default: :obj:`None`)
    """
    def __init__(self, user_emb: Tensor, item_emb: Tensor,
                 train_edge_index: Tensor,
                 user_ids: Optional[Sequence[str]] = None,
                 item_ids: Optional[Sequence[str]] = None):
        self.user_emb, self.item_emb = user_emb, item_emb
        self.train_edge_index = train_edge_index.long()
        self.num_users, self.num_items = user_emb.size(0), item_emb.size(0)
        self.user_ids = list(user_ids) if user_ids is not None else None
        self.item_ids = list(item_ids) if item_ids is not None else None
        self._user_index = ({u: i for i, u in enumerate(self.user_ids)}
                            if self.user_ids is not None else None)

    def __repr__(self) -> str:
        ids = ', original ids' if self.user_ids is not None else ''
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}{ids})')

    @torch.no_grad()
    def recommend(self, users: Tensor, k: int = 20,
                  exclude_seen: bool = True, return_scores: bool = False
                  ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Returns :obj:`[len(users), k]` item indices, best first (and
        their scores :math:`\mathbf{e}_u^{\top}\mathbf{e}_i` with
        :obj:`return_scores=True`). With :obj:`exclude_seen` (default) never
        a train item of the user; rows are padded with :obj:`-1` (score
        :obj:`-inf`) when a user has fewer than :obj:`k` unseen items."""
        users = torch.as_tensor(users).long().view(-1)
        check_users(users, self.num_users)
        check_k(k, self.num_items)
        exclude = excluded_links(users, self.train_edge_index,
                                 self.num_users, self.num_items) \
            if exclude_seen else None
        scores, items = topk_items(self.user_emb[users], self.item_emb,
                                   int(k), exclude)
        items.masked_fill_(scores == float('-inf'), -1)
        return (items, scores) if return_scores else items

    def user_index(self, users: Sequence) -> Tensor:
        r"""The indices of :obj:`users`: original ids when the run has
        :obj:`user2id.json`, else indices (ints or digit strings)."""
        if self._user_index is None:
            bad = [u for u in users if not str(u).lstrip('-').isdigit()]
            if bad:
                raise ValueError(f'unknown user {bad[0]!r} (this run has no '
                                 f'user2id.json: users are indices '
                                 f'0..{self.num_users - 1})')
            return torch.tensor([int(u) for u in users], dtype=torch.long)
        missing = [u for u in users if str(u) not in self._user_index]
        if missing:
            raise ValueError(f'unknown user {missing[0]!r} (not in the '
                             f"run's user2id.json)")
        return torch.tensor([self._user_index[str(u)] for u in users],
                            dtype=torch.long)

    def recommend_ids(self, users: Sequence, k: int = 20,
                      exclude_seen: bool = True) -> List[Dict[str, Any]]:
        r"""Recommends for :obj:`users` given as original ids (or indices
        without id maps): one :obj:`{"user", "items", "scores"}` per user,
        best first, items as original ids when the run has
        :obj:`item2id.json`."""
        items, scores = self.recommend(self.user_index(users), k,
                                       exclude_seen, return_scores=True)
        out = []
        for user, row, values in zip(users, items.tolist(),
                                     scores.tolist()):
            keep = [(i, v) for i, v in zip(row, values) if i >= 0]
            out.append({'user': user,
                        'items': [self.item_ids[i] if self.item_ids else i
                                  for i, _ in keep],
                        'scores': [v for _, v in keep]})
        return out


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
    user_ids, item_ids = read_run_id_maps(run_dir, user_emb.size(0),
                                          item_emb.size(0))
    return Recommender(user_emb, item_emb, edge_index, user_ids, item_ids)


def read_run_id_maps(run_dir: str, num_users: int, num_items: int):
    r"""The original id of each user and item index, from the
    :obj:`user2id.json` / :obj:`item2id.json` of :obj:`run_dir` (each
    :obj:`None` when absent)."""
    from pmm_geo.data import DataFormatError
    from pmm_geo.data.prepare import ITEM_MAP, USER_MAP, read_id_map
    out = []
    for name, count in ((USER_MAP, num_users), (ITEM_MAP, num_items)):
        mapping = read_id_map(run_dir, name, required=False)
        if mapping is not None and len(mapping) != count:
            raise DataFormatError(os.path.join(run_dir, name), name,
                                  f'{len(mapping)} ids, but the model has '
                                  f'{count}')
        out.append(None if mapping is None else
                   sorted(mapping, key=mapping.__getitem__))
    return tuple(out)


__all__ = ['RunDir', 'Recommender', 'load_model', 'load_graph',
           'load_recommender', 'read_run_id_maps']
