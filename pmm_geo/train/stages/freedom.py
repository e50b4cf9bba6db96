r"""The :obj:`freedom` baseline."""
from pmm_geo.nn.conv import modality_mix_weights
from pmm_geo.nn.models.freedom import FREEDOM

from .base import EpochPruning, ModelSpec, Stage


class FreedomStage(Stage):
    r"""The FREEDOM baseline (:class:`~pmm_geo.nn.FREEDOM`): each epoch
    propagates over a freshly pruned user-item graph (drawn on the first
    batch from the run's generator, so a resumed run draws the same ones),
    evaluation over the full graph; the loss is BPR plus the feature BPR
    terms, without :math:`L_2` (as MMRec). The frozen item graph is built
    once from the raw features; serving needs only the ids and that graph,
    not the features."""
    name = 'freedom'
    needs_features = False  # For its embeddings; training reads them.

    def build(self, previous):
        cfg, ctx = self.config, self.ctx
        weights = modality_mix_weights(list(ctx.features),
                                       cfg.freedom_image_weight)
        self.modules = {self.name: FREEDOM(
            ctx.num_users, ctx.num_items, dict(ctx.features),
            embedding_dim=cfg.embedding_dim, num_layers=cfg.freedom_layers,
            knn_k=cfg.freedom_knn_k, modality_weights=weights,
            prune_ratio=cfg.freedom_prune_ratio,
            feature_weight=cfg.freedom_feature_weight,
            layout=cfg.layout).to(ctx.graph.device)}
        self._pruning = EpochPruning(ctx, cfg.freedom_prune_ratio)

    def num_hops(self):
        return self.config.freedom_layers

    def step(self, batch):
        if batch.graph is not batch.graph.root:
            raise ValueError("FREEDOM prunes the full graph each epoch; "
                             "train it with batching='full'")
        user, item = self.model(self._pruning.graph(batch))
        return self.model.loss(user, item, batch.users, batch.pos, batch.neg,
                               self.ctx.features), {}


SPEC = ModelSpec('freedom', (FreedomStage, ), needs_features=True,
                 description='FREEDOM (frozen item-item kNN graph over the '
                 'item features, degree-sensitive edge pruning)')
