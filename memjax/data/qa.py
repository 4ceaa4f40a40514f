"""Question-answer pairs for Dynamic Context Memory phase 1a.

Three sources of `QAExample`s:
  synthetic_qa(n, seed)          templated facts ("Mara's favourite colour is teal."), deterministic
                                 from the seed; runs offline, the default.
  natural_qa(n, seed)            48 hand-written passages of a few sentences with a question in
                                 natural, varied phrasing and an answer of one to four words
                                 (fictional places and people: the answer is in the passage, not
                                 in a model's world knowledge); offline.
  squad_v2(n, split, data_dir)   SQuAD 2.0 through tensorflow-datasets (`tfds.data_source`,
                                 array_record files already prepared in `data_dir`); the
                                 unanswerable questions are skipped.

`exact_match` / `token_f1` are the SQuAD answer metrics (lowercase, no punctuation or articles).
"""
from __future__ import annotations

import dataclasses
import re
import string

import numpy as np


@dataclasses.dataclass(frozen=True)
class QAExample:
  id: str
  context: str     # the source text the content should stand for
  question: str
  answer: str


# --- synthetic facts ---------------------------------------------------------------------------

NAMES = ("Mara", "Tobias", "Ines", "Kofi", "Lena", "Ravi", "Sofia", "Jonas", "Amara", "Pavel",
         "Yuki", "Omar", "Clara", "Emeka", "Hana", "Luca", "Noor", "Felix", "Zara", "Mateo")

# attribute -> (fact template, question template, answers). Answers are single common words so a
# small model can emit them; `chance` is the mean of 1 / len(answers).
ATTRIBUTES = {
    "colour": ("{name}'s favourite colour is {value}.", "What is {name}'s favourite colour?",
               ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")),
    "city": ("{name} lives in {value}.", "Where does {name} live?",
             ("Paris", "Tokyo", "Cairo", "Lima", "Oslo", "Rome", "Berlin", "Madrid")),
    "pet": ("{name} owns a {value}.", "What pet does {name} own?",
            ("cat", "dog", "parrot", "rabbit", "horse", "goldfish", "turtle", "hamster")),
    "job": ("{name} works as a {value}.", "What is {name}'s job?",
            ("doctor", "teacher", "pilot", "baker", "farmer", "lawyer", "painter", "nurse")),
    "fruit": ("{name}'s favourite fruit is the {value}.", "Which fruit does {name} like best?",
              ("apple", "banana", "mango", "cherry", "lemon", "peach", "grape", "pear")),
    "sport": ("{name} plays {value} every weekend.", "Which sport does {name} play?",
              ("tennis", "football", "chess", "golf", "hockey", "cricket", "rugby", "baseball")),
}

# A distractor fact about someone else precedes or follows the target fact, so the context holds
# more than the answer.
SYNTHETIC_CHANCE = float(np.mean([1.0 / len(a[2]) for a in ATTRIBUTES.values()]))


def synthetic_qa(n: int, seed: int = 0) -> list[QAExample]:
  """`n` templated fact/question/answer triples; the same `seed` gives the same list."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  rng = np.random.default_rng(seed)
  attrs = sorted(ATTRIBUTES)
  out = []
  for i in range(n):
    attr, other_attr = (attrs[j] for j in rng.choice(len(attrs), 2, replace=False))
    name, other = (NAMES[j] for j in rng.choice(len(NAMES), 2, replace=False))
    fact_t, question_t, values = ATTRIBUTES[attr]
    value = values[rng.integers(len(values))]
    o_fact_t, _, o_values = ATTRIBUTES[other_attr]
    distractor = o_fact_t.format(name=other, value=o_values[rng.integers(len(o_values))])
    fact = fact_t.format(name=name, value=value)
    context = f"{fact} {distractor}" if rng.integers(2) else f"{distractor} {fact}"
    out.append(QAExample(id=f"synthetic-{seed}-{i}", context=context,
                         question=question_t.format(name=name), answer=value))
  return out


# --- hand-written passages ---------------------------------------------------------------------

# (context, question, answer); the answer is a span of the context.
NATURAL = (
    ("The village of Arden sits on the east bank of the Miller River. Its stone bridge was built "
     "in 1847 by a mason named Thomas Reed. Every autumn the village holds a pumpkin fair.",
     "Who built the stone bridge in Arden?", "Thomas Reed"),
    ("Marta started a bakery on Elm Street in 2015. Her best-selling item is a rye loaf with "
     "caraway seeds. The shop closes every Monday.",
     "On which day is Marta's bakery closed?", "Monday"),
    ("The research vessel Halcyon left port in March with a crew of twenty-two. It spent four "
     "months mapping coral reefs near the Kessel Islands before returning home.",
     "How many people were in the Halcyon's crew?", "twenty-two"),
    ("In the town museum there is a clock that has not stopped since 1902. It was a gift from "
     "a watchmaker called Ida Brandt, who lived above the post office.",
     "Who gave the museum its clock?", "Ida Brandt"),
    ("Our team's new office is on the fourth floor of the Harbor Building. The kitchen is next "
     "to the elevators, and the meeting rooms are named after rivers.",
     "Which floor is the team's new office on?", "the fourth floor"),
    ("Leo planted three apple trees behind his house last spring. Only one of them, the tree "
     "nearest the fence, produced fruit this year.",
     "How many apple trees did Leo plant?", "three"),
    ("The Orchid Festival takes place each May in the city of Veloria. Visitors come to see a "
     "rare purple orchid that blooms for only six days.",
     "In which month is the Orchid Festival held?", "May"),
    ("Professor Anand teaches a course on volcanoes every winter term. His favourite example is "
     "Mount Tervel, which last erupted in 1961.",
     "When did Mount Tervel last erupt?", "1961"),
    ("The library lends out musical instruments as well as books. The most borrowed instrument "
     "is a small blue ukulele donated by a local school.",
     "What is the most borrowed instrument at the library?", "a small blue ukulele"),
    ("Nadia trained for two years before running her first marathon in Lisbon. She finished in "
     "just under four hours and celebrated with her sister.",
     "Where did Nadia run her first marathon?", "Lisbon"),
    ("The old lighthouse on Gull Point was painted red and white in 1930. It was switched off "
     "in 1988 and is now a small hotel with four rooms.",
     "What is the old lighthouse used as today?", "a hotel"),
    ("At the farm market, Mr. Okafor sells honey from his own hives. He keeps the bees in an "
     "orchard of cherry trees north of the town.",
     "What does Mr. Okafor sell at the farm market?", "honey"),
    ("The school choir won the regional competition with a song about the sea. Their "
     "conductor, Ms. Varga, has led the choir for eleven years.",
     "Who conducts the school choir?", "Ms. Varga"),
    ("Kenji repairs bicycles in a garage behind the train station. Most of his customers are "
     "students, and he charges ten dollars to fix a flat tyre.",
     "How much does Kenji charge to fix a flat tyre?", "ten dollars"),
    ("The ferry to Brindle Island leaves twice a day, at eight in the morning and at five in the "
     "afternoon. The crossing takes about forty minutes.",
     "How long does the ferry crossing to Brindle Island take?", "forty minutes"),
    ("Grandma Rose keeps her recipes in a green notebook. Her most famous recipe is a lemon cake "
     "that she bakes for every family birthday.",
     "What does Grandma Rose bake for family birthdays?", "a lemon cake"),
    ("The city of Tamsk built a new tram line last year. It connects the airport with the "
     "central square and runs every ten minutes.",
     "What does the new tram line in Tamsk connect to the central square?", "the airport"),
    ("Elena's cat is called Pepper. Pepper is grey with white paws and likes to sleep on the "
     "warm windowsill in the kitchen.",
     "What is the name of Elena's cat?", "Pepper"),
    ("During the storm, a large oak tree fell across Mill Lane. Workers from the council cleared "
     "the road the next morning with two chainsaws.",
     "What kind of tree fell across Mill Lane?", "an oak tree"),
    ("The chess club meets on Thursday evenings in the back room of the Copper Kettle cafe. New "
     "members get their first cup of tea for free.",
     "Where does the chess club meet?", "the Copper Kettle cafe"),
    ("Samir wrote his first novel while working as a night guard at a museum. The book, called "
     "The Silent Hall, was published when he was thirty.",
     "What is the title of Samir's first novel?", "The Silent Hall"),
    ("The hiking trail to Lake Serin is nine kilometres long. Halfway up there is a wooden hut "
     "where walkers can rest and fill their bottles.",
     "How long is the hiking trail to Lake Serin?", "nine kilometres"),
    ("Our neighbour Mrs. Lindqvist grows tomatoes in her greenhouse. This summer she gave us a "
     "basket of them and a jar of basil pesto.",
     "What does Mrs. Lindqvist grow in her greenhouse?", "tomatoes"),
    ("The observatory on Hollow Hill opens to the public on clear Saturday nights. Its largest "
     "telescope was built in Germany in 1910.",
     "Where was the observatory's largest telescope built?", "Germany"),
    ("Pablo learned to play the violin from his uncle, who had played in an orchestra in Madrid. "
     "Now Pablo teaches children at a music school.",
     "Who taught Pablo to play the violin?", "his uncle"),
    ("The small airline Skylark flies only between two cities, Dunmore and Fairhaven. Its planes "
     "are painted yellow and carry forty passengers.",
     "What colour are Skylark's planes?", "yellow"),
    ("Every Sunday, Aisha walks her dog along the canal to the flower market. She usually buys "
     "sunflowers for her kitchen table.",
     "What flowers does Aisha usually buy?", "sunflowers"),
    ("The bridge over the Vorn Gorge is the longest footbridge in the region. It took three "
     "years to build and opened to walkers in 2019.",
     "When did the footbridge over the Vorn Gorge open?", "2019"),
    ("Tomas keeps a collection of old maps in his attic. The oldest one shows the coast of "
     "Portugal and was drawn by hand in 1750.",
     "Which coast does Tomas's oldest map show?", "Portugal"),
    ("The community garden was started by a retired nurse named Grace Hill. Today more than "
     "fifty families grow vegetables there.",
     "Who started the community garden?", "Grace Hill"),
    ("Ravi's favourite restaurant serves only soup. His usual order is the red lentil soup with "
     "a slice of warm bread.",
     "What is Ravi's usual order?", "red lentil soup"),
    ("The theatre on King Street will show a new play in October. It tells the story of a "
     "sailor who gets lost in the Arctic.",
     "Where does the sailor in the new play get lost?", "the Arctic"),
    ("Zofia works as a translator for a publishing house in Warsaw. She translates children's "
     "books from Swedish into Polish.",
     "Which language does Zofia translate from?", "Swedish"),
    ("The swimming pool in Kettering reopened after repairs in June. It now has a new diving "
     "board and a slide for young children.",
     "In which month did the Kettering pool reopen?", "June"),
    ("Hugo found a silver coin while digging in his garden. Experts said it was Roman and "
     "about two thousand years old.",
     "What did Hugo find in his garden?", "a silver coin"),
    ("The annual boat race on the Lune River is rowed over three miles. This year the team from "
     "Bridgetown won by two boat lengths.",
     "Which team won this year's boat race?", "Bridgetown"),
    ("Mina's grandfather was a fisherman who sailed a boat named Morning Star. He caught mostly "
     "mackerel and sold them at the harbour.",
     "What was the name of the grandfather's boat?", "Morning Star"),
    ("The bookshop on Quay Street has a black cat that sleeps in the window. Customers call him "
     "Captain, and he has his own small bed.",
     "What do customers call the bookshop's cat?", "Captain"),
    ("The new hospital wing has two hundred beds and a rooftop garden. It was designed by an "
     "architect from Oslo named Kari Berg.",
     "Who designed the new hospital wing?", "Kari Berg"),
    ("Daniel drives a delivery van for a bakery. He starts work at four in the morning and "
     "finishes his route by eleven.",
     "What time does Daniel start work?", "four in the morning"),
    ("The valley of Ostra is known for its goat cheese. Farmers there age the cheese in caves for "
     "at least six months.",
     "Where do the farmers of Ostra age their cheese?", "in caves"),
    ("Isabel repaired the roof of her cottage with slate tiles from a nearby quarry. The work "
     "took her and her brother two weekends.",
     "What did Isabel use to repair her roof?", "slate tiles"),
    ("The train from Calder to Westfield passes through a tunnel under the Brant Hills. The "
     "tunnel is almost two miles long.",
     "What does the train pass under on its way to Westfield?", "the Brant Hills"),
    ("Olga has taught mathematics at the same school for twenty years. Her students made her a "
     "quilt with a number sewn on every square.",
     "What did Olga's students make for her?", "a quilt"),
    ("A family of otters lives under the wooden pier at Selby. Children watch them every evening "
     "when the otters come out to hunt for crabs.",
     "What do the otters at Selby hunt for?", "crabs"),
    ("The city council voted to plant a thousand trees along the ring road. The first trees, "
     "mostly maples, were planted in November.",
     "What kind of trees were planted first?", "maples"),
    ("Ahmed's sister is a pilot for a cargo airline. She flies mostly at night and once landed "
     "a plane during a snowstorm in Anchorage.",
     "Where did Ahmed's sister land during a snowstorm?", "Anchorage"),
    ("The harvest festival in Lowbridge ends with a parade of tractors decorated with flowers. "
     "The best tractor wins a silver cup.",
     "What does the best decorated tractor win?", "a silver cup"),
)


def natural_qa(n: int, seed: int = 0) -> list[QAExample]:
  """`n` of the hand-written passages, in a seeded order (seed 0: the order written)."""
  if not 1 <= n <= len(NATURAL):
    raise ValueError(f"data.num_examples: the natural set has {len(NATURAL)} passages, asked {n}")
  order = np.arange(len(NATURAL)) if seed == 0 else \
      np.random.default_rng(seed).permutation(len(NATURAL))
  return [QAExample(id=f"natural-{int(i)}", context=NATURAL[i][0], question=NATURAL[i][1],
                    answer=NATURAL[i][2]) for i in order[:n]]


# --- SQuAD 2.0 ---------------------------------------------------------------------------------

def _text(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, np.ndarray) and x.ndim == 0:
    return _text(x.item())
  return str(x)


def squad_v2(n: int, *, split: str = "validation", data_dir: str | None = None,
             seed: int = 0, field: str = "data.data_dir") -> list[QAExample]:
  """The first `n` answerable SQuAD 2.0 pairs of `split` after a seeded shuffle.

  Needs the dataset prepared as array_record in `data_dir` (tfds.data_source cannot download
  without tensorflow); raises ValueError naming `field` otherwise.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - it is in install_requires
    raise ValueError(f"{field}: SQuAD 2.0 needs tensorflow-datasets ({e})") from e
  try:
    source = tfds.data_source("squad/v2.0", split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for a missing or non-array_record dataset
    where = data_dir or "the default tfds data dir (~/tensorflow_datasets)"
    raise ValueError(
        f"{field}: SQuAD 2.0 (squad/v2.0, split {split!r}) is not prepared as array_record in "
        f"{where}; prepare it with `tfds build squad/v2.0 --file_format=array_record "
        f"--data_dir=DIR` on a machine with tensorflow, or use data.source='synthetic' "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  order = np.random.default_rng(seed).permutation(len(source))
  out = []
  for i in order:
    rec = source[int(i)]
    texts = rec["answers"]["text"]
    if bool(np.asarray(rec.get("is_impossible", False))) or len(texts) == 0:
      continue
    out.append(QAExample(id=_text(rec["id"]), context=_text(rec["context"]),
                         question=_text(rec["question"]), answer=_text(texts[0])))
    if len(out) == n:
      break
  if len(out) < n:
    raise ValueError(f"data.num_examples: asked for {n} answerable pairs, split {split!r} has "
                     f"{len(out)}")
  return out


def load(source: str, n: int, *, seed: int = 0, split: str = "validation",
         data_dir: str | None = None) -> list[QAExample]:
  if source == "synthetic":
    return synthetic_qa(n, seed)
  if source == "natural":
    return natural_qa(n, seed)
  if source == "squad_v2":
    return squad_v2(n, split=split, data_dir=data_dir, seed=seed)
  raise ValueError(f"data.source: unknown value {source!r}; choose one of ['natural', 'squad_v2', 'synthetic']")


def chance(source: str) -> float:
  """Accuracy of guessing the answer: uniform over an attribute's values; 0 for open answers."""
  return SYNTHETIC_CHANCE if source == "synthetic" else 0.0


def chance_without_question(source: str) -> float:
  """Guessing without even the question (a reader of [A_mode | STM] alone): uniform over every
  attribute's values; 0 for open answers."""
  if source != "synthetic":
    return 0.0
  return 1.0 / len({v for a in ATTRIBUTES.values() for v in a[2]})


# --- metrics -----------------------------------------------------------------------------------

def normalize_answer(s: str) -> str:
  """SQuAD's normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match(prediction: str, target: str) -> bool:
  return normalize_answer(prediction) == normalize_answer(target)


def token_f1(prediction: str, target: str) -> float:
  p, t = normalize_answer(prediction).split(), normalize_answer(target).split()
  if not p or not t:
    return float(p == t)
  common = {}
  for w in p:
    if w in t:
      common[w] = min(p.count(w), t.count(w))
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(t)
  return 2 * precision * recall / (precision + recall)
