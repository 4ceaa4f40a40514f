"""THEN recall over long streams with tiered memory (L1 device ring, L2 host RAM, L3 disk).

  python experiments/then_stream.py --workdir=/tmp/then --lengths=10000,100000,1000000
  python experiments/then_stream.py --workdir=/tmp/then --depths=6,12,24   # pairs N segments back

A trained `then_recall` workdir answers questions about pairs that lie far back in a stream
(at a random depth, or --depths segments before the question: the recall task with that many
segments). Per length it prints accuracy with tiers, with L1 only, memory zeroed and shuffled
(the yardstick's modes, memjax.then.streams), chance, ingest tokens/s and peak RSS; the figures
also go to --out as JSON. L3 files live under --tier_dir (a temporary directory by default,
removed at the end).
"""
import json
import os
import shutil
import tempfile
import time

from absl import flags, logging

from memjax.core import cli
from memjax.core.config import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "A then_recall workdir written by experiments/train.py.")
_LENGTHS = flags.DEFINE_string("lengths", "10000,100000,1000000",
                               "Stream lengths in tokens (rounded down to whole segments).")
_DEPTHS = flags.DEFINE_string("depths", "", "Instead of --lengths: tasks of N segments (pairs in "
                              "the first, the question in the last), e.g. 6,12,24.")
_BATCH = flags.DEFINE_integer("batch", 16, "Streams ingested side by side (one tier row each).")
_TOP_K = flags.DEFINE_integer("top_k", 4, "Blocks retrieved per segment.")
_SPAN = flags.DEFINE_integer("span", 2, "Blocks fetched per chosen block (it and the next).")
_CANDIDATES = flags.DEFINE_integer("candidates", 64, "Blocks chosen by their summaries, then read "
                                   "whole and ranked exactly; top_k of them are retrieved.")
_L2 = flags.DEFINE_integer("l2_blocks", 64, "Blocks kept in host RAM before they go to disk.")
_CAPACITY = flags.DEFINE_integer("capacity", 0, "L1 ring-buffer capacity (0: the model's).")
_TIER_DIR = flags.DEFINE_string("tier_dir", None, "Where L3 files go (default: a temporary dir).")
_SEED = flags.DEFINE_integer("seed", 0, "Which eval examples and filler.")
_OUT = flags.DEFINE_string("out", None, "Write the figures as JSON here.")
_EXACT = flags.DEFINE_bool("exact", False, "Ingest one step per segment with retrieval (the "
                           "reference path) instead of scanned chunks that read L1 only.")
_OVERLAP = flags.DEFINE_integer("overlap_segments", 0, "Also time the stepwise path (retrieval "
                                "every segment) over this many segments, with and without the "
                                "host work overlapping the device step.")


def _ints(name, text):
  try:
    out = [int(float(x)) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ConfigError(f"{name}: {text!r} is not a comma-separated list of integers") from None
  if not out or min(out) <= 0:
    raise ConfigError(f"{name}: give positive integers, got {text!r}")
  return out


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not _WORKDIR.value:
    raise ConfigError("workdir: required (a trained then_recall workdir)")
  for name, v in (("batch", _BATCH), ("top_k", _TOP_K), ("span", _SPAN),
                  ("candidates", _CANDIDATES), ("l2_blocks", _L2)):
    if v.value < 1:
      raise ConfigError(f"{name}: must be >= 1, got {v.value}")
  depths = _ints("depths", _DEPTHS.value) if _DEPTHS.value else []
  lengths = [] if depths else _ints("lengths", _LENGTHS.value)
  from memjax.core import loop  # pylint: disable=g-import-not-at-top  (jax)
  from memjax.then import streams  # pylint: disable=g-import-not-at-top
  from memjax.then.model import ThenModel  # pylint: disable=g-import-not-at-top
  config, task, _, state = loop.restore_workdir(_WORKDIR.value)
  if config.model.name != "then" or config.task.name != "assoc_recall":
    raise ConfigError(f"workdir: {_WORKDIR.value} holds {config.model.name} on "
                      f"{config.task.name}, not THEN on assoc_recall")
  if _CAPACITY.value:
    config.model.capacity = _CAPACITY.value
  model = ThenModel(config, task.vocab_size, config.model.segment_len or task.segment_len)
  s = task.segment_len
  root = _TIER_DIR.value or tempfile.mkdtemp(prefix="then_tiers_")
  os.makedirs(root, exist_ok=True)
  print(f"THEN {_WORKDIR.value}: L1 capacity {model.m.capacity}, segment {s}, top_k {_TOP_K.value}"
        f" x span {_SPAN.value} of {_CANDIDATES.value} candidates, L2 {_L2.value} blocks, "
        f"{_BATCH.value} streams, tiers in {root}")
  cases = ([(n * s, n - 1) for n in depths] if depths
           else [(max(3, l // s) * s, None) for l in lengths])
  results = []
  try:
    for length, depth in cases:
      rows = streams.recall_stream(task, length, _BATCH.value, _SEED.value, depth_segments=depth)
      d = os.path.join(root, f"len{length}")
      shutil.rmtree(d, ignore_errors=True)
      print(f"length {length:,} tokens/stream ({length // s} segments), pairs "
            + (f"{depth} segments back" if depth else
               f"{rows.distance.min()}-{rows.distance.max()} segments back"))
      t0 = time.perf_counter()
      out = streams.evaluate(model, state.params, task, rows, d, top_k=_TOP_K.value,
                             span=_SPAN.value, candidates=_CANDIDATES.value,
                             l2_blocks=_L2.value, exact=_EXACT.value, log=print)
      out.update(length=length, distance=rows.distance.tolist(),
                 wall_seconds=time.perf_counter() - t0)
      results.append(out)
      shutil.rmtree(d, ignore_errors=True)
  finally:
    if not _TIER_DIR.value:
      shutil.rmtree(root, ignore_errors=True)
  if _OVERLAP.value:
    rows = streams.recall_stream(task, max(3, _OVERLAP.value + 1) * s, _BATCH.value, _SEED.value)
    ov = streams.measure_overlap(model, state.params, task, rows, os.path.join(root, "overlap"),
                                 segments=_OVERLAP.value, top_k=_TOP_K.value, span=_SPAN.value,
                                 candidates=_CANDIDATES.value, l2_blocks=_L2.value)
    results.append({"overlap": ov})
    print(f"stepwise path, {ov['segments']} segments x {ov['rows']} streams: "
          f"{ov['serial_seconds']:.2f} s waiting for each step before the host work "
          f"(host {ov['serial_host_in_flight_seconds']:.2f} s, device wait "
          f"{ov['serial_wait_seconds']:.2f} s); {ov['overlap_seconds']:.2f} s overlapped (host "
          f"work done while a step was in flight {ov['overlap_host_in_flight_seconds']:.2f} s, "
          f"then waiting {ov['overlap_wait_seconds']:.2f} s)")
  print()
  print(f"{'tokens':>10} {'tiers':>6} {'L1only':>6} {'zeroed':>6} {'shuffl':>6} {'chance':>6} "
        f"{'ingest tok/s':>12} {'peak RSS MB':>11} {'L3 MB':>8} {'wall s':>7}")
  for r in results:
    if "overlap" in r:
      continue
    print(f"{r['length']:>10,} {r['accuracy_tiers']:6.3f} {r['accuracy_l1_only']:6.3f} "
          f"{r['accuracy_memory_zeroed']:6.3f} {r['accuracy_memory_shuffled']:6.3f} "
          f"{r['chance']:6.3f} {r['ingest_tokens_per_s']:12,.0f} {r['peak_rss_mb']:11.0f} "
          f"{r['l3_bytes'] / 2**20:8.1f} {r['wall_seconds']:7.1f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
