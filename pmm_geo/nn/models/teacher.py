from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, Module, ModuleDict

from pmm_geo.data.adjacency import BipartiteAdjacency, as_adjacency
from pmm_geo.nn.conv import (
    BipartiteConv,
    FrozenItemGraph,
    NeighbourBlock,
    modality_mix_weights,
)
from pmm_geo.nn.functional import lightgcn_propagate
from pmm_geo.nn.knn import knn_item_graph
from pmm_geo.nn.projector import NORM_EPS, PromptedProjector
from pmm_geo.nn.prompt import PromptLearner
from pmm_geo.nn._checks import check_recommender
from pmm_geo.nn.models._args import init_args

from .teacher_api import TeacherMixin, TeacherOutput, feature_keys


class _FrozenCache(NamedTuple):
    adj: BipartiteAdjacency
    feature_keys: Dict[str, tuple]  # data_ptr, shape, device per modality
    projected: Dict[str, Tensor]  # W_m X_m + b_m
    id_user: Tensor  # mean_l of the propagated id embeddings E (no prompt)
    id_item: Tensor
    versions: Tuple[int, ...]


def _rownorm(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=NORM_EPS)


class MultimodalTeacher(TeacherMixin, Module):
    r"""The multimodal teacher of `"PromptMM: Multi-Modal Knowledge
    Distillation for Recommendation with Prompt-Tuning"
    <https://arxiv.org/abs/2402.17188>`_ (WWW 2024), for any number of item
    modalities of any widths.

    Each modality :math:`m` is reduced by a
    :class:`~pmm_geo.nn.PromptedProjector` and smoothed over the
    user-item graph (users aggregate items, items aggregate users):

    .. math::
        \mathbf{F}_m = \mathrm{Dropout}\left(\mathbf{W}_m \left(
        \mathbf{X}_m + \beta \cdot \mathrm{rownorm}(\mathbf{P}_i
        \mathbf{P}_i^{\top} \mathbf{X}_m)\right)\right), \qquad
        \mathbf{h}_u^m = \hat{\mathbf{A}} \mathbf{F}_m, \qquad
        \mathbf{h}_i^m = \hat{\mathbf{A}}^{\top} \mathbf{h}_u^m

    An id branch propagates prompted id embeddings LightGCN-style (both
    sides from the previous layer, mean over layers :math:`0..L`) and the
    branches are fused:

    .. math::
        \mathbf{E}^{(0)} = \mathbf{E} + \gamma \cdot \mathrm{rownorm}
        (\mathbf{P}), \qquad
        \mathbf{E}_u^{(l+1)} = \hat{\mathbf{A}} \mathbf{E}_i^{(l)}, \quad
        \mathbf{E}_i^{(l+1)} = \hat{\mathbf{A}}^{\top} \mathbf{E}_u^{(l)},
        \qquad
        \mathbf{e} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{E}^{(l)}
        + \lambda \sum_{m} \mathrm{rownorm}(\mathbf{h}^m)

    with :math:`\hat{\mathbf{A}} = \mathbf{D}_u^{-1/2} \mathbf{R}
    \mathbf{D}_i^{-1/2}` and the soft prompts :math:`\mathbf{P}` of the
    :class:`~pmm_geo.nn.PromptLearner` submodule :obj:`teacher.prompt`.

    With :obj:`item_graph=True` items also see each other through content,
    as in FREEDOM and LATTICE: per modality a frozen binary kNN graph
    :math:`\mathbf{S}_m` on the raw features (:math:`k` neighbours, self
    included, :math:`\mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2}`, built
    once by :meth:`init_prompt`, see :class:`~pmm_geo.nn.FrozenItemGraph`)
    adds to the item side of the modality branch and, mixed with the
    weights :math:`w_m` of :func:`~pmm_geo.nn.conv.modality_mix_weights`,
    to the item side of the id branch:

    .. math::
        \mathbf{h}_i^m = \hat{\mathbf{A}}^{\top} \mathbf{h}_u^m +
        \mathbf{S}_m \mathbf{F}_m, \qquad
        \bar{\mathbf{e}}_i = \frac{1}{L+1} \sum_{l=0}^{L}
        \mathbf{E}_i^{(l)} + \sum_m w_m \mathbf{S}_m \mathbf{E}_i

    (the id embeddings :math:`\mathbf{E}_i`, FREEDOM's
    :math:`\mathbf{S} \mathbf{E}_I`). The prompt still conditions
    :math:`\mathbf{F}_m`, so it reaches the item-item term of the modality
    branches. On a sampled subgraph (:class:`~pmm_geo.data.SampledAdjacency`)
    the item-item terms of its items are computed from their :math:`k`
    neighbours' rows alone (:meth:`FrozenItemGraph.neighbours`), wherever
    the neighbours are: :math:`\mathbf{S}_m \mathbf{E}_i` gathers the
    neighbours' id embeddings, and :math:`\mathbf{S}_m \mathbf{F}_m`, which
    is linear in the features before the dropout, is
    :math:`\mathrm{Dropout}(\mathbf{W}_m (\mathbf{S}_m \mathbf{X}_m) +
    \mathbf{b}_m \mathbf{S}_m \mathbf{1} + \beta \mathbf{S}_m
    \mathbf{Q}_m)` with :math:`\mathbf{S}_m \mathbf{X}_m` computed once
    (:math:`\mathbf{Q}_m` the prompt term of
    :class:`~pmm_geo.nn.PromptedProjector`), so a step projects twice as
    many feature rows as the subgraph has items. A subgraph that holds half
    the catalogue or more (one of every item without item graphs) projects
    every item once instead, :math:`\mathbf{W}_m \mathbf{X}_m +
    \mathbf{b}_m`, and gathers its items' and their neighbours' rows from
    it: the same values from fewer rows (a teacher step at 1x the
    Electronics shape, 14,500 of 21,479 items per subgraph, costs 17-23 %
    less; ``docs/benchmarks.md``). Without dropout (eval mode,
    stage 2) that equals the full graph's rows; in training it draws one
    dropout mask for the neighbourhood's sum instead of one per neighbour,
    the same expectation.
    Unlike the reference code, :obj:`num_layers` layers are really chained
    and the last one is not soft-maxed (plain LightGCN mean).

    Stage 1 trains everything with :meth:`loss` (BPR on the fused
    embeddings plus BPR on each modality branch, so that every branch is
    itself a ranker for the modality-aware distillation). Stage 2 freezes
    the teacher (:meth:`freeze`) and trains only :obj:`teacher.prompt`
    through the teacher's forward pass; :meth:`cache_frozen` then computes
    the prompt-independent parts once.

    .. code-block:: python

        features = {m: data['item'][m] for m in modalities(data)}
        teacher = MultimodalTeacher(U, I, {m: x.size(1)
                                           for m, x in features.items()})
        teacher.init_prompt(data, features)
        out = teacher(data, features)
        loss = teacher.loss(out, users, pos_items, neg_items)

    The defaults differ from the reference's effective (amazon) values
    (:math:`\lambda = 0.8, \gamma = 0.01, \beta = 0.07`, dropout
    :math:`0.6`, modality BPR weight :math:`0`): on the real Amazon
    Scientific data (CLIP image and text features, validation items held
    out of train) they reach validation Recall@20 0.252 against 0.244 with
    the reference values; the modality BPR is what matters (0.243 without
    it), while dropout in :math:`[0, 0.6]`, :math:`\lambda \in [0.5, 0.8]`
    and :math:`\beta \in [0.1, 1]` all land within 0.003. Shuffling the
    feature rows drops it to 0.212.

    Args:
        num_users (int): Number of users :math:`U`.
        num_items (int): Number of items :math:`I`.
        feature_dims (Mapping[str, int]): Width :math:`d_m` of each item
            modality, in a fixed order (e.g. :obj:`{'image': 4096,
            'text': 1024}`).
        embedding_dim (int): Width :math:`d` of every embedding and prompt.
            (default: :obj:`64`)
        num_layers (int): Layers :math:`L` of the id branch.
            (default: :obj:`3`)
        dropout (float): Dropout on the projected features :math:`\mathbf{F}_m`
            (the reference's :obj:`drop_rate`). (default: :obj:`0.2`)
        beta (float): Feature-prompt weight :math:`\beta` (reference:
            :obj:`feat_soft_token_rate`). (default: :obj:`0.1`)
        gamma (float): Id-prompt weight :math:`\gamma` (reference:
            :obj:`soft_token_rate`). (default: :obj:`0.01`)
        fusion_weight (float): Weight :math:`\lambda` of the normalized
            modality embeddings in the fused embedding (reference:
            :obj:`model_cat_rate`). (default: :obj:`0.5`)
        modality_weight (float): Weight of the per-modality BPR losses
            (reference: :obj:`t_feat_mf_rate`). (default: :obj:`0.5`)
        lambda_reg (float): :math:`L_2` weight on the batch's layer-0 id
            embeddings in :meth:`loss`. (default: :obj:`1e-4`)
        prompt_dropout (float): Dropout on the soft prompts.
            (default: :obj:`0.`)
        layout (str): Adjacency layout used for propagation (see
            :class:`~pmm_geo.data.BipartiteAdjacency`).
            (default: :obj:`"edge_index_fused"`)
        item_graph (bool): Add the frozen kNN item-item content graphs
            :math:`\mathbf{S}_m`. (default: :obj:`False`)
        knn_k (int): Neighbours per item of :math:`\mathbf{S}_m`, self
            included. (default: :obj:`10`)

    Shapes:
        - **input:** the train graph (:math:`U` users, :math:`I` items),
          features :math:`\{m: (I, d_m)\}`
        - **output:** :class:`TeacherOutput` with fused :math:`(U, d)`,
          :math:`(I, d)` and per-modality :math:`\{m: (U, d)\}`,
          :math:`\{m: (I, d)\}` embeddings
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: Mapping[str, int],
        embedding_dim: int = 64,
        num_layers: int = 3,
        dropout: float = 0.2,
        beta: float = 0.1,
        gamma: float = 0.01,
        fusion_weight: float = 0.5,
        modality_weight: float = 0.5,
        lambda_reg: float = 1e-4,
        prompt_dropout: float = 0.,
        layout: str = 'edge_index_fused',
        item_graph: bool = False,
        knn_k: int = 10,
    ):
        super().__init__()
        check_recommender('MultimodalTeacher', num_users, num_items,
                          embedding_dim, num_layers, layout)
        if not feature_dims:
            raise ValueError("'feature_dims' is empty: the teacher needs at "
                             "least one item modality")
        for name, dim in feature_dims.items():
            if not isinstance(name, str) or not name or '.' in name:
                raise ValueError(f"Invalid modality name {name!r} in "
                                 f"'feature_dims'")
            if int(dim) < 1:
                raise ValueError(f"'feature_dims[{name!r}]' must be "
                                 f"positive, got {dim}")
        for name, value in (('gamma', gamma),
                            ('fusion_weight', fusion_weight),
                            ('modality_weight', modality_weight),
                            ('lambda_reg', lambda_reg)):
            if not value >= 0:
                raise ValueError(f"'{name}' must be non-negative, got "
                                 f"{value}")
        if item_graph and (not isinstance(knn_k, int)
                           or not 1 <= knn_k <= num_items):
            raise ValueError(f"'knn_k' must be an integer in [1, "
                             f"{num_items}] (the number of items), got "
                             f"{knn_k!r}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.feature_dims = {m: int(d) for m, d in feature_dims.items()}
        self.embedding_dim = int(embedding_dim)
        self.num_layers = int(num_layers)
        self.gamma = float(gamma)
        self.fusion_weight = float(fusion_weight)
        self.modality_weight = float(modality_weight)
        self.lambda_reg = float(lambda_reg)
        self.layout = layout

        self.user_embedding = Embedding(self.num_users, self.embedding_dim)
        self.item_embedding = Embedding(self.num_items, self.embedding_dim)
        # beta lives in the projectors only (one place per hyperparameter).
        self.projectors = ModuleDict({
            m: PromptedProjector(d, self.embedding_dim, dropout, beta)
            for m, d in self.feature_dims.items()
        })
        self.prompt = PromptLearner(self.num_users, self.num_items,
                                    self.embedding_dim, prompt_dropout)
        self.conv = BipartiteConv()
        self.knn_k = int(knn_k)
        self.item_graphs: Optional[ModuleDict] = None
        if item_graph:
            # Fixed shapes (k entries per item), filled by init_prompt, so
            # a saved teacher reloads with its graphs.
            num_edges = self.num_items * self.knn_k
            self.item_graphs = ModuleDict({
                m: FrozenItemGraph(
                    torch.zeros(2, num_edges, dtype=torch.long),
                    torch.zeros(num_edges), self.num_items, layout=layout)
                for m in self.feature_dims
            })
            self.item_graph_weights = modality_mix_weights(self.modalities)
        self._cache: Optional[_FrozenCache] = None
        self._token_moments: Optional[tuple] = None
        self._smoothed_features: Dict[tuple, Tensor] = {}
        self.reset_parameters()

    @property
    def modalities(self) -> List[str]:
        return list(self.feature_dims)

    @property
    def modality_loss_weight(self) -> float:
        r"""The weight of the branches' BPR in :meth:`loss`
        (:obj:`modality_weight`)."""
        return self.modality_weight

    def reset_parameters(self):
        r"""Resets all learnable parameters (the prompt's hard tokens are
        data and are kept)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for projector in self.projectors.values():
            projector.reset_parameters()
        self.prompt.reset_parameters()
        self.clear_cache()

    # ------------------------------------------------------------------
    # Inputs
    def _adjacency(self, graph) -> BipartiteAdjacency:
        return as_adjacency(graph, self.num_users, self.num_items,
                            self.user_embedding.weight.device, 'teacher')

    def _check_features(self, features: Mapping[str, Tensor]
                        ) -> Dict[str, Tensor]:
        missing = [m for m in self.feature_dims if m not in features]
        if missing:
            raise ValueError(f"'features' lacks modalities {missing} "
                             f"(expected {self.modalities}, got "
                             f"{list(features)})")
        out = {}
        device = self.user_embedding.weight.device
        for m, dim in self.feature_dims.items():
            x = features[m]
            if x.dim() != 2 or tuple(x.shape) != (self.num_items, dim):
                raise ValueError(f"'features[{m!r}]' must have shape "
                                 f"[{self.num_items}, {dim}], got "
                                 f"{list(x.shape)}")
            if x.device != device:
                raise ValueError(f"'features[{m!r}]' is on {x.device} but "
                                 f"the teacher is on {device}; move it once "
                                 f"beforehand")
            out[m] = x
        return out

    @torch.no_grad()
    def init_prompt(self, graph, features: Mapping[str, Tensor]):
        r"""Computes the prompt's hard tokens (PCA of each modality) and,
        with :obj:`item_graph`, the frozen kNN item graphs once; call it
        before the first forward pass."""
        adj = self._adjacency(graph)
        features = self._check_features(features)
        self.prompt.init_tokens(adj, features, self.layout)
        if self.item_graphs is not None:
            for m, conv in self.item_graphs.items():
                edge_index, edge_weight = knn_item_graph(
                    features[m], self.knn_k, weighted=False)
                conv.edge_index.copy_(edge_index)
                conv.edge_weight.copy_(edge_weight)
        self.clear_cache()
        return self

    # ------------------------------------------------------------------
    # Forward
    def _propagate_mean(self, adj: BipartiteAdjacency, x_user: Tensor,
                        x_item: Tensor) -> Tuple[Tensor, Tensor]:
        return lightgcn_propagate(self.conv, adj, x_user, x_item,
                                  self.num_layers, self.layout)

    def _content_items(self) -> Tensor:
        # sum_m w_m S_m E over all items (prompt-independent: cached in
        # stage 2).
        return sum(self.item_graph_weights[m] * conv(
            self.item_embedding.weight)
                   for m, conv in self.item_graphs.items())

    def _content_rows(self, item_ids: Tensor,
                      blocks: Optional[Dict[str, NeighbourBlock]] = None
                      ) -> Tensor:
        # Rows item_ids of sum_m w_m S_m E from the neighbours' rows of E
        # only (a sampled subgraph; sparse gradient to a trainable table),
        # through the graphs' neighbour blocks where already built.
        blocks = blocks or {}
        return sum(self.item_graph_weights[m] *
                   conv.rows(self.item_embedding.weight, item_ids,
                             blocks.get(m))
                   for m, conv in self.item_graphs.items())

    def _neighbour_blocks(self, adj) -> Dict[str, Optional[NeighbourBlock]]:
        # Each item graph's neighbour block of a sampled subgraph's items,
        # built once per forward pass for the item-graph term and the
        # content rows (None where the rows go through all items). Every
        # block is used: the content rows read it without a frozen cache,
        # the item-graph term reads it with one.
        if self.item_graphs is None or adj is adj.root:
            return {}
        items = adj.item_id
        return {m: None if conv.rows_by_product(items) else
                conv.neighbour_block(items)
                for m, conv in self.item_graphs.items()}

    def _modal_branch(self, adj: BipartiteAdjacency, projected: Tensor,
                      modality: str) -> Tuple[Tensor, Tensor]:
        h_user = self.conv(projected, *adj.item_to_user(self.layout))
        h_item = self.conv(h_user, *adj.user_to_item(self.layout))
        return h_user, h_item

    def _item_graph_term(self, adj, projected: Tensor, modality: str,
                         x: Tensor, moment: Optional[Tensor],
                         table: Optional[Tensor],
                         block: Optional[NeighbourBlock] = None) -> Tensor:
        r""":math:`\mathbf{S}_m \mathbf{F}_m` for the graph's items: over
        all items on the full graph, from the neighbours' rows on a sampled
        subgraph (see the class docstring). :obj:`table` is
        :math:`\mathbf{W}_m \mathbf{X}_m + \mathbf{b}_m` of every item when
        it is known (the frozen cache, or :meth:`_catalogue_projection`);
        :obj:`block` the graph's :meth:`_neighbour_blocks` entry when
        built."""
        conv = self.item_graphs[modality]
        if adj is adj.root:
            return conv(projected)
        projector, items = self.projectors[modality], adj.item_id
        # The rows' neighbour block, built once for the terms below that
        # use it (not when the rows go through all items, nor when neither
        # the projected table nor the prompt term is gathered).
        prompted = moment is not None and projector.beta != 0.
        if block is None and (table is not None or prompted) and \
                not conv.rows_by_product(items):
            block = conv.neighbour_block(items)
        if table is not None:  # The neighbours' projected rows.
            out = conv.rows(table, items, block)
        else:
            lin = projector.lin
            out = F.linear(adj.select_items(self._smoothed(modality, x)),
                           lin.weight)
            if lin.bias is not None:
                _, weight = conv.neighbours(items)
                out = out + weight.sum(1, keepdim=True) * lin.bias
        if prompted:
            if block is None:  # Most items: all of them.
                _, prompt = self.prompt(items.new_empty(0))
                term = conv.rows(projector.prompt_term(moment, prompt), items)
            else:  # Once per distinct neighbour (a few per item).
                _, prompt = self.prompt(items.new_empty(0), block.ids)
                term = conv.block_rows(projector.prompt_term(moment, prompt),
                                       block)
            out = out + projector.beta * term
        return projector.dropout(out)

    def _catalogue_projection(self, adj, modality: str,
                              x: Tensor) -> Optional[Tensor]:
        r""":math:`\mathbf{W}_m \mathbf{X}_m + \mathbf{b}_m` of every item
        when a sampled subgraph would project at least as many feature rows
        (its items', plus as many sums :math:`\mathbf{S}_m \mathbf{X}_m`
        with the item graphs), else :obj:`None`. The same values either
        way: it only chooses the cheaper product."""
        if adj is adj.root:
            return None
        rows = adj.num_items * (1 if self.item_graphs is None else 2)
        if rows < self.num_items:
            return None
        return self.projectors[modality].lin(x)

    @torch.no_grad()
    def _smoothed(self, modality: str, x: Tensor) -> Tensor:
        # S_m X_m over all items, computed once per feature table.
        key = (modality, ) + feature_keys({modality: x})[modality]
        if key not in self._smoothed_features:
            self._smoothed_features[key] = self.item_graphs[modality](x)
        return self._smoothed_features[key]

    def forward(self, graph, features: Mapping[str, Tensor]
                ) -> TeacherOutput:
        r"""Returns the fused and per-modality embeddings.

        Args:
            graph (HeteroData or BipartiteAdjacency): The train graph.
            features (Mapping[str, torch.Tensor]): Item features
                :obj:`{modality: [I, d_m]}`.
        """
        adj = self._adjacency(graph)
        features = self._check_features(features)
        cache = self._valid_cache(adj, features)
        user_prompt, item_prompt = self.prompt(adj.user_id, adj.item_id)
        moments = self._moments(adj, features)
        blocks = self._neighbour_blocks(adj)

        modal_user, modal_item = {}, {}
        for m, x in features.items():
            # W X + b of every item if known or cheaper; else only this
            # graph's items are projected (a sampled subgraph's).
            table = cache.projected[m] if cache is not None else \
                self._catalogue_projection(adj, m, x)
            projected = None if table is None else adj.select_items(table)
            projected = self.projectors[m](
                adj.select_items(x) if projected is None else None,
                item_prompt, projected, moments[m])
            modal_user[m], modal_item[m] = self._modal_branch(adj, projected,
                                                              m)
            if self.item_graphs is not None:
                modal_item[m] = modal_item[m] + self._item_graph_term(
                    adj, projected, m, x, moments[m], table, blocks.get(m))

        if self.gamma != 0.:
            prompt_user = self.gamma * _rownorm(user_prompt)
            prompt_item = self.gamma * _rownorm(item_prompt)
        if cache is None:
            x_user = adj.select_users(self.user_embedding.weight)
            x_item = adj.select_items(self.item_embedding.weight)
            if self.gamma != 0.:
                x_user, x_item = x_user + prompt_user, x_item + prompt_item
            user, item = self._propagate_mean(adj, x_user, x_item)
            if self.item_graphs is not None:
                item = item + (self._content_items() if adj is adj.root else
                               self._content_rows(adj.item_id, blocks))
        else:
            # Propagation is linear: mean_l A^l (E + gamma P) =
            # mean_l A^l E (cached, over the full graph, with the item
            # graphs' term) + mean_l A^l (gamma P).
            user = adj.select_users(cache.id_user)
            item = adj.select_items(cache.id_item)
            if self.gamma != 0.:
                extra_user, extra_item = self._propagate_mean(
                    adj, prompt_user, prompt_item)
                user, item = user + extra_user, item + extra_item

        for m in features:
            user = user + self.fusion_weight * _rownorm(modal_user[m])
            item = item + self.fusion_weight * _rownorm(modal_item[m])
        return TeacherOutput(user, item, modal_user, modal_item)

    def _moments(self, adj, features: Dict[str, Tensor]
                 ) -> Dict[str, Optional[Tensor]]:
        # P_i^T X_m over all items, from statistics of X_m computed once:
        # no pass over the features per forward, and exact on a subgraph.
        if not self.prompt.moments_are_exact:
            if adj is not adj.root:
                raise ValueError('a sampled subgraph needs a prompt without '
                                 'active dropout (prompt_dropout=0 or eval '
                                 'mode)')
            return {m: None for m in features}  # Explicit P^T X per call.
        keys = (feature_keys(features), self.prompt.item_tokens._version,
                self.prompt.item_tokens.data_ptr())
        if self._token_moments is None or self._token_moments[0] != keys:
            self._token_moments = (keys, {
                m: self.prompt.token_moment(x) for m, x in features.items()})
        return {m: self.prompt.item_moment(stats)
                for m, stats in self._token_moments[1].items()}

    # ------------------------------------------------------------------
    # Stage 2 (loss() and freeze() come from TeacherMixin)
    @torch.no_grad()
    def cache_frozen(self, graph, features: Mapping[str, Tensor]):
        r"""Computes once what does not depend on the prompt, for a frozen
        teacher in eval mode: :math:`\mathbf{W}_m \mathbf{X}_m + \mathbf{b}_m`
        per modality and the propagated id embeddings :math:`\frac{1}{L+1}
        \sum_l \hat{\mathbf{A}}^l \mathbf{E}`. Later forward passes on the
        same graph and features give the same result as without the cache,
        with one pass over each :math:`\mathbf{X}_m` instead of two. The
        cache is refused in train mode and invalidated (an error) if any
        non-prompt weight changes; drop it with :meth:`clear_cache`."""
        self._check_freezable()
        adj = self._adjacency(graph).root
        features = self._check_features(features)
        projected = {m: self.projectors[m].lin(x)
                     for m, x in features.items()}
        id_user, id_item = self._propagate_mean(
            adj, self.user_embedding.weight, self.item_embedding.weight)
        if self.item_graphs is not None:
            id_item = id_item + self._content_items()
        self._cache = _FrozenCache(adj, feature_keys(features), projected,
                                   id_user, id_item, self._versions())
        return self

    def clear_cache(self):
        r"""Drops the cache of :meth:`cache_frozen` (and the feature
        statistics of the prompt term)."""
        self._cache = None
        self._token_moments = None
        self._smoothed_features = {}

    def init_args(self) -> Dict[str, Any]:
        r"""The constructor arguments of this teacher (what
        :func:`pmm_geo.load_model` rebuilds it from)."""
        projector = next(iter(self.projectors.values()))
        return init_args(self, dropout=projector.dropout.p,
                         beta=projector.beta,
                         prompt_dropout=self.prompt.dropout.p,
                         item_graph=self.item_graphs is not None)

    def __repr__(self) -> str:
        graph = (f', item_graph=True, knn_k={self.knn_k}'
                 if self.item_graphs is not None else '')
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, {self.feature_dims}, '
                f'{self.embedding_dim}, num_layers={self.num_layers}{graph})')

