"""The DCM Diffuser on Gemma 3 270M: a trainable encoder + Diffuser (K slots, T denoise steps)
write the STM; the frozen Generator answers from [A_mode | STM]; held-out synthetic contexts.

  python experiments/dcm_diffuser.py --config=configs/dcm_diffuser.py --workdir=/tmp/dcm_diff
  --config=configs/dcm_diffuser.py:tiny   a random tiny decoder, seconds (tests, notebook)
Measured 2026-12-04 (this config, 24 min 22 s wall on a quiet 2-core CPU; training 1120 s):
answer EM on 64 held-out contexts 0.969 (zeroed / shuffled / no memory 0.0; chance 0.125 for a
reader that knows the attribute, 0.021 for one that does not), oracle (Gemma reading the full
text) 0.891; question EM from [Q_mode | STM] 0.406; 10 rows and 0.32 s per answer vs 51 rows and
0.79 s for the oracle. `diffuser.copy` (the pointer) is what made it: without it 0.234
(2026-12-03, the same objective). BUILD_NOTES.md, "Issue 18, fourth session".
Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "configs_phase1a", os.path.join(os.path.dirname(os.path.abspath(__file__)), "phase1a.py"))
phase1a = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(phase1a)


def get_config(arg: str | None = None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/dcm_diffuser.py takes no argument or 'tiny', got {arg!r}")
  c = phase1a.get_config()
  c.data.num_train = 4096          # synthetic facts (two per context, one asked about)
  c.data.num_test = 64             # held out: no (context, question) pair seen in training
  c.data.max_input_tokens = 64     # the writer reads "{context}\nQuestion: {question}"
  c.diffuser = dict(slots=8, dim=256, heads=4, encoder_layers=2, steps=4, sigma_max=1.0,
                    schedule="cosine", copy=True)
  c.targets.question_weight = 1.0  # the question's CE beside the answer's; 0 trains the answer alone
  c.train.steps = 400
  c.train.batch_size = 8
  c.train.lr = 1e-3
  c.train.warmup_steps = 20
  c.train.weight_decay = 0.0
  c.train.steps_per_call = 10      # steps scanned inside one jitted call
  c.train.log_every = 50
  c.train.eval_batch_size = 16
  # the no-context baseline: the Generator reads the question alone (same worked example first)
  c.baselines = dict(question_only_template=(
      "Question: What pet does Lena own?\nAnswer: dog\n\nQuestion: {question}\nAnswer:"))
  if arg == "tiny":
    c.model = "tiny:qwen2"
    c.data.num_train, c.data.num_test = 64, 8
    c.data.max_context_tokens = 64
    c.diffuser.update(slots=2, dim=32, heads=2, encoder_layers=1, steps=2)
    c.train.update(steps=4, batch_size=4, steps_per_call=2, warmup_steps=1, log_every=2,
                   eval_batch_size=4)
  return c
