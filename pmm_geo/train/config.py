import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Tuple

from pmm_geo.nn.objective import LIST_TARGETS

from .kd_schedule import SCHEDULES

STUDENT_INITS = ('fresh', 'teacher')
#: The stage-1 teachers of :obj:`promptmm` (:obj:`TrainConfig.teacher`).
TEACHERS = ('promptmm', 'lattice')
BATCHINGS = ('full', 'sampled', 'auto')
#: :obj:`batching="auto"` samples from this many train interactions on.
AUTO_SAMPLED_EDGES = 200_000


class ConfigError(ValueError):
    r"""Raised for an invalid training configuration; the message names the
    source (file or argument), the key and the offending value."""


@dataclass
class TrainConfig:
    r"""Every hyperparameter of a training run, in one place.

    A run records the configuration it used as :obj:`config.json` in its run
    directory; :meth:`from_json` reads such a file back (unknown keys are an
    error, so a typo never passes silently). The defaults hold across
    datasets: they were chosen on validation metrics, never on a test set.

    Three models share the engine: :obj:`"promptmm"` (stage 1 trains the
    multimodal teacher and its prompt, stage 2 distills it into a
    LightGCN student while the prompt keeps learning from the student's
    loss), :obj:`"lightgcn"` (the student architecture trained alone with
    BPR, the no-distillation baseline) and :obj:`"lattice"`.

    Args:
        model (str): A model of :mod:`pmm_geo.train.registry`:
            :obj:`"promptmm"`, :obj:`"lightgcn"`, :obj:`"lattice"` or
            :obj:`"freedom"`. (default: :obj:`"promptmm"`)
        seed (int): Seed of model initialization, dropout and sampling.
            (default: :obj:`0`)
        epochs (int): Maximum number of epochs per stage; one epoch covers
            every train interaction once. (default: :obj:`500`)
        batch_size (int): Train interactions per step. (default: :obj:`2048`)
        lr (float): Adam learning rate of the teacher (stage 1), of
            LATTICE and of FREEDOM. Chosen on validation over 3 seeds of
            Scientific and MovieLens-100k (2e-3 against the earlier 1e-3:
            the teacher and FREEDOM higher on both, LATTICE level, each in
            fewer epochs; the student level). (default: :obj:`2e-3`)
        weight_decay (float): Adam weight decay (all stages).
            (default: :obj:`0.0`)
        reg_weight (float): L2 penalty on the batch's input (layer-0)
            embeddings, :math:`\lambda \|\mathbf{E}_{batch}\|^2 / B`, added
            to every BPR loss but FREEDOM's (which has none, as MMRec).
            (default: :obj:`1e-4`)
        embedding_dim (int): Width :math:`d` of the teacher, of LATTICE
            and of FREEDOM. (default: :obj:`64`)
        num_layers (int): Propagation layers of the teacher.
            (default: :obj:`3`)
        student_dim (int): Width :math:`d_s` of the distilled student (may
            be smaller than :obj:`embedding_dim`: that is the compression)
            and of the :obj:`lightgcn` baseline, which is the student's
            architecture trained alone. (default: :obj:`64`)
        student_layers (int): Propagation layers of the student and of the
            :obj:`lightgcn` baseline. (default: :obj:`3`)
        student_lr (float): Adam learning rate of the student (stage 2) and
            of the :obj:`lightgcn` baseline. Chosen on validation over 3 seeds
            of Scientific and MovieLens-100k (2e-3 against the earlier 1e-3:
            the student equal on Scientific in fewer epochs, higher on
            MovieLens-100k). (default: :obj:`2e-3`)
        student_init (str): Layer-0 embeddings of the student:
            :obj:`"fresh"` (random, as the paper describes) or
            :obj:`"teacher"` (the teacher's final fused embeddings, as the
            original code does; needs :obj:`student_dim ==
            embedding_dim`). (default: :obj:`"fresh"`)
        student_item_graph (bool): Give the distilled student FREEDOM's
            frozen item-item content graph :math:`\mathbf{S}` (one kNN graph
            per modality from the raw features, mixed; built once): its
            items add :math:`\mathbf{S} \mathbf{E}_I` to their LightGCN
            embeddings (:class:`~pmm_geo.nn.LightGCNStudent`). The student
            still owns only id embeddings and serves without features; the
            :obj:`lightgcn` baseline stays plain LightGCN. The default on
            validation over Scientific and MovieLens-100k, with
            :obj:`kd_fade_margin` (docs/results.md). (default: :obj:`True`)
        student_knn_k (int): Neighbours per item of each modality's kNN
            graph of :obj:`student_item_graph`, self included.
            (default: :obj:`10`)
        eval_every (int): Evaluate on the validation split every this many
            epochs. (default: :obj:`1`)
        patience (int): Stop a stage after this many evaluations without an
            improvement of validation Recall@20. On dense data the curves
            still rise slowly after 300 epochs, with noise of about
            :math:`\pm 0.002` between evaluations, and 50 stopped teachers
            on that noise (:obj:`docs/results.md`). (default: :obj:`100`)
        ks (tuple of int): Cut-offs of the reported metrics (20 is
            required: it selects the model). (default: :obj:`(10, 20, 50)`)
        layout (str): Adjacency layout of the propagation layers (see
            :class:`pmm_geo.data.BipartiteAdjacency`).
            (default: :obj:`"edge_index_fused"`)
        kd_pair_weight (float): :math:`\lambda_{pair}`, weight of
            :class:`~pmm_geo.nn.PairwiseKDLoss`. (default: :obj:`1.0`)
        kd_list_weight (float): :math:`\lambda_{list}`, weight of the sum
            over modalities of :class:`~pmm_geo.nn.ListwiseKDLoss`.
            (default: :obj:`1.0`)
        kd_emb_weight (float): :math:`\lambda_{emb}`, weight of the sum over
            modalities of :class:`~pmm_geo.nn.EmbeddingKDLoss`.
            (default: :obj:`0.1`)
        kd_schedule (str): How the three KD weights move during stage 2
            (:class:`~pmm_geo.train.KDSchedule`): with :obj:`"plateau"`
            they fade while the student's validation Recall@20 is at least
            the teacher's, and drop to 0 where early stopping would have
            ended the stage (the student then goes on with BPR alone until
            :obj:`patience` runs out again); :obj:`"constant"` keeps them
            fixed (the paper). (default: :obj:`"plateau"`)
        kd_patience (int): Evaluations without a new best validation
            score after which the :obj:`"plateau"` schedule switches the
            distillation off; :obj:`0` takes :obj:`patience`.
            (default: :obj:`0`)
        kd_fade_margin (float): The :obj:`"plateau"` schedule fades the
            distillation only while the student's validation Recall@20 is
            at least :math:`(1 + m)` times the teacher's: a teacher a few
            percent below the student still carries ranking information
            the student lacks (MovieLens-100k, docs/results.md); a noise
            teacher lies far below. :obj:`0` fades as soon as the student
            ties its teacher. (default: :obj:`0.1`)
        kd_one_sided (bool): The pairwise and listwise KD count a row only
            where the teacher is surer of the positive than the student
            (:class:`~pmm_geo.nn.PairwiseKDLoss`): they can raise the
            student's confidence, never cap it at the teacher's. The
            default on validation over Scientific and MovieLens-100k
            (docs/results.md); :obj:`False` is the paper's two-sided KL.
            (default: :obj:`True`)
        kd_list_target (str): Whose scores the listwise KD distils:
            :obj:`"branches"` (each modality branch, the paper) or
            :obj:`"fused"` (the teacher's fused embeddings, for every
            modality term). (default: :obj:`"branches"`)
        pair_tau (float): Temperature of the pairwise KD. (default: :obj:`1.0`)
        list_tau (float): Temperature of the listwise KD. (default: :obj:`1.0`)
        list_alpha (float): Weight of the target (positive vs rest) part of
            the listwise KD. (default: :obj:`1.0`)
        list_beta (float): Weight of the non-target (among negatives) part
            of the listwise KD. (default: :obj:`1.0`)
        list_reweight (bool): Weigh the non-target part by the teacher's
            non-target mass (the paper's modality-aware re-weighting).
            (default: :obj:`True`)
        num_list_negatives (int): Sampled true negatives per candidate list
            of the listwise KD. (default: :obj:`10`)
        emb_alpha (float): Exponent :math:`\alpha \geq 1` of the scaled
            cosine error of the embedding KD. (default: :obj:`2.0`)
        prompt_tuning (bool): Keep training the prompt in stage 2 from the
            student's loss, through the frozen teacher (the paper). With
            :obj:`False` the prompt is frozen too and the teacher's outputs
            are computed once. (default: :obj:`True`)
        prompt_lr (float): Adam learning rate of the prompt in stage 2.
            (default: :obj:`1e-4`)
        teacher_dropout (float): Feature dropout of the teacher's
            projectors (stage 1 only: stage 2 runs the teacher in eval mode).
            (default: :obj:`0.2`)
        teacher_beta (float): :math:`\beta`, weight of the prompt-conditioned
            feature term in the projectors. (default: :obj:`0.1`)
        teacher_gamma (float): :math:`\gamma`, weight of the soft prompt
            added to the id embeddings. (default: :obj:`0.01`)
        teacher_lambda (float): :math:`\lambda`, weight of the modality
            embeddings in the fused teacher embedding. (default: :obj:`0.5`)
        teacher_modality_weight (float): Weight of the per-modality BPR
            terms of the stage-1 teacher loss. (default: :obj:`0.5`)
        teacher (str): The stage-1 teacher of :obj:`"promptmm"`:
            :obj:`"promptmm"` (:class:`~pmm_geo.nn.MultimodalTeacher`) or
            :obj:`"lattice"` (:class:`~pmm_geo.nn.LATTICETeacher`: LATTICE
            with the prompt on its projectors, sized by the
            :obj:`lattice_*` keys, with :obj:`teacher_beta` and
            :obj:`teacher_modality_weight`; full-graph training only).
            (default: :obj:`"promptmm"`)
        teacher_item_graph (bool): Give the teacher FREEDOM's frozen kNN
            item-item content graphs (one per modality, see
            :class:`~pmm_geo.nn.MultimodalTeacher`; full or sampled
            batching). On validation over 3 seeds it lifts the teacher
            (+0.005) and the student (+0.004 on MovieLens-100k, +0.001 on
            Scientific) on both datasets, where the student without it ends
            at LightGCN's level on dense data (``docs/results.md``).
            (default: :obj:`True`)
        teacher_knn_k (int): Neighbours per item of those graphs, self
            included. (default: :obj:`10`)
        teacher_prune_ratio (float): Fraction :math:`\rho` of the user-item
            edges the stage-1 teacher drops each epoch, FREEDOM's
            degree-sensitive pruning
            (:func:`~pmm_geo.nn.models.freedom.degree_sensitive_prune`; the
            full graph at evaluation and in stage 2). Full-graph batching
            only: on the sampled path the neighbour sampling already drops
            edges, and the teacher trains on the sampled subgraphs as they
            are. Chosen on validation over 3 seeds of Scientific and
            MovieLens-100k: it lifts the teacher on both (above LATTICE on
            Scientific) and the student with it (``docs/results.md``, "Edge
            pruning in the teacher"). (default: :obj:`0.5`)
        lattice_layers (int): LightGCN layers of LATTICE's user-item
            backbone (LATTICE's default). (default: :obj:`2`)
        lattice_knn_k (int): Neighbours per item of LATTICE's kNN item
            graphs. (default: :obj:`10`)
        lattice_lambda (float): LATTICE's weight of the frozen raw-feature
            graph against the learned one. (default: :obj:`0.9`)
        lattice_item_layers (int): LATTICE's item-item graph convolutions.
            (default: :obj:`1`)
        freedom_layers (int): LightGCN layers of FREEDOM (MMRec's
            :obj:`n_ui_layers`). (default: :obj:`2`)
        freedom_knn_k (int): Neighbours per item of FREEDOM's frozen kNN
            graph. (default: :obj:`10`)
        freedom_image_weight (float): Weight of the image graph when the
            modalities are exactly image and text (MMRec's
            :obj:`mm_image_weight`); any other set of modalities is mixed
            with equal weights. (default: :obj:`0.1`)
        freedom_prune_ratio (float): Fraction of the user-item edges FREEDOM
            drops each epoch (MMRec's :obj:`dropout`, grid 0.8 / 0.9).
            (default: :obj:`0.8`)
        freedom_feature_weight (float): Weight of FREEDOM's feature BPR terms
            (MMRec's :obj:`reg_weight`, grid 0 / 1e-5 / 1e-4 / 1e-3). Both
            are MMRec's grid point with the best validation Recall@20 on
            Scientific (docs/results.md). (default: :obj:`1e-3`)
        checkpoint_every (int): Write the resumable checkpoint every this
            many epochs (and always at the end of a stage).
            (default: :obj:`1`)
        batching (str): How a training step sees the graph:
            :obj:`"full"` propagates over the whole graph at every step (an
            epoch then costs :math:`O(E^2 / B)`); :obj:`"sampled"` samples
            each batch's neighbourhood with PyG's
            :class:`~torch_geometric.loader.LinkNeighborLoader`
            (:obj:`fanouts` per hop; needs torch-sparse or pyg-lib, the
            :obj:`sparse` extra) and propagates over it only, so an epoch
            costs :math:`O(E)`; :obj:`"auto"` picks :obj:`"sampled"` from
            :obj:`AUTO_SAMPLED_EDGES` train interactions on (the measured
            crossover, see :func:`resolve_batching`). Evaluation always
            uses the full graph. (default: :obj:`"auto"`)
        fanouts (tuple of int): Neighbours sampled per node at each hop of
            :obj:`"sampled"` batching, :obj:`-1` for all; a model deeper
            than the list repeats its last entry. (default: :obj:`(10, 5)`)
        teacher_refresh (int): Stage 2 with :obj:`prompt_tuning` on full
            batching: the teacher's prompt-dependent targets are recomputed,
            with gradient to the prompt, every this many steps of an epoch
            (steps 0, k, 2k, ...); in between the student distils from the
            last targets, detached, and the prompt stays put. :obj:`1` is
            the paper's schedule (a teacher forward and backward per step,
            over half of a step's cost); 7 (once per epoch on Scientific)
            kept the student's validation Recall@20 within the seed spread
            on 3 Scientific seeds (``docs/benchmarks.md``). Sampled batching
            runs the teacher on each batch's subgraph instead.
            (default: :obj:`7`)
    """
    model: str = 'promptmm'
    seed: int = 0
    epochs: int = 500
    batch_size: int = 2048
    lr: float = 2e-3
    weight_decay: float = 0.0
    reg_weight: float = 1e-4
    embedding_dim: int = 64
    num_layers: int = 3
    student_dim: int = 64
    student_layers: int = 3
    student_lr: float = 2e-3
    student_init: str = 'fresh'
    student_item_graph: bool = True
    student_knn_k: int = 10
    eval_every: int = 1
    patience: int = 100
    ks: Tuple[int, ...] = (10, 20, 50)
    layout: str = 'edge_index_fused'
    kd_pair_weight: float = 1.0
    kd_list_weight: float = 1.0
    kd_emb_weight: float = 0.1
    kd_schedule: str = 'plateau'
    kd_patience: int = 0
    kd_fade_margin: float = 0.1
    kd_list_target: str = 'branches'
    kd_one_sided: bool = True
    pair_tau: float = 1.0
    list_tau: float = 1.0
    list_alpha: float = 1.0
    list_beta: float = 1.0
    list_reweight: bool = True
    num_list_negatives: int = 10
    emb_alpha: float = 2.0
    prompt_tuning: bool = True
    prompt_lr: float = 1e-4
    teacher_dropout: float = 0.2
    teacher_beta: float = 0.1
    teacher_gamma: float = 0.01
    teacher_lambda: float = 0.5
    teacher_modality_weight: float = 0.5
    teacher: str = 'promptmm'
    teacher_item_graph: bool = True
    teacher_knn_k: int = 10
    teacher_prune_ratio: float = 0.5
    lattice_layers: int = 2
    lattice_knn_k: int = 10
    lattice_lambda: float = 0.9
    lattice_item_layers: int = 1
    freedom_layers: int = 2
    freedom_knn_k: int = 10
    freedom_image_weight: float = 0.1
    freedom_prune_ratio: float = 0.8
    freedom_feature_weight: float = 1e-3
    checkpoint_every: int = 1
    batching: str = 'auto'
    fanouts: Tuple[int, ...] = (10, 5)
    node_budget: int = 0
    teacher_refresh: int = 7

    def __post_init__(self):
        self.validate()

    # Construction -----------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any],
                  source: str = '<dict>') -> 'TrainConfig':
        r"""Builds a config from a mapping; unknown keys and values of the
        wrong type raise :class:`ConfigError` naming :obj:`source` and the
        key."""
        if not isinstance(values, Mapping):
            raise ConfigError(f'{source}: expected a JSON object of config '
                              f'keys, got {type(values).__name__}')
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ''
                raise ConfigError(f"{source}: unknown config key '{key}'"
                                  f'{hint}')
            kwargs[key] = _coerce(known[key], value, source)
        try:
            return cls(**kwargs)
        except ConfigError as error:
            raise ConfigError(f'{source}: {error}') from None

    @classmethod
    def from_json(cls, path: str) -> 'TrainConfig':
        r"""Reads a config written by :meth:`to_json` (or by hand: any
        subset of the keys; the rest keep their defaults)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f'config file not found: {path}')
        try:
            with open(path, encoding='utf-8') as f:
                values = json.load(f)
        except json.JSONDecodeError as error:
            raise ConfigError(f'{path}: not valid JSON ({error})') from None
        return cls.from_dict(values, source=path)

    def replace(self, **changes) -> 'TrainConfig':
        r"""Returns a copy with :obj:`changes` applied (validated)."""
        return self.from_dict({**self.to_dict(), **changes},
                              source='<arguments>')

    # Export -----------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out['ks'] = list(self.ks)
        out['fanouts'] = list(self.fanouts)
        return out

    def to_json(self, path: str) -> None:
        r"""Writes the config as JSON (atomically)."""
        from .checkpoint import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + '\n')

    # Checks -----------------------------------------------------------------

    def full_graph_only(self) -> str:
        r"""What makes this run need full-graph batching (item-item graphs
        over all items), as :obj:`"'key': value"`, or :obj:`""`."""
        if self.model == 'freedom':
            return "'model': 'freedom'"
        if self.model == 'promptmm' and self.teacher == 'lattice':
            return "'teacher': 'lattice'"
        return ''

    def validate(self) -> None:
        from .registry import model_names  # The registry imports us.
        if self.model not in model_names():
            raise ConfigError(f"'model': unknown model '{self.model}' "
                              f'(expected one of {model_names()})')
        for key in ('epochs', 'batch_size', 'embedding_dim', 'num_layers',
                    'student_dim', 'student_layers', 'eval_every',
                    'patience', 'num_list_negatives', 'lattice_layers',
                    'lattice_knn_k', 'lattice_item_layers', 'teacher_knn_k',
                    'student_knn_k',
                    'freedom_knn_k', 'checkpoint_every', 'teacher_refresh'):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be >= 1, got "
                                  f'{getattr(self, key)}')
        for key in ('lr', 'student_lr', 'prompt_lr', 'pair_tau', 'list_tau'):
            if not getattr(self, key) > 0:
                raise ConfigError(f"'{key}' must be > 0, got "
                                  f'{getattr(self, key)}')
        for key in ('kd_patience', 'kd_fade_margin', 'weight_decay',
                    'reg_weight', 'kd_pair_weight', 'kd_list_weight',
                    'kd_emb_weight', 'list_alpha', 'list_beta',
                    'teacher_beta', 'teacher_gamma', 'teacher_lambda',
                    'teacher_modality_weight',
                    'freedom_layers', 'freedom_feature_weight'):
            if getattr(self, key) < 0:
                raise ConfigError(f"'{key}' must be >= 0, got "
                                  f'{getattr(self, key)}')
        if not 0 <= self.teacher_dropout < 1:
            raise ConfigError(f"'teacher_dropout' must be in [0, 1), got "
                              f'{self.teacher_dropout}')
        if self.teacher not in TEACHERS:
            raise ConfigError(f"'teacher' must be one of {TEACHERS}, got "
                              f"'{self.teacher}'")
        if not 0 <= self.freedom_image_weight <= 1:
            raise ConfigError(f"'freedom_image_weight' must be in [0, 1], "
                              f'got {self.freedom_image_weight}')
        if not 0 <= self.teacher_prune_ratio < 1:
            raise ConfigError(f"'teacher_prune_ratio' must be in [0, 1), got "
                              f'{self.teacher_prune_ratio}')
        if not 0 <= self.freedom_prune_ratio < 1:
            raise ConfigError(f"'freedom_prune_ratio' must be in [0, 1), got "
                              f'{self.freedom_prune_ratio}')
        if not 0 <= self.lattice_lambda <= 1:
            raise ConfigError(f"'lattice_lambda' must be in [0, 1], got "
                              f'{self.lattice_lambda}')
        if self.kd_list_target not in LIST_TARGETS:
            raise ConfigError(f"'kd_list_target' must be one of "
                              f"{LIST_TARGETS}, got '{self.kd_list_target}'")
        if self.kd_schedule not in SCHEDULES:
            raise ConfigError(f"'kd_schedule' must be one of {SCHEDULES}, "
                              f"got '{self.kd_schedule}'")
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"'student_init' must be one of "
                              f"{STUDENT_INITS}, got '{self.student_init}'")
        if (self.student_init == 'teacher'
                and self.student_dim != self.embedding_dim):
            raise ConfigError(f"'student_init': 'teacher' needs student_dim "
                              f'== embedding_dim, got {self.student_dim} and '
                              f'{self.embedding_dim}')
        if self.batching not in BATCHINGS:
            raise ConfigError(f"'batching' must be one of {BATCHINGS}, got "
                              f"'{self.batching}'")
        full_graph = self.full_graph_only()
        if full_graph and self.batching == 'sampled':
            raise ConfigError(f"{full_graph} needs batching='full' (its "
                              f"item-item graph spans all items), got "
                              f"batching='sampled'")
        self.fanouts = tuple(int(f) for f in self.fanouts)
        if not self.fanouts or any(f == 0 or f < -1 for f in self.fanouts):
            raise ConfigError(f"'fanouts' must be a non-empty list of "
                              f'positive neighbour counts or -1 (all), got '
                              f'{list(self.fanouts)}')
        if self.node_budget < 0:
            raise ConfigError(f"'node_budget' must be >= 0 (0: no budget), "
                              f'got {self.node_budget}')
        if self.node_budget and self.batching == 'full':
            raise ConfigError(f"'node_budget': {self.node_budget} applies to "
                              f"sampled batching, got batching='full'")
        if self.emb_alpha < 1:
            raise ConfigError(f"'emb_alpha' must be >= 1, got "
                              f'{self.emb_alpha}')
        self.ks = tuple(int(k) for k in self.ks)
        if 20 not in self.ks or min(self.ks) < 1:
            raise ConfigError(f"'ks' must hold positive cut-offs including "
                              f'20 (it selects the model), got '
                              f'{list(self.ks)}')


def _coerce(spec: dataclasses.Field, value: Any, source: str) -> Any:
    r"""Checks a JSON value against the field's type (an int is accepted for
    a float; nothing else is converted)."""
    name = spec.name
    if name in ('ks', 'fanouts'):
        if (not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(k, int) and not isinstance(k, bool)
                for k in value)):
            raise ConfigError(f"{source}: '{name}' must be a list of "
                              f'integers, got {value!r}')
        return tuple(value)
    kind = spec.type
    if kind is float and isinstance(value, int) and not isinstance(
            value, bool):
        value = float(value)
    # bool is a subclass of int: an int field must not accept true/false.
    if type(value) is not kind:
        raise ConfigError(f"{source}: '{name}' must be {kind.__name__}, got "
                          f'{value!r}')
    return value


def resolve_batching(config: TrainConfig, num_train_edges: int) -> str:
    r"""The batching a run uses: :obj:`config.batching`, with
    :obj:`"auto"` resolved to :obj:`"sampled"` from
    :obj:`AUTO_SAMPLED_EDGES` train interactions on (where a sampled epoch
    became cheaper than a full-graph one in :obj:`benchmarks/scale.py`),
    else :obj:`"full"`."""
    if config.batching != 'auto':
        return config.batching
    if config.full_graph_only():  # Item-item graphs over all items.
        return 'full'
    return 'sampled' if num_train_edges >= AUTO_SAMPLED_EDGES else 'full'


__all__ = ['TrainConfig', 'ConfigError', 'resolve_batching']
