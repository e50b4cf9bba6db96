r"""The original, dense LATTICE item graph (CRIPAC-DIG/LATTICE
:obj:`codes/Models.py`, lines 13-27 and 86-98), rewritten for any number of
modalities: :math:`I \times I` matrices throughout. It is the reference the
sparse :meth:`pmm_geo.nn.LATTICE.item_graph` is tested against and the dense
baseline of :obj:`benchmarks/bench_lattice_memory.py`; never use it at
scale."""
from typing import Dict

import torch
from torch import Tensor


def build_sim(context: Tensor) -> Tensor:
    context_norm = context.div(torch.norm(context, p=2, dim=-1, keepdim=True))
    return torch.mm(context_norm, context_norm.transpose(1, 0))


def build_knn_neighbourhood(adj: Tensor, topk: int) -> Tensor:
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    return torch.zeros_like(adj).scatter_(-1, knn_ind, knn_val)


def compute_normalized_laplacian(adj: Tensor) -> Tensor:
    rowsum = torch.sum(adj, -1)
    d_inv_sqrt = torch.pow(rowsum, -0.5)
    d_inv_sqrt[torch.isinf(d_inv_sqrt)] = 0.
    d_mat_inv_sqrt = torch.diagflat(d_inv_sqrt)
    return torch.mm(torch.mm(d_mat_inv_sqrt, adj), d_mat_inv_sqrt)


def dense_item_graph(model, features: Dict[str, Tensor]) -> Tensor:
    r"""The mixed item-item graph :math:`\mathbf{S}` of a
    :class:`~pmm_geo.nn.LATTICE` model, dense."""
    weight = torch.softmax(model.modality_weight, dim=0)
    learned = sum(weight[j] * build_knn_neighbourhood(
        build_sim(model.projections[m](features[m])), model.knn_k)
                  for j, m in enumerate(model.modalities))
    learned = compute_normalized_laplacian(learned)
    original = sum(weight[j] * compute_normalized_laplacian(
        build_knn_neighbourhood(build_sim(features[m]), model.knn_k))
                   for j, m in enumerate(model.modalities))
    return ((1 - model.lambda_coeff) * learned +
            model.lambda_coeff * original)
