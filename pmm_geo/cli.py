r"""The :obj:`pmm-geo` command line (also :obj:`python -m pmm_geo`).

.. code-block:: bash

    pmm-geo train DATA_DIR --out RUN_DIR
        [--model promptmm|lightgcn|lattice|freedom] [--teacher promptmm|lattice]
        [--seed N] [--epochs N] [--config FILE] [--resume] [--quiet]
        [--threads N]
    pmm-geo evaluate RUN_DIR [--json]
    pmm-geo recommend RUN_DIR --users 0 1 2 [-k 20]

Bad input gives a one-line error on stderr and a non-zero exit status.
"""
import argparse
import json
import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Sequence

PROG = 'pmm-geo'
#: Exit status of a usage error (argparse's) and of any other error.
USAGE_ERROR, ERROR, INTERRUPTED = 2, 1, 130


class CommandError(Exception):
    r"""An error reported to the user as one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # One line, no usage dump.
        raise CommandError(f'{self.prog}: error: {message} (see {self.prog} '
                           f'--help)')


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer '{text}'")
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer '{text}'")


def build_parser() -> argparse.ArgumentParser:
    from pmm_geo.train import MODELS
    from pmm_geo.train.config import TEACHERS
    models = ', '.join(f'{name} ({spec.description})'
                       for name, spec in MODELS.items())

    parser = _Parser(prog=PROG, description='PromptMM multimodal '
                     'recommendation by prompt-tuned distillation, on '
                     'PyTorch Geometric.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND',
                                parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        'train', help='train a model on a dataset',
        description='Train on DATA_DIR (LATTICE/PromptMM format: '
        'train.json, val.json, test.json, <modality>_feat.npy) and write '
        'config.json, metrics.json, log.jsonl, checkpoints and curves.png '
        'into RUN_DIR. Model selection uses the validation split only; the '
        'test split is evaluated once, at the selected epoch.')
    train.add_argument('data_dir', metavar='DATA_DIR')
    train.add_argument('--out', required=True, metavar='RUN_DIR',
                       help='run directory (created)')
    train.add_argument('--model', choices=tuple(MODELS), default=None,
                       help=models)
    train.add_argument('--teacher', choices=TEACHERS, default=None,
                       help='the stage-1 teacher of promptmm: promptmm '
                       '(MultimodalTeacher, default) or lattice (LATTICE '
                       'with the prompt on its projectors)')
    train.add_argument('--seed', type=_int, default=None, metavar='N')
    train.add_argument('--epochs', type=_positive_int, default=None,
                       metavar='N', help='maximum epochs per stage')
    train.add_argument('--config', metavar='FILE', default=None,
                       help='JSON file of TrainConfig keys (the command '
                       'line options override it)')
    train.add_argument('--resume', action='store_true',
                       help='continue the interrupted run in RUN_DIR')
    train.add_argument('--quiet', action='store_true',
                       help='no progress output')
    train.add_argument('--threads', type=_positive_int, default=None,
                       metavar='N', help='torch threads of each process '
                       '(default: OMP_NUM_THREADS, else the cores this '
                       'process may use divided among the processes)')

    evaluate = sub.add_parser('evaluate', help='print the metrics of a run',
                              description='Print the validation and test '
                              'metrics of a finished run.')
    evaluate.add_argument('run_dir', metavar='RUN_DIR')
    evaluate.add_argument('--json', action='store_true',
                          help='print metrics.json as it is')

    recommend = sub.add_parser(
        'recommend', help='top-k unseen items for some users',
        description='Top-k items each user has not interacted with in '
        'training, from the saved served model alone (the student for '
        'promptmm): no data directory, features or teacher are read.')
    recommend.add_argument('run_dir', metavar='RUN_DIR')
    recommend.add_argument('--users', type=_int, nargs='+', required=True,
                           metavar='USER')
    recommend.add_argument('-k', type=_int, default=20,
                           help='items per user (default: 20)')
    return parser


# ----------------------------------------------------------------------
# Commands

def _train(args) -> int:
    from pmm_geo.data.readers import read_promptmm
    from pmm_geo.train import RunDir, Trainer, TrainConfig, set_threads

    if not os.path.isdir(args.data_dir):
        raise CommandError(f'DATA_DIR not found: {args.data_dir}')
    overrides = {key: getattr(args, key) for key in ('model', 'teacher',
                                                     'seed', 'epochs')
                 if getattr(args, key) is not None}
    if args.resume:
        run = RunDir(args.out)
        if not os.path.isfile(run.file(RunDir.CONFIG)):
            raise CommandError(f'nothing to resume in {run.path} (no '
                               f'{RunDir.CONFIG})')
        config = run.read_config()
        given = (TrainConfig.from_json(args.config).to_dict()
                 if args.config else {})
        given.update(overrides)
        saved = config.to_dict()
        differ = [k for k, v in given.items() if v != saved[k]]
        if differ:
            raise CommandError(
                f'--resume continues the run with its own config.json, '
                f'but the given {", ".join(differ)} '
                f'{"differs" if len(differ) == 1 else "differ"} from it '
                f'(drop those options, or start a new run with another '
                f'--out)')
    else:
        config = (TrainConfig.from_json(args.config) if args.config
                  else TrainConfig())
        if overrides:
            config = config.replace(**overrides)
    set_threads(args.threads)
    data = read_promptmm(args.data_dir)
    trainer = Trainer(data, config, run_dir=args.out, quiet=args.quiet)
    results = trainer.fit(resume=args.resume)
    if not args.quiet:
        print(format_metrics(results))
        print(f'Run saved in {args.out}')
    return 0


def _evaluate(args) -> int:
    from pmm_geo.train import RunDir

    run = RunDir(args.run_dir)
    if not run.exists():
        raise CommandError(f'RUN_DIR not found: {args.run_dir}')
    metrics = run.read_metrics()
    print(json.dumps(metrics, indent=2) if args.json else
          format_metrics(metrics))
    return 0


def _recommend(args) -> int:
    import torch

    from pmm_geo.train import load_recommender

    if args.k < 1:
        raise CommandError(f'-k must be >= 1, got {args.k}')
    if not os.path.isdir(args.run_dir):
        raise CommandError(f'RUN_DIR not found: {args.run_dir}')
    recommender = load_recommender(args.run_dir)
    users = torch.tensor(args.users, dtype=torch.long)
    top = recommender.recommend(users, args.k)
    for user, items in zip(args.users, top.tolist()):
        print(f'user {user}: ' + ' '.join(str(i) for i in items if i >= 0))
    return 0


def format_metrics(metrics: Dict[str, Dict[str, Any]],
                   keys: Sequence[str] = ('recall', 'ndcg')) -> str:
    r"""A plain-text table of a :obj:`metrics.json` mapping."""
    first = next(iter(metrics.values()), None)
    if first is None:
        return '(no metrics)'
    cols = [c for key in keys for c in first['test'] if c.startswith(key +
                                                                     '@')]
    header = ['model', 'split'] + cols + ['epochs', 'seconds', 'params']
    rows: List[List[str]] = []
    for model, entry in metrics.items():
        for split in ('val', 'test'):
            extra = ([str(entry.get('epochs', '')),
                      f"{entry.get('train_seconds', 0):.1f}",
                      f"{entry.get('params', 0):,}"]
                     if split == 'test' else ['', '', ''])
            rows.append([model, split] +
                        [f'{entry[split].get(c, float("nan")):.4f}'
                         for c in cols] + extra)
    widths = [max(len(r[i]) for r in rows + [header])
              for i in range(len(header))]
    lines = ['  '.join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ['  '.join(v.ljust(w) for v, w in zip(row, widths))
              for row in rows]
    return '\n'.join(lines)


COMMANDS = {'train': _train, 'evaluate': _evaluate, 'recommend': _recommend}


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return text or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None,
                  line=None) -> None:
    print(f'{PROG}: warning: {message}', file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""Runs the command line; returns the exit status."""
    with warnings.catch_warnings():  # Restored on return (in-process use).
        warnings.filterwarnings('ignore', message='Sparse CSR tensor '
                                'support')
        warnings.showwarning = _show_warning  # One line, no source echo.
        return _main(argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    from pmm_geo.data import DataFormatError
    from pmm_geo.train import CheckpointError, ConfigError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CommandError as error:
        print(_one_line(error), file=sys.stderr)
        return USAGE_ERROR
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted' + (
            '; continue with --resume' if args.command == 'train' else ''),
            file=sys.stderr)
        return INTERRUPTED
    except (CommandError, ConfigError, CheckpointError, DataFormatError,
            ValueError, OSError, FloatingPointError) as error:
        message = _one_line(error)
        if not message.startswith(PROG):
            message = f'{PROG} {args.command}: error: {message}'
        print(message, file=sys.stderr)
        return ERROR


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
