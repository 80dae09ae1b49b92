"""Sequence classification: fine-tune a pretrained lmjax decoder (clm) or encoder (mlm).

The model shapes and tokenizer come from the pretraining workdir in train.init_from
(its config.json and tokenizer); model.dtype, attention_impl, remat and dropout_rate
are this run's. A decoder classifies from its last token, an encoder from its first
(bos/CLS); finetune.pooling=mean averages them. finetune.* keys: see configs/base.py.
The learning rate suits the small CPU models of the README; for large pretrained
models use a fine-tuning one, e.g. --config.optim.learning_rate=3e-5.

Run: python -m lmjax.main --config=configs/finetune.py --workdir=runs/sentiment \
         --config.train.init_from=runs/default --config.finetune.data=reviews.csv
     (add --config.finetune.validation=val.csv --config.finetune.test=test.csv, or
     let finetune.validation_fraction / test_fraction split finetune.data)
"""

from configs import base


def get_config():
  c = base.get_config()
  c.objective = 'classify'
  c.data.seq_len = 128
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.01
  c.train.batch_size = 32
  c.train.max_steps = 300
  c.train.eval_every = 50
  c.checkpoint.every = 100
  c.checkpoint.keep = 1
  return c
