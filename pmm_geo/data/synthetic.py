r"""A synthetic multimodal recommendation dataset with planted structure.

Users and items get latent factors; each user picks items from
:math:`\mathrm{softmax}(\mathbf{p}_u^{\top}\mathbf{q}_i + s \log \pi_i)`
(a Zipf popularity :math:`\pi`), without replacement; each modality is a
noisy *nonlinear* map of the item factors, so a model that reads the
features can recover what the interaction graph says little about (the
long tail of rarely bought items), while an optional pure-noise modality
carries nothing.
"""
from contextlib import contextmanager
from typing import Iterator, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from .hetero import from_arrays

# Spread of the per-user activity (log-normal): a few heavy users, many
# light ones, as in the Amazon data.
_ACTIVITY_SIGMA = 0.8
# Variance of the true user-item logits: strong enough to plant preferences,
# soft enough that users do not all pick the same items.
_LOGIT_VARIANCE = 4.0
# Users per chunk when sampling: bounds the [chunk, num_items] score matrix.
_CHUNK_ELEMENTS = 1 << 24
# Rounds of drawing more with replacement before the exponential-race
# fallback.
_MAX_EXTENSIONS = 3


class SyntheticFactors(NamedTuple):
    r"""The planted truth of :func:`synthetic` (for tests and oracles)."""
    user: Tensor  #: User factors :obj:`[U, dim_latent]`.
    item: Tensor  #: Item factors :obj:`[I, dim_latent]`.
    log_popularity: Tensor  #: Item log-popularity :obj:`[I]`.
    popularity_skew: float  #: The weight :math:`s` of the log-popularity.

    def scores(self, users: Optional[Tensor] = None) -> Tensor:
        r"""The true preference logits :obj:`[len(users), I]`."""
        user = self.user if users is None else self.user[users]
        return torch.addmm(self.popularity_skew * self.log_popularity, user,
                           self.item.t())


def synthetic(
    num_users: int = 1000,
    num_items: int = 500,
    num_interactions: int = 20000,
    modalities: Optional[Mapping[str, int]] = None,
    noise_modality: Optional[str] = None,
    noise_dim: int = 32,
    dim_latent: int = 16,
    popularity_skew: float = 1.0,
    feature_noise: float = 0.1,
    num_val_per_user: int = 1,
    num_test_per_user: int = 1,
    seed: int = 0,
    scale: float = 1.0,
    return_factors: bool = False,
) -> Union[HeteroData, Tuple[HeteroData, SyntheticFactors]]:
    r"""Generates a multimodal recommendation dataset with planted structure.

    .. math::
        \mathbf{p}_u, \mathbf{q}_i &\sim \mathcal{N}(\mathbf{0},
        \sqrt{4 / k}\, \mathbf{I}_k), \qquad
        \pi_i \propto \mathrm{rank}(i)^{-1}

        P(i \mid u) &\propto \exp(\mathbf{p}_u^{\top}\mathbf{q}_i +
        s \log \pi_i)

        \mathbf{X}_m &= \mathrm{standardize}\big(\tanh(\mathbf{Q}
        \mathbf{W}^{(1)}_m) \mathbf{W}^{(2)}_m\big) + \sigma
        \boldsymbol{\epsilon}

    with random Gaussian :math:`\mathbf{W}^{(1)}_m, \mathbf{W}^{(2)}_m`
    (the popularity ranks are a random permutation of the items, and the
    true logits have a standard deviation of about 2). Each user gets a
    log-normal number of items (at least
    :obj:`num_val_per_user + num_test_per_user + 1`, at most half the items)
    drawn without replacement from :math:`P(i \mid u)`, vectorized over
    chunks of users; a random :obj:`num_test_per_user` of them go to test,
    :obj:`num_val_per_user` to validation and the rest to train. Signal
    columns have zero mean and unit variance, so :obj:`feature_noise` is the
    noise-to-signal ratio. Nothing is printed. The data is generated with
    one torch thread (and the caller's thread count restored), because
    matrix products round differently with more threads: a seed gives the
    same tensors whatever :func:`torch.set_num_threads` says, so a run
    resumed with another :obj:`--threads` finds the data it was trained on.

    Args:
        num_users (int, optional): Number of users (before :obj:`scale`).
            (default: :obj:`1000`)
        num_items (int, optional): Number of items (before :obj:`scale`).
            (default: :obj:`500`)
        num_interactions (int, optional): Number of interactions over all
            splits (before :obj:`scale`). (default: :obj:`20000`)
        modalities (Mapping[str, int], optional): Informative modalities and
            their widths. (default: :obj:`{'image': 64, 'text': 32}`)
        noise_modality (str, optional): If set, the name of an extra
            modality of pure Gaussian noise. (default: :obj:`None`)
        noise_dim (int, optional): Width of the noise modality.
            (default: :obj:`32`)
        dim_latent (int, optional): Width :math:`k` of the latent factors.
            (default: :obj:`16`)
        popularity_skew (float, optional): Weight :math:`s` of the Zipf
            log-popularity in the choice logits (:obj:`0` = no popularity
            bias). (default: :obj:`1.0`)
        feature_noise (float, optional): Noise level :math:`\sigma` of the
            informative features. (default: :obj:`0.1`)
        num_val_per_user (int, optional): Validation items per user.
            (default: :obj:`1`)
        num_test_per_user (int, optional): Test items per user.
            (default: :obj:`1`)
        seed (int, optional): Random seed. (default: :obj:`0`)
        scale (float, optional): Multiplies the numbers of users, items and
            interactions (feature widths stay). (default: :obj:`1.0`)
        return_factors (bool, optional): If :obj:`True`, also returns the
            planted :class:`SyntheticFactors`. (default: :obj:`False`)
    """
    if modalities is None:
        modalities = {'image': 64, 'text': 32}
    num_users, num_items, num_interactions = (
        max(1, round(n * scale))
        for n in (num_users, num_items, num_interactions))
    _check_arguments(num_users, num_items, num_interactions, modalities,
                     noise_modality, noise_dim, dim_latent,
                     num_val_per_user, num_test_per_user)
    with _one_thread():
        return _generate(num_users, num_items, num_interactions, modalities,
                         noise_modality, noise_dim, dim_latent,
                         popularity_skew, feature_noise, num_val_per_user,
                         num_test_per_user, seed, return_factors)


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _generate(num_users: int, num_items: int, num_interactions: int,
              modalities: Mapping[str, int], noise_modality: Optional[str],
              noise_dim: int, dim_latent: int, popularity_skew: float,
              feature_noise: float, num_val_per_user: int,
              num_test_per_user: int, seed: int, return_factors: bool):
    gen = torch.Generator().manual_seed(seed)

    std = (_LOGIT_VARIANCE / dim_latent)**0.25
    user = torch.randn(num_users, dim_latent, generator=gen) * std
    item = torch.randn(num_items, dim_latent, generator=gen) * std
    rank = torch.randperm(num_items, generator=gen) + 1.0
    log_pop = -rank.log()
    log_pop -= torch.logsumexp(log_pop, 0)
    factors = SyntheticFactors(user, item, log_pop, float(popularity_skew))

    num_held_out = num_val_per_user + num_test_per_user
    degree = _user_degrees(num_users, num_items, num_interactions,
                           num_held_out + 1, gen)
    users, items, role = _sample_interactions(factors, degree,
                                              num_val_per_user,
                                              num_test_per_user, gen)

    features = {
        name: _nonlinear_features(item, dim, feature_noise, gen)
        for name, dim in modalities.items()
    }
    if noise_modality is not None:
        features[noise_modality] = torch.randn(num_items, noise_dim,
                                               generator=gen)

    edge = torch.stack([users, items])
    data = from_arrays(edge[:, role == 0], edge[:, role == 1],
                       edge[:, role == 2], features=features,
                       num_users=num_users, num_items=num_items)
    return (data, factors) if return_factors else data


#: The shape of PromptMM's Amazon Electronics data (users, items,
#: interactions, feature widths): :func:`synthetic_electronics` and the
#: benchmarks use it.
ELECTRONICS = {'num_users': 41691, 'num_items': 21479,
               'num_interactions': 359165,
               'modalities': {'image': 4096, 'text': 1024}}


def synthetic_electronics(scale: float = 1.0, seed: int = 0,
                          **kwargs) -> HeteroData:
    r"""A :func:`synthetic` dataset with the shape of the Amazon
    Electronics data of PromptMM: 41,691 users, 21,479 items, 359,165
    interactions, 4096-d image and 1024-d text features. :obj:`scale`
    multiplies the numbers of users, items and interactions; the feature
    widths stay. Other keyword arguments go to :func:`synthetic`.
    """
    shape = {k: v for k, v in ELECTRONICS.items() if k != 'modalities'}
    kwargs.setdefault('modalities', dict(ELECTRONICS['modalities']))
    return synthetic(**shape, scale=scale, seed=seed, **kwargs)


def _check_arguments(num_users: int, num_items: int, num_interactions: int,
                     modalities: Mapping[str, int],
                     noise_modality: Optional[str], noise_dim: int,
                     dim_latent: int, num_val: int, num_test: int) -> None:
    if num_val < 0 or num_test < 0:
        raise ValueError(f"'num_val_per_user' and 'num_test_per_user' must "
                         f"be >= 0 (got {num_val} and {num_test})")
    min_degree = num_val + num_test + 1
    if num_interactions < min_degree * num_users:
        raise ValueError(f"'num_interactions' ({num_interactions}) must be "
                         f"at least {min_degree} per user (num_users="
                         f"{num_users}) so every user has held-out and "
                         f"train items")
    if num_items < 2 * min_degree:
        raise ValueError(f"'num_items' ({num_items}) must be at least "
                         f"{2 * min_degree}")
    if num_interactions > num_users * num_items // 2:
        raise ValueError(f"'num_interactions' ({num_interactions}) exceeds "
                         f"half of num_users * num_items ({num_users} * "
                         f"{num_items})")
    if dim_latent < 1:
        raise ValueError(f"'dim_latent' must be positive (got {dim_latent})")
    widths = dict(modalities)
    if noise_modality is not None:
        if noise_modality in widths:
            raise ValueError(f"'noise_modality' ('{noise_modality}') is "
                             f"already an informative modality")
        widths[noise_modality] = noise_dim
    for name, dim in widths.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Modality name {name!r} is not an identifier")
        if int(dim) < 1:
            raise ValueError(f"Modality '{name}' needs a positive width "
                             f"(got {dim})")


def _user_degrees(num_users: int, num_items: int, num_interactions: int,
                  min_degree: int, gen: torch.Generator) -> Tensor:
    r"""Splits :obj:`num_interactions` over users: at least
    :obj:`min_degree` each, log-normal activity, at most half the items."""
    max_degree = num_items // 2
    activity = (torch.randn(num_users, generator=gen) *
                _ACTIVITY_SIGMA).exp()
    degree = torch.full((num_users, ), min_degree, dtype=torch.long)
    remaining = num_interactions - int(degree.sum())
    while remaining > 0:
        # Users at the cap take no more; redistribute what they shed.
        weight = activity * (degree < max_degree)
        extra = torch.multinomial(weight, remaining, replacement=True,
                                  generator=gen)
        degree += torch.bincount(extra, minlength=num_users)
        degree.clamp_(max=max_degree)
        remaining = num_interactions - int(degree.sum())
    return degree


def _sample_interactions(factors: SyntheticFactors, degree: Tensor,
                         num_val: int, num_test: int,
                         gen: torch.Generator) -> Tuple[Tensor, Tensor,
                                                        Tensor]:
    r"""Samples each user's items without replacement from the softmax of
    the true logits and assigns a role per interaction (0 = train,
    1 = val, 2 = test), uniformly among the user's items.

    Sampling without replacement = drawing with replacement and skipping
    repeats: :meth:`torch.multinomial` needs :math:`O(I)` work per user
    instead of one random number per (user, item) pair.
    """
    num_users, num_items = factors.user.size(0), factors.item.size(0)
    chunk = max(1, _CHUNK_ELEMENTS // num_items)
    # Subtracting a per-user upper bound of the logits (Cauchy-Schwarz)
    # keeps exp() from overflowing (multinomial needs no normalization); it
    # rides along in the matmul as an extra latent dimension.
    bound = (factors.user.norm(dim=1) * factors.item.norm(dim=1).max() +
             factors.popularity_skew * factors.log_popularity.max())
    user = torch.cat([factors.user, -bound.unsqueeze(1)], dim=1)
    item_t = torch.cat([factors.item, torch.ones(num_items, 1)], dim=1).t()
    bias = factors.popularity_skew * factors.log_popularity
    # Chunks of users with similar degrees keep the [C, max degree] work
    # small for the many light users.
    order = degree.argsort()
    users, items, roles = [], [], []
    for start in range(0, num_users, chunk):
        index = order[start:start + chunk]
        deg = degree[index]
        weight = torch.addmm(bias, user[index], item_t).exp_()
        chosen = _first_distinct_draws(weight, deg, gen)  # [C, max(deg)]

        # A random order among each user's picks decides the roles: early
        # draws favour preferred items, held-out items must not.
        valid = chosen >= 0
        keys = torch.rand(chosen.shape, generator=gen).masked_fill_(
            ~valid, 2.0)
        position = keys.argsort(dim=1).argsort(dim=1)
        role = torch.zeros_like(chosen)
        role[position < num_test] = 2
        role[(position >= num_test) & (position < num_test + num_val)] = 1

        users.append(index.unsqueeze(1).expand_as(chosen)[valid])
        items.append(chosen[valid])
        roles.append(role[valid])
    return torch.cat(users), torch.cat(items), torch.cat(roles)


def _first_distinct_draws(weight: Tensor, count: Tensor,
                          gen: torch.Generator) -> Tensor:
    r"""Samples :obj:`count[r]` distinct items from :obj:`weight[r]`
    without replacement, for every row :obj:`r` (padded with :obj:`-1`).

    The first :obj:`count[r]` distinct items of an i.i.d. draw sequence are
    such a sample, and cost :math:`O(I)` per row in
    :meth:`torch.multinomial`. A row whose sequence is still short of
    distinct items after a few extensions (a heavy user with a peaked
    distribution) is redrawn with the exponential race instead, which is
    exact too but costs one random number per item (choosing the method
    after the fact biases such rare rows negligibly).
    """
    num_rows, k = weight.size(0), int(count.max())
    draws = torch.multinomial(weight, 2 * k + 8, replacement=True,
                              generator=gen)
    first = _first_occurrence(draws)
    short = (first.sum(dim=1) < count).nonzero().view(-1)
    for _ in range(_MAX_EXTENSIONS):
        if short.numel() == 0:
            break
        extra = torch.full((num_rows, draws.size(1)), -1, dtype=torch.long)
        extra[short] = torch.multinomial(weight[short], draws.size(1),
                                         replacement=True, generator=gen)
        draws = torch.cat([draws, extra], dim=1)
        first = _first_occurrence(draws)
        short = (first.sum(dim=1) < count).nonzero().view(-1)

    rank = first.cumsum(dim=1) - 1
    keep = first & (rank < count.unsqueeze(1))
    out = torch.full((num_rows, k), -1, dtype=torch.long)
    row = torch.arange(num_rows).unsqueeze(1).expand_as(draws)
    out[row[keep], rank[keep]] = draws[keep]
    if short.numel() > 0:
        # Exponential race: the k largest w_i / E_i, E_i ~ Exp(1).
        race = torch.empty(short.numel(), weight.size(1)).exponential_(
            generator=gen)
        picks = (weight[short] / race).topk(k, dim=1).indices
        valid = torch.arange(k).unsqueeze(0) < count[short].unsqueeze(1)
        out[short] = picks.masked_fill_(~valid, -1)
    return out


def _first_occurrence(draws: Tensor) -> Tensor:
    r"""Marks the first occurrence of each value within each row."""
    value, perm = draws.sort(dim=1, stable=True)
    new = torch.ones_like(value, dtype=torch.bool)
    new[:, 1:] = value[:, 1:] != value[:, :-1]
    new &= value >= 0  # -1 pads rows that needed no extension.
    return torch.zeros_like(new).scatter_(1, perm, new)


def _nonlinear_features(item: Tensor, dim: int, noise: float,
                        gen: torch.Generator) -> Tensor:
    r"""A random two-layer tanh map of the item factors plus Gaussian noise;
    every signal column has mean 0 and variance 1."""
    num_items, dim_latent = item.shape
    hidden_dim = max(2 * dim_latent, 32)
    w1 = torch.randn(dim_latent, hidden_dim, generator=gen)
    # Pre-activations of std 1.5: tanh is clearly nonlinear there, but not
    # saturated.
    w1 *= 1.5 / (item.pow(2).sum(dim=1).mean().sqrt() + 1e-12)
    hidden = torch.tanh(item @ w1)
    hidden -= hidden.mean(dim=0)
    w2 = torch.randn(hidden_dim, dim, generator=gen)
    # Standardize through the small [hidden, hidden] covariance instead of
    # extra passes over the [num_items, dim] output.
    cov = hidden.t() @ hidden / max(num_items - 1, 1)
    w2 /= ((w2 * (cov @ w2)).sum(dim=0).sqrt() + 1e-12)
    if noise <= 0:
        return hidden @ w2
    out = torch.randn(num_items, dim, generator=gen)
    return torch.addmm(out, hidden, w2, beta=noise)
