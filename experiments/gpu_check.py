"""Everything memjax wants measured on a GPU, in one command; writes gpu_check.json + .md.

  # on a GPU machine with memjax's dependencies and a CUDA jaxlib (for the lent H200, whose
  # image has jax 0.11.2 and no ml_collections/grain, see BUILD_NOTES.md, "GPU check"):
  python experiments/gpu_check.py --out=$OUT                                   # all stages
  python experiments/gpu_check.py --out=$OUT --stages=env,tests,sweep,bench    # lease call 1
  python experiments/gpu_check.py --out=$OUT --stages=env,jobs,paper           # lease call 2
  python experiments/gpu_check.py --smoke --out=/tmp/gc   # CPU: interpret mode, tiny sizes
  python experiments/gpu_check.py --out=$OUT --stages=env,bypass   # issue 14, two calls

The default time boxes fit one 15-minute H200 lease in two calls (about 6.5 + 5.5 minutes of
run time after the machine's start). Each stage is time-boxed by --<stage>_budget_s: over its
box it stops starting new work and says what it skipped. The JSON and the table are rewritten
after every stage, so a lease that ends early still leaves what was measured. Stages:
  env    device, jax/jaxlib versions, memory.
  tests  pytest of the kernel's compiled-GPU test class (forward, dq, dk, dv vs the jnp
         reference at f32 and bf16 tolerances; tests/kernels/local_attention_test.py).
  sweep  fastest BlockSizes per head dim at --sweep_length (fwd blocks on forward time, then
         backward blocks on forward+backward time), printed with how to record them.
  bench  experiments/bench_local_attention.py's table (kernel vs jitted reference vs masked
         dense dot_product_attention; useful TFLOP/s and fraction of the bf16 matmul rate
         measured in the same run), with the swept block sizes when the sweep ran.
  jobs   the main job of each design at its default config, through memjax.core.loop.train
         in a child process: wall time, steps/s, the yardstick (results.json).
  paper  HRSA-TRM `:paper` (32k tokens, 256/1024/2048 slots) for --paper_steps: steps/s,
         peak device memory (memory_stats), parameter count; with remat if it runs out.
  bypass (not in the default stages) issue 14's recipe at 2,048 tokens: configs/hrsa_bypass.py
         `:lock`, then `:mix` warm-started from it, then `:mix` again for --bypass_mix2_steps at
         --bypass_mix2_lr, each with its yardstick (EM beyond / inside the local context,
         adversarial, delta_zero, the LM loss against the no-memory reference). The workdirs
         live in --bypass_dir (git-ignored, kept on a warm machine): a part whose results.json
         is there is not run again, and one cut off by its box resumes from its last
         checkpoint, so the stage spans two lease calls (about 9 + 8 minutes on one H200).
"""
import dataclasses
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))
import bench_local_attention as bench  # noqa: E402  (experiments/ is sys.path[0]; its flags too)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from memjax.kernels import local_attention as kernel  # noqa: E402

STAGES = ("env", "tests", "sweep", "bench", "jobs", "paper", "bypass")
DEFAULT_STAGES = STAGES[:-1]   # bypass trains for ~17 GPU minutes: asked for by name
BYPASS_PARTS = ("lock", "mix", "mix2")
# design -> config of its main job (DESIGN.md); --smoke uses each one's :tiny variant.
JOBS = {"then_recall": "configs/then_recall.py", "hrsa_retrieval": "configs/hrsa_retrieval.py",
        "titans_recall": "configs/titans_recall.py", "hrm_reasoning": "configs/hrm_reasoning.py"}

_OUT = flags.DEFINE_string("out", os.environ.get("OUT"), "Output folder (default: $OUT).")
_STAGES = flags.DEFINE_list("stages", list(DEFAULT_STAGES), f"Stages to run, of {STAGES}.")
_SKIP = flags.DEFINE_list("skip", [], "Stages not to run.")
_SMOKE = flags.DEFINE_bool("smoke", False, "CPU end-to-end run: interpret mode, tiny sizes.")
_TESTS_BUDGET = flags.DEFINE_integer("tests_budget_s", 100, "Time box of the tests stage.")
_SWEEP_BUDGET = flags.DEFINE_integer("sweep_budget_s", 120, "Time box of the sweep stage.")
_BENCH_BUDGET = flags.DEFINE_integer("bench_budget_s", 150, "Time box of the bench stage.")
_JOBS_BUDGET = flags.DEFINE_integer("jobs_budget_s", 200, "Time box of the jobs stage.")
_PAPER_BUDGET = flags.DEFINE_integer("paper_budget_s", 150, "Time box of the paper stage.")
_SWEEP_LENGTH = flags.DEFINE_integer("sweep_length", 16384, "Sequence length of the sweep.")
_SWEEP_BLOCKS = flags.DEFINE_list("sweep_blocks", ["32", "64", "128"], "Block sizes tried.")
_SWEEP_STAGES = flags.DEFINE_list("sweep_num_stages", ["2", "3"], "Triton stages tried (fwd).")
_JOBS = flags.DEFINE_list("jobs", list(JOBS), "Which design jobs to run.")
_JOBS_DTYPE = flags.DEFINE_enum("jobs_dtype", "float32", ["float32", "bfloat16"],
                                "train.compute_dtype of the design jobs (float32: as on CPU).")
_PAPER_STEPS = flags.DEFINE_integer("paper_steps", 300, "Steps of the :paper run.")
_PAPER_DTYPE = flags.DEFINE_enum("paper_dtype", "bfloat16", ["float32", "bfloat16"],
                                 "train.compute_dtype of the :paper run.")
_BYPASS_BUDGET = flags.DEFINE_integer("bypass_budget_s", 540, "Time box of the bypass stage.")
_BYPASS_PARTS = flags.DEFINE_list("bypass_parts", list(BYPASS_PARTS),
                                  f"Parts of the bypass recipe to run, of {BYPASS_PARTS}.")
_BYPASS_DIR = flags.DEFINE_string("bypass_dir", str(_ROOT / "workdirs" / "bypass"),
                                  "Workdirs of the bypass recipe, one per part.")
_BYPASS_MIX2_STEPS = flags.DEFINE_integer("bypass_mix2_steps", 3600, "Steps of the third part.")
_BYPASS_MIX2_LR = flags.DEFINE_float("bypass_mix2_lr", 1e-3, "Learning rate of the third part.")
# Internal: a child process that trains one config and writes its figures (see run_job).
_JOB = flags.DEFINE_string("job", None, "(internal) configs/x.py[:arg] to train in this process.")
_JOB_OVERRIDES = flags.DEFINE_string("job_overrides", "{}", "(internal) JSON dotted overrides.")
_JOB_EVAL = flags.DEFINE_bool("job_eval", True, "(internal) run the yardstick at the end.")
_JOB_WORKDIR = flags.DEFINE_string("job_workdir", None, "(internal) workdir (default: a new one).")


def now():
  return time.perf_counter()


def smoke_sizes():
  """Tiny bench/sweep sizes so the whole script runs on a CPU in interpret mode."""
  overrides = dict(lengths=["128"], head_dims=["16"], chunk=32, halo=32, heads=2, kv_heads=1,
                   matmul_size=128, iters=1, interpret=True)
  for name, value in overrides.items():
    flags.FLAGS[name].value = value
  return ["16", "32"], ["2"], 128


# ---------------------------------------------------------------- env


def device_memory():
  """memory_stats of device 0 (None where the backend has none, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return {k: stats[k] for k in ("bytes_limit", "bytes_in_use", "peak_bytes_in_use") if k in stats}


def stage_env(_):
  import jaxlib  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {"device_kind": d.device_kind, "platform": d.platform, "backend": jax.default_backend(),
          "device_count": jax.device_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "memory": device_memory(),
          "interpret": bench._INTERPRET.value}


# ---------------------------------------------------------------- tests


def stage_tests(budget):
  """The compiled-kernel test class in a child pytest (on CPU it skips: no GPU)."""
  report = os.path.join(tempfile.mkdtemp(), "junit.xml")
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
         "tests/kernels/local_attention_test.py::LocalAttentionTest"]
  # tests/conftest.py sets JAX_PLATFORMS=cpu when it is unset: name the GPU, or the compiled
  # class would skip on the GPU machine too.
  env = dict(os.environ)
  if jax.default_backend() == "gpu":
    env["JAX_PLATFORMS"] = "cuda"
  start = now()
  try:
    r = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, timeout=budget, env=env)
  except subprocess.TimeoutExpired:
    return {"command": " ".join(cmd[1:]), "timed_out": True, "seconds": now() - start}
  import xml.etree.ElementTree as ET  # pylint: disable=g-import-not-at-top
  cases = []
  for case in ET.parse(report).iter("testcase"):
    status = "passed"
    for tag in ("failure", "error", "skipped"):
      node = case.find(tag)
      if node is not None:
        status = tag if tag == "skipped" else "failed"
        cases.append({"test": case.get("name"), "status": status,
                      "message": (node.get("message") or "")[:300]})
        break
    else:
      cases.append({"test": case.get("name"), "status": status})
  count = lambda s: sum(c["status"] == s for c in cases)
  return {"command": " ".join(cmd[1:]), "returncode": r.returncode, "seconds": now() - start,
          "passed": count("passed"), "failed": count("failed"), "skipped": count("skipped"),
          "cases": cases, "tail": r.stdout[-2000:]}


# ---------------------------------------------------------------- sweep


def stage_sweep(budget, blocks, num_stages, length):
  """Per head dim: forward tiles (block_q, block_k, num_stages) by forward time, then the
  backward tiles (block_q_bwd, block_k_bwd) by forward+backward time with the best forward."""
  start, out = now(), {"length": length, "dtype": bench._DTYPE.value, "skipped": []}
  peak = 1.0   # the fraction column is not used here; the bench stage measures the rate
  blocks, num_stages = [int(b) for b in blocks], [int(s) for s in num_stages]
  for d in [int(x) for x in bench._HEAD_DIMS.value]:
    trials, best_fwd = [], None
    for bq in blocks:
      for bk in blocks:
        for ns in num_stages:
          if now() - start > budget:
            out["skipped"].append(f"D={d} fwd {bq}x{bk} stages {ns}")
            continue
          bs = kernel.BlockSizes(block_q=bq, block_k=bk, num_stages=ns)
          row = bench.measure("pallas", length, d, peak, bench._ITERS.value, bs, parts=("fwd",))
          trials.append({"part": "fwd", "block_q": bq, "block_k": bk, "num_stages": ns,
                         "ms": None if row.get("fwd") is None else 1e3 * row["fwd"],
                         "error": row.get("fwd_error")})
          if row.get("fwd") is not None and (best_fwd is None or row["fwd"] < best_fwd[0]):
            best_fwd = (row["fwd"], bq, bk, ns)
    if best_fwd is None:
      out[str(d)] = {"trials": trials, "best": None}
      continue
    _, bq, bk, ns = best_fwd
    best = None
    for bqb in blocks:
      for bkb in blocks:
        if now() - start > budget:
          out["skipped"].append(f"D={d} bwd {bqb}x{bkb}")
          continue
        bs = kernel.BlockSizes(bq, bk, bqb, bkb, num_stages=ns)
        row = bench.measure("pallas", length, d, peak, bench._ITERS.value, bs, parts=("fwd_bwd",))
        trials.append({"part": "fwd_bwd", "block_q_bwd": bqb, "block_k_bwd": bkb,
                       "ms": None if row.get("fwd_bwd") is None else 1e3 * row["fwd_bwd"],
                       "error": row.get("fwd_bwd_error")})
        if row.get("fwd_bwd") is not None and (best is None or row["fwd_bwd"] < best[0]):
          best = (row["fwd_bwd"], bqb, bkb)
    chosen = dict(block_q=bq, block_k=bk, num_stages=ns)
    if best is not None:
      chosen.update(block_q_bwd=best[1], block_k_bwd=best[2])
    out[str(d)] = {"trials": trials, "best": chosen, "best_fwd_ms": 1e3 * best_fwd[0],
                   "best_fwd_bwd_ms": None if best is None else 1e3 * best[0]}
  out["seconds"] = now() - start
  return out


def tuned_block_sizes(sweep, d):
  best = (sweep or {}).get(str(d), {}).get("best")
  return kernel.BlockSizes(**best) if best else None


# ---------------------------------------------------------------- bench


def stage_bench(budget, sweep):
  start = now()
  peak = bench.matmul_tflops(bench._MATMUL.value, bench._ITERS.value)
  rows, skipped = [], []
  for t in [int(x) for x in bench._LENGTHS.value]:
    for d in [int(x) for x in bench._HEAD_DIMS.value]:
      for impl in bench._IMPLS.value:
        if now() - start > budget:
          skipped.append(f"T={t} D={d} {impl}")
          continue
        bs = tuned_block_sizes(sweep, d) if impl == "pallas" else None
        row = bench.measure(impl, t, d, peak, bench._ITERS.value, bs)
        row["block_sizes"] = dataclasses.asdict(bs) if bs is not None else None
        rows.append(row)
        print(f"  bench T={t} D={d} {impl}", file=sys.stderr, flush=True)
  return {"bf16_matmul_tflops": peak, "matmul_size": bench._MATMUL.value, "rows": rows,
          "table": bench.fmt_table(rows, peak), "skipped": skipped, "seconds": now() - start,
          "settings": {k: flags.FLAGS[k].value for k in ("batch", "heads", "kv_heads", "chunk",
                                                          "halo", "dtype", "iters", "interpret")}}


# ---------------------------------------------------------------- jobs and paper


def load_config(spec: str):
  """configs/x.py[:arg] -> its get_config(arg)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("gpu_check_config", _ROOT / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def child_main():
  """--job: train one config in this process; print one JSON line of what it measured."""
  from memjax.core import loop  # pylint: disable=g-import-not-at-top
  config = load_config(_JOB.value)
  for dotted, value in json.loads(_JOB_OVERRIDES.value).items():
    *path, leaf = dotted.split(".")
    node = config
    for part in path:
      node = node[part]
    node[leaf] = value
  workdir = _JOB_WORKDIR.value or tempfile.mkdtemp(prefix="gpu_check_")
  start = now()
  results = loop.train(config, workdir, progress=False, evaluate_at_end=_JOB_EVAL.value)
  wall = now() - start
  state = results.pop("state")
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  print("GPU_CHECK_JOB " + json.dumps({
      "config": _JOB.value, "overrides": json.loads(_JOB_OVERRIDES.value),
      "steps": int(state.step), "wall_s": wall, "params": int(n_params),
      "steps_per_s": logged[-1]["steps_per_s"] if logged else None,
      "steps_per_s_after_first_log": after_first_log(logged),
      "final_loss_mean": logged[-1].get("loss_mean") if logged else None,
      "results": {k: v for k, v in results.items() if isinstance(v, (int, float, str))},
      "memory": device_memory(), "device_kind": jax.devices()[0].device_kind}))


def after_first_log(logged):
  """Steady steps/s: between the first and last log lines, so compile time is left out.
  Each line's steps_per_s is cumulative from the start of the run: t_i = steps_i / rate_i."""
  if len(logged) < 2:
    return None
  (s0, r0), (s1, r1) = [(m["step"], m["steps_per_s"]) for m in (logged[0], logged[-1])]
  t0, t1 = s0 / r0, s1 / r1   # the run started at step 0 (a fresh workdir)
  return (s1 - s0) / (t1 - t0) if t1 > t0 else None


def run_job(spec, overrides, timeout, evaluate=True, workdir=None):
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--job={spec}",
         f"--job_overrides={json.dumps(overrides)}", f"--job_eval={evaluate}"]
  if workdir:
    cmd.append(f"--job_workdir={workdir}")
  if _SMOKE.value:
    cmd.append("--smoke")
  start = now()
  try:
    r = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    return {"config": spec, "overrides": overrides, "timed_out": True, "seconds": now() - start}
  for line in r.stdout.splitlines():
    if line.startswith("GPU_CHECK_JOB "):
      out = json.loads(line[len("GPU_CHECK_JOB "):])
      out["process_seconds"] = now() - start
      return out
  err = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
  return {"config": spec, "overrides": overrides, "returncode": r.returncode, "error": err[:500],
          "out_of_memory": "RESOURCE_EXHAUSTED" in r.stderr or "out of memory" in r.stderr.lower(),
          "seconds": now() - start}


def stage_jobs(budget):
  start, out = now(), {"compute_dtype": _JOBS_DTYPE.value, "runs": {}, "skipped": []}
  for name in _JOBS.value:
    left = budget - (now() - start)
    if left <= 0:
      out["skipped"].append(name)
      continue
    spec = JOBS[name] + (":tiny" if _SMOKE.value else "")
    # No checkpoints or TensorBoard files: what is timed is training, not disk writes.
    overrides = {"train.compute_dtype": _JOBS_DTYPE.value, "train.checkpoint_every": 0,
                 "train.tensorboard": False}
    if _SMOKE.value:
      overrides.update({"train.steps": 10, "train.warmup_steps": 2})
    out["runs"][name] = run_job(spec, overrides, left)
    print(f"  job {name}: {out['runs'][name].get('wall_s')}", file=sys.stderr, flush=True)
  out["seconds"] = now() - start
  return out


def stage_paper(budget):
  """HRSA-TRM at the paper's sizes, a few hundred steps; with remat if the first try runs out
  of memory. No yardstick (eval at 32k tokens x 8 batches is not what is measured here)."""
  start, out = now(), {"tries": []}
  steps = 10 if _SMOKE.value else _PAPER_STEPS.value
  spec = "configs/hrsa_retrieval.py:" + ("tiny" if _SMOKE.value else "paper")
  for remat in (False, True):
    left = budget - (now() - start)
    if left <= 0:
      break
    overrides = {"train.steps": steps, "train.warmup_steps": min(100, steps // 2),
                 "train.checkpoint_every": 0, "train.log_every": 10, "train.steps_per_call": 10,
                 "train.compute_dtype": _PAPER_DTYPE.value, "model.remat": remat,
                 "train.tensorboard": False}
    r = run_job(spec, overrides, left, evaluate=False)
    out["tries"].append(r)
    if not r.get("out_of_memory"):
      break
  out["seconds"] = now() - start
  return out


def bypass_run(part: str, bypass_dir: str):
  """(config spec, overrides) of one part of issue 14's recipe (configs/hrsa_bypass.py)."""
  variant = "lock" if part == "lock" else "mix"
  spec = "configs/hrsa_bypass.py:" + ("tiny" if _SMOKE.value else variant)
  overrides = {"train.tensorboard": False, "train.log_every": 50}
  if part != "lock":
    overrides["train.init_from"] = os.path.join(bypass_dir, "lock" if part == "mix" else "mix")
  if part == "mix2":
    overrides.update({"train.steps": _BYPASS_MIX2_STEPS.value, "train.lr": _BYPASS_MIX2_LR.value})
  if _SMOKE.value:
    overrides.update({"train.steps": 10, "train.warmup_steps": 2, "train.log_every": 5,
                      "train.checkpoint_every": 5})
  return spec, overrides


def stage_bypass(budget):
  """Issue 14's recipe, part after part; a part runs once its predecessor has a results.json."""
  start, out = now(), {"dir": _BYPASS_DIR.value, "runs": {}, "skipped": []}
  order = [p for p in BYPASS_PARTS if p in _BYPASS_PARTS.value]
  for part in order:
    workdir = os.path.join(_BYPASS_DIR.value, part)
    done = os.path.join(workdir, "results.json")
    if os.path.exists(done):   # an earlier call finished it
      with open(done) as f:
        out["runs"][part] = {"done_earlier": True, "results": {
            k: v for k, v in json.load(f).items() if isinstance(v, (int, float, str))}}
      continue
    before = BYPASS_PARTS[BYPASS_PARTS.index(part) - 1] if part != "lock" else None
    left = budget - (now() - start)
    if left <= 0 or (before and not os.path.exists(
        os.path.join(_BYPASS_DIR.value, before, "results.json"))):
      out["skipped"].append(part)
      continue
    os.makedirs(workdir, exist_ok=True)
    spec, overrides = bypass_run(part, _BYPASS_DIR.value)
    out["runs"][part] = run_job(spec, overrides, left, workdir=workdir)
    print(f"  bypass {part}: {out['runs'][part].get('wall_s')}", file=sys.stderr, flush=True)
  out["seconds"] = now() - start
  return out


# ---------------------------------------------------------------- report


def markdown(res) -> str:
  lines = ["# memjax GPU check", ""]
  env = res.get("env")
  if env:
    lines += [f"Device: {env['device_kind']} ({env['backend']}, {env['device_count']} device(s)), "
              f"jax {env['jax']}, jaxlib {env['jaxlib']}, interpret={env['interpret']}",
              f"Memory: {env['memory']}", ""]
  t = res.get("tests")
  if t:
    lines += ["## Kernel tests (compiled class)", "",
              f"`{t['command']}`: " + ("TIMED OUT" if t.get("timed_out") else
                                      f"{t['passed']} passed, {t['failed']} failed, "
                                      f"{t['skipped']} skipped in {t['seconds']:.1f} s"), ""]
    lines += [f"- {c['test']}: {c['status']} {c.get('message', '')}" for c in t.get("cases", [])
              if c["status"] != "passed"] + [""]
  s = res.get("sweep")
  if s:
    lines += [f"## Block-size sweep (T={s['length']}, {s['dtype']})", "",
              "| D | best BlockSizes | fwd ms | fwd+bwd ms |", "|---|---|---|---|"]
    for d in bench._HEAD_DIMS.value:
      e = s.get(str(d))
      if e:
        f = lambda v: "-" if v is None else f"{v:.3f}"
        lines.append(f"| {d} | {e['best']} | {f(e.get('best_fwd_ms'))} | "
                     f"{f(e.get('best_fwd_bwd_ms'))} |")
    lines += ["", f"Not tried (time box): {s['skipped']}" if s["skipped"] else "", ""]
  b = res.get("bench")
  if b:
    lines += ["## Local attention benchmark", "", f"Settings: {b['settings']}", "", "```",
              b["table"], "```", f"Not run (time box): {b['skipped']}" if b["skipped"] else "", ""]
  for key, title in (("jobs", "Design jobs"), ("paper", "HRSA-TRM :paper")):
    j = res.get(key)
    if not j:
      continue
    runs = j["runs"].items() if key == "jobs" else [(f"try {i}", r) for i, r in
                                                     enumerate(j["tries"])]
    lines += [f"## {title}", "", "| run | steps | wall s | steps/s (after first log) | params | "
              "peak bytes | accuracy | zeroed | shuffled | chance | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs:
      res_ = r.get("results", {})
      mem = (r.get("memory") or {}).get("peak_bytes_in_use")
      g = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
      status = ("timed out" if r.get("timed_out") else r.get("error", "ok"))
      lines.append(f"| {name} {r.get('overrides', {}).get('model.remat', '') or ''} | "
                   f"{g(r.get('steps'))} | {g(r.get('wall_s'))} | "
                   f"{g(r.get('steps_per_s_after_first_log'))} | {g(r.get('params'))} | {g(mem)} | "
                   f"{g(res_.get('accuracy'))} | {g(res_.get('accuracy_memory_zeroed'))} | "
                   f"{g(res_.get('accuracy_memory_shuffled'))} | {g(res_.get('chance'))} | "
                   f"{status} |")
    lines += [f"Skipped (time box): {j['skipped']}" if j.get("skipped") else "", ""]
  y = res.get("bypass")
  if y and "runs" in y:
    keys = ("accuracy_beyond", "accuracy_beyond_memory_zeroed", "accuracy_beyond_memory_shuffled",
            "accuracy_inside", "accuracy_adversarial", "delta_zero_beyond", "chance")
    lines += ["## HRSA-TRM bypass recipe (issue 14)", "", f"Workdirs: {y['dir']}", "",
              "| part | steps | wall s | " + " | ".join(keys) + " | LM loss / reference | status |",
              "|" + "---|" * (len(keys) + 5)]
    for part, r in y["runs"].items():
      res_ = r.get("results", {})
      g = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
      lm, ref = res_.get("loss_lm_heldout"), res_.get("loss_lm_heldout_reference")
      ratio = f"{lm:.4f} / {ref:.4f} ({lm / ref:.3f})" if lm and ref else "-"
      status = ("done earlier" if r.get("done_earlier") else "timed out" if r.get("timed_out")
                else r.get("error", "ok"))
      lines.append(f"| {part} | {g(r.get('steps'))} | {g(r.get('wall_s'))} | "
                   + " | ".join(g(res_.get(k)) for k in keys) + f" | {ratio} | {status} |")
    lines += [f"Not run: {y['skipped']}" if y.get("skipped") else "", ""]
  return "\n".join(lines)


def main(argv):
  del argv
  if _JOB.value:
    if _SMOKE.value:
      jax.config.update("jax_platforms", "cpu")
    child_main()
    return 0
  stages = [s for s in _STAGES.value if s not in _SKIP.value]
  bad = [s for s in stages if s not in STAGES]
  if bad or not _OUT.value:
    print(f"error: {'--out (or $OUT) is required' if not _OUT.value else f'unknown stages {bad}'}",
          file=sys.stderr)
    return 2
  bad_jobs = [j for j in _JOBS.value if j not in JOBS]
  if bad_jobs:
    print(f"error: --jobs: unknown {bad_jobs}; choose from {sorted(JOBS)}", file=sys.stderr)
    return 2
  bad_parts = [p for p in _BYPASS_PARTS.value if p not in BYPASS_PARTS]
  if bad_parts:
    print(f"error: --bypass_parts: unknown {bad_parts}; choose from {list(BYPASS_PARTS)}",
          file=sys.stderr)
    return 2
  blocks, num_stages, length = _SWEEP_BLOCKS.value, _SWEEP_STAGES.value, _SWEEP_LENGTH.value
  if _SMOKE.value:
    blocks, num_stages, length = smoke_sizes()
  elif jax.default_backend() != "gpu":
    print("warning: no GPU; the compiled kernel cannot run here (use --smoke on a CPU)",
          file=sys.stderr)
  os.makedirs(_OUT.value, exist_ok=True)
  res = {"stages": stages, "smoke": _SMOKE.value, "argv": sys.argv[1:]}
  path = os.path.join(_OUT.value, "gpu_check.json")
  if os.path.exists(path):   # a second lease call adds its stages to the first one's
    with open(path) as f:
      res = {**json.load(f), **res}
  if _SMOKE.value:   # interpret mode on a shared CPU: the boxes are for a GPU, not for this
    for name in ("tests", "sweep", "bench", "jobs", "paper", "bypass"):
      if not flags.FLAGS[f"{name}_budget_s"].present:
        flags.FLAGS[f"{name}_budget_s"].value = 3600
  budgets = {"tests": _TESTS_BUDGET.value, "sweep": _SWEEP_BUDGET.value,
             "bench": _BENCH_BUDGET.value, "jobs": _JOBS_BUDGET.value,
             "paper": _PAPER_BUDGET.value, "bypass": _BYPASS_BUDGET.value}
  for stage in STAGES:
    if stage not in stages:
      continue
    start = now()
    print(f"stage {stage} ...", file=sys.stderr, flush=True)
    try:
      if stage == "env":
        res["env"] = stage_env(None)
      elif stage == "tests":
        res["tests"] = stage_tests(budgets["tests"])
      elif stage == "sweep":
        res["sweep"] = stage_sweep(budgets["sweep"], blocks, num_stages, length)
        for d in bench._HEAD_DIMS.value:
          bs = tuned_block_sizes(res["sweep"], d)
          if bs is not None:
            print(f"fastest for head dim {d}: {bs}. To record it as the default, set these "
                  f"values in kernels/local_attention.py (BlockSizes) and in BUILD_NOTES.md.")
      elif stage == "bench":
        res["bench"] = stage_bench(budgets["bench"], res.get("sweep"))
        print(res["bench"]["table"])
      elif stage == "jobs":
        res["jobs"] = stage_jobs(budgets["jobs"])
      elif stage == "paper":
        res["paper"] = stage_paper(budgets["paper"])
      elif stage == "bypass":
        res["bypass"] = stage_bypass(budgets["bypass"])
    except Exception as e:  # pylint: disable=broad-except  (one stage failing must not lose the rest)
      res[stage] = {"error": f"{type(e).__name__}: {e}"[:1000]}
    res.setdefault("stage_seconds", {})[stage] = now() - start
    with open(path, "w") as f:
      json.dump(res, f, indent=1, default=str)
    with open(os.path.join(_OUT.value, "gpu_check.md"), "w") as f:
      f.write(markdown(res))
  print(markdown(res))
  print(f"wrote {path} and gpu_check.md")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
