"""Reasoner decoding: generation writes after the prompt; answers parse after <EoT>."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from memjax.hrrm.tasks import ArithmeticScratchpad
from memjax.hrrm import system as hrrm_systems


def test_generate_with_an_oracle_reproduces_the_scratchpad_and_answer():
  task = ArithmeticScratchpad(ArithmeticScratchpad.defaults())
  batch = next(iter(task.batches("eval", 4, 0)))
  gold = jnp.asarray(batch["inputs"])
  v = task.vocab_size

  def run(params, tokens, *, H, segments):
    del params, H
    # An oracle that reads the gold stream (it ignores what was generated so far) and is
    # right only where the tokens so far agree with gold: generation must feed its own output.
    agree = jnp.cumprod((tokens == gold) | (jnp.arange(gold.shape[1]) == 0), axis=1)
    nxt = jnp.concatenate([gold[:, 1:], gold[:, -1:]], 1)
    nxt = jnp.where(agree > 0, nxt, 0)
    return {"logits": jax.nn.one_hot(nxt, v)[None].repeat(segments, 0) * 10.0}

  m = ml_collections.ConfigDict(dict(max_H=1, segments=1))
  out = hrrm_systems.generate(run, m, None, gold, jnp.asarray(batch["prompt_len"]), steps=20)
  ans = hrrm_systems._parse_answer(out, jnp.asarray(batch["prompt_len"]), task.vocab["<EoT>"])
  want = np.asarray(batch["targets"])[np.asarray(batch["answer"]) > 0]
  np.testing.assert_array_equal(ans, want)
  # the prompt is kept, nothing before it is rewritten
  pos = np.arange(gold.shape[1])
  keep = pos[None] < np.asarray(batch["prompt_len"])[:, None]
  np.testing.assert_array_equal(np.asarray(out)[keep], np.asarray(gold)[keep])


def test_parse_answer_without_eot_is_minus_one():
  toks = jnp.array([[5, 6, 7, 8], [5, 9, 3, 8]])
  ans = hrrm_systems._parse_answer(toks, jnp.array([1, 1]), eot_id=9)
  np.testing.assert_array_equal(ans, [-1, 3])
