"""Where a retrieval answer is lost: in the memory, in the decoder's attention, or after it.

A retrieval example's asked-for fact `[FACT, ka, kb, value]` lies in one M2 slot's region (the
write loss ties slot i to region i of the document). Per example, three questions in the order
the answer travels:

  holds     the write head rebuilds the value token at its place from that slot alone: the
            compressor kept the value;
  attends   the decoder's last layer, at the answer position, puts most of its M2 attention
            (mean over heads) on that slot: the lookup found it;
  answers   the decoder's answer is the value (the yardstick's exact match).

A model whose attention locks (attends high) and whose memory holds the value but that does not
answer has a read-out problem; one that attends but whose slot does not hold the value has a
compressor problem. Needs the write head (`model.write_head`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from memjax.hrsa.diffusion import region_len
from memjax.hrsa.model import DecodeControl


def fact_slot(src_start_B: jax.Array, doc_len: int, slots: int):
  """(slot index, offset in its region) of each fact starting at `src_start`."""
  r = region_len(doc_len, slots)
  return src_start_B // r, src_start_B % r


def read_path(graphdef, params, batch) -> dict[str, jax.Array]:
  """Per-example booleans `holds`, `attends`, `answers` (B,), plus `mass` (B,): the decoder's
  attention on the fact's slot. Only retrieval examples mean anything; the caller masks."""
  model = nnx.merge(graphdef, params)
  if model.write_head is None:
    raise ValueError("read_path needs the write head (model.write_head=True)")
  doc, src = batch["doc"], batch["src_start"]
  memory, _ = model.ingest(doc, jax.random.key(0))
  logits, aux = model.decoder(batch["tokens"], memory, DecodeControl())
  s2 = memory.levels[-1].shape[1]
  slot, off = fact_slot(jnp.maximum(src, 0), doc.shape[1], s2)
  b = jnp.arange(doc.shape[0])
  dec_BxS = aux["mem_probs"][-1][:, :, -1, -s2:].mean(1)
  own_BxD = model.decoder.memory_tokens(memory)[:, -s2:][b, slot]
  rebuilt_BxRxV = model.write_head(own_BxD[:, None], region_len(doc.shape[1], s2),
                                   model.embed)[:, 0]
  value_logits = rebuilt_BxRxV[b, off + 3]
  return {"holds": jnp.argmax(value_logits, -1) == batch["answer"],
          "attends": jnp.argmax(dec_BxS, -1) == slot,
          "answers": jnp.argmax(logits[:, -1], -1) == batch["answer"],
          "mass": dec_BxS[b, slot]}


def summarise(rows: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, float]:
  """Rates over the kept examples (host arrays), and the conditional ones that locate the loss."""
  k = np.asarray(keep, np.float64)
  rate = lambda x, given=1.0: float((np.asarray(x, np.float64) * k * given).sum()
                                    / max((k * given).sum(), 1.0))
  both = np.asarray(rows["holds"], np.float64) * np.asarray(rows["attends"], np.float64)
  return {"holds": rate(rows["holds"]), "attends": rate(rows["attends"]),
          "answers": rate(rows["answers"]), "mass": rate(rows["mass"]),
          "answers_given_holds_and_attends": rate(rows["answers"], both),
          "holds_and_attends": rate(both)}
