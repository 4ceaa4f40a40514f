"""Synthetic QA generator and SQuAD helpers."""
import pytest

from memjax.data import qa


def test_synthetic_qa_is_deterministic_from_the_seed():
  a, b = qa.synthetic_qa(50, seed=3), qa.synthetic_qa(50, seed=3)
  assert a == b
  assert a != qa.synthetic_qa(50, seed=4)
  assert qa.synthetic_qa(10, seed=3) == a[:10]          # a prefix does not depend on n
  assert len({e.id for e in a}) == 50


def test_synthetic_answer_is_in_the_context_and_not_in_the_question():
  for e in qa.synthetic_qa(200, seed=0):
    assert e.answer in e.context
    assert e.answer not in e.question
    assert e.question.endswith("?")
    assert e.context.count(".") == 2                      # the fact and a distractor


def test_chance_and_metrics():
  assert qa.chance("synthetic") == pytest.approx(1 / 8)
  assert qa.chance("squad_v2") == 0.0
  assert qa.exact_match("The Cat.", "cat")
  assert not qa.exact_match("cat cat", "cat")
  assert qa.token_f1("black cat", "cat") == pytest.approx(2 / 3)
  assert qa.token_f1("", "") == 1.0


def test_chance_without_the_question_is_one_over_every_answer_there_is():
  answers = {e.answer for e in qa.synthetic_qa(2000, seed=0)}
  assert len(answers) == 48                                # six attributes x eight values
  assert qa.chance_without_question("synthetic") == pytest.approx(1 / len(answers))
  assert qa.chance_without_question("synthetic") < qa.chance("synthetic")
  assert qa.chance_without_question("squad_v2") == 0.0


def test_squad_absent_gives_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"^data.data_dir: SQuAD 2.0 .* not prepared"):
    qa.squad_v2(3, data_dir=str(tmp_path))


def test_unknown_source():
  with pytest.raises(ValueError, match="data.source"):
    qa.load("nope", 3)
  with pytest.raises(ValueError, match="n must be"):
    qa.synthetic_qa(0)


def test_natural_set_is_question_answering():
  from memjax.data import qa as qa_lib
  ex = qa_lib.natural_qa(48)
  assert len(ex) == 48 and len({e.question for e in ex}) == 48
  for e in ex:
    assert qa_lib.normalize_answer(e.answer) in qa_lib.normalize_answer(e.context), e.id
    assert 1 <= len(e.answer.split()) <= 4 and e.question.endswith("?")
    assert e.context.count(".") >= 2                      # a few sentences, not one fact
  assert [e.id for e in qa_lib.natural_qa(5, seed=3)] == [e.id for e in qa_lib.natural_qa(5, seed=3)]
  assert [e.id for e in qa_lib.natural_qa(5, seed=3)] != [e.id for e in qa_lib.natural_qa(5)]
  assert qa_lib.chance("natural") == 0.0
