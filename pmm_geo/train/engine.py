r"""The training engine: PromptMM's two stages and the baselines, with
validation-only model selection, resumable checkpoints and progress
reporting."""
import json
import os
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.nn import Module

from pmm_geo.data import (
    EDGE_TYPE,
    NegativeSampler,
    get_adjacency,
    modalities,
)
from pmm_geo.data.subgraph_loader import (
    SubgraphLoader,
    require_neighbor_sampling,
)
from pmm_geo.evaluation import evaluate

from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    check_fingerprint,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, TrainConfig, resolve_batching
from .distributed import Distributed
from .progress import ProgressLogger, plot_curves
from .registry import get_model
from .run import RunDir
from .stages import Stage, StageContext
from .stages.base import clear_optimizer_state

#: The metric that selects the epoch (on the validation split only).
SELECT_METRIC = 'recall@20'


def _resolve_batching(config: TrainConfig, num_edges: int) -> str:
    batching = resolve_batching(config, num_edges)
    if batching == 'sampled':
        try:
            require_neighbor_sampling()
        except ImportError as error:
            if config.batching == 'sampled':
                raise
            warnings.warn(f"batching 'auto' falls back to 'full' on "
                          f'{num_edges:,} train interactions: {error}')
            return 'full'
    return batching


#: :obj:`on_epoch_end(stage_name, record)`: see :class:`Trainer`.
EpochHook = Callable[[str, Dict[str, Any]], Optional[bool]]


def fit_ks(ks, num_items: int):
    r"""The metric cut-offs for a catalogue of :obj:`num_items` items, and
    the metric that selects the epoch.

    The default cut-offs that exceed the catalogue are dropped with a
    one-line warning (with none left, the catalogue size is the cut-off);
    cut-offs set by the user that exceed it are a :class:`ConfigError`.
    The epoch is selected on :obj:`recall@20`, or, when 20 does not fit,
    on Recall at the largest cut-off that does."""
    default = TrainConfig.__dataclass_fields__['ks'].default
    too_big = [k for k in ks if k > num_items]
    if too_big and tuple(ks) != tuple(default):
        raise ConfigError(f"'ks': cut-off {max(too_big)} exceeds the number "
                          f'of items ({num_items}); set smaller ks')
    fit = tuple(k for k in ks if k <= num_items) or (num_items, )
    select = 'recall@20' if 20 in fit else f'recall@{max(fit)}'
    if too_big:
        warnings.warn(f"metric cut-off(s) {', '.join(map(str, too_big))} "
                      f'exceed the {num_items} items: reporting '
                      f"@{', @'.join(map(str, fit))}, selecting on {select}",
                      stacklevel=3)
    return fit, select


class TrainingInterrupted(RuntimeError):
    r"""Raised to abort :meth:`Trainer.fit` between two epochs (e.g. by an
    :obj:`on_epoch_end` hook); the run continues with
    :obj:`fit(resume=True)` from its last checkpoint."""


class EarlyStopping:
    r"""Validation-only model selection: keeps a snapshot of the modules at
    the evaluation with the best :obj:`metric` (the first one on ties) and
    asks to stop after :obj:`patience` evaluations without improvement.

    Args:
        patience (int): Evaluations without improvement before stopping.
        metric (str): The validation metric to maximize.
            (default: :obj:`"recall@20"`)
        best (dict, optional): A saved :obj:`best` to continue from.
        bad_evals (int): A saved count to continue from. (default: :obj:`0`)
    """
    def __init__(self, patience: int, metric: str = SELECT_METRIC,
                 best: Optional[Dict[str, Any]] = None, bad_evals: int = 0):
        self.patience, self.metric = patience, metric
        #: :obj:`{'epoch', 'score', 'val', 'modules'}` of the best
        #: evaluation so far (:obj:`None` before the first one).
        self.best = best
        self.bad_evals = bad_evals

    def update(self, epoch: int, val: Dict[str, float],
               modules: Dict[str, Module]) -> bool:
        r"""Records the validation metrics :obj:`val` of :obj:`epoch`;
        returns whether they improve on the best so far (then
        :obj:`modules` are snapshot)."""
        if self.best is None or val[self.metric] > self.best['score']:
            self.best = {'epoch': epoch, 'score': val[self.metric],
                         'val': val, 'modules': _snapshot(modules)}
            self.bad_evals = 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience


def train_step(stage: Stage, optimizer: torch.optim.Optimizer, users,
               pos, neg, batch: int, forward: Optional[Callable] = None
               ) -> Tuple[torch.Tensor, Dict[str, float]]:
    r"""One optimization step of :obj:`stage` on a batch of triplets;
    returns the loss and its parts (a non-finite loss is an error).
    :obj:`forward` computes them from the :class:`~pmm_geo.train.stages.
    Batch` (default: :obj:`stage.step`; in a distributed run, the stage in
    :class:`~torch.nn.parallel.DistributedDataParallel`, see
    :meth:`Distributed.wrap_stage`)."""
    forward = stage.step if forward is None else forward
    loss, parts = forward(stage.batch(users, pos, neg, batch))
    if not torch.isfinite(loss):
        raise FloatingPointError(f'[{stage.name}] the loss is {loss.item()};'
                                 f' lower the learning rate')
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, parts


def _seed(seed: int, stage_index: int) -> int:
    # Each stage starts from its own seed, so a resumed run and an
    # uninterrupted one build identical modules whatever ran before.
    return int(seed) * 1009 + stage_index


def _snapshot(modules: Dict[str, Module]) -> Dict[str, Dict[str, Any]]:
    return {name: {k: v.detach().clone() for k, v in
                   module.state_dict().items()}
            for name, module in modules.items()}


def _load(modules: Dict[str, Module], states: Dict[str, Dict[str, Any]],
          source: str) -> None:
    for name, module in modules.items():
        if name not in states:
            raise CheckpointError(f"{source} has no state for '{name}'")
        try:
            module.load_state_dict(states[name])
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(f"{source}: the saved '{name}' does not "
                                  f'fit this model ({first})') from None


def _rng_state(generator: torch.Generator) -> Dict[str, Any]:
    state = {'torch': torch.get_rng_state(), 'sampler': generator.get_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any],
                   generator: torch.Generator) -> None:
    torch.set_rng_state(state['torch'])
    generator.set_state(state['sampler'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class Trainer:
    r"""Trains :obj:`config.model` on a pmm_geo
    :class:`~torch_geometric.data.HeteroData`.

    - :obj:`"promptmm"`: stage 1 trains the
      :class:`~pmm_geo.nn.MultimodalTeacher` and its prompt; stage 2 freezes
      the teacher (eval mode, no gradient to its weights) and trains a fresh
      :class:`~pmm_geo.nn.LightGCNStudent` on BPR plus the pairwise,
      listwise and embedding distillation losses, while the prompt keeps
      learning from the student's loss (see
      :class:`~pmm_geo.train.stages.DistillStage`).
    - :obj:`"lightgcn"`: the student's architecture trained alone with BPR.
    - :obj:`"lattice"`: the :class:`~pmm_geo.nn.LATTICE` baseline.

    Every stage evaluates on the **validation** split every
    :obj:`eval_every` epochs, keeps the state with the best validation
    Recall@20, stops after :obj:`patience` evaluations without improvement
    (or :obj:`epochs`), restores the best state and evaluates the **test**
    split once, with :func:`pmm_geo.evaluate`.

    With a :obj:`run_dir`, the run writes :obj:`config.json`,
    :obj:`metrics.json`, :obj:`log.jsonl`, a resumable
    :obj:`train_state.pt` (every :obj:`checkpoint_every` epochs, atomically),
    one checkpoint per trained model and :obj:`curves.png` (see
    :class:`~pmm_geo.train.RunDir`). :obj:`fit(resume=True)` continues an
    interrupted run from its last state (modules, optimizer, early-stopping
    state, RNG states) and reaches the same result as an uninterrupted run.

    Args:
        data (torch_geometric.data.HeteroData): The dataset (train edges for
            message passing, validation and test positives held out).
        config (TrainConfig, optional): Hyperparameters.
            (default: :obj:`TrainConfig()`)
        run_dir (str, optional): Where the run's files go; :obj:`None`
            trains in memory. (default: :obj:`None`)
        quiet (bool): No console output. (default: :obj:`False`)
        device (str or torch.device): Where to train. (default: :obj:`"cpu"`)
        use_tqdm (bool, optional): Progress bars (default: when tqdm is
            installed and the console is a terminal).
        plot (bool): Draw :obj:`curves.png` at the end (when matplotlib is
            installed). (default: :obj:`True`)
        on_stage_end (callable, optional): Called as
            :obj:`on_stage_end(stage_name, result)` when a stage has
            finished (best state restored, test evaluated, checkpoint
            written), e.g. to record per-stage time or memory.
            (default: :obj:`None`)
        on_epoch_end (callable, optional): Called as
            :obj:`on_epoch_end(stage_name, record)` after every epoch (and
            its checkpoint), :obj:`record` the epoch's entry of
            :obj:`history` (loss, parts, validation metrics when evaluated).
            Returning :obj:`True` ends the stage there (the best state so
            far is restored and tested, as on early stopping); raising (e.g.
            :class:`TrainingInterrupted`) aborts :meth:`fit`, which
            :obj:`resume=True` then continues from the last checkpoint.
            (default: :obj:`None`)
        distributed (Distributed, optional): The process group of a
            multi-process run (:meth:`Distributed.from_env` under
            :obj:`torchrun`): each rank trains on its shard of every
            epoch's triplets, :obj:`batch_size` per rank, with gradients
            averaged by :class:`~torch.nn.parallel.DistributedDataParallel`;
            rank 0 evaluates, logs and writes :obj:`run_dir`, and every rank
            applies its validation results (the same early stopping and
            selected epoch everywhere). Both hooks run on every rank (an
            interrupting :obj:`on_epoch_end` must raise on every rank; rank
            0's return value counts). (default: one process)
    """
    def __init__(self, data, config: Optional[TrainConfig] = None,
                 run_dir: Optional[str] = None, quiet: bool = False,
                 device='cpu', use_tqdm: Optional[bool] = None,
                 plot: bool = True,
                 on_stage_end: Optional[Callable[[str, Dict[str, Any]],
                                                 None]] = None,
                 on_epoch_end: Optional[EpochHook] = None,
                 distributed: Optional[Distributed] = None):
        self.config = config if config is not None else TrainConfig()
        self.config.validate()
        self.dist = distributed if distributed is not None else \
            Distributed()
        self.device = torch.device(device)
        self._check_data(data)
        self.fingerprint = data_fingerprint(data)
        self.data = data.to(self.device) if self.device.type != 'cpu' \
            else data
        self.graph = get_adjacency(self.data)
        self.features = {m: self.data['item'][m]
                         for m in modalities(self.data)}
        self.sampler = NegativeSampler.from_data(self.data).to(self.device)
        self.generator = torch.Generator(device=self.device)
        #: :obj:`"full"` or :obj:`"sampled"` (:obj:`config.batching`
        #: resolved for this data).
        self.batching = _resolve_batching(self.config, self.graph.num_edges)
        self.context = StageContext(self.config, self.data, self.graph,
                                    self.features, self.sampler,
                                    self.generator)
        self.spec = get_model(self.config.model)
        self.run = RunDir(run_dir) if run_dir is not None else None
        #: Whether this process writes the run directory (rank 0 only).
        self.writes = self.run is not None and self.dist.is_main
        self.plot = plot
        self.on_stage_end = on_stage_end
        self.on_epoch_end = on_epoch_end
        self.logger = ProgressLogger(
            self.run.file(RunDir.LOG) if self.writes else None,
            quiet=quiet or not self.dist.is_main, use_tqdm=use_tqdm)
        #: The trained modules after :meth:`fit` (e.g. :obj:`'teacher'`,
        #: :obj:`'student'`), each at its selected epoch.
        self.modules: Dict[str, Module] = {}
        #: Per-model results, the content of :obj:`metrics.json`.
        self.results: Dict[str, Dict[str, Any]] = {}
        #: One record per epoch (loss, and validation metrics when
        #: evaluated), all stages.
        self.history: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------
    # Input checks

    def _check_data(self, data) -> None:
        store = data[EDGE_TYPE]
        for key, split in (('val_edge_index', 'validation'),
                           ('test_edge_index', 'test')):
            if key not in store or store[key].numel() == 0:
                raise ValueError(f'the data has no {split} interactions: '
                                 f'model selection needs a validation split '
                                 f'and the report a test split')
        num_items = data['item'].num_nodes
        #: The metric cut-offs (:func:`fit_ks`) and the selecting metric.
        self.ks, self.select_metric = fit_ks(self.config.ks, num_items)
        if get_model(self.config.model).needs_features and \
                not modalities(data):
            raise ValueError(f"model '{self.config.model}' reads item "
                             f'features, but the data has none (add '
                             f"<modality>_feat.npy files, or use --model "
                             f'lightgcn)')

    # ------------------------------------------------------------------
    # Public API

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        r"""Runs every stage of :obj:`config.model` and returns the results
        (the content of :obj:`metrics.json`).

        Args:
            resume (bool): Continue the run saved in :obj:`run_dir`.
                (default: :obj:`False`)
        """
        state = self._load_state() if resume else self._start_run()
        self.results, self.history, self.modules = {}, [], {}
        if state is not None:
            self.results = dict(state['results'])
            self.history = list(state['history'])
            self.logger.log(event='resume', stage=state['stage'],
                            epoch=state['epoch'])
            self.logger.message(f"Resuming {self.config.model} at stage "
                                f"'{state['stage']}', epoch "
                                f"{state['epoch']}")
        for stage in self.stages():
            current = state is not None and state['stage'] == stage.name
            if current:
                _load(stage.modules, state['modules'], 'the training state')
                stage.after_load()
            if stage.name not in self.results:
                self._run_stage(stage, state if current else None)
            self.modules.update(stage.modules)
        self._finish()
        return self.results

    def stages(self) -> Iterator[Stage]:
        r"""Builds the stages of :obj:`config.model` one by one, each seeded
        as :meth:`fit` seeds it and given the modules of the stages before
        it (as they are when the next stage is asked for: train a stage
        before building the one that distils from it)."""
        previous: Dict[str, Module] = {}
        for index, stage_cls in enumerate(self.spec.stages):
            stage = stage_cls(self.context)
            torch.manual_seed(_seed(self.config.seed, index))
            self.generator.manual_seed(_seed(self.config.seed, index))
            stage.build(previous)
            if self.batching == 'sampled':
                stage.loader = SubgraphLoader(
                    self.data, self.config.fanouts, stage.num_hops(),
                    self.graph, node_budget=self.config.node_budget)
            yield stage
            previous.update(stage.modules)

    # ------------------------------------------------------------------
    # Run directory

    def _start_run(self) -> None:
        if self.run is None:
            return None
        if self.run.has_run():
            raise CheckpointError(f'{self.run.path} already holds a run: '
                                  f'continue it with --resume, or choose '
                                  f'another --out')
        if not self.writes:
            return None
        os.makedirs(self.run.path, exist_ok=True)
        self.config.to_json(self.run.file(RunDir.CONFIG))
        if os.path.exists(self.run.file(RunDir.LOG)):
            os.remove(self.run.file(RunDir.LOG))
        self.logger.log(event='start', model=self.config.model,
                        fingerprint=self.fingerprint,
                        config=self.config.to_dict())
        return None

    def _load_state(self) -> Dict[str, Any]:
        if self.run is None:
            raise ValueError('resume=True needs a run_dir')
        path = self.run.file(RunDir.STATE)
        if not os.path.isfile(path):
            if os.path.isfile(self.run.file(RunDir.CONFIG)) and \
                    not self.run.has_run():
                # Stopped before the first epoch was saved: start over.
                if self.run.read_config() != self.config:
                    raise ConfigError(f'{self.run.file(RunDir.CONFIG)}: the '
                                      f'run was started with another config')
                self.logger.message('No epoch was saved yet: starting the '
                                    'run over')
                return self._start_run()
            raise CheckpointError(f'nothing to resume in {self.run.path} '
                                  f'(no {RunDir.STATE})')
        state = load_checkpoint(path, what='training state')
        check_fingerprint(state, self.fingerprint, path)
        saved = TrainConfig.from_dict(state['config'], source=path)
        trained_with = state.get('world_size', 1)
        if trained_with != self.dist.world_size:
            warnings.warn(f'{path} was trained with {trained_with} '
                          f'process(es), resumed with {self.dist.world_size}:'
                          f' the epochs from here are sharded differently')
        if saved != self.config:
            diff = [k for k, v in saved.to_dict().items()
                    if v != self.config.to_dict()[k]]
            raise ConfigError(f'{path}: the run was trained with another '
                              f'config ({", ".join(diff)} differ); resume '
                              f'with the config of {RunDir.CONFIG}')
        return state

    def _save_state(self, stage: Stage, epoch: int, optimizer,
                    stopper: EarlyStopping, elapsed: float,
                    finished: bool) -> None:
        if self.run is None:
            return
        if not self.writes:  # The others wait until rank 0 has written.
            self.dist.barrier()
            return
        save_checkpoint({
            'kind': 'train_state',
            'config': self.config.to_dict(),
            'fingerprint': self.fingerprint,
            'stage': stage.name,
            'epoch': epoch,
            'finished': finished,
            'modules': _snapshot(stage.modules),
            'optimizer': optimizer.state_dict(),
            'best': None if finished else stopper.best,
            'bad_evals': stopper.bad_evals,
            'elapsed': elapsed,
            'history': self.history,
            'results': self.results,
            'rng': _rng_state(self.generator),
            'world_size': self.dist.world_size,
        }, self.run.file(RunDir.STATE))
        self.dist.barrier()

    def _write_metrics(self) -> None:
        if self.writes:
            atomic_write_text(self.run.file(RunDir.METRICS),
                              json.dumps(self.results, indent=2) + '\n')

    # ------------------------------------------------------------------
    # One stage

    def _run_stage(self, stage: Stage, state: Optional[Dict[str, Any]]):
        cfg = self.config
        optimizer = stage.optimizer()
        forward = self.dist.wrap_stage(stage)
        if self.dist.enabled:  # DDP copied rank 0's weights in place.
            stage.after_load()
        stopper = EarlyStopping(cfg.patience, self.select_metric)
        epoch, elapsed = 0, 0.0
        if state is not None:
            optimizer.load_state_dict(state['optimizer'])
            stopper = EarlyStopping(cfg.patience, self.select_metric,
                                    best=state['best'],
                                    bad_evals=state['bad_evals'])
            epoch, elapsed = state['epoch'], state['elapsed']
            _set_rng_state(state['rng'], self.generator)
        else:
            self.logger.message(f'[{stage.name}] training {stage.model} '
                                f'({stage.num_params():,} parameters)')
        for epoch in range(epoch + 1, cfg.epochs + 1):
            tic = time.perf_counter()
            record = self._train_epoch(stage, optimizer, forward, epoch)
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                record['val'] = self._validate(stage, epoch, stopper,
                                               optimizer)
            elapsed += time.perf_counter() - tic
            record['seconds'] = elapsed
            self._log_epoch(stage, record, stopper)
            done = stopper.should_stop or epoch == cfg.epochs
            if not done and epoch % cfg.checkpoint_every == 0:
                self._save_state(stage, epoch, optimizer, stopper, elapsed,
                                 finished=False)
            if self._end_epoch_hook(stage, record, stopper) or done:
                break
        self._end_stage(stage, optimizer, stopper, epoch, elapsed)

    def _train_epoch(self, stage: Stage, optimizer, forward,
                     epoch: int) -> Dict[str, Any]:
        r"""One pass over the train interactions (this rank's shard);
        returns the epoch's record (mean loss and parts, over all ranks)."""
        cfg, dist = self.config, self.dist
        stage.train_mode()
        if dist.enabled:
            self._seed_epoch(stage, epoch, shared=True)
        batches = self.sampler.epoch_batches(
            cfg.batch_size, generator=self.generator,
            num_shards=dist.world_size, shard=dist.rank)
        if dist.enabled:
            self._seed_epoch(stage, epoch, shared=False)
        progress = self.logger.epoch(stage.name, epoch, cfg.epochs, batches,
                                     self.sampler.num_batches(
                                         cfg.batch_size,
                                         num_shards=dist.world_size))
        for batch, (users, pos, neg) in enumerate(progress):
            loss, parts = train_step(stage, optimizer, users, pos, neg, batch,
                                     forward)
            progress.update(loss.item(), parts)
        return {'stage': stage.name, 'epoch': epoch,
                **dist.mean({'loss': progress.mean_loss,
                             **progress.mean_parts()})}

    def _seed_epoch(self, stage: Stage, epoch: int, shared: bool) -> None:
        r"""Distributed runs reseed every epoch from :obj:`(seed, stage,
        epoch)`, so a resumed run continues the same streams: the shuffle
        and negatives the same on every rank (:obj:`shared`, each then
        takes its shard), then a stream per rank for what differs (stage
        2's candidate lists, neighbour sampling, dropout)."""
        index = self.spec.outputs.index(stage.name)
        base = _seed(self.config.seed, index) * 100_003 + epoch
        rank = 0 if shared else self.dist.rank + 1
        self.generator.manual_seed(base * 131 + rank)
        torch.manual_seed(base * 131 + rank)

    def _validate(self, stage: Stage, epoch: int, stopper: EarlyStopping,
                  optimizer: Optional[torch.optim.Optimizer] = None
                  ) -> Dict[str, float]:
        r"""Rank 0 evaluates on the validation split; every rank applies
        its metrics (model selection, the stage's objective changes)."""
        val = None
        if self.dist.is_main:
            val = evaluate(*stage.embeddings(), self.data, 'val', ks=self.ks)
        val = self.dist.broadcast_object(val)
        improved = stopper.update(epoch, val, stage.modules)
        change = stage.evaluated(val[SELECT_METRIC], improved)
        if change is not None:
            # A new objective: patience restarts, and so do the optimizer's
            # moment estimates (Adam's second moments of the old loss would
            # shrink the new loss's steps for ~1/(1 - beta2) steps).
            stopper.bad_evals = 0
            if optimizer is not None:
                clear_optimizer_state(optimizer)
            self.logger.log(event='objective', stage=stage.name,
                            epoch=epoch, change=change)
            self.logger.message(f'[{stage.name}] epoch {epoch}: {change}')
        return val

    def _log_epoch(self, stage: Stage, record: Dict[str, Any],
                   stopper: EarlyStopping) -> None:
        log = self.logger
        self.history.append(record)
        log.log(event='epoch', **record)
        if 'val' in record:
            log.evaluation(stage.name, record['epoch'], record['val'],
                           stopper.best['epoch'], stopper.best['score'],
                           record['seconds'])
        elif not log.use_tqdm:
            log.message(f'[{stage.name}] epoch {record["epoch"]:4d}  loss '
                        f'{record["loss"]:.4f}  {record["seconds"]:7.1f}s')

    def _end_epoch_hook(self, stage: Stage, record: Dict[str, Any],
                        stopper: EarlyStopping) -> bool:
        r"""Calls :obj:`on_epoch_end`; returns whether it ends the stage
        (validating the current state if nothing was evaluated yet)."""
        if self.on_epoch_end is None or not self.dist.broadcast_object(
                bool(self.on_epoch_end(stage.name, record))):
            return False
        if stopper.best is None:
            record['val'] = self._validate(stage, record['epoch'], stopper)
            self.logger.log(event='evaluation', stage=stage.name,
                            epoch=record['epoch'], val=record['val'])
        return True

    def _end_stage(self, stage: Stage, optimizer, stopper: EarlyStopping,
                   epochs: int, elapsed: float) -> None:
        best = stopper.best
        _load(stage.modules, best['modules'], 'the best state')
        stage.after_load()
        user_emb = item_emb = test = None
        if self.dist.is_main:
            user_emb, item_emb = stage.embeddings()
            test = evaluate(user_emb, item_emb, self.data, 'test', ks=self.ks)
        # Rank 0's test metrics and time are the run's, on every rank.
        test, elapsed = self.dist.broadcast_object((test, elapsed))
        result = {'val': best['val'], 'test': test, 'epochs': epochs,
                  'best_epoch': best['epoch'],
                  'train_seconds': round(elapsed, 3),
                  'params': stage.num_params()}
        self.results[stage.name] = result
        self.logger.log(event='test', stage=stage.name, **result)
        self.logger.message(
            f"[{stage.name}] selected epoch {best['epoch']} (validation "
            f"{self.select_metric} {best['score']:.4f}); test "
            f"{self.select_metric} {test[self.select_metric]:.4f} "
            f"ndcg{self.select_metric[6:]} "
            f"{test['ndcg' + self.select_metric[6:]]:.4f}; "
            f'{elapsed:.1f}s')
        self._export(stage, user_emb, item_emb, result)
        self._save_state(stage, epochs, optimizer, stopper, elapsed,
                         finished=True)
        self._write_metrics()
        if self.on_stage_end is not None:
            self.on_stage_end(stage.name, result)

    def _export(self, stage: Stage, user_emb, item_emb,
                result: Dict[str, Any]) -> None:
        r"""Writes :obj:`<model>.pt`: the stage's model (class, constructor
        arguments, weights at the selected epoch), its final embeddings and
        the train interactions (what serving needs, without the data
        directory)."""
        if not self.writes:
            return
        stage.export(self.run, {
            **stage.checkpoint(),
            'user_emb': user_emb.detach().cpu(),
            'item_emb': item_emb.detach().cpu(),
            'train_edge_index': self.graph.edge_index.cpu(),
            'config': self.config.to_dict(),
            'fingerprint': self.fingerprint,
            'metrics': result,
        })

    def _finish(self) -> None:
        self._write_metrics()
        if self.writes and self.plot and self.history:
            plot_curves(self.history, self.run.file(RunDir.CURVES))
        self.logger.log(event='done', results=self.results)


__all__ = ['Trainer', 'TrainingInterrupted', 'SELECT_METRIC', 'fit_ks']
