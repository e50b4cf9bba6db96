from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module, ModuleDict

from pmm_geo.nn.functional import bpr_scores, gather_rows, pair_scores
from pmm_geo.nn.losses import (
    BPRLoss,
    EmbeddingKDLoss,
    ListwiseKDLoss,
    PairwiseKDLoss,
)

Weight = Union[float, Tensor]

#: Whose scores the listwise term distils.
LIST_TARGETS = ('branches', 'fused')


class ObjectiveOutput(NamedTuple):
    r"""The output of :class:`PromptMMObjective`: the weighted total
    :obj:`loss` and its terms :obj:`parts` *before* weighting
    (:obj:`'bpr'`, and :obj:`'pair_kd'`, :obj:`'list_kd'`, :obj:`'emb_kd'`
    for each term whose weight is not zero), all attached to the graph."""
    loss: Tensor
    parts: Dict[str, Tensor]


def bpr_loss(bpr: BPRLoss, user_emb: Tensor, item_emb: Tensor,
             users: Tensor, pos: Tensor, neg: Tensor,
             input_emb: Optional[Tuple[Tensor, Tensor]] = None
             ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The BPR loss of a batch of triplets on propagated embeddings, with
    the :math:`L_2` term on the batch's rows of the layer-0 tables
    :obj:`input_emb = (user_table, item_table)` (LightGCN's
    regularization); returns :obj:`(loss, pos_scores, neg_scores)`."""
    s_pos, s_neg = bpr_scores(user_emb, item_emb, users, pos, neg)
    params = None
    if input_emb is not None:
        params = [F.embedding(users, input_emb[0]),
                  F.embedding(torch.cat([pos, neg]), input_emb[1])]
    return bpr(s_pos, s_neg, params), s_pos, s_neg


def _active(weight: Weight) -> bool:
    # A tensor weight (e.g. a gate) is always computed: no host sync here.
    return isinstance(weight, Tensor) or weight != 0


class PromptMMObjective(Module):
    r"""The student objective of `"PromptMM: Multi-Modal Knowledge
    Distillation for Recommendation with Prompt-Tuning"
    <https://arxiv.org/abs/2402.17188>`_ (WWW 2024), as one module for any
    student that produces user and item embeddings (the pmm_geo
    :class:`~pmm_geo.nn.LightGCNStudent`, PyG's
    :class:`~torch_geometric.nn.models.LightGCN`, ...):

    .. math::
        \mathcal{L} = \mathcal{L}_{BPR}
        + \lambda_{pair} \mathcal{L}_{pair}
        + \lambda_{list} \sum_m \mathcal{L}_{list}^m
        + \lambda_{emb} \sum_m \mathcal{L}_{emb}^m

    on a batch of triplets :math:`(u, i^+, i^-)` with student scores
    :math:`s_{ui} = \mathbf{e}_u^{\top} \mathbf{e}_i`:

    - :math:`\mathcal{L}_{BPR}`: :class:`~pmm_geo.nn.BPRLoss` of
      :math:`(s_{ui^+}, s_{ui^-})`, plus :math:`\lambda_{reg}` times the
      squared norm of the batch's layer-0 rows (when :obj:`input_emb` is
      given);
    - :math:`\mathcal{L}_{pair}`: :class:`~pmm_geo.nn.PairwiseKDLoss` of
      the student's margin :math:`s_{ui^+} - s_{ui^-}` against the margin of
      the teacher's fused embeddings;
    - :math:`\mathcal{L}_{list}^m`: :class:`~pmm_geo.nn.ListwiseKDLoss` of
      the student's scores of each user's candidate list (its positive,
      then sampled true negatives) against the scores of the teacher's
      modality-:math:`m` branch (modality-aware); with
      :obj:`list_target="fused"`, every :math:`m` takes the teacher's fused
      scores instead (:math:`M` times one term: the same total weight);
    - :math:`\mathcal{L}_{emb}^m`: :class:`~pmm_geo.nn.EmbeddingKDLoss`
      between the student's item embeddings :math:`g_m(\mathbf{s}_i)` and
      the teacher's modality-:math:`m` item embeddings, over the batch's
      items :math:`i^+` and :math:`i^-`. The items are taken as they come
      (an item drawn twice counts twice, as in the BPR term), not
      deduplicated: popular items weigh as much here as in the ranking
      loss, and no :func:`torch.unique` runs per step. :math:`g_m` is a
      train-only linear head (owned by this module, not by the served
      student) when the student is narrower than the teacher, else the
      identity.

    The weights :obj:`pair_weight`, :obj:`list_weight` and
    :obj:`emb_weight` are plain attributes: change them between steps
    (schedules) or set them to tensors (e.g. per-batch gates); a term whose
    weight is the number :obj:`0` is not computed at all. :meth:`forward`
    returns the unweighted terms next to the total, and each term is a
    method (:meth:`pair_term`, :meth:`list_term`, :meth:`emb_term`) a
    subclass can override.

    .. code-block:: python

        objective = PromptMMObjective(teacher.modalities, 32, 64)
        optimizer = torch.optim.Adam([*student.parameters(),
                                      *objective.parameters()])
        user, item = student.get_embedding(data)
        lists = sampler.candidate_lists(users, pos, 10)
        loss, parts = objective(user, item, teacher_out, users, pos, neg,
                                lists, input_emb=(student.user_embedding.weight,
                                                  student.item_embedding.weight))

    Args:
        modalities (Sequence[str]): The teacher's modalities (keys of its
            :obj:`modal_user` / :obj:`modal_item` outputs).
        student_dim (int): Width :math:`d_s` of the student's embeddings.
        teacher_dim (int): Width :math:`d` of the teacher's embeddings.
        pair_weight (float): :math:`\lambda_{pair}`. (default: :obj:`1.`)
        list_weight (float): :math:`\lambda_{list}`. (default: :obj:`1.`)
        emb_weight (float): :math:`\lambda_{emb}`. (default: :obj:`0.1`)
        lambda_reg (float): :math:`\lambda_{reg}` of the BPR term.
            (default: :obj:`1e-4`)
        pair_tau (float): Temperature of the pairwise KD.
            (default: :obj:`1.`)
        list_tau (float): Temperature of the listwise KD.
            (default: :obj:`1.`)
        list_alpha (float): Weight of the listwise target term.
            (default: :obj:`1.`)
        list_beta (float): Weight of the listwise non-target term.
            (default: :obj:`1.`)
        list_reweight (bool): The listwise modality-aware re-weighting.
            (default: :obj:`True`)
        emb_alpha (float): Exponent of the embedding KD's scaled cosine
            error. (default: :obj:`2.`)
        list_target (str): Whose scores the listwise term distils:
            :obj:`"branches"` (each modality branch, the paper) or
            :obj:`"fused"` (the teacher's fused embeddings, which rank
            better than the branches on dense data).
            (default: :obj:`"branches"`)
        one_sided (bool): Count a pairwise or listwise KD row only where
            the teacher is surer of the positive than the student (see
            :class:`~pmm_geo.nn.PairwiseKDLoss`), so the distillation never
            caps a student that outgrows its teacher. (default:
            :obj:`False`, the paper's loss; the training engine's default
            is :obj:`True`, see :class:`~pmm_geo.train.TrainConfig`)

    Shapes:
        - **input:** student embeddings :math:`(U, d_s)`, :math:`(I, d_s)`;
          the teacher's output (fused :math:`(U, d)`, :math:`(I, d)` and
          per-modality embeddings, e.g.
          :class:`~pmm_geo.nn.models.TeacherOutput`); user, positive and
          negative ids :math:`(B)`; candidate lists :math:`(B, 1 + n)`
        - **output:** :class:`ObjectiveOutput`
    """
    def __init__(
        self,
        modalities: Sequence[str],
        student_dim: int,
        teacher_dim: int,
        pair_weight: Weight = 1.,
        list_weight: Weight = 1.,
        emb_weight: Weight = 0.1,
        lambda_reg: float = 1e-4,
        pair_tau: float = 1.,
        list_tau: float = 1.,
        list_alpha: float = 1.,
        list_beta: float = 1.,
        list_reweight: bool = True,
        emb_alpha: float = 2.,
        list_target: str = 'branches',
        one_sided: bool = False,
    ):
        super().__init__()
        if list_target not in LIST_TARGETS:
            raise ValueError(f"PromptMMObjective: 'list_target' must be one "
                             f'of {LIST_TARGETS}, got {list_target!r}')
        self.list_target = list_target
        self.modalities = list(modalities)
        if not self.modalities:
            raise ValueError("PromptMMObjective: 'modalities' is empty: the "
                             "teacher has at least one modality branch")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.pair_weight = pair_weight
        self.list_weight = list_weight
        self.emb_weight = emb_weight
        self.bpr = BPRLoss(lambda_reg)
        self.pair_kd = PairwiseKDLoss(pair_tau, one_sided=one_sided)
        self.list_kd = ListwiseKDLoss(list_tau, list_alpha, list_beta,
                                      list_reweight, one_sided=one_sided)
        head = (student_dim, teacher_dim) if student_dim != teacher_dim \
            else (None, None)
        self.emb_kd = ModuleDict(
            {m: EmbeddingKDLoss(emb_alpha, *head) for m in self.modalities})

    def reset_parameters(self):
        r"""Resets the embedding-KD heads (if any)."""
        for loss in self.emb_kd.values():
            loss.reset_parameters()

    @property
    def uses_teacher(self) -> bool:
        r"""Whether :meth:`forward` reads the teacher's output (a
        distillation weight is not zero)."""
        return any(_active(w) for w in (self.pair_weight, self.list_weight,
                                        self.emb_weight))

    @property
    def uses_lists(self) -> bool:
        r"""Whether :meth:`forward` needs candidate lists."""
        return _active(self.list_weight)

    def forward(self, user_emb: Tensor, item_emb: Tensor, teacher,
                users: Tensor, pos: Tensor, neg: Tensor,
                lists: Optional[Tensor] = None,
                input_emb: Optional[Tuple[Tensor, Tensor]] = None
                ) -> ObjectiveOutput:
        r"""Computes the objective of one batch.

        Args:
            user_emb (torch.Tensor): The student's user embeddings
                :obj:`[U, d_s]`.
            item_emb (torch.Tensor): The student's item embeddings
                :obj:`[I, d_s]`.
            teacher: The teacher's output, with :obj:`user`, :obj:`item`,
                :obj:`modal_user[m]` and :obj:`modal_item[m]` embeddings
                (may be :obj:`None` when :obj:`uses_teacher` is false).
            users (torch.Tensor): User ids :obj:`[B]`.
            pos (torch.Tensor): Positive item ids :obj:`[B]`.
            neg (torch.Tensor): Negative item ids :obj:`[B]`.
            lists (torch.Tensor, optional): Candidate lists
                :obj:`[B, 1 + n]`, column 0 the positive (needed when
                :obj:`uses_lists`).
            input_emb ((torch.Tensor, torch.Tensor), optional): The
                student's layer-0 user and item tables, whose batch rows the
                BPR's :math:`L_2` term penalizes. (default: no penalty)
        """
        bpr, s_pos, s_neg = bpr_loss(self.bpr, user_emb, item_emb, users,
                                     pos, neg, input_emb)
        loss, parts = bpr, {'bpr': bpr}
        if not self.uses_teacher:
            return ObjectiveOutput(loss, parts)
        if teacher is None:
            raise ValueError('PromptMMObjective: the distillation terms need '
                             "the teacher's output (got None)")
        if _active(self.pair_weight):
            parts['pair_kd'] = self.pair_term(s_pos, s_neg, teacher, users,
                                              pos, neg)
            loss = loss + self.pair_weight * parts['pair_kd']
        if _active(self.list_weight):
            if lists is None:
                raise ValueError('PromptMMObjective: the listwise term needs '
                                 "candidate 'lists' (or list_weight=0)")
            parts['list_kd'] = self.list_term(user_emb, item_emb, teacher,
                                              users, lists)
            loss = loss + self.list_weight * parts['list_kd']
        if _active(self.emb_weight):
            parts['emb_kd'] = self.emb_term(item_emb, teacher,
                                            torch.cat([pos, neg]))
            loss = loss + self.emb_weight * parts['emb_kd']
        return ObjectiveOutput(loss, parts)

    def pair_term(self, s_pos: Tensor, s_neg: Tensor, teacher, users: Tensor,
                  pos: Tensor, neg: Tensor) -> Tensor:
        r""":math:`\mathcal{L}_{pair}` on the teacher's fused embeddings."""
        t_pos, t_neg = bpr_scores(teacher.user, teacher.item, users, pos, neg)
        return self.pair_kd(s_pos - s_neg, t_pos - t_neg)

    def list_term(self, user_emb: Tensor, item_emb: Tensor, teacher,
                  users: Tensor, lists: Tensor) -> Tensor:
        r""":math:`\sum_m \mathcal{L}_{list}^m`, each against the teacher's
        modality-:math:`m` branch (or its fused scores, see
        :obj:`list_target`)."""
        s_logits = pair_scores(user_emb, item_emb, users, lists)
        if self.list_target == 'fused':
            t_logits = pair_scores(teacher.user, teacher.item, users, lists)
            return len(self.modalities) * self.list_kd(s_logits, t_logits)
        total = 0.
        for m in self.modalities:
            t_logits = pair_scores(teacher.modal_user[m], teacher.modal_item[m],
                                   users, lists)
            total = total + self.list_kd(s_logits, t_logits)
        return total

    def emb_term(self, item_emb: Tensor, teacher, items: Tensor) -> Tensor:
        r""":math:`\sum_m \mathcal{L}_{emb}^m` over :obj:`items` (repeats
        kept)."""
        s_items = gather_rows(item_emb, items)
        total = 0.
        for m, loss in self.emb_kd.items():
            total = total + loss(s_items,
                                 gather_rows(teacher.modal_item[m], items))
        return total

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(modalities={self.modalities}, '
                f'{self.student_dim}, {self.teacher_dim}, '
                f'pair_weight={self.pair_weight}, '
                f'list_weight={self.list_weight}, '
                f'emb_weight={self.emb_weight}, '
                f'list_target={self.list_target!r}, '
                f'one_sided={self.pair_kd.one_sided})')


__all__ = ['PromptMMObjective', 'ObjectiveOutput', 'bpr_loss', 'LIST_TARGETS']
