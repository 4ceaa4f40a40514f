"""HRSA-TRM where the decoder could bypass its memory (issue 14): long documents, a useful
local context, 80% language modelling.

  python experiments/train.py --config=configs/hrsa_bypass.py --workdir=/tmp/hrsa_bypass
  python experiments/train.py --config=configs/hrsa_bypass.py:tiny --workdir=/tmp/hb_tiny

The same task and system as configs/hrsa_retrieval.py, with the task's bypass options on:
2,048-token documents of Markov text with copy structure (a span of 8 tokens repeats one
8-96 tokens back); the decoder's local context is the document's last 128 tokens (+ the
4-token query), so copying and the bigram statistics predict the text from local context
alone; 80% LM / 20% retrieval examples; LM examples predict the 132 tokens that follow
the document (every position scored: nothing they predict lies in the memory); the
asked-for fact lies inside the decoder's local context in 25% of examples (copying is a
legitimate shortcut there) and anywhere before it otherwise; adversarial distractors (same
ka, other kb) sit inside the local context, next to the query. Memory: 16 -> 64 -> 256
slots (M2: one slot per 8-token chunk, as in the retrieval config); the decoder's
cross-attention addresses slots by content. A no-memory decoder of the same size
(`model.lm_reference`) trains beside the model on the same batches: results.json compares
their LM loss on held-out documents (`loss_lm_heldout`, `loss_lm_heldout_reference`) and
reports EM beyond / inside the local context (`accuracy_beyond*`, `accuracy_inside*`).

Measured 2026-12-02 on the SHARED 2-core Intel Xeon (load average 7-9 from other jobs; this
run got 50% of the CPU): 700 steps at batch 8, 25 min 34 s for the whole command. The issue's
targets are NOT reached: EM beyond the local context 0.035 (zeroed / shuffled / no memory
0.035, chance 0.031), inside 0.059, adversarial 0.039, delta_zero 1.000; held-out LM loss
0.7449 with memory vs 0.7440 for the no-memory reference (ratio 1.0012; uniform 4.56). At 700
steps the model is on the attention plateau the retrieval config left at step ~1200-1800
with 10x more retrieval examples per step; BUILD_NOTES.md, "HRSA-TRM (issue 5)" -> "Bypass
regime (issue 14)", has the curves. Resumed to 1,800 steps (24 min 41 s more): still chance
(EM beyond 0.023, inside 0.016, adversarial 0.035, delta_zero 1.000; LM ratio 1.0024).
A warm-up over the mix (task.retrieval_warmup_steps / retrieval_warmup_fraction, off here)
did not help on 2026-12-03: retrieval-only batches for 2,640 steps (21,000 retrieval
examples, `--config.task.retrieval_warmup_steps=100000`) left EM beyond at 0.051 (zeroed the
same, chance 0.031), delta_zero 1.000, the supervised attention at ln 11 (BUILD_NOTES.md,
"Curriculum over the retrieval mix"). A length curriculum (task.length_curriculum, off here:
PAD-filled documents of growing length, the slot count fixed) keeps the attention's lock from
128 to 512 tokens at batch 32; with PAD left out of the write loss and the 128-token stage
to step 2,600, 512-token documents (64 M2 slots, 32-token tail, retrieval only) reach EM
beyond 0.996 (zeroed 0.023, shuffled 0.051), inside 0.902, adversarial 0.957 in ~50 min;
continued 1,200 steps with this config's 128-token tail and 80/20 mix (512 tokens): EM beyond
1.000, inside 0.605, LM loss 1.074x the reference's (2026-12-04, BUILD_NOTES.md, "Where the
answer was lost").

The recipe at 2,048 tokens, in two stages (`:lock`: probe C's curriculum 128 -> 512 -> 2,048
active tokens, 32-token tail, retrieval only, batch 32, 3,500 steps; `:mix`: this regime at
batch 32 and lr 2e-3, warm-started from it), then `:mix` again at lr 1e-3:

  python experiments/train.py --config=configs/hrsa_bypass.py:lock --workdir=A
  python experiments/train.py --config=configs/hrsa_bypass.py:mix --workdir=B \
      --config.train.init_from=A
  python experiments/train.py --config=configs/hrsa_bypass.py:mix --workdir=C \
      --config.train.init_from=B --config.train.steps=1800 --config.train.lr=1e-3

On one H200 (2026-12-04; jax 0.11.2; 159 + 106 + 138 s of training, ~13-23 steps/s; ~3-5 s a
step on the 2-core CPU, hours there): after B, EM beyond 0.992 (zeroed 0.020, shuffled 0.031,
chance 0.031), inside 0.762, adversarial 0.883, LM loss 1.174x the reference's; after C, EM
beyond 1.000 (zeroed 0.020, shuffled 0.031), inside 0.828, adversarial 0.930, delta_zero
beyond 165, LM loss 0.7862 vs 0.7501 (1.048x). Inside facts and the LM cost still miss the
issue's 0.9 and 2%, and the issue's 30 CPU minutes are not met. (The LM ratios above were
measured with one gradient clip over both decoders, since made two: they flatter the model.)
"""
import importlib.util
import os

import ml_collections

from memjax.core import config as cfg


def _sibling(name: str):
  """configs/<name>.py as a module (configs/ is not a package; the binaries load by path)."""
  spec = importlib.util.spec_from_file_location(
      f"memjax_config_{name}", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


hrsa_retrieval = _sibling("hrsa_retrieval")   # the model and task defaults this regime varies


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = cfg.variant(arg, ("", "tiny", "lock", "mix"))
  c = ml_collections.ConfigDict()
  c.model = hrsa_retrieval.model_defaults()
  c.model.update(
      slots=(16, 64, 256),   # a config choice; M2 = doc_len / chunk keeps one fact per slot
      ctx=132,               # the decoder's window: the 128-token tail + [QUERY ka kb ANS]
      lm_reference=True,
      remedies="attn_sup",
      write_slots=32,        # write loss on 32 random M2 slots per step (all 256: +30% step)
  )
  # Remedy knobs for a 132-token decoder: the paper's ablation keeps 16 tokens; the bottleneck
  # leaves 8, memory-as-primary 4 (as in the retrieval config).
  c.model.remedy.update(bottleneck_ctx=8, ablate_keep=16, primary_keep=4)
  c.task = hrsa_retrieval.task_defaults()
  c.task.update(
      doc_len=2048, chunk=8, tail=128, retrieval_fraction=0.2,
      retrieval_warmup_steps=0, retrieval_warmup_fraction=1.0,   # mix warm-up: off
      length_curriculum=(),   # ((from_step, active tokens), ...): PAD-filled prefix; off
      inside_fraction=0.25, adversarial_in_tail=True, lm_after_doc=True,
      copy_p=0.02, copy_len=8, copy_max=96,
      curriculum_steps=(100, 800), easy_distractors=2, target_distractors=6,
      hard_distractors=10,
  )
  c.train = cfg.train_defaults()
  c.train.update(steps=700, batch_size=8, lr=5e-3, warmup_steps=50, log_every=20,
                 steps_per_call=10, checkpoint_every=100, eval_batches=4, eval_batch_size=64)
  if arg == "lock":  # the recipe's first stage: lock the read on retrieval-only batches
    c.model.update(ctx=36, write_slots=0)
    c.task.update(tail=32, copy_max=24, retrieval_warmup_steps=100_000,
                  length_curriculum=((0, 128), (1977, 512), (2590, 2048)))
    c.train.update(steps=3500, batch_size=32, checkpoint_every=200)
  if arg == "mix":  # the second: this regime, warm-started (train.init_from) from `lock`
    c.model.update(write_slots=0)
    c.train.update(steps=900, batch_size=32, lr=2e-3, checkpoint_every=200)
  if arg == "tiny":  # tests: compiles and runs in seconds
    c.model.update(dim=32, heads=2, slots=(2, 4, 16), denoise_steps=2, dec_layers=1, ctx=36,
                   write_slots=4)
    c.model.remedy.update(ablate_keep=8)
    c.task.update(doc_len=128, chunk=8, tail=32, copy_max=24, curriculum_steps=(10, 1000),
                  target_distractors=3, hard_distractors=4)
    c.train.update(steps=20, batch_size=8, warmup_steps=2, log_every=10, steps_per_call=5,
                   checkpoint_every=10, eval_batches=2, eval_batch_size=16, tensorboard=False)
  return c
