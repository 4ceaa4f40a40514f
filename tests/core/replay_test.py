"""experiments/replay_failures.py: every reliability failure of issue 11, replayed on the binaries.

The cheap scenarios (bad inputs, divergence, the lock) run in the default suite; the ones
that need a clean reference run and several trainings are slow-marked.
"""
import pytest

from experiments import replay_failures as replay


def _assert_all_hold(scenario, tmp_path):
  results = replay.replay([scenario], str(tmp_path), log=lambda *_: None)
  assert results, scenario
  failed = [f"{c.name}: {c.shown}" for _, c in results if c.ok is False]
  assert not failed, "\n".join(failed)


@pytest.mark.parametrize("scenario", replay.CHEAP)
def test_replay(scenario, tmp_path):
  _assert_all_hold(scenario, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", replay.SLOW)
def test_replay_slow(scenario, tmp_path):
  _assert_all_hold(scenario, tmp_path)
