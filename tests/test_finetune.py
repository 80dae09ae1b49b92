"""Classification fine-tuning: reader and its errors, metrics and class weights by hand, the classifier
(pooling, padding, parameter tree, sharding), best-checkpoint keeping and exact resume (end to end on
Shakespeare: tests/test_finetune_shakespeare.py)."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, finetune_config, tiny_config, write_csv, write_pydoc_corpus
from lmjax import finetune, sharding, train
from lmjax import state as state_lib
from lmjax.data import labelled
from lmjax.models import classifier
from lmjax.models.transformer import ModelConfig, Transformer


# --- reading labelled data -----------------------------------------------------------------------------------


def test_csv_and_jsonl_read_alike(tmp_path):
  rows = [('A line,\nwith a quoted newline', 'pos'), ('Another one', 'neg'), ('Third', 'pos')]
  csv_path = write_csv(tmp_path / 'd.csv', rows)
  jsonl_path = tmp_path / 'd.jsonl'
  jsonl_path.write_text(''.join(json.dumps({'text': t, 'label': l}) + '\n' for t, l in rows), encoding='utf-8')
  from_csv = labelled.read_examples(csv_path)
  assert [(t, l) for t, l, _ in from_csv] == rows
  assert [w for _, _, w in from_csv] == [f'{csv_path}:3', f'{csv_path}:4', f'{csv_path}:5']
  assert [(t, l) for t, l, _ in labelled.read_examples(str(jsonl_path))] == rows


def test_class_ids_sorted_numerically_or_as_strings(tmp_path):
  jsonl = tmp_path / 'd.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': f'x{i}', 'label': i}) + '\n' for i in (10, 2, 1, 2)),
                   encoding='utf-8')
  assert labelled.class_names(labelled.read_examples(str(jsonl)), 'd') == ['1', '2', '10']
  assert labelled.class_names([('a', 'b', ''), ('c', 'a', ''), ('d', 'B', '')], 'd') == ['B', 'a', 'b']


def test_split_is_seeded_stratified_and_keeps_order():
  examples = [(f't{i}', 'rare' if i % 10 == 0 else 'common', f'f:{i}') for i in range(100)]
  train_, val, test = labelled.split_examples(examples, 0.2, 0.1, seed=3)
  assert (train_, val, test) == labelled.split_examples(examples, 0.2, 0.1, seed=3)
  assert (train_, val, test) != labelled.split_examples(examples, 0.2, 0.1, seed=4)
  assert sorted(train_ + val + test) == sorted(examples)
  for split, want in ((val, {'rare': 2, 'common': 18}), (test, {'rare': 1, 'common': 9})):
    assert {lab: sum(l == lab for _, l, _ in split) for lab in want} == want
    assert split == sorted(split, key=lambda e: int(e[0][1:]))


def test_batches_are_a_function_of_seed_and_step():
  data = {'labels': np.arange(10, dtype=np.int32), 'tokens': np.arange(10)[:, None].repeat(3, 1)}
  epoch = np.concatenate([labelled.train_batch(data, i, 5, seed=1)['labels'] for i in range(2)])
  assert sorted(epoch) == list(range(10))  # each example once per epoch
  assert list(labelled.train_batch(data, 7, 4, seed=1)['labels']) == list(
      labelled.train_batch(data, 7, 4, seed=1)['labels'])  # no hidden state
  halves = [labelled.train_batch(data, 3, 4, 1, slice(i * 2, i * 2 + 2))['labels'] for i in range(2)]
  assert list(np.concatenate(halves)) == list(labelled.train_batch(data, 3, 4, 1)['labels'])
  batches = labelled.eval_batches({k: v for k, v in data.items()} | {'weights': np.ones(10)}, 4)
  assert [len(b['labels']) for b in batches] == [4, 4, 4] and batches[-1]['weights'].tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize('case', ['missing file', 'missing column', 'one class', 'unseen label', 'empty text',
                                  'bad json', 'bad weights'])
def test_bad_input_is_one_line_naming_file_and_fix(tmp_path, case):
  good = write_csv(tmp_path / 'train.csv', [('good text', 'a'), ('more text', 'b'), ('and more', 'a')])
  path, kwargs = good, {}
  if case == 'missing file':
    path = str(tmp_path / 'nope.csv')
    want = f'finetune.data={path} not found; set --config.finetune.data to a .csv or .jsonl file'
  elif case == 'missing column':
    path = write_csv(tmp_path / 'x.csv', [('t', 'a')], header=('text', 'sentiment'))
    want = f"{path} has no column 'label' (columns: text, sentiment); set --config.finetune.label_field"
  elif case == 'one class':
    path = write_csv(tmp_path / 'x.csv', [('t', 'a'), ('u', 'a')])
    want = f'the training split of {path} has 1 class (a); classification needs examples of at least 2 labels'
  elif case == 'unseen label':
    val = write_csv(tmp_path / 'val.csv', [('t', 'a'), ('u', 'c')])
    kwargs, want = {'validation': val}, (f"{val}:3 has label 'c', which the training split lacks (a, b); fix that "
                                        'label or add training examples of it')
  elif case == 'empty text':
    path = write_csv(tmp_path / 'x.csv', [('t', 'a'), ('  ', 'b')])
    want = f"{path}:3: the 'text' text is empty; fill it in or remove that line"
  elif case == 'bad json':
    path = tmp_path / 'x.jsonl'
    path.write_text('{"text": "t", "label": 1}\n{"text": "u", "label": 1.5}\n', encoding='utf-8')
    path, want = str(path), f"{path}:2 has no string or integer field 'label'; set --config.finetune.label_field"
  else:
    with pytest.raises(ValueError) as e:
      labelled.class_weights('1,2,3', np.array([0, 1]), ['a', 'b'])
    assert str(e.value) == ("finetune.class_weights='1,2,3': use 'none', 'balanced' or 2 non-negative numbers "
                            'separated by commas, one per class in this order: a, b')
    return
  with pytest.raises(ValueError) as e:
    labelled.load_splits(path, validation_fraction=0.0, test_fraction=0.0, seed=0, **kwargs)
  assert str(e.value) == want


# --- metrics and loss by hand --------------------------------------------------------------------------------


def test_metrics_from_a_confusion_matrix_by_hand():
  # rows: true class, columns: predicted; class 'c' is never predicted right or wrong by anyone but itself
  confusion = np.array([[3, 1, 0], [1, 2, 1], [0, 0, 2]])
  labels, predicted = zip(*[(t, p) for t in range(3) for p in range(3) for _ in range(confusion[t, p])])
  logits_BC = jax.nn.one_hot(np.array(predicted + (0, 0)), 3) * 5.0  # two padding rows, weight 0
  weights_B = np.array([1.0] * 10 + [0.0, 0.0], np.float32)
  labels_B = np.array(labels + (1, 2), np.int32)
  sums = [jax.jit(functools.partial(finetune.eval_step, apply_fn=lambda _, *a, **k: logits_BC[s],
                                    class_weights_C=np.ones(3)))({}, {'labels': labels_B[s], 'weights': weights_B[s],
                                                                      'tokens': None, 'positions': None,
                                                                      'segment_ids': None})
          for s in (slice(0, 7), slice(7, 12))]  # summed over two batches, as evaluation does
  out = finetune.summarize(sum(x['loss'] for x in sums), sum(x['confusion'] for x in sums), ['a', 'b', 'c'])
  np.testing.assert_array_equal(sum(x['confusion'] for x in sums), confusion)
  precision, recall = [3 / 4, 2 / 3, 2 / 3], [3 / 4, 2 / 4, 2 / 2]
  f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
  assert out['accuracy'] == pytest.approx(7 / 10)
  assert out['macro_f1'] == pytest.approx(np.mean(f1)) == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
  for name, p, r in zip('abc', precision, recall):
    assert (out[f'precision/{name}'], out[f'recall/{name}']) == (pytest.approx(p), pytest.approx(r))
  assert out['examples'] == 10
  never = finetune.summarize(np.array([1.0, 2.0]), np.array([[2, 0], [1, 0]]), ['x', 'y'])
  assert never['precision/y'] == never['recall/y'] == 0.0 and never['macro_f1'] == pytest.approx(0.4)
  absent = finetune.summarize(np.array([1.0, 2.0]), np.array([[2, 0, 0], [1, 0, 0], [0, 0, 0]]), ['x', 'y', 'z'])
  assert absent['macro_f1'] == pytest.approx(0.4)  # 'z' neither present nor predicted: not averaged


def test_class_weights_change_the_loss_as_by_hand():
  logits_BC = np.array([[2.0, 0.0], [0.5, 1.5], [1.0, -1.0], [0.0, 0.3]], np.float32)
  labels_B = np.array([0, 1, 1, 0], np.int32)
  nll_B = -np.log(np.exp(logits_BC) / np.exp(logits_BC).sum(1, keepdims=True))[np.arange(4), labels_B]
  for spec, weights_C in (('none', [1.0, 1.0]), ('balanced', [1.0, 1.0]), ('1,3', [1.0, 3.0])):
    got = labelled.class_weights(spec, labels_B, ['a', 'b'])
    np.testing.assert_allclose(got, weights_C)
    w_B = np.asarray(weights_C)[labels_B]
    loss, _ = finetune.loss_fn(lambda *a, **k: logits_BC, {}, {'tokens': None, 'positions': None,
                                                             'segment_ids': None, 'labels': labels_B,
                                                             'weights': np.ones(4, np.float32)}, None,
                               train=False, class_weights_C=got)
    assert float(loss) == pytest.approx((w_B * nll_B).sum() / w_B.sum(), rel=1e-6)
  assert (w_B * nll_B).sum() / w_B.sum() != pytest.approx(nll_B.mean())  # the weighting does change it
  np.testing.assert_allclose(labelled.class_weights('balanced', np.array([0, 0, 0, 1]), ['a', 'b']), [2 / 3, 2])


def test_better_checkpoint_by_metric():
  assert finetune.is_better('accuracy', 0.8, 0.7) and not finetune.is_better('accuracy', 0.7, 0.7)
  assert finetune.is_better('macro_f1', 0.5, None) and not finetune.is_better('macro_f1', 0.4, 0.5)
  assert finetune.is_better('loss', 0.3, 0.4) and not finetune.is_better('loss', 0.5, 0.4)


# --- the classifier ------------------------------------------------------------------------------------------


def _cfg(causal, **kw):
  return ModelConfig(vocab_size=64, num_layers=1, embed_dim=32, num_heads=4, mlp_dim=64, max_len=32, causal=causal,
                     **kw)


@pytest.mark.parametrize('causal,pooling', [(False, 'auto'), (True, 'auto'), (True, 'mean')],
                         ids=['encoder-first', 'decoder-last', 'decoder-mean'])
def test_pooling_padding_and_parameter_tree(causal, pooling):
  """Encoder: the first token; decoder: the last non-padding one (or the mean of them); what padding holds
  changes nothing. The Transformer's parameters are a pretraining model's, less the LM head, under
  params['transformer']."""
  cfg = _cfg(causal)
  model = classifier.Classifier(cfg, num_classes=3, pooling=pooling)
  tokens_BL = np.array([[2, 10, 11, 12, 3, 0, 0, 0], [2, 20, 21, 3, 0, 0, 0, 0], [2, 10, 11, 12, 3, 0, 0, 0]],
                       np.int32)
  segment_ids_BL = (tokens_BL != 0).astype(np.int32)
  positions_BL = np.arange(8)[None] * segment_ids_BL
  tokens_BL[2, 5:] = [30, 31, 32]  # row 2 is row 0 with other tokens in its padding (segment 0)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens_BL)['params'])
  logits_BC = jax.jit(model.apply)({'params': params}, tokens_BL, positions_BL, segment_ids_BL)
  assert logits_BC.shape == (3, 3) and logits_BC.dtype == jnp.float32
  np.testing.assert_allclose(logits_BC[2], logits_BC[0], rtol=1e-5, atol=1e-6)
  hidden_BLD = jax.jit(Transformer(cfg).apply, static_argnames='hidden_only')(
      {'params': params['transformer']}, tokens_BL, positions_BL, segment_ids_BL, hidden_only=True)
  lengths = [5, 4, 5]
  pooled_BD = {'auto': hidden_BLD[np.arange(3), [n - 1 for n in lengths]] if causal else hidden_BLD[:, 0],
               'mean': np.stack([hidden_BLD[i, :n].mean(0) for i, n in enumerate(lengths)])}[pooling]
  np.testing.assert_allclose(logits_BC, pooled_BD @ params['kernel'] + params['bias'], rtol=1e-5, atol=1e-5)
  lm = Transformer(_cfg(causal, mlm_head=not causal, tie_embeddings=False))  # every kind of LM head
  lm_params = nn.meta.unbox(jax.eval_shape(lm.init, jax.random.key(1), tokens_BL)['params'])
  assert set(lm_params) - set(params['transformer']) == {'lm_head'} | (set() if causal else {'mlm_head',
                                                                                               'output_bias'})
  shapes = lambda t: jax.tree.map(lambda x: x.shape, t)
  assert shapes(classifier.transformer_params(lm_params)) == shapes(params['transformer'])
  assert set(params) == {'transformer', 'kernel', 'bias'}


def test_pooling_names():
  assert [classifier.resolve_pooling('auto', c) for c in (False, True)] == ['first', 'last']
  with pytest.raises(ValueError, match=r"^finetune.pooling='cls': use one of auto, first, last, mean$"):
    classifier.resolve_pooling('cls', False)
  with pytest.raises(ValueError, match="^finetune.pooling='first' on a causal decoder reads bos"):
    classifier.resolve_pooling('first', True)


def test_head_shards_like_the_lm():
  """Under the LM's rules: the head's kernel splits its embed dim over fsdp like every weight, classes stay
  whole; the Transformer's parameters keep the LM's PartitionSpecs."""
  cfg = _cfg(True)
  tx = train.optim.make_optimizer(schedule_steps=10, learning_rate=1e-3, warmup_steps=1, min_lr_ratio=0.1,
                                  b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0,
                                  decay_embeddings=False)[0]
  example = jnp.zeros((1, 8), jnp.int32)
  for mesh_shape, kernel_spec in (((1, 8, 1), ('fsdp', None)), ((4, 1, 2), (None, None))):
    mesh = sharding.make_mesh(*mesh_shape)
    _, shardings = state_lib.abstract_state(classifier.Classifier(cfg, 5), tx, example, mesh)
    _, lm_shardings = state_lib.abstract_state(Transformer(cfg), tx, example, mesh)
    assert tuple(shardings.params['kernel'].spec) == kernel_spec and tuple(shardings.params['bias'].spec) in (
        (), (None,))
    specs = lambda t: jax.tree.map(lambda s: s.spec, t)
    assert specs(shardings.params['transformer']) == specs(lm_shardings.params)


# --- runs ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A 1-layer decoder trained for a few steps on Python's docs: a tokenizer, shapes and weights."""
  root = tmp_path_factory.mktemp('ft_pretrained')
  corpus = write_pydoc_corpus(root, parts=2, chars=30_000)
  workdir = str(root / 'run')
  train.train_and_evaluate(tiny_config(corpus, **{'train.max_steps': 4, 'train.eval_every': 4,
                                                  'checkpoint.every': 4}), workdir)
  return workdir


@pytest.fixture(scope='module')
def docs_csv(tmp_path_factory):
  """Real text labelled by source: paragraphs of Python's docs on statements vs on other topics."""
  import pydoc_data.topics as topics  # pylint: disable=g-import-not-at-top
  rows = []
  for name in sorted(topics.topics)[:80]:
    for para in topics.topics[name].split('\n\n')[:4]:
      if len(para.split()) >= 5:
        rows.append((para[:300], 'statement' if name in ('assert', 'break', 'continue', 'del', 'for', 'global',
                                                          'if', 'import', 'pass', 'raise', 'return', 'try',
                                                          'while', 'with', 'yield') else 'other'))
  return write_csv(tmp_path_factory.mktemp('ft_docs') / 'docs.csv', rows)


_SCRIPT = {2: 0.5, 4: 0.8, 6: 0.6, 8: 0.8}  # validation accuracy by step: the best is step 4 (ties keep the first)


@pytest.fixture
def scripted_validation(monkeypatch):
  """Validation accuracy per step from _SCRIPT (the rest of the metrics, and the test split, are real)."""
  keep, evaluate = finetune._Run._evaluate_and_keep, finetune.evaluate  # pylint: disable=protected-access

  def scripted(self, step, val_batches):
    with monkeypatch.context() as m:
      m.setattr(finetune, 'evaluate', lambda *a: {**evaluate(*a), 'accuracy': _SCRIPT[step]})
      return keep(self, step, val_batches)
  monkeypatch.setattr(finetune._Run, '_evaluate_and_keep', scripted)  # pylint: disable=protected-access


def _read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [{k: v for k, v in json.loads(line).items() if 'per_sec' not in k} for line in f]


def _saved_params(directory, step):
  """The parameters orbax saved at ``directory/step`` (a regular or a best checkpoint), as host arrays."""
  with ocp.StandardCheckpointer() as ckpt:
    return jax.device_get(ckpt.restore(os.path.join(directory, str(step), 'state'))['params'])


def test_best_checkpoint_is_the_best_validation_step_and_resume_is_exact(pretrained, docs_csv, tmp_path,
                                                                          scripted_validation):
  full = str(tmp_path / 'full')
  result = finetune.train_and_evaluate(finetune_config(pretrained, docs_csv), full)
  best = json.loads(_read(os.path.join(full, 'best.json')))
  assert (best['step'], best['metric'], best['value']) == (4, 'accuracy', 0.8)
  assert os.listdir(os.path.join(full, 'best')) == ['4'] and result['best_step'] == 4
  test = json.loads(_read(os.path.join(full, 'test_metrics.json')))
  assert test['step'] == 4 and 0 <= test['test']['accuracy'] <= 1 and test['test']['examples'] > 0
  # DIR/best holds the parameters of step 4: the regular checkpoint of that step has the same.
  jax.tree.map(np.testing.assert_array_equal, _saved_params(os.path.join(full, 'best'), 4),
               _saved_params(os.path.join(full, 'checkpoints'), 4))
  assert json.loads(_read(os.path.join(full, 'labels.json')))['labels'] == ['other', 'statement']

  # Stopped at step 3 (between evaluations and checkpoints) and resumed: the same records, best checkpoint
  # and test metrics (batch i is a function of (seed, i); dropout is fold_in(rng, step)).
  resumed = str(tmp_path / 'resumed')
  assert finetune.train_and_evaluate(finetune_config(pretrained, docs_csv, **{'train.stop_at': 3}), resumed) == {}
  assert finetune.train_and_evaluate(finetune_config(pretrained, docs_csv), resumed) == result
  assert _records(resumed) == _records(full)
  for name in ('best.json', 'test_metrics.json'):
    assert _read(os.path.join(resumed, name)) == _read(os.path.join(full, name))

  # A fine-tuned workdir, or a directory that is no lmjax workdir, is not a starting point.
  with pytest.raises(ValueError, match=r"holds no pretrained lmjax model \(objective 'classify'\); point it at a "):
    finetune.train_and_evaluate(finetune_config(full, docs_csv), str(tmp_path / 'again'))
  with pytest.raises(ValueError) as e:
    finetune.train_and_evaluate(finetune_config(str(tmp_path), docs_csv), str(tmp_path / 'again'))
  assert str(e.value) == (f'train.init_from={tmp_path} is not an lmjax workdir (it needs config.json and a '
                          'tokenizer); point it at the --workdir of a python -m lmjax.main (or lmjax.convert) run')


def test_cli_dispatches_and_fails_in_one_line(tmp_path, docs_csv):
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'lmjax.main', '--config=configs/finetune.py',
                         f'--workdir={tmp_path / "run"}', f'--config.finetune.data={docs_csv}'], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and not os.path.exists(tmp_path / 'run')
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: train.init_from is empty; set it to the --workdir of an lmjax pretraining run (its tokenizer and '
      'model shapes are used; add --config.finetune.random_init=true to skip its weights)')
