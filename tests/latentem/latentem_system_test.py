"""The compressor, the reader injection, the debug switches and the one-line config errors."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import latentem_kv
from memjax.core import loop
from memjax.core import tasks
from memjax.core.config import ConfigError
from memjax.latentem import reader_loading
from memjax.latentem import system as system_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**model):
  c = latentem_kv.get_config("tiny")
  c.model.update(**model)
  return c


@pytest.fixture(scope="module")
def built():
  c = _config(readers=("lora",), aux_losses=("probe",))
  task = tasks.make_task(c.task)
  lt = system_lib.Latentem(c, task)
  params = lt.init(jax.random.key(0))
  # LoRA B non-zero, so the adapted reader differs from the frozen one.
  params["lora_adapters"] = jax.tree.map(lambda x: x + 0.05, params["lora_adapters"])
  batch = next(iter(task.batches("eval", 4, 0)))
  return c, task, lt, params, batch


def _latents(lt, params, removed, segments=None):
  return np.asarray(jax.jit(lambda p, r, s, f: lt.latents(p, "lora", f, r, s))(
      params, removed, segments, lt.frozen))


@pytest.mark.slow   # ~35 s; run by .ci/run's slow line
def test_segment_pool_gives_one_latent_per_statement():
  c = _config(readers=("lora",), aux_losses=("distill", "slots"), segment_pool=True,
              raw_embeddings=True)
  loop.validate(c)
  task = tasks.make_task(c.task)
  lt = system_lib.Latentem(c, task)
  params = lt.init(jax.random.key(0))
  batch = next(iter(task.batches("train", 2, 0)))
  base = _latents(lt, params, batch["removed"], batch["segments"])
  # Statement 3's digit changed: the latents change (the encoder is bidirectional, so the
  # pooling weights of neighbours may move too).
  removed = np.array(batch["removed"])
  pos = batch["digit_pos"][0, 3]
  removed[0, pos] = task.digit_ids[(task.digit_ids.index(removed[0, pos]) + 1) % 10]
  assert np.abs(_latents(lt, params, removed, batch["segments"]) - base)[0, 3].max() > 1e-4
  # The pooled values: latent k mixes only statement k's token embeddings. Another embedding
  # at statement 3's digit (the encoder's input unchanged) moves latent 3 of that example only.
  from flax import nnx
  comp = nnx.merge(lt.g_comp, params["lora_compressor"])
  feats = lt._features(lt.frozen, jnp.asarray(batch["removed"]))
  toks = lt.reader.embed(lt.frozen, jnp.asarray(batch["removed"]))
  seg = jnp.asarray(batch["segments"])
  out = np.asarray(comp(feats, segments_BxR=seg, tokens_BxRxD=toks))
  moved = np.asarray(comp(feats, segments_BxR=seg, tokens_BxRxD=toks.at[0, pos].add(1.0)))
  changed = np.abs(moved - out).max(-1)
  assert changed[0, 3] > 1e-4
  changed[0, 3] = 0
  assert changed.max() == 0
  # The segments steer the pooling: without them (every token -1) every latent pools all.
  other = np.full_like(np.array(batch["segments"]), -1)
  assert np.abs(_latents(lt, params, batch["removed"], other) - base).max() > 1e-4
  # The distillation and slot losses are finite, with a gradient reaching the compressor.
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  met = jax.jit(lambda p, b, f: lt.branch_loss(p, b, f, "lora", jax.random.key(1))[1])(
      params, jb, lt.frozen)
  for k in ("lora/loss_distill", "lora/loss_slots", "lora/accuracy_slots"):
    assert np.isfinite(float(met[k])), k
  g = jax.jit(jax.grad(lambda p, b, f: lt.branch_loss(p, b, f, "lora", jax.random.key(1))[0]))(
      params, jb, lt.frozen)
  assert float(optax_norm(g["lora_compressor"])) > 0
  with pytest.raises(ConfigError, match="one latent per statement"):
    loop.validate(_config(segment_pool=True, num_latents=4))


def optax_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_latents_depend_on_the_removed_statements_not_the_question(built):
  c, task, lt, params, batch = built
  base = _latents(lt, params, batch["removed"], batch["segments"])
  assert base.shape == (4, c.model.num_latents, lt.reader.dim)
  # One statement's digit changed -> the latents change (for that example only).
  removed = np.array(batch["removed"])
  digit_pos = [i for i, t in enumerate(removed[0]) if t in task.digit_ids]
  t = removed[0, digit_pos[0]]
  removed[0, digit_pos[0]] = task.digit_ids[(task.digit_ids.index(t) + 1) % 10]
  changed = _latents(lt, params, removed, batch["segments"])
  assert np.abs(changed[0] - base[0]).max() > 1e-4
  np.testing.assert_array_equal(changed[1:], base[1:])
  # The compressor never sees the question: another question, the same memory.
  other = dict(batch, kept=np.roll(batch["kept"], 1, axis=0), answer=np.roll(batch["answer"], 1))
  mem = jax.jit(lambda p, b, f: lt.ingest(p, b, frozen=f, branch="lora"))(params, other, lt.frozen)
  np.testing.assert_array_equal(np.asarray(mem.latents_BxKxD), base)


@pytest.mark.parametrize("branch", ["lora", "frozen"])
def test_injected_embeddings_of_the_asked_statement_give_the_text_answer(built, branch):
  c, task, lt, params, batch = built
  # The asked statement's own token embeddings as the memory == the summary read as text.
  stmts = [task.statement(int(k), int(d)) for k, d in zip(batch["asked_key"], batch["answer"])]
  n = len(stmts[0])
  assert all(len(s) == n for s in stmts)
  ids = jnp.asarray(stmts, jnp.int32)
  kept = jnp.asarray(batch["summary"])[:, n:]

  @jax.jit
  def both(p, f):
    lat = lt.reader.embed(f, ids)
    injected = lt.read_memory(p, branch, f, kept, lat)
    text = lt.read_text(p, branch, f, jnp.concatenate([ids, kept], 1), bos=True)
    return injected, text, lt.summary(p, {"summary": batch["summary"], "answer": batch["answer"]},
                                      frozen=f, branch=branch)
  injected, text, summary = both(params, lt.frozen)
  np.testing.assert_allclose(injected, text, rtol=1e-5, atol=1e-5)
  correct = float((np.asarray(injected).argmax(-1) == batch["answer"]).sum())
  assert correct == float(summary["correct"])


@pytest.mark.slow   # ~35-60 s; run by .ci/run's slow line
def test_debug_switches_run_and_report(tmp_path):
  c = _config(readers=("lora", "frozen"), aux_losses=("probe", "contrastive", "reconstruction"),
              soft_prompt=2)
  c.model.debug.update(update_check=True, grad_check=True)
  c.task.overfit_one = True
  c.train.update(steps=4, steps_per_call=2, log_every=2, checkpoint_every=0)
  out = loop.train(c, str(tmp_path), progress=False, evaluate_at_end=False)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  last = lines[-1]
  for k in ("lora/memory_cosine", "frozen/memory_cosine", "lora/grad_norm_at_latents",
            "frozen/grad_norm_at_latents", "grad_norm/lora_compressor",
            "grad_norm/frozen_compressor", "lora/loss_contrastive", "lora/loss_reconstruction",
            "lora/loss_probe", "lora/loss_oracle"):
    assert k in last and np.isfinite(last[k]), k
  assert last["update/reader_checksum"] == 0.0          # the reader's weights never move
  assert last["update/lora_compressor"] > 0 and last["update/frozen_compressor"] > 0
  assert last["update/lora_adapters"] > 0               # LoRA trains
  assert last["lora/memory_cosine"] > 0.999             # overfit-one: one episode repeated
  assert "frozen_adapters" not in out["state"].params   # the frozen branch has no adapter


def test_bad_config_is_one_line_error():
  with pytest.raises(ConfigError, match="model.num_latents"):
    loop.validate(_config(num_latents=60))
  with pytest.raises(ConfigError, match="unknown auxiliary loss 'mse'"):
    loop.validate(_config(aux_losses=("mse",)))

  class NoEmbeds:
    def __call__(self, tokens_BxT):
      return tokens_BxT
  with pytest.raises(ConfigError, match="does not take input embeddings"):
    reader_loading.check_reader(NoEmbeds())
  reader_loading.check_reader(reader_loading.load("tiny:gemma3").model)


def test_binary_exits_2_with_one_line():
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "experiments/train.py",
                      "--config=configs/latentem_kv.py:tiny", "--workdir=/tmp/latentem_bad",
                      "--config.model.aux_losses=('recon',)"], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("error: model.aux_losses: unknown auxiliary")


@pytest.mark.slow   # ~35-60 s; run by .ci/run's slow line
def test_lookup_and_kv_distill_losses():
  c = _config(readers=("lora",), aux_losses=("slots", "binding", "lookup", "kv_distill"),
              kv_layers=(0, 1), segment_pool=True, token_values=True, raw_embeddings=True)
  loop.validate(c)
  task = tasks.make_task(c.task)
  lt = system_lib.Latentem(c, task)
  params = lt.init(jax.random.key(0))
  params["lora_adapters"] = jax.tree.map(lambda x: x + 0.05, params["lora_adapters"])
  batch = {k: jnp.asarray(v) for k, v in next(iter(task.batches("train", 2, 0))).items()}
  lat = lt.latents(params, "lora", lt.frozen, batch["removed"], batch["segments"])
  # The lookup path is the reader's own forward: the same logits, plus the last position's
  # attention over the K latents (probabilities, so within [0, 1] and summing to <= 1).
  plain = lt.read_memory(params, "lora", lt.frozen, batch["kept"], lat)
  logits, probs = lt.read_memory(params, "lora", lt.frozen, batch["kept"], lat, lookup=True)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(logits), rtol=1e-6, atol=1e-6)
  n_layers = len(lt.reader.model(lt.frozen).windows)
  assert probs.shape == (n_layers, 2, lt.reader.config.num_heads, c.model.num_latents)
  assert float(probs.min()) >= 0 and float(probs.sum(-1).max()) <= 1 + 1e-5
  loss, hit = system_lib.lookup_loss(probs, batch["asked_slot"])
  assert np.isfinite(float(loss)) and 0 <= float(hit) <= 1
  # One-hot attention on the asked latent: zero loss, every lookup a hit.
  onehot = jax.nn.one_hot(batch["asked_slot"], c.model.num_latents)[None, :, None]
  l1, h1 = system_lib.lookup_loss(jnp.broadcast_to(onehot, probs.shape), batch["asked_slot"])
  assert abs(float(l1)) < 1e-6 and float(h1) == 1.0
  # Both losses are finite; kv_distill reaches the compressor, lookup the adapters.
  met = jax.jit(lambda p, b, f: lt.branch_loss(p, b, f, "lora", jax.random.key(1))[1])(
      params, batch, lt.frozen)
  for k in ("lora/loss_lookup", "lora/loss_lookup_slots", "lora/loss_kv_distill"):
    assert np.isfinite(float(met[k])) and float(met[k]) > 0, k
  g_kv = jax.grad(lambda p: lt.kv_distill_loss(lt.frozen, batch, lt.latents(
      p, "lora", lt.frozen, batch["removed"], batch["segments"])))(params)
  assert float(optax_norm(g_kv["lora_compressor"])) > 0
  g_lk = jax.grad(lambda p: system_lib.lookup_loss(lt.read_memory(
      p, "lora", lt.frozen, batch["kept"], lat, lookup=True)[1], batch["asked_slot"])[0])(params)
  assert float(optax_norm(g_lk["lora_adapters"])) > 0
  with pytest.raises(ConfigError, match="model.kv_layers"):
    loop.validate(_config(aux_losses=("kv_distill",), kv_layers=(99,)))


def test_kv_states_are_the_attention_inputs():
  """Reader.kv_states gives the keys and values the blocks attend with: the lookup
  attention recomputed from them (with RoPE) equals the one digit_logits reports."""
  c = _config(readers=("lora",))
  task = tasks.make_task(c.task)
  lt = system_lib.Latentem(c, task)
  from memjax.layers.rope import apply_rope
  ids = jnp.asarray(np.random.default_rng(0).integers(3, 60, (2, 9)), jnp.int32)
  x = lt.reader.embed(lt.frozen, ids)
  k, v = lt.reader.kv_states(lt.frozen, x)
  m = lt.reader.model(lt.frozen)
  _, probs = lt.reader._forward_with_lookup(m, x, 0, 9)
  layer = 0
  blk_state = jax.tree.map(lambda a: a[layer], nnx_split_blocks(m))
  from flax import nnx
  g, _ = nnx.split(m.blocks)
  blk = nnx.merge(g, blk_state)
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  q, k_rope, _ = blk.attn.qkv(blk.attn_norm(x), pos, m.thetas[layer])
  np.testing.assert_allclose(np.asarray(apply_rope(k[layer], pos, theta=m.thetas[layer])),
                             np.asarray(k_rope), rtol=1e-5, atol=1e-5)
  s = jnp.einsum("bhd,bsd->bhs", q[:, -1], k_rope[:, :, 0]) * blk.attn_scale
  s = jnp.where(8 - jnp.arange(9) < m.windows[layer], s, -1e30)   # the sliding window
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(s, -1)), np.asarray(probs[layer]),
                             rtol=1e-4, atol=1e-5)


def nnx_split_blocks(m):
  from flax import nnx
  return nnx.split(m.blocks)[1]
