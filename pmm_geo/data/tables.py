r"""Reading raw tables: CSV / TSV (separator sniffed, header required,
optionally gzipped), Parquet (with :obj:`pyarrow`) and RecBole
:obj:`.inter` files (tab-separated, typed headers such as
:obj:`user_id:token`).

Every value comes back as a string (ids are tokens, whatever their type on
disk), with the source line (or row) of each record, so that callers can
name the file, the field and the line of a bad value in a
:class:`~pmm_geo.data.DataFormatError`.
"""
import csv
import gzip
import io
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

from .hetero import DataFormatError

#: Separators tried, in this order of preference on ties, when
#: :obj:`sep='auto'`.
SEPARATORS = ('\t', ',', ';', '|')
_SEP_NAMES = {'tab': '\t', '\\t': '\t', 'comma': ',', 'semicolon': ';',
              'pipe': '|'}
PARQUET_SUFFIXES = ('.parquet', '.pq')


class MissingExtraError(ImportError):
    r"""Raised when an optional dependency is needed; the message names the
    :obj:`pmm_geo` extra that installs it."""
    def __init__(self, what: str, package: str, extra: str):
        super().__init__(f"{what} needs the optional package '{package}': "
                         f"pip install 'pmm_geo[{extra}]'")


def require(module: str, what: str, extra: str, package: str = None):
    r"""Imports :obj:`module` or raises :class:`MissingExtraError` naming the
    extra."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(what, package or module, extra) from None


class Table:
    r"""A table of string values read from :obj:`path`.

    Args:
        path (str): The file it was read from (for error messages).
        header (list of str): The column names, RecBole type suffixes
            removed (:obj:`user_id:token` -> :obj:`user_id`).
        rows (list of list of str): The records.
        line_nos (list of int): The source line (row, for Parquet) of each
            record.
        types (dict): The RecBole type of each typed column
            (e.g. :obj:`{'item_id_list': 'token_seq'}`).
    """
    def __init__(self, path: str, header: List[str], rows: List[List[str]],
                 line_nos: List[int], types: Optional[Dict[str, str]] = None,
                 unit: str = 'line'):
        self.path, self.header, self.rows = path, header, rows
        self.line_nos, self.types, self.unit = line_nos, types or {}, unit

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.path!r}, '
                f'columns={self.header}, rows={len(self)})')

    def has(self, column: str) -> bool:
        return column in self.header

    def index(self, column: str, option: Optional[str] = None) -> int:
        r"""The position of :obj:`column`, or a
        :class:`~pmm_geo.data.DataFormatError` listing the columns."""
        if column not in self.header:
            hint = f' (choose it with {option})' if option else ''
            raise DataFormatError(self.path, column, f"no column '{column}' "
                                  f'in the header {self.header}{hint}')
        return self.header.index(column)

    def column(self, column: str, option: Optional[str] = None,
               allow_empty: bool = False) -> List[str]:
        r"""The values of :obj:`column`; an empty value is an error unless
        :obj:`allow_empty`."""
        i = self.index(column, option)
        values = [row[i] for row in self.rows]
        if not allow_empty:
            bad = next((j for j, v in enumerate(values) if not v.strip()),
                       None)
            if bad is not None:
                raise DataFormatError(self.path, column, f'empty value on '
                                      f'{self.where(bad)}')
        return values

    def where(self, row: int) -> str:
        return f'{self.unit} {self.line_nos[row]}'


def parse_sep(text: str) -> Optional[str]:
    r"""The separator named by :obj:`text` (:obj:`'auto'` gives
    :obj:`None`)."""
    if text == 'auto':
        return None
    sep = _SEP_NAMES.get(text.lower(), text)
    if len(sep) != 1 or sep in '"\r\n':
        raise ValueError(f"--sep must be one character, 'tab' or 'auto', "
                         f'got {text!r}')
    return sep


def read_table(path: str, sep: Optional[str] = None,
               columns: Optional[Sequence[str]] = None) -> Table:
    r"""Reads a CSV / TSV file (gzipped when it ends in :obj:`.gz`) or a
    Parquet file (:obj:`.parquet`, :obj:`.pq`; needs :obj:`pyarrow`).

    Args:
        path (str): The file.
        sep (str, optional): The field separator; :obj:`None` sniffs it from
            the header line (tab, comma, semicolon or pipe, whichever the
            header holds most; a tab wins ties). Tab-separated files are
            read without quoting (as RecBole and MMRec write them); other
            separators honour double quotes.
        columns (list of str, optional): Parquet only: the columns to read.
    """
    path = os.fspath(path)
    if not osp.isfile(path):
        raise DataFormatError(path, 'file', f"missing file '{path}'")
    if path.lower().endswith(PARQUET_SUFFIXES):
        return _read_parquet(path, columns)
    text = _read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise DataFormatError(path, 'header', 'the file is empty (a header '
                              'line naming the columns is required)')
    if sep is None:
        sep = _sniff(path, first)
    stream = io.StringIO(text, newline='')
    reader = (csv.reader(stream, delimiter=sep, quoting=csv.QUOTE_NONE)
              if sep == '\t' else csv.reader(stream, delimiter=sep))
    rows, line_nos, header = [], [], None
    try:
        for fields in reader:
            line_no = reader.line_num
            if not fields or not any(f.strip() for f in fields):
                continue
            if header is None:
                header = fields
                continue
            if len(fields) != len(header):
                kind = 'tab-separated ' if sep == '\t' else f'{sep!r}-' \
                    'separated '
                raise DataFormatError(path, f'line {line_no}', f'{len(fields)}'
                                      f' {kind}fields, but the header has '
                                      f'{len(header)}')
            rows.append(fields)
            line_nos.append(line_no)
    except csv.Error as error:
        raise DataFormatError(path, f'line {reader.line_num}',
                              f'malformed CSV: {error}') from None
    names, types = _parse_header(path, header)
    return Table(path, names, rows, line_nos, types)


def _read_text(path: str) -> str:
    opener = gzip.open if path.lower().endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataFormatError(path, 'file', f'cannot read the file: '
                              f'{error}') from None
    try:
        return raw.decode('utf-8-sig')
    except UnicodeDecodeError as error:
        raise DataFormatError(path, 'file', f'not UTF-8 text: {error}'
                              ) from None


def _sniff(path: str, header: str) -> str:
    counts = [header.count(sep) for sep in SEPARATORS]
    if max(counts) == 0:
        raise DataFormatError(path, 'header', f'cannot tell the separator '
                              f'of the header {header[:80]!r} (no tab, comma, '
                              f'semicolon or pipe; a header naming at least '
                              f'two columns is required, or pass --sep)')
    return SEPARATORS[counts.index(max(counts))]


def _parse_header(path: str, header: List[str]):
    names, types = [], {}
    for field in header:
        name, _, kind = field.strip().partition(':')
        if not name:
            raise DataFormatError(path, 'header', f'an empty column name in '
                                  f'{header}')
        if name in names:
            raise DataFormatError(path, 'header', f"column '{name}' appears "
                                  f'twice in {header}')
        names.append(name)
        if kind:
            types[name] = kind
    return names, types


def _read_parquet(path: str, columns: Optional[Sequence[str]]) -> Table:
    pq = require('pyarrow.parquet', 'reading Parquet', 'parquet', 'pyarrow')
    try:
        schema = pq.read_schema(path)
        wanted = [c for c in columns if c in schema.names] if columns \
            else None
        table = pq.read_table(path, columns=wanted)
    except Exception as error:  # pyarrow raises many types.
        raise DataFormatError(path, 'file', f'cannot read the Parquet file: '
                              f'{type(error).__name__}: '
                              f'{str(error).splitlines()[0] if str(error) else ""}'
                              ) from None
    header = list(table.column_names)
    values = [[_parquet_value(v) for v in table.column(name).to_pylist()]
              for name in header]
    rows = [list(r) for r in zip(*values)] if values else []
    return Table(path, header, rows, list(range(1, len(rows) + 1)),
                 unit='row')


def _parquet_value(value) -> str:
    if value is None:
        return ''
    if hasattr(value, 'timestamp'):  # datetime: seconds since the epoch.
        return repr(value.timestamp())
    return str(value)


__all__ = ['Table', 'read_table', 'parse_sep', 'MissingExtraError',
           'require', 'SEPARATORS']
