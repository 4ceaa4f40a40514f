"""Trains the HRRM byte-level BPE tokenizer (with the control and thought tokens) on local text.

  python experiments/build_tokenizer.py --out=artifacts/hrrm/tokenizer.json
  python experiments/build_tokenizer.py --corpus='docs/**/*.md' --vocab_size=8000 --out=...

Default corpus: the repository's own text (*.md, *.py) plus synthetic planning
traces and scratchpad problems, so the tokenizer sees the DSL.
"""
import glob
import os
import sys

from absl import flags

from memjax.core import cli

_OUT = flags.DEFINE_string("out", "artifacts/hrrm/tokenizer.json", "Where tokenizer.json goes.")
_CORPUS = flags.DEFINE_multi_string("corpus", None, "Glob(s) of text files (default: the repo).")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Target vocabulary (BPE stops earlier on a "
                              "small corpus).")
_SYNTHETIC = flags.DEFINE_integer("synthetic", 2000, "Synthetic DSL/arithmetic examples added.")


def corpus_texts(patterns, synthetic: int):
  from memjax.hrrm import tasks as hrrm_tasks
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  patterns = patterns or [os.path.join(root, "**", "*.md"), os.path.join(root, "**", "*.py")]
  files = sorted({f for p in patterns for f in glob.glob(p, recursive=True) if os.path.isfile(f)})
  if not files and not synthetic:
    raise ValueError(f"--corpus: no files match {patterns}")
  for f in files:
    with open(f, encoding="utf-8", errors="replace") as fh:
      yield fh.read()
  plan = hrrm_tasks.PlanTraces(hrrm_tasks.PlanTraces.defaults())
  arith = hrrm_tasks.ArithmeticScratchpad(hrrm_tasks.ArithmeticScratchpad.defaults())
  for i in range(synthetic):
    for task in (plan, arith):
      ex = task.example_at("train", 0, i)
      yield " ".join(task.words[t] for t in ex["inputs"] if t)


def main(argv):
  del argv
  from memjax.hrrm import tokenizer as hrrm_tokenizer
  try:
    tok = hrrm_tokenizer.train(corpus_texts(_CORPUS.value, _SYNTHETIC.value), _VOCAB.value)
    hrrm_tokenizer.check(tok)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  tok.save(_OUT.value)
  ids = tok.encode("<PLAN> goal 3 <SUBGOAL> 3 <ACTION> up <ENDPLAN>").ids
  print(f"wrote {_OUT.value}: vocabulary {tok.get_vocab_size()}; "
        f"'<PLAN> goal 3 <SUBGOAL> ...' -> {ids[:8]}...")
  return 0


if __name__ == "__main__":
  cli.run(main)
