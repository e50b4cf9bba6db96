r"""What a model must provide to be distilled by stage 2 (a *teacher*), and
the parts every teacher shares (stage-1 loss, freezing, frozen-cache
bookkeeping)."""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pmm_geo.nn.functional import bpr_scores
from pmm_geo.nn.losses import BPRLoss


class TeacherOutput(NamedTuple):
    r"""The output of a teacher's forward pass: fused embeddings
    :obj:`user [U, d]`, :obj:`item [I, d]` (the teacher as a ranker, the
    pairwise KD's targets) and one branch per item modality,
    :obj:`modal_user[m] [U, d]`, :obj:`modal_item[m] [I, d]` (each itself a
    ranker: the modality-aware listwise and embedding KD's targets)."""
    user: Tensor
    item: Tensor
    modal_user: Dict[str, Tensor]
    modal_item: Dict[str, Tensor]


#: The interface of a teacher (see :class:`TeacherMixin`).
TEACHER_API = ('modalities', 'embedding_dim', 'prompt', 'init_prompt',
               'forward', 'get_embedding', 'loss', 'freeze', 'cache_frozen',
               'clear_cache')


def check_teacher(model, name: str = 'teacher') -> None:
    r"""Raises :class:`TypeError` naming what :obj:`model` lacks of the
    teacher interface :obj:`TEACHER_API` (a prompt module included)."""
    missing = [a for a in TEACHER_API if not hasattr(model, a)]
    if not missing and not isinstance(model.prompt, torch.nn.Module):
        missing = ['prompt (a torch.nn.Module)']
    if missing:
        raise TypeError(f"{type(model).__name__} cannot be the {name}: it "
                        f"lacks {', '.join(missing)} of the teacher "
                        f"interface (see pmm_geo.nn.models.TeacherMixin)")


class TeacherMixin:
    r"""The teacher interface of stage 2, and what the teachers share.

    Stage 2 distils any model (:func:`check_teacher`) that has

    - :obj:`modalities` (list of str) and :obj:`embedding_dim` (int): the
      branches and the width of every output;
    - :obj:`prompt`: a :class:`torch.nn.Module` (e.g. a
      :class:`~pmm_geo.nn.PromptLearner`) whose parameters condition the
      outputs and keep learning from the student's loss in stage 2;
    - :obj:`init_prompt(graph, features)`: computes data-derived buffers
      (the prompt's hard tokens, frozen graphs) once, before training;
    - :obj:`forward(graph, features)` returning a :class:`TeacherOutput`,
      and :obj:`get_embedding(graph, features)` its fused :obj:`(user,
      item)`;
    - :obj:`loss(out, users, pos, neg, graph=None)`: the stage-1 loss;
    - :obj:`freeze(train_prompt)`, :obj:`cache_frozen(graph, features)`,
      :obj:`clear_cache()`: stage 2 puts the teacher in eval mode with only
      the prompt trainable, then lets it compute once what the prompt does
      not change.

    This mixin implements :meth:`loss`, :meth:`freeze` and
    :meth:`get_embedding` on top of
    :obj:`user_embedding`, :obj:`item_embedding`, :obj:`lambda_reg`,
    :obj:`modality_loss_weight` and :meth:`_adjacency`, and the bookkeeping that
    keeps a frozen cache from going stale; the model implements the rest.
    """
    def loss(self, out: TeacherOutput, users: Tensor, pos: Tensor,
             neg: Tensor, lambda_reg: Optional[float] = None,
             graph=None) -> Tensor:
        r"""The stage-1 loss: BPR on the fused embeddings, plus
        :obj:`modality_loss_weight` times the BPR of each modality branch, plus
        :math:`L_2` regularization of the batch's layer-0 id embeddings.

        Args:
            out (TeacherOutput): The output of :meth:`forward`.
            users (torch.Tensor): User ids :obj:`[B]`.
            pos (torch.Tensor): Positive item ids :obj:`[B]`.
            neg (torch.Tensor): Negative item ids :obj:`[B]` or
                :obj:`[B, n]`.
            lambda_reg (float, optional): Overrides :obj:`self.lambda_reg`.
            graph (SampledAdjacency, optional): The subgraph :obj:`out` was
                computed on; the ids are then its local ids.
                (default: :obj:`None`, the full graph)
        """
        if users.dim() != 1 or pos.shape != users.shape or neg.dim() not in (
                1, 2) or neg.size(0) != users.size(0):
            raise ValueError(f"Expected 'users' [B], 'pos' [B] and 'neg' [B] "
                             f"or [B, n]; got {list(users.shape)}, "
                             f"{list(pos.shape)} and {list(neg.shape)}")
        lambda_reg = self.lambda_reg if lambda_reg is None else lambda_reg
        user_w, item_w = self.user_embedding.weight, self.item_embedding.weight
        if graph is not None:
            # The subgraph's rows (a sparse gradient for SparseAdam).
            adj = self._adjacency(graph)
            user_w, item_w = adj.select_users(user_w), adj.select_items(item_w)
        params = [F.embedding(users, user_w)] + \
            [F.embedding(i, item_w) for i in (pos, neg)]
        loss = BPRLoss(lambda_reg)(*bpr_scores(out.user, out.item, users,
                                               pos, neg), params)
        if self.modality_loss_weight != 0.:
            bpr = BPRLoss()
            for m in out.modal_user:
                loss = loss + self.modality_loss_weight * bpr(*bpr_scores(
                    out.modal_user[m], out.modal_item[m], users, pos, neg))
        return loss

    def freeze(self, train_prompt: bool = True):
        r"""Stage 2: puts the teacher in eval mode (no dropout on the
        distillation targets) and stops gradients to every teacher weight.
        With :obj:`train_prompt=True` the parameters of :obj:`teacher.prompt`
        stay trainable (the paper's prompt tuning from the student's loss);
        with :obj:`False` they are frozen too."""
        self.eval()
        for name, param in self.named_parameters():
            param.requires_grad_(train_prompt and name.startswith('prompt.'))
        return self

    def get_embedding(self, graph, features) -> Tuple[Tensor, Tensor]:
        r"""Returns the fused embeddings :obj:`(user [U, d], item [I, d])`.
        """
        out = self(graph, features)
        return out.user, out.item

    def _valid_cache(self, adj, features):
        r"""The frozen cache (:obj:`None` if there is none), refused when it
        went stale or was computed for another graph or other features."""
        cache = self._cache
        if cache is None:
            return None
        self._check_cache(cache.versions)
        if adj.root is not cache.adj or feature_keys(features) != \
                cache.feature_keys:
            raise RuntimeError("The frozen cache was computed for another "
                               "graph or other features: call "
                               "cache_frozen() again or clear_cache()")
        return cache

    def _apply(self, fn, *args, **kwargs):
        # Moving the module (device/dtype) invalidates the cached tensors.
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _backbone_parameters(self) -> List[Tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters()
                if not n.startswith('prompt.')]

    def _versions(self) -> Tuple[int, ...]:
        return tuple(p._version for _, p in self._backbone_parameters())

    def _check_freezable(self) -> None:
        r"""Refuses a frozen cache in train mode or with trainable
        non-prompt weights."""
        if self.training:
            raise RuntimeError("cache_frozen() needs eval mode (call "
                               "teacher.freeze() or teacher.eval() first)")
        trainable = [n for n, p in self._backbone_parameters()
                     if p.requires_grad]
        if trainable:
            raise RuntimeError(f"cache_frozen() needs frozen teacher "
                               f"weights, but {trainable} require grad (call "
                               f"teacher.freeze() first)")

    def _check_cache(self, cache_versions: Tuple[int, ...]) -> None:
        r"""Refuses a frozen cache that went stale (train mode or changed
        weights)."""
        if self.training:
            raise RuntimeError("The teacher holds a frozen cache but is in "
                               "train mode: call clear_cache() before "
                               "training it again")
        if self._versions() != cache_versions:
            raise RuntimeError("Teacher weights changed since "
                               "cache_frozen(): call it again or "
                               "clear_cache()")


def feature_keys(features) -> Dict[str, tuple]:
    r"""What identifies the feature tensors a frozen cache was computed
    for (storage, shape, device per modality)."""
    return {m: (x.data_ptr(), tuple(x.shape), x.device)
            for m, x in features.items()}


__all__ = ['TeacherOutput', 'TeacherMixin', 'check_teacher', 'TEACHER_API']
