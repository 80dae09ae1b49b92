"""Every lmjax config key, declared once with its meaning. Experiments override these.

Run: python -m lmjax.main --config=configs/base.py --workdir=runs/base
"""

from ml_collections import config_dict


def get_config():
  c = config_dict.ConfigDict()
  c.seed = 0                        # model init, dropout and data-order seed
  c.objective = 'clm'               # 'clm': next-token (causal LM, decoder) | 'mlm': masked LM (encoder) |
                                    # 'classify': fine-tune a classifier (configs/finetune.py, section finetune)

  c.data = d = config_dict.ConfigDict()
  d.source = 'python_docs'          # 'python_docs' (built-in, offline) | 'text' | 'jsonl' | 'prepared'
  d.paths = ''                      # text/jsonl: comma-separated files or globs; prepared: the directory
                                    # written by python -m lmjax.data.prepare (its split and tokenizer are used)
  d.text_field = 'text'             # jsonl: field holding the document text
  d.on_bad_file = 'fail'            # a binary or non-UTF-8 file: 'fail' (error naming it) | 'skip' (counted, logged)
  d.max_doc_chars = 4000            # long documents are split at paragraphs into pieces this long
  d.val_fraction = 0.05             # fraction of documents held out for validation
  d.shards = 0                      # disjoint input streams, read by the processes in equal parts;
                                    # 0 = one per process. Fix it to keep the batches when the process count changes
  d.seq_len = 128                   # model context length (tokens per training sequence)
  d.tokenizer_path = ''             # tokenizer to use: a sentencepiece .model or a Hugging Face tokenizer.json;
                                    # '' trains a sentencepiece one into the workdir
  d.vocab_size = 2048               # vocabulary size when training a tokenizer
  d.tokenizer_type = 'bpe'          # 'bpe' | 'unigram' | 'char' (one token per character; vocab_size is
                                    # then an upper bound) when training a tokenizer

  c.model = m = config_dict.ConfigDict()
  m.max_len = 1024                  # longest sequence the model supports (learned positions table size)
  m.num_layers = 2                  # Transformer blocks
  m.embed_dim = 128                 # residual width D
  m.num_heads = 4                   # attention heads H (head_dim = embed_dim // num_heads)
  m.mlp_dim = 512                   # MLP hidden width F
  m.positions = 'rope'              # 'rope' | 'learned'
  m.rope_base = 10_000.0            # rotary base frequency
  m.norm = 'rmsnorm'                # 'rmsnorm' | 'layernorm'
  m.norm_eps = 1e-6                 # norm epsilon
  m.norm_bias = True                # LayerNorm's additive bias (nanoGPT's bias=False drops it; rmsnorm has none)
  m.norm_position = 'pre'           # 'pre': x + f(norm(x)) and a final norm (stabler; lmjax's default) |
                                    # 'post': norm(x + f(x)), no final norm (BERT's block; imported BERT)
  m.embed_norm = False              # norm the summed token/position/type embeddings (BERT: True)
  m.activation = 'gelu'             # 'gelu' (tanh approx.) | 'gelu_exact' | 'swiglu'
  m.use_bias = False                # biases in attention/MLP projections
  m.tie_embeddings = True           # output projection shares the token embedding
  m.dropout_rate = 0.0              # dropout on embeddings and residual branches
  m.init_std = 0.02                 # normal init std (residual projections scaled by 1/sqrt(2*layers))
  m.dtype = 'float32'               # compute dtype: 'float32' on CPU, 'bfloat16' on GPU/TPU
  m.param_dtype = 'float32'         # parameter (and optimizer state) dtype
  m.attention_impl = 'auto'         # 'auto' (JAX picks) | 'xla' | 'cudnn' (GPU, bf16/fp16)
  m.type_vocab_size = 0             # learned segment/type embeddings (BERT: 2); 0 = none
  m.remat = 'none'                  # activation checkpointing: 'none' | 'full' | 'dots' | 'dots_no_batch'
  m.scan_layers = False             # nn.scan over the blocks (compile time flat in depth)

  c.mlm = g = config_dict.ConfigDict()  # masked-LM objective (objective='mlm')
  g.mask_rate = 0.15                # fraction of non-special tokens selected for prediction
  g.mask_token_prob = 0.8           # of the selected: replaced by the mask token ...
  g.random_token_prob = 0.1         # ... by a random token; the rest stay unchanged
  g.whole_word = False              # select whole words (sentencepiece word-start pieces) together

  c.optim = o = config_dict.ConfigDict()
  o.learning_rate = 3e-3            # peak learning rate
  o.warmup_steps = 100              # linear warmup steps
  o.min_lr_ratio = 0.1              # cosine decays to learning_rate * min_lr_ratio at train.max_steps
  o.b1 = 0.9                        # AdamW beta1
  o.b2 = 0.95                       # AdamW beta2
  o.eps = 1e-8                      # AdamW epsilon
  o.weight_decay = 0.1              # decoupled weight decay on matrices (not norms/biases)
  o.decay_embeddings = False        # also decay embedding tables
  o.clip_norm = 1.0                 # global gradient-norm clip (0 disables)
  o.schedule_steps = 0              # length of the warmup+cosine schedule; 0 = train.max_steps. Past it
                                    # the LR stays at its minimum (see README: changing max_steps on resume)

  c.train = t = config_dict.ConfigDict()
  t.batch_size = 32                 # global batch, in sequences
  t.max_steps = 1000                # optimizer steps (also the LR schedule's length unless optim.schedule_steps)
  t.stop_at = 0                     # stop (checkpointed) after this step, schedule unchanged; 0 = max_steps
  t.grad_accum_steps = 1            # micro-batches per step (batch_size must divide by it)
  t.log_every = 10                  # steps between metric records
  t.eval_every = 200                # steps between evaluations (and one at the end)
  t.eval_batches = 0                # validation batches per evaluation; 0 = the whole split
  t.init_from = ''                  # start (not resume) from these weights: an lmjax workdir or a Hugging Face
                                    # GPT-2 or BERT directory (config.json + model.safetensors); model config must match
  t.profile_start = 0               # > 0: write a jax.profiler trace of steps [start, start + profile_steps)
  t.profile_steps = 5               #   into <workdir>/profile (tensorboard --logdir, or Perfetto)
  t.peak_flops = 0.0                # per-device peak FLOP/s for the logged MFU; 0 = the datasheet's (GPU/TPU)
                                    # or, on CPU, an f32 matmul ceiling measured (0.1 s) before training
  t.nonfinite = 'stop'              # a NaN/inf loss or gradient skips that update, then: 'stop' (at the next
                                    # log step, with a message) | 'skip' (go on; counted as nonfinite_steps)

  c.checkpoint = k = config_dict.ConfigDict()
  k.every = 200                     # steps between checkpoints (and one at the end)
  k.keep = 3                        # most recent checkpoints kept
  k.async_save = True               # write checkpoints in the background

  c.mesh = x = config_dict.ConfigDict()
  x.data = -1                       # data-parallel size within a slice (-1: all remaining devices)
  x.fsdp = 1                        # fully-sharded data-parallel size within a slice
  x.tensor = 1                      # tensor-parallel size within a slice
  # Multi-slice TPU (or multi-node GPU): each axis is further split across slices
  # (hosts where devices have no slice_index) over the slower DCN; product = slice count.
  x.dcn_data = 1                    # slices along data (the usual choice: only gradients cross DCN)
  x.dcn_fsdp = 1                    # slices along fsdp
  x.dcn_tensor = 1                  # slices along tensor (rarely wise: per-layer traffic)
  x.cpu_devices = 0                 # CPU only: JAX devices per process, data parallel over the cores (faster
                                    # than one device that splits every op); 0 = one per core, as many as
                                    # divide the micro-batch; 1 = one device. Ignored when XLA_FLAGS sets
                                    # --xla_force_host_platform_device_count
  x.cpu_hugepages = True            # CPU only (Linux, glibc): XLA:CPU's per-step buffers on transparent huge
                                    # pages (lmjax.main restarts itself once with GLIBC_TUNABLES=
                                    # glibc.malloc.hugetlb=1; 1.3x faster steps for configs/default.py)

  # Sequence classification (objective='classify', configs/finetune.py): starts from the pretraining
  # workdir in train.init_from (its tokenizer and model shapes; its weights unless random_init).
  c.finetune = f = config_dict.ConfigDict()
  f.data = ''                       # labelled training examples: .csv/.tsv (header row) or .jsonl
  f.validation = ''                 # validation file; '' = finetune.validation_fraction of finetune.data
  f.test = ''                       # test file; '' = finetune.test_fraction of finetune.data (0: no test)
  f.validation_fraction = 0.1       # share of each label held out for validation (seeded by seed)
  f.test_fraction = 0.1             # share of each label held out for testing
  f.text_field = 'text'             # column / JSON field with the text
  f.label_field = 'label'           # column / JSON field with the label (string or integer; ids in sorted order)
  f.class_weights = 'none'          # loss weight per class: 'none' | 'balanced' (inverse train frequency)
                                    # | comma-separated numbers in class-id order, e.g. '1,3.5'
  f.best_metric = 'accuracy'        # validation metric that picks DIR/best: 'accuracy' | 'macro_f1' | 'loss'
  f.pooling = 'auto'                # hidden states the head reads: 'auto' (encoder: first token, bos/CLS; decoder:
                                    # last non-padding token) | 'first' | 'last' | 'mean' (of the non-padding tokens)
  f.dropout_rate = 0.1              # dropout on the pooled state before the classification head
  f.random_init = False             # True: train.init_from's tokenizer and shapes but fresh weights (baseline)
  return c
