"""Per-user live memory over a trained THEN model: ingest, query, wipe, list.

  python experiments/then_live.py ingest --workdir=/tmp/then --state_dir=/tmp/users --user=alice --tokens=3,17,5,20
  python experiments/then_live.py query  --workdir=/tmp/then --state_dir=/tmp/users --user=alice --tokens=3 [--incognito]
  python experiments/then_live.py ingest --workdir=/tmp/then --state_dir=/tmp/users --user=alice --tokens_file=long.txt --tiers
  python experiments/then_live.py wipe   --state_dir=/tmp/users --user=alice
  python experiments/then_live.py list   --state_dir=/tmp/users

Tokens are the model's token ids (comma-separated, or --tokens_file with whitespace-separated
ids). `query` prints, per query token, the model's most likely next token; with --incognito
the user's state is left as it was, byte for byte.
"""
from absl import flags, logging

from memjax.core import cli
from memjax.then import live

COMMANDS = ("ingest", "query", "wipe", "list")
_WORKDIR = flags.DEFINE_string("workdir", None, "A THEN workdir written by experiments/train.py.")
_STATE_DIR = flags.DEFINE_string("state_dir", None, "One sub-directory per user.")
_USER = flags.DEFINE_string("user", None, "User id: 1-64 characters of A-Z a-z 0-9 _ -.")
_TOKENS = flags.DEFINE_string("tokens", None, "Comma-separated token ids.")
_TOKENS_FILE = flags.DEFINE_string("tokens_file", None, "Whitespace-separated token ids.")
_INCOGNITO = flags.DEFINE_bool("incognito", False, "query: answer without writing the memory.")
_TIERS = flags.DEFINE_bool("tiers", False, "Keep what the ring buffer evicts in host RAM and on "
                           "disk (memjax.then.tiers) and retrieve it for queries.")
_TOP_K = flags.DEFINE_integer("top_k", 4, "--tiers: blocks retrieved per segment.")
_L2 = flags.DEFINE_integer("l2_blocks", 64, "--tiers: blocks kept in RAM before they go to disk.")


def _args(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise live.StateError(f"command: give one of {list(COMMANDS)}, got {argv[1:]}")
  if _STATE_DIR.value is None:
    raise live.StateError("state_dir: required")
  cmd = argv[1]
  if cmd != "list":
    live.check_user(_USER.value)
  if cmd in ("ingest", "query"):
    if _WORKDIR.value is None:
      raise live.StateError("workdir: required for " + cmd)
    if (_TOKENS.value is None) == (_TOKENS_FILE.value is None):
      raise live.StateError("tokens: give exactly one of --tokens or --tokens_file")
  return cmd


def _tokens():
  text = _TOKENS.value.replace(",", " ") if _TOKENS.value is not None else open(_TOKENS_FILE.value).read()
  try:
    ids = [int(t) for t in text.split()]
  except ValueError:
    raise live.StateError("tokens: not a list of integer token ids") from None
  if not ids:
    raise live.StateError("tokens: empty")
  return ids


def run(argv):
  cmd = _args(argv)
  if cmd == "list":
    print("\n".join(live.UserStore(_STATE_DIR.value, model_id="").users()))
    return
  if cmd == "wipe":
    store = live.UserStore(_STATE_DIR.value, model_id="")
    print(f"wiped {_USER.value}" if store.wipe(_USER.value) else f"nothing stored for {_USER.value}")
    return
  if _TOP_K.value < 1 or _L2.value < 1:
    raise live.StateError("top_k and l2_blocks: must be >= 1")
  server = live.Server(_WORKDIR.value, _STATE_DIR.value, tiers=_TIERS.value, top_k=_TOP_K.value,
                       l2_blocks=_L2.value)
  tokens = _tokens()
  if cmd == "ingest":
    n = server.ingest(_USER.value, tokens)
    print(f"{_USER.value}: ingested {n} tokens")
  else:
    print(" ".join(str(t) for t in server.query(_USER.value, tokens, incognito=_INCOGNITO.value)))


def main(argv):
  logging.set_verbosity(logging.WARNING)
  run(argv)


if __name__ == "__main__":
  cli.run(main)
