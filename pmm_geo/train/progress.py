r"""Training progress: a per-epoch progress bar (tqdm when installed, plain
prints otherwise), one line per evaluation, a JSON-lines log and a PNG of the
training curves (when matplotlib is installed)."""
import json
import sys
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional

try:  # Optional dependency: `pip install 'pmm_geo[progress]'`.
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - depends on the environment
    tqdm = None


def _fmt_metrics(metrics: Dict[str, float], keys=('recall@20',
                                                     'ndcg@20')) -> str:
    return '  '.join(f'{k} {metrics[k]:.4f}' for k in keys if k in metrics)


class ProgressLogger:
    r"""Reports training progress on the console and in a JSON-lines log.

    Args:
        log_path (str, optional): The JSON-lines log (appended to, one
            record a line); :obj:`None` for no log. (default: :obj:`None`)
        quiet (bool): No console output at all. (default: :obj:`False`)
        use_tqdm (bool, optional): Use a tqdm bar per epoch (default: when
            tqdm is installed and the output is a terminal).
    """
    def __init__(self, log_path: Optional[str] = None, quiet: bool = False,
                 use_tqdm: Optional[bool] = None):
        self.log_path = log_path
        self.quiet = quiet
        if use_tqdm is None:
            use_tqdm = tqdm is not None and sys.stderr.isatty()
        self.use_tqdm = bool(use_tqdm) and tqdm is not None
        self._start = time.perf_counter()

    # Records ----------------------------------------------------------------

    def log(self, **record: Any) -> None:
        r"""Appends one JSON record (with a wall-clock :obj:`time`) to the
        log."""
        if self.log_path is None:
            return
        record = {'time': round(time.time(), 3), **record}
        with open(self.log_path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')

    def message(self, text: str) -> None:
        r"""Prints :obj:`text` unless quiet."""
        if not self.quiet:
            if self.use_tqdm:
                tqdm.write(text)
            else:
                print(text, flush=True)

    # Epochs -----------------------------------------------------------------

    def epoch(self, stage: str, epoch: int, num_epochs: int,
              batches: Iterable, total: int) -> 'EpochProgress':
        r"""Wraps the batches of one epoch; call
        :meth:`EpochProgress.update` with each batch's loss."""
        return EpochProgress(self, stage, epoch, num_epochs, batches, total)

    def evaluation(self, stage: str, epoch: int, val: Dict[str, float],
                   best_epoch: int, best_score: float,
                   seconds: float) -> None:
        r"""One line per evaluation: validation metrics, best so far and
        elapsed time of the stage."""
        self.log(event='eval', stage=stage, epoch=epoch, val=val,
                 best_epoch=best_epoch, seconds=round(seconds, 3))
        mark = ' *' if best_epoch == epoch else ''
        self.message(f'[{stage}] epoch {epoch:4d}  val {_fmt_metrics(val)}  '
                     f'(best {_select_key(val)} {best_score:.4f} at epoch '
                     f'{best_epoch})  {seconds:7.1f}s{mark}')


class EpochProgress:
    r"""Iterates over one epoch's batches with a progress bar (or, without
    tqdm, a single line at the end of the epoch) showing the running
    loss."""
    def __init__(self, logger: ProgressLogger, stage: str, epoch: int,
                 num_epochs: int, batches: Iterable, total: int):
        self.logger = logger
        self.stage, self.epoch = stage, epoch
        self.num_epochs = num_epochs
        self.batches, self.total = batches, total
        self.loss_sum, self.steps = 0.0, 0
        self.parts: Dict[str, float] = {}
        self._bar = None

    def __iter__(self) -> Iterator:
        if self.logger.use_tqdm and not self.logger.quiet:
            self._bar = tqdm(total=self.total, leave=False, dynamic_ncols=True,
                             desc=f'{self.stage} {self.epoch}/'
                             f'{self.num_epochs}')
        try:
            yield from self.batches
        finally:
            if self._bar is not None:
                self._bar.close()

    def update(self, loss: float, parts: Optional[Dict[str, float]] = None
               ) -> None:
        self.loss_sum += loss
        self.steps += 1
        for key, value in (parts or {}).items():
            self.parts[key] = self.parts.get(key, 0.0) + value
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f'{self.mean_loss:.4f}')

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def mean_parts(self) -> Dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.parts.items()}


def _select_key(val: Dict[str, float]) -> str:
    # Recall@20 unless the catalogue is smaller (see `fit_ks`).
    if 'recall@20' in val:
        return 'recall@20'
    return max((k for k in val if k.startswith('recall@')),
               key=lambda k: int(k[7:]))


def plot_curves(history: List[Dict[str, Any]], path: str) -> Optional[str]:
    r"""Draws the training loss and the validation Recall@20 per stage into
    :obj:`path` (PNG). Returns :obj:`path`, or :obj:`None` when matplotlib
    is not installed or there is nothing to draw."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    stages = list(dict.fromkeys(r['stage'] for r in history))
    if not stages:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage in stages:
        epochs = [r for r in history if r['stage'] == stage and 'loss' in r]
        evals = [r for r in history if r['stage'] == stage and 'val' in r]
        if epochs:
            axes[0].plot([r['epoch'] for r in epochs],
                         [r['loss'] for r in epochs], label=stage)
        if evals:
            metric = _select_key(evals[0]['val'])
            axes[1].plot([r['epoch'] for r in evals],
                         [r['val'][metric] for r in evals], label=stage)
            axes[1].set(title=f'validation {metric}')
    axes[0].set(title='training loss', xlabel='epoch', yscale='log')
    axes[1].set(xlabel='epoch')
    for ax in axes:
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ['ProgressLogger', 'EpochProgress', 'plot_curves']
