r"""The :obj:`lattice` baseline."""
from pmm_geo.nn.models.lattice import LATTICE

from .base import BPRStage, ModelSpec


class LatticeStage(BPRStage):
    r"""The LATTICE baseline, trained with BPR; the learned item graph is
    rebuilt with gradient on the first batch of each epoch (LATTICE's
    schedule) and reused, detached, by the other batches."""
    name = 'lattice'
    needs_features = True

    def build(self, previous):
        cfg, ctx = self.config, self.ctx
        self.modules = {self.name: LATTICE(
            ctx.num_users, ctx.num_items, dict(ctx.features),
            embedding_dim=cfg.embedding_dim, num_layers=cfg.lattice_layers,
            knn_k=cfg.lattice_knn_k, lambda_coeff=cfg.lattice_lambda,
            item_graph_layers=cfg.lattice_item_layers,
            layout=cfg.layout).to(ctx.graph.device)}

    def num_hops(self):
        return self.config.lattice_layers

    def sparse_tables(self):
        # The item table also feeds the item-item graph over all items.
        return [self.model.user_embedding.weight] if self.loader else []

    def propagate(self, batch):
        return self.model(batch.graph, self.ctx.features,
                          build_item_graph=batch.index == 0)


SPEC = ModelSpec('lattice', (LatticeStage, ), needs_features=True,
                 description='LATTICE (learned item-item kNN graphs over '
                 'the item features)')
