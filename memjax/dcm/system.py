"""Phase 1a seen by the shared yardstick: the optimised contents as a memory, and the Generator
answering from [BOS] [A_mode | content].

Phase 1a is not trained by the generic loop (it optimises one content per example), so this
System has no `init`/`loss`; it gives the yardstick what it needs: `ingest` (the optimised
content of the batch's examples, carried in the batch), `answer` and `oracle`. The memory is a
plain `Content` pytree, so zeroed (all zeros) and shuffled (row b reads row b-1's content) are
the protocol's defaults (memjax.core.memory), the same as every design's.

Exact match is SQuAD's (memjax.data.qa.exact_match: lowercase, no punctuation or articles) on
the decoded text, computed on the host by a callback inside the jitted yardstick.
"""
from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

from memjax import pretrained
from memjax.core import losses
from memjax.core import system as system_lib
from memjax.data import qa
from memjax.dcm import soft_prompt as sp


@flax.struct.dataclass
class Content:
  """The STM's content slots of a batch of examples (the mode slot is shared, not memory)."""
  content_BxKxD: jax.Array


def decode_text(tokenizer, ids, eos: int | None, limit: int | None = None) -> str:
  ids = [int(i) for i in ids]
  if eos is not None and eos in ids:
    ids = ids[:ids.index(eos)]
  if limit is not None:
    ids = ids[:limit]
  return tokenizer.decode(ids).strip()


@dataclasses.dataclass(frozen=True)
class Reader:
  """How the Generator is asked and scored; everything static (hashable: one compile)."""
  gen: sp.Generator
  tokenizer: object
  answers: tuple[str, ...]          # target answer of example i (global index)
  answer_len: tuple[int, ...]       # its length in tokens (for decode.truncate_to_target)
  truncate: bool
  stm_new_tokens: int               # decode length after an STM prompt
  oracle_new_tokens: int            # after the text prompt

  def _correct(self, toks_BxM, index_B, valid_B, first_line: bool):
    def host(toks, index, valid):
      n = 0
      for t, i, v in zip(np.asarray(toks), np.asarray(index), np.asarray(valid)):
        if not v:
          continue
        lim = self.answer_len[int(i)] if self.truncate else None
        text = decode_text(self.tokenizer, t, self.gen.eos_id, lim)
        if first_line:                 # a base model reading text goes on after the answer
          text = text.split("\n")[0]
        n += qa.exact_match(text, self.answers[int(i)])
      return np.float32(n)
    return jax.pure_callback(host, jax.ShapeDtypeStruct((), jnp.float32), toks_BxM, index_B,
                             valid_B)

  def _score(self, model, prompt_BxPxD, batch, new_tokens, *, plen_B=None, first_line=False):
    """Greedy answer (one length for every row: the cached path; else right-padded rows) and
    the answer's teacher-forced CE after the same prompt."""
    toks = pretrained.greedy_generate(model, embeds_BxTxD=prompt_BxPxD, max_new_tokens=new_tokens,
                                      eos_id=self.gen.eos_id, prompt_len_B=plen_B)
    b, p = prompt_BxPxD.shape[:2]
    plen = jnp.full((b,), p, jnp.int32) if plen_B is None else plen_B
    _, ce_B = sp.sequence_losses(model, prompt_BxPxD, plen, batch["answer"], batch["answer_mask"])
    valid = batch["valid"]
    return {"correct": self._correct(toks, batch["index"], valid, first_line),
            "count": valid.sum().astype(jnp.float32), "loss": losses.masked_mean(ce_B, valid)}

  def answer(self, params, batch, memory):
    """[BOS] [A_mode | content]; with memory None, [BOS] [A_mode] alone (no memory)."""
    model = self.gen.merge(params["generator"])
    parts = params["parts"]
    b, d = batch["index"].shape[0], parts.modes_SxD.shape[-1]
    prompt = jnp.concatenate([jnp.broadcast_to(parts.bos_1xD, (b,) + parts.bos_1xD.shape),
                              jnp.broadcast_to(parts.modes_SxD[sp.ANSWER], (b, 1, d))], 1)
    if memory is not None:
      prompt = jnp.concatenate([prompt, memory.content_BxKxD.astype(prompt.dtype)], 1)
    return self._score(model, prompt, batch, self.stm_new_tokens)

  def oracle(self, params, batch):
    """The Generator reading the source text (config.oracle.answer_template)."""
    model = self.gen.merge(params["generator"])
    return self._score(model, model.embed(batch["oracle"]), batch, self.oracle_new_tokens,
                       plen_B=batch["oracle_len"], first_line=True)


def _not_trained(*_):
  raise NotImplementedError("phase 1a optimises one content per example (memjax.dcm.phase1a.run); "
                            "it is not trained by the generic loop")


def make_system(reader: Reader) -> system_lib.System:
  return system_lib.System(init=_not_trained, loss=_not_trained, answer=reader.answer,
                           ingest=lambda params, batch: Content(batch["content"]),
                           oracle=reader.oracle)
