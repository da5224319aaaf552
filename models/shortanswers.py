"""Short-answer pairs, generated: the answers RL rewards are mostly about.

A *group* is one reference answer with responses that give the same answer in other surface forms
(``positives``) and responses that give a different answer (``negatives``): numbers in digits,
words, separators, decimals and scientific form with near misses; quantities (money, percentages,
units) with a wrong number or a wrong unit scale; fractions and their decimal, percent and word
forms with reciprocals and near values; yes/no and true/false phrasings; multiple-choice letters;
dates in several formats with off-by-one day, month or year; named entities (full name vs surname,
unambiguous aliases) against another entity of the same kind; wrappers RL rollouts produce
("The answer is X.", ``\\boxed{X}``, "#### X", a worked solution before the final answer, where
intermediate numbers must not count); empty responses.

Two template sets that share no surface template: ``TRAIN`` (the training data of the default
model) and ``PROBE`` (``rewardrt eval``'s short-answer section). Entities are split the same way,
so a probe never asks about a name the training data used. Everything is pure Python and seeded:
the same seed and template set give the same groups on every machine, torch-free.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

KINDS = ("number", "quantity", "fraction", "yesno", "option", "date", "entity", "worked", "chain")
# kinds training draws only when a recipe's kind weights name them: older recipes keep their data
OPT_IN_KINDS = ("chain",)


@dataclass(frozen=True)
class Group:
    kind: str
    reference: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    hedges: tuple[str, ...] = ()  # the right answer offered among wrong ones ("72 or 73"): not an answer
    echoes: tuple[str, ...] = ()  # the right answer in two of its forms, joined as a hedge joins
                                  # candidates ("72 or seventy-two"): still the answer
    decoys: tuple[str, ...] = ()  # a different answer in another form than the reference's
                                  # ("seventy-three" or "0.7" against "72" or "1/2"): not the answer
    counterparts: tuple[str, ...] = ()  # the right answer in a decoy's form and wrapper ("seventy-two",
                                        # "0.5"): the answer, so only the value tells it from the decoy


# --- number words ----------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))


def number_words(n: int) -> str:
    """English words of an integer: 72 -> 'seventy-two', 1205 -> 'one thousand two hundred five'."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{number_words(head)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError(n)  # unreachable: every n >= 1000 has a scale


def _thousands(n: int, sep: str = ",") -> str:
    return f"{n:,}".replace(",", sep)


# --- template sets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Templates:
    """The surface templates of one set. ``{}`` marks where the answer goes."""

    wrappers: tuple[str, ...]             # around any final answer
    yes: tuple[str, ...]                  # phrasings of an affirmative answer
    no: tuple[str, ...]
    true: tuple[str, ...]
    false: tuple[str, ...]
    option: tuple[str, ...]               # {L}: the letter, {T}: the option's text
    worked_steps: tuple[tuple[str, str], ...]  # (one reasoning step "{a} op {b} = {c}", its op: + - *)
    worked_endings: tuple[str, ...]       # the conclusion carrying the final answer {}
    year: tuple[str, ...]                 # a year alone
    entities_half: int                    # 0: the first half of each entity list, 1: the second
    hedges: tuple[str, ...] = ()          # several candidate answers in one response, one {} each
    extra: dict = field(default_factory=dict)


TRAIN = Templates(
    wrappers=("{}", "The answer is {}.", "Final answer: {}", "#### {}", "\\boxed{{{}}}", "Answer: {}",
              "So the answer is {}.", "**{}**", "The answer is \\boxed{{{}}}.", "{}."),
    yes=("Yes", "yes", "Yes.", "Yes, it is.", "Yes, that is correct.", "Correct.", "That's right.",
         "Affirmative.", "Indeed, yes."),
    no=("No", "no", "No.", "No, it is not.", "No, that is not correct.", "Incorrect.", "That's wrong.",
        "Negative.", "Not at all."),
    true=("True", "true", "True.", "It is true.", "The statement is true.", "T"),
    false=("False", "false", "False.", "It is false.", "The statement is false.", "F"),
    option=("{L}", "({L})", "Option {L}", "The correct option is {L}", "{L}) {T}", "Answer: {L}",
            "The answer is ({L}).", "{L}. {T}"),
    worked_steps=(("First, {a} + {b} = {c}.", "+"), ("We have {a} * {b} = {c}.", "*"),
                  ("Then {a} - {b} = {c}.", "-"), ("Next, {a} + {b} gives {c}.", "+"),
                  ("Multiplying, {a} x {b} = {c}.", "*"), ("So {a} minus {b} is {c}.", "-")),
    worked_endings=("The answer is {}.", "Final answer: {}", "#### {}", "Therefore the answer is \\boxed{{{}}}.",
                    "So the total is {}.", "Answer: {}"),
    year=("{}", "in {}", "the year {}", "In {}."),
    entities_half=0,
    hedges=("{} or {}", "Either {} or {}.", "{}, {} or {}", "The answer is {} or {}.", "{} {} {}", "{}, {}, {}",
            "It could be {} or {}.", "{} or possibly {}", "Final answer: {} or {}"),
)

PROBE = Templates(
    wrappers=("The final answer is {}.", "**Answer:** {}", "The result is {}.", "$\\boxed{{{}}}$",
              "Final Answer: The final answer is {}. I hope it is correct.", "I believe it is {}.",
              "{} is the answer.", "ANSWER: {}", "Result = {}", "My answer: {}"),
    yes=("Yep.", "Yes, definitely.", "Sure, yes.", "The answer is yes.", "Yes, that's true.", "It is, yes."),
    no=("Nope.", "No, definitely not.", "Certainly not.", "The answer is no.", "No, that's false.",
        "It is not."),
    true=("The answer is true.", "That statement is true.", "TRUE", "Answer: True"),
    false=("The answer is false.", "That statement is false.", "FALSE", "Answer: False"),
    option=("[{L}]", "Choice {L}", "I pick {L}.", "The right choice is ({L}).", "{L}: {T}",
            "Option ({L}) {T}"),
    worked_steps=(("Adding {a} and {b} we get {c}.", "+"), ("Since {a} times {b} equals {c}, we continue.", "*"),
                  ("Subtracting {b} from {a} leaves {c}.", "-"), ("Now {a} plus {b} makes {c}.", "+"),
                  ("{a} multiplied by {b} is {c}.", "*")),
    worked_endings=("The final answer is {}.", "Hence the result is {}.", "ANSWER: {}",
                    "Putting it together we obtain $\\boxed{{{}}}$.", "In total that is {}."),
    year=("year {}", "It was {}.", "The year was {}."),
    entities_half=1,
    hedges=("Maybe {}, maybe {}.", "I'm not sure: {} or {}.", "Could be {}, {}, or {}.", "{}; {}; {}",
            "Answer: {} and/or {}", "Probably {} (or {})."),
)


# --- entities: (canonical, other correct forms) in categories; a negative is another of the category

_ENTITIES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "person": [
        ("Albert Einstein", ("Einstein",)), ("Marie Curie", ("Curie",)), ("Isaac Newton", ("Newton",)),
        ("Charles Darwin", ("Darwin",)), ("Ada Lovelace", ("Lovelace",)), ("Nikola Tesla", ("Tesla",)),
        ("Galileo Galilei", ("Galileo",)), ("Leonardo da Vinci", ("da Vinci", "Leonardo")),
        ("William Shakespeare", ("Shakespeare",)), ("Jane Austen", ("Austen",)),
        ("Abraham Lincoln", ("Lincoln",)), ("Napoleon Bonaparte", ("Napoleon",)),
        ("Wolfgang Amadeus Mozart", ("Mozart",)), ("Ludwig van Beethoven", ("Beethoven",)),
        ("Alan Turing", ("Turing",)), ("Sigmund Freud", ("Freud",)), ("Pablo Picasso", ("Picasso",)),
        ("Vincent van Gogh", ("van Gogh",)), ("Johannes Kepler", ("Kepler",)),
        ("Nicolaus Copernicus", ("Copernicus",)), ("Mahatma Gandhi", ("Gandhi",)),
        ("Winston Churchill", ("Churchill",)), ("Leo Tolstoy", ("Tolstoy",)), ("Mark Twain", ("Twain",)),
        ("Dmitri Mendeleev", ("Mendeleev",)), ("Louis Pasteur", ("Pasteur",)),
        ("Gregor Mendel", ("Mendel",)), ("Rosalind Franklin", ("Franklin",)),
        ("Frida Kahlo", ("Kahlo",)), ("Johann Sebastian Bach", ("Bach",)),
        ("Emily Dickinson", ("Dickinson",)), ("Niels Bohr", ("Bohr",)), ("Max Planck", ("Planck",)),
        ("Michael Faraday", ("Faraday",)), ("James Clerk Maxwell", ("Maxwell",)),
        ("Florence Nightingale", ("Nightingale",)), ("Confucius", ("Kong Fuzi",)),
        ("Aristotle", ("Aristotle of Stagira",)), ("Cleopatra", ("Cleopatra VII",)),
        ("Martin Luther King Jr.", ("Martin Luther King", "MLK")),
    ],
    "place": [
        ("Paris", ("Paris, France",)), ("Tokyo", ("Tokyo, Japan",)), ("Canberra", ("Canberra, Australia",)),
        ("Ottawa", ("Ottawa, Canada",)), ("Nairobi", ("Nairobi, Kenya",)), ("Lima", ("Lima, Peru",)),
        ("Madrid", ("Madrid, Spain",)), ("Cairo", ("Cairo, Egypt",)), ("Brasilia", ("Brasília",)),
        ("Beijing", ("Peking",)), ("Mumbai", ("Bombay",)), ("New York City", ("NYC", "New York")),
        ("United States", ("USA", "the United States of America", "the US")),
        ("United Kingdom", ("UK", "Britain")), ("Germany", ("Deutschland",)), ("Japan", ("Nippon",)),
        ("Mount Everest", ("Everest",)), ("the Pacific Ocean", ("Pacific", "the Pacific")),
        ("the Nile", ("Nile River", "the River Nile")), ("the Amazon", ("Amazon River",)),
        ("the Sahara", ("Sahara Desert",)), ("Lake Victoria", ("Victoria",)), ("Antarctica", ("the Antarctic continent",)),
        ("Rome", ("Roma",)), ("Vienna", ("Wien",)), ("Moscow", ("Moskva",)), ("Athens", ("Athina",)),
        ("Istanbul", ("Constantinople",)), ("Buenos Aires", ("Buenos Aires, Argentina",)),
        ("Mexico City", ("Ciudad de México",)), ("Seoul", ("Seoul, South Korea",)),
        ("Jakarta", ("Jakarta, Indonesia",)), ("Oslo", ("Oslo, Norway",)), ("Dublin", ("Dublin, Ireland",)),
        ("Lisbon", ("Lisboa",)), ("Warsaw", ("Warszawa",)), ("Prague", ("Praha",)),
        ("the Alps", ("Alps", "the Alpine range")), ("Iceland", ("Ísland",)), ("Egypt", ("Arab Republic of Egypt",)),
    ],
    "chemical": [
        ("water", ("H2O", "H₂O")), ("carbon dioxide", ("CO2", "CO₂")), ("sodium chloride", ("NaCl", "table salt")),
        ("oxygen", ("O2", "O₂")), ("methane", ("CH4",)), ("ammonia", ("NH3",)), ("glucose", ("C6H12O6",)),
        ("sulfuric acid", ("H2SO4",)), ("hydrochloric acid", ("HCl",)), ("ethanol", ("C2H5OH", "ethyl alcohol")),
        ("gold", ("Au",)), ("iron", ("Fe",)), ("sodium", ("Na",)), ("potassium", ("K",)), ("silver", ("Ag",)),
        ("copper", ("Cu",)), ("lead", ("Pb",)), ("mercury", ("Hg",)), ("helium", ("He",)), ("nitrogen", ("N2",)),
        ("hydrogen peroxide", ("H2O2",)), ("calcium carbonate", ("CaCO3",)), ("ozone", ("O3",)),
        ("carbon monoxide", ("CO",)), ("tin", ("Sn",)), ("zinc", ("Zn",)), ("uranium", ("U",)),
        ("neon", ("Ne",)), ("acetic acid", ("CH3COOH", "ethanoic acid")), ("benzene", ("C6H6",)),
    ],
    "title": [
        ("Pride and Prejudice", ("Pride & Prejudice",)), ("War and Peace", ("War & Peace",)),
        ("Hamlet", ("The Tragedy of Hamlet",)), ("Nineteen Eighty-Four", ("1984",)),
        ("The Great Gatsby", ("Great Gatsby",)), ("Moby-Dick", ("Moby Dick",)),
        ("One Hundred Years of Solitude", ("100 Years of Solitude",)), ("Don Quixote", ("Don Quijote",)),
        ("The Odyssey", ("Odyssey",)), ("Crime and Punishment", ("Crime & Punishment",)),
        ("Star Wars", ("Star Wars: A New Hope",)), ("The Godfather", ("Godfather",)),
        ("Casablanca", ("Casablanca (1942)",)), ("The Lord of the Rings", ("LOTR", "Lord of the Rings")),
        ("Harry Potter and the Philosopher's Stone", ("Harry Potter and the Sorcerer's Stone",)),
        ("The Origin of Species", ("On the Origin of Species",)), ("Brave New World", ("Brave New World (1932)",)),
        ("Jane Eyre", ("Jane Eyre: An Autobiography",)), ("Ulysses", ("Ulysses by Joyce",)),
        ("Frankenstein", ("Frankenstein; or, The Modern Prometheus",)), ("The Divine Comedy", ("Divina Commedia",)),
        ("Les Misérables", ("Les Miserables",)), ("The Republic", ("Plato's Republic",)),
        ("Macbeth", ("The Tragedy of Macbeth",)), ("Dracula", ("Bram Stoker's Dracula",)),
        ("The Hobbit", ("Hobbit",)), ("Citizen Kane", ("Citizen Kane (1941)",)), ("Vertigo", ("Vertigo (1958)",)),
    ],
}

_OPTION_TEXTS = ("photosynthesis", "evaporation", "gravity", "friction", "mitosis", "erosion", "inertia",
                 "a mammal", "a reptile", "an insect", "the heart", "the liver", "the lungs", "Mars", "Venus",
                 "Jupiter", "increases", "decreases", "stays the same", "cannot be determined", "hydrogen",
                 "oxygen", "nitrogen", "carbon", "the mitochondria", "the nucleus", "the ribosome",
                 "1 only", "2 only", "both 1 and 2", "neither 1 nor 2", "all of the above", "none of the above")

_MONTHS = ("January February March April May June July August September October November December").split()
_UNITS = (  # (symbol, singular, plural, alternatives); scale family for wrong-scale negatives
    ("km", "kilometer", "kilometers", ("kilometres",), "length"),
    ("m", "meter", "meters", ("metres",), "length"),
    ("cm", "centimeter", "centimeters", ("centimetres",), "length"),
    ("kg", "kilogram", "kilograms", ("kilos",), "mass"),
    ("g", "gram", "grams", ("grammes",), "mass"),
    ("h", "hour", "hours", ("hrs",), "time"),
    ("min", "minute", "minutes", ("mins",), "time"),
    ("s", "second", "seconds", ("secs",), "time"),
    ("L", "liter", "liters", ("litres",), "volume"),
    ("mL", "milliliter", "milliliters", ("millilitres",), "volume"),
)


# --- generators: each returns one Group -----------------------------------------------------------------

def _near_ints(n: int, rng: random.Random) -> list[int]:
    """Different numbers a wrong answer gives: +-1, +-10, a digit swap, x10 or /10, the sign."""
    out = {n + 1, n - 1, n + 10, n - 10, n * 10}
    if n % 10 == 0 and n:
        out.add(n // 10)
    digits = list(str(abs(n)))
    if len(digits) >= 2:
        i = rng.randrange(len(digits) - 1)
        digits[i], digits[i + 1] = digits[i + 1], digits[i]
        swapped = int("".join(digits)) * (1 if n >= 0 else -1)
        out.add(swapped)
    if n:
        out.add(-n)
    out.discard(n)
    return sorted(out)


def _int_forms(n: int, rng: random.Random) -> list[str]:
    forms = [str(n)]
    if abs(n) <= 10**6 and rng.random() < 0.8:
        forms.append(number_words(n))
    if abs(n) >= 1000:
        forms.append(_thousands(n))
        if abs(n) % 1000 == 0 or rng.random() < 0.3:
            digits = str(abs(n))  # the exact mantissa: 3322099000 -> 3.322099
            mantissa = ("-" if n < 0 else "") + digits[0] + ("." + digits[1:].rstrip("0") if digits[1:].strip("0") else "")
            exp = len(digits) - 1
            forms.append(rng.choice([f"{mantissa}e{exp}", f"{mantissa} x 10^{exp}", f"{mantissa} × 10^{exp}"]))
    if rng.random() < 0.3:
        forms.append(f"{n}.0" if rng.random() < 0.5 else f"{n}.00")
    return forms


def _wrap(t: Templates, answer: str, rng: random.Random) -> str:
    return rng.choice(t.wrappers).format(answer)


def _pick(forms: Sequence[str], k: int, rng: random.Random) -> list[str]:
    return rng.sample(list(forms), min(k, len(forms)))


def _number(t: Templates, rng: random.Random) -> Group:
    r = rng.random()
    if r < 0.55:
        n = rng.randint(0, 120)
    elif r < 0.85:
        n = rng.randint(100, 9999)
    elif r < 0.93:
        n = rng.randint(10_000, 5_000_000) // rng.choice([1, 100, 1000]) * rng.choice([1, 100, 1000])
    else:
        n = -rng.randint(1, 500)
    if rng.random() < 0.15:  # a decimal answer
        d = rng.randint(1, 99)
        value = f"{n}.{d:02d}".rstrip("0")
        wrong = [f"{n}.{(d + 1) % 100:02d}".rstrip("0").rstrip("."), f"{n + 1}.{d:02d}".rstrip("0"),
                 f"{n}.{d:02d}"[:-1] if d >= 10 and d % 10 else str(n)]
        positives = [value, _wrap(t, value, rng), value + "0"]
        return Group("number", value, tuple(dict.fromkeys(positives)),
                     tuple(dict.fromkeys(_wrap(t, w, rng) if rng.random() < 0.5 else w
                                         for w in wrong if w != value and w != value + "0")))
    forms = _int_forms(n, rng)
    reference = forms[0] if rng.random() < 0.8 else rng.choice(forms)
    positives = [f if rng.random() < 0.5 else _wrap(t, f, rng) for f in _pick(forms, 3, rng)]
    wrong = _pick(_near_ints(n, rng), 3, rng)
    negatives = [(str(w) if rng.random() < 0.7 else rng.choice(_int_forms(w, rng))) for w in wrong]
    negatives = [w if rng.random() < 0.5 else _wrap(t, w, rng) for w in negatives]
    return Group("number", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


def _money(n: int, cents: int | None, rng: random.Random) -> list[str]:
    if cents is None:
        return [f"${n}", f"{n} dollars", f"${n}.00", f"USD {n}", f"{number_words(n)} dollars" if n < 1000 else f"${_thousands(n)}"]
    if n == 0:
        return [f"${0}.{cents:02d}", f"{cents} cents", f"{number_words(cents)} cents"]
    return [f"${n}.{cents:02d}", f"{n} dollars and {cents} cents", f"{n}.{cents:02d} dollars"]


def _quantity(t: Templates, rng: random.Random) -> Group:
    r = rng.random()
    if r < 0.35:  # money
        n = rng.randint(0, 2000) if rng.random() < 0.8 else rng.randint(2000, 90_000)
        cents = rng.randint(1, 99) if rng.random() < 0.3 else None
        if cents is None and n == 0:
            n = 1
        forms = _money(n, cents, rng)
        if cents is None:
            wrong = [_money(w, None, rng)[0] for w in _pick([x for x in _near_ints(n, rng) if x > 0], 2, rng)]
            wrong.append(f"{n} cents")  # a wrong unit scale
        else:
            wrong = [_money(n, (cents % 99) + 1, rng)[0], _money(n + 1, cents, rng)[0], f"${cents}.{n % 100:02d}"]
    elif r < 0.6:  # percentages
        n = rng.randint(1, 100)
        forms = [f"{n}%", f"{n} percent", f"{n} per cent", f"{n}.0%"]
        wrong = [f"{w}%" for w in _pick([x for x in _near_ints(n, rng) if x > 0], 2, rng)] + [f"0.{n:02d}%"]
    else:  # units
        sym, one, many, alts, family = rng.choice(_UNITS)
        n = rng.randint(1, 500)
        name = one if n == 1 else many
        forms = [f"{n} {sym}", f"{n}{sym}", f"{n} {name}"] + [f"{n} {a}" for a in alts if n != 1]
        others = [u for u in _UNITS if u[4] == family and u[0] != sym]
        wrong = [f"{w} {sym}" for w in _pick([x for x in _near_ints(n, rng) if x > 0], 2, rng)]
        if others:
            o = rng.choice(others)
            wrong.append(f"{n} {o[0] if rng.random() < 0.5 else (o[1] if n == 1 else o[2])}")
    reference = forms[0] if rng.random() < 0.7 else rng.choice(forms)
    positives = [f if rng.random() < 0.5 else _wrap(t, f, rng) for f in _pick(forms, 3, rng)]
    negatives = [w if rng.random() < 0.5 else _wrap(t, w, rng) for w in wrong]
    return Group("quantity", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


_FRACTION_WORDS = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters"),
                   5: ("fifth", "fifths"), 8: ("eighth", "eighths"), 10: ("tenth", "tenths")}


def _exact_decimal(value: float, places: int) -> str | None:
    """``value`` written with at most ``places`` decimals, trailing zeros dropped; None when that
    is not exact."""
    decimal = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return decimal if abs(value - float(decimal)) < 1e-12 else None


def _fraction_forms(p: int, q: int) -> list[str]:
    forms = [f"{p}/{q}", f"\\frac{{{p}}}{{{q}}}"]
    value = p / q
    decimal = _exact_decimal(value, 4)
    if decimal and len(decimal) <= 6:  # exact decimals only
        forms.append(decimal)
        if q in (2, 4, 5, 10, 20, 25, 50, 100):
            forms.append(f"{value * 100:g}%")
    if q in _FRACTION_WORDS and p < q:
        one, many = _FRACTION_WORDS[q]
        forms.append(f"{number_words(p)} {one if p == 1 else many}" if not (q == 2 and p == 1) else "one half")
    forms.append(f"{2 * p}/{2 * q}")  # an unreduced equal fraction
    return forms


def _fraction(t: Templates, rng: random.Random) -> Group:
    from math import gcd

    while True:
        q = rng.choice([2, 3, 4, 5, 8, 10, 6, 7, 9, 12, 20, 25])
        p = rng.randint(1, 2 * q)
        if gcd(p, q) == 1 and p != q:
            break
    forms = _fraction_forms(p, q)
    reference = forms[0] if rng.random() < 0.75 else rng.choice(forms[:3])
    positives = [f if rng.random() < 0.5 else _wrap(t, f, rng) for f in _pick(forms, 3, rng)]
    wrong = [(q, p), (p + 1, q), (p, q + 1)]
    if p > 1:
        wrong.append((p - 1, q))
    negatives = []
    for wp, wq in _pick(wrong, 3, rng):
        if wp * q == p * wq:
            continue
        wforms = _fraction_forms(wp, wq)
        w = wforms[0] if rng.random() < 0.6 else rng.choice(wforms)
        negatives.append(w if rng.random() < 0.5 else _wrap(t, w, rng))
    return Group("fraction", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


def _yesno(t: Templates, rng: random.Random) -> Group:
    boolean = rng.random() < 0.35
    yes, no = (t.true, t.false) if boolean else (t.yes, t.no)
    answer = rng.random() < 0.5
    reference = rng.choice((("True", "true") if answer else ("False", "false")) if boolean
                           else (("Yes", "yes") if answer else ("No", "no")))
    same, other = (yes, no) if answer else (no, yes)
    return Group("yesno", reference, tuple(_pick(same, 3, rng)), tuple(_pick(other, 3, rng)))


def _option(t: Templates, rng: random.Random) -> Group:
    n_options = rng.choice([4, 4, 5])
    letters = "ABCDE"[:n_options]
    texts = rng.sample(_OPTION_TEXTS, n_options)
    i = rng.randrange(n_options)
    letter, text = letters[i], texts[i]
    reference = rng.choice([letter, letter, f"({letter})", f"{letter}) {text}"])
    positives = [tpl.format(L=letter, T=text) for tpl in _pick(t.option, 3, rng)]
    wrong = [j for j in range(n_options) if j != i]
    negatives = [rng.choice(t.option).format(L=letters[j], T=texts[j]) for j in _pick(wrong, 3, rng)]
    return Group("option", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


def _date_forms(y: int, m: int, d: int) -> list[str]:
    month = _MONTHS[m - 1]
    return [f"{y:04d}-{m:02d}-{d:02d}", f"{d} {month} {y}", f"{month} {d}, {y}", f"{month[:3]} {d}, {y}",
            f"{d} {month[:3]} {y}", f"{month} {d} {y}"]


def _date(t: Templates, rng: random.Random) -> Group:
    y = rng.randint(1800, 2035)
    if rng.random() < 0.3:  # a year alone
        reference = str(y)
        positives = [rng.choice(t.year).format(y) for _ in range(2)] + [str(y)]
        wrong = _pick([y - 1, y + 1, y + 10, y - 100, int(str(y)[:2] + str(y)[3] + str(y)[2])], 3, rng)
        negatives = [rng.choice(t.year).format(w) if rng.random() < 0.5 else str(w) for w in wrong if w != y]
        return Group("date", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))
    m, d = rng.randint(1, 12), rng.randint(1, 28)
    forms = _date_forms(y, m, d)
    reference = rng.choice(forms[:3])
    positives = [f if rng.random() < 0.6 else _wrap(t, f, rng) for f in _pick(forms, 3, rng)]
    wrong = [(y, m, d + 1), (y, m, d - 1 if d > 1 else d + 2), (y, m % 12 + 1, d), (y + 1, m, d), (y - 1, m, d)]
    negatives = []
    for wy, wm, wd in _pick(wrong, 3, rng):
        w = rng.choice(_date_forms(wy, wm, wd))
        negatives.append(w if rng.random() < 0.6 else _wrap(t, w, rng))
    return Group("date", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


def _entity_pool(t: Templates, category: str) -> list[tuple[str, tuple[str, ...]]]:
    items = _ENTITIES[category]
    half = len(items) // 2
    return items[:half] if t.entities_half == 0 else items[half:]


def _entity(t: Templates, rng: random.Random) -> Group:
    category = rng.choice(sorted(_ENTITIES))
    pool = _entity_pool(t, category)
    name, aliases = rng.choice(pool)
    forms = [name, *aliases]
    reference = name if rng.random() < 0.8 else rng.choice(forms)
    positives = [f if rng.random() < 0.5 else _wrap(t, f, rng) for f in _pick(forms, 3, rng)]
    others = [e for e in pool if e[0] != name]
    negatives = []
    for other, other_aliases in _pick(others, 3, rng):
        w = other if rng.random() < 0.6 else rng.choice((other, *other_aliases))
        negatives.append(w if rng.random() < 0.5 else _wrap(t, w, rng))
    return Group("entity", reference, tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


def reasoning_steps(t: Templates, rng: random.Random, must_mention: int | None, k: int) -> list[str]:
    """``k`` arithmetic steps with correct arithmetic; one of them results in ``must_mention``."""
    out = []
    mention_at = rng.randrange(k) if must_mention is not None else -1
    for i in range(k):
        a, b = rng.randint(2, 60), rng.randint(2, 30)
        tpl, op = rng.choice(t.worked_steps)
        if i == mention_at:  # an addition or subtraction whose result is the mentioned number
            tpl, op = rng.choice([s for s in t.worked_steps if s[1] != "*"])
            b = rng.randint(1, 30)
            a = must_mention - b if op == "+" else must_mention + b
        c = a * b if op == "*" else (a - b if op == "-" else a + b)
        out.append(tpl.format(a=a, b=b, c=c))
    return out


def _worked(t: Templates, rng: random.Random) -> Group:
    """A worked solution before the final answer: only the final answer counts. Wrong solutions
    mention the right number along the way; right ones mention wrong numbers."""
    n = rng.randint(3, 400)
    wrong = [w for w in _near_ints(n, rng) if w > 0]
    reference = str(n) if rng.random() < 0.85 else rng.choice(_int_forms(n, rng))
    positives, negatives = [], []
    for _ in range(2):
        k = rng.randint(1, 3)
        body = reasoning_steps(t, rng, rng.choice(wrong) if rng.random() < 0.7 else None, k)
        positives.append(" ".join(body + [rng.choice(t.worked_endings).format(n)]))
    for w in _pick(wrong, 2, rng):
        k = rng.randint(1, 3)
        body = reasoning_steps(t, rng, n if rng.random() < 0.8 else None, k)
        negatives.append(" ".join(body + [rng.choice(t.worked_endings).format(w)]))
    return Group("worked", reference, tuple(positives), tuple(negatives))


def _steps_to(t: Templates, rng: random.Random, k: int) -> tuple[list[str], list[int]]:
    """``k`` chained arithmetic steps, each starting from the result before it: (steps, results)."""
    x = rng.randint(2, 60)
    steps, results = [], []
    for _ in range(k):
        tpl, op = rng.choice(t.worked_steps)
        if op == "*" and abs(x) > 2000:
            tpl, op = rng.choice([s for s in t.worked_steps if s[1] != "*"])
        b = rng.randint(2, 9) if op == "*" else rng.randint(1, 40)
        c = x * b if op == "*" else (x - b if op == "-" else x + b)
        steps.append(tpl.format(a=x, b=b, c=c))
        results.append(c)
        x = c
    return steps, results


def _chain(t: Templates, rng: random.Random) -> Group:
    """A worked solution whose steps compute the final answer, as real rollouts write them ("12 * 6
    = 72. The answer is 72."): the right answer is the last step's result. Wrong ones: the last
    step miscalculated and its result given; the right steps with another final answer; the right
    number reached and then carried one step further (it passes through the reasoning)."""
    k = rng.randint(1, 3)
    steps, results = _steps_to(t, rng, k)
    n = results[-1]
    ending = lambda x: rng.choice(t.worked_endings).format(x)  # noqa: E731
    positives = [" ".join(steps + [ending(n)])]
    more, more_results = _steps_to(t, rng, rng.randint(1, 3))  # another solution reaching n
    shift = n - more_results[-1]
    if shift:
        tpl, _ = rng.choice([s for s in t.worked_steps if s[1] == ("+" if shift > 0 else "-")])
        more.append(tpl.format(a=more_results[-1], b=abs(shift), c=n))
    positives.append(" ".join(more + [ending(n)]))
    wrong = [w for w in _near_ints(n, rng) if w != n]
    w = rng.choice(wrong)
    head, _, tail = steps[-1].rpartition(str(n))  # the result is the step's last number
    miscalculated = steps[:-1] + [head + str(w) + tail]
    negatives = [" ".join(miscalculated + [ending(w)]), " ".join(steps + [ending(rng.choice(wrong))])]
    tpl, op = rng.choice([s for s in t.worked_steps if s[1] in "+-"])
    b = rng.randint(1, 12)
    further = n + b if op == "+" else n - b
    negatives.append(" ".join(steps + [tpl.format(a=n, b=b, c=further), ending(further)]))
    return Group("chain", str(n), tuple(dict.fromkeys(positives)), tuple(dict.fromkeys(negatives)))


GENERATORS: dict[str, Callable[[Templates, random.Random], Group]] = {
    "number": _number, "quantity": _quantity, "fraction": _fraction, "yesno": _yesno, "option": _option,
    "date": _date, "entity": _entity, "worked": _worked, "chain": _chain,
}
EMPTY_RESPONSES = ("", " ", "\n", "   \t ", "\n\n")


# --- hedges and hard cases: drawn from a stream of their own, so the groups above never change -------

_LETTER = re.compile(r"\(?([A-E])\)?")            # an option reference without its text: B, (B)
_INT = re.compile(r"-?\d+")
_FRACTION = re.compile(r"(\d+)/(\d+)")
_OPPOSITE = {"yes": "no", "no": "yes", "true": "false", "false": "true"}
_EXTRA_SEED = 104_729  # added to the groups' seed: the stream of hedges and hard cases (x2 echoes, x3 decoys)
_TEX_FRACTION = re.compile(r"\\frac\{(\d+)\}\{(\d+)\}")


def unwrap(t: Templates, text: str) -> str:
    """``text`` without the longest of ``t``'s wrappers around it ("The answer is 72." -> "72")."""
    best = text
    for wrapper in t.wrappers:
        pre, post = wrapper.format("\0").split("\0")
        if pre or post:
            inner = text[len(pre):len(text) - len(post)] if len(post) else text[len(pre):]
            if (text.startswith(pre) and text.endswith(post) and len(text) > len(pre) + len(post)
                    and len(inner) < len(best)):
                best = inner
    return best.strip()


def bare_answers(g: Group, t: Templates) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(right, wrong): the group's answers without wrappers, as a hedge lists them; two empty
    tuples for a kind without bare answers (worked solutions) or an unrecognised reference."""
    ref = g.reference.strip()
    if g.kind in ("worked", "chain"):
        return (), ()
    if g.kind == "yesno":
        opposite = _OPPOSITE.get(ref.lower())
        if opposite is None:
            return (), ()
        return (ref,), (opposite.capitalize() if ref[:1].isupper() else opposite,)
    if g.kind == "option":
        m = _LETTER.fullmatch(ref) or re.match(r"([A-E])\) ", ref)
        if m is None:
            return (), ()
        return (m.group(1),), tuple(x for x in "ABCD" if x != m.group(1))
    right = tuple(dict.fromkeys([ref, *(unwrap(t, p) for p in g.positives)]))
    wrong = tuple(dict.fromkeys(w for w in (unwrap(t, x) for x in g.negatives) if w and w not in right))
    return right, wrong


def hedge(g: Group, t: Templates, rng: random.Random) -> str | None:
    """One response that offers the right answer among wrong ones ("72 or 73", "A, B, C or D"):
    a policy that lists candidates has not answered, so a reward must not pay it. None when the
    group has no bare answers."""
    right, wrong = bare_answers(g, t)
    if not right or not wrong or not t.hedges:
        return None
    template = rng.choice(t.hedges)
    if template.count("{}") - 1 > len(wrong):
        template = rng.choice([h for h in t.hedges if h.count("{}") == 2])
    candidates = [rng.choice(right), *rng.sample(list(wrong), template.count("{}") - 1)]
    rng.shuffle(candidates)
    if g.kind == "option" and rng.random() < 0.4:
        candidates = [f"({c})" for c in candidates]
    return template.format(*candidates)


def echo(g: Group, t: Templates, rng: random.Random) -> str | None:
    """The right answer in two different forms, joined by a two-candidate hedge template ("72 or
    seventy-two", "Either Einstein or Albert Einstein."): the counterpart of :func:`hedge`, so a
    model learns that offering *different* answers is what is wrong, not the connector. None when
    the group has fewer than two bare right forms."""
    right, _ = bare_answers(g, t)
    forms = [r for r in right if r.lower() != right[0].lower()] + [right[0]] if right else []
    two = [h for h in t.hedges if h.count("{}") == 2]
    if len(forms) < 2 or not two:
        return None
    return rng.choice(two).format(*rng.sample(forms, 2))


def _fraction_parts(text: str) -> tuple[int, int] | None:
    """(p, q) of "p/q" or "\\frac{p}{q}", else None."""
    m = _FRACTION.fullmatch(text) or _TEX_FRACTION.fullmatch(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def decoy(g: Group, t: Templates, rng: random.Random) -> tuple[str, str | None] | None:
    """(decoy, counterpart): a different answer written in another form than the reference, and the
    right answer written in the decoy's form and wrapper (None when that form cannot show the value
    exactly). A near miss in words against an integer in digits ("seventy-three" against "72",
    counterpart "seventy-two") and in plain digits against one in any other form (words,
    separators, scientific); a wrong value as a decimal or percent against a fraction ("0.7" against
    "1/2", counterpart "0.5") and as a fraction against a decimal ("2/3" against "0.5", counterpart
    "1/2"). A model that learned "another form of the reference is the same answer" pays the decoys
    (v8 paid any bare decimal against "1/2" about 0.9); one that learned "another form is wrong"
    refuses the counterparts. None for other kinds, or when the group's answers do not show the
    value."""
    right, _ = bare_answers(g, t)
    ref = g.reference.strip()
    out = None
    if g.kind == "number":
        ints = [int(r) for r in right if _INT.fullmatch(r) and abs(int(r)) <= 10**6]
        if not ints:
            return None
        wrong = rng.choice(_near_ints(ints[0], rng))
        if abs(wrong) > 10**6:
            return None
        if _INT.fullmatch(ref):
            out, counterpart = number_words(wrong), number_words(ints[0])
        else:
            out, counterpart = str(wrong), str(ints[0])
    elif g.kind == "fraction":
        parts = [pq for pq in map(_fraction_parts, right) if pq]
        if not parts:
            return None
        p, q = parts[0]
        value = p / q
        near = [(p + 1, q), (p, q + 1), (q, p)] + ([(p - 1, q)] if p > 1 else [])
        if _fraction_parts(ref):
            values = [a / b for a, b in near] + [value * 10, value / 10, value + 0.1]
            values = [v for v in values if abs(v - value) > 0.005 and 0 < v < 1000]
            v = rng.choice(values)
            if rng.random() < 0.2 and abs(v * 100 - round(v * 100)) < 1e-9:
                out = f"{v * 100:.0f}%"
                counterpart = f"{value * 100:g}%" if _exact_decimal(value * 100, 6) == f"{value * 100:g}" else None
            else:
                out = _exact_decimal(v, 3) or f"{v:.2f}"
                counterpart = _exact_decimal(value, 4)
        else:
            a, b = rng.choice([(a, b) for a, b in near if a * q != p * b and b])
            out, counterpart = f"{a}/{b}", f"{p}/{q}"
    if out is None:
        return None
    if rng.random() < 0.5:
        return out, counterpart
    wrapper = rng.choice(t.wrappers)
    return wrapper.format(out), wrapper.format(counterpart) if counterpart is not None else None


def _numeric_option_text(rng: random.Random) -> str:
    return rng.choice([f"{rng.randint(2, 99)} {rng.choice(_UNITS)[0]}", f"x = {rng.randint(-9, 30)}",
                       f"${rng.randint(1, 500)}", f"{rng.randint(1, 9)}/{rng.randint(2, 12)}",
                       f"{rng.randint(10, 99)}%"])


def hard_cases(g: Group, t: Templates, rng: random.Random) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Extra (positives, negatives) where v7 was weak: an integer's near misses written in words
    (v7 paid "seventy-three" 0.86 against "72") with the right one in words as a positive; a
    fraction's decimal off by a factor of ten ("0.05" against "1/2"); an option letter followed by a
    numeric option text ("B) 12 m/s" against "B", and another letter with another text).

    Measured from v7 (model card, "After v7"): with these, the right answer in another form lost
    most (number words against digits ~0.8 -> ~0.4, "0.3" against "3/10" 0.83 -> 0.00); the model
    took "written differently" for "wrong". Not in the default recipe."""
    ref = g.reference.strip()
    pos: list[str] = []
    neg: list[str] = []
    maybe_wrap = lambda x: x if rng.random() < 0.5 else _wrap(t, x, rng)  # noqa: E731
    if g.kind == "number" and _INT.fullmatch(ref) and abs(int(ref)) <= 10**6:
        n = int(ref)
        pos.append(maybe_wrap(number_words(n)))
        neg += [maybe_wrap(number_words(w)) for w in _pick(_near_ints(n, rng), 2, rng) if abs(w) <= 10**6]
    elif g.kind == "fraction" and _FRACTION.fullmatch(ref):
        p, q = (int(x) for x in _FRACTION.fullmatch(ref).groups())
        for factor in (10, 0.1):
            decimal = _exact_decimal(p / q * factor, 6)
            if decimal and len(decimal) <= 7:
                neg.append(maybe_wrap(decimal))
    elif g.kind == "option" and _LETTER.fullmatch(ref):
        letter = _LETTER.fullmatch(ref).group(1)
        other = rng.choice([x for x in "ABCD" if x != letter])
        pos.append(f"{letter}) {_numeric_option_text(rng)}")
        neg.append(f"{other}) {_numeric_option_text(rng)}")
    return tuple(pos), tuple(neg)


def check_share(name: str, share: object) -> None:
    """A share of groups is a number in [0, 1] (not a bool); else a ValueError naming ``name``."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {share!r}")


def check_count(name: str, count: object) -> None:
    """A per-group count is an int >= 1 (not a bool); else a ValueError naming ``name``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"{name} must be an int >= 1, got {count!r}")


def groups(templates: Templates, per_kind: int, seed: int, empty_share: float = 0.15,
           kinds: Sequence[str] = KINDS, weights: dict[str, float] | None = None,
           hedge_share: float = 0.0, hard_share: float = 0.0, echo_share: float = 0.0,
           decoy_share: float = 0.0, decoys_per_group: int = 1) -> list[Group]:
    """``per_kind`` groups of each kind (times ``weights[kind]``, default 1), seeded; a share of
    groups gets an empty or whitespace-only response among its negatives (low against any
    non-empty reference). ``hedge_share`` of the groups get a :func:`hedge` (in ``hedges``),
    ``hard_share`` the :func:`hard_cases` of their kind, ``echo_share`` an :func:`echo` (in
    ``echoes``), ``decoy_share`` up to ``decoys_per_group`` distinct :func:`decoy` s (in ``decoys``,
    their counterparts in ``counterparts``; numbers and fractions only); they come from random
    streams of their own, so the references, positives and negatives are the same whatever the
    shares, and the hedges whatever ``echo_share`` and ``decoy_share``."""
    if per_kind < 0:
        raise ValueError(f"per_kind must be >= 0, got {per_kind}")
    for name, share in (("hedge_share", hedge_share), ("hard_share", hard_share), ("echo_share", echo_share),
                        ("decoy_share", decoy_share)):
        check_share(name, share)
    check_count("decoys_per_group", decoys_per_group)
    extra = random.Random(seed + _EXTRA_SEED)
    echo_rng = random.Random(seed + 2 * _EXTRA_SEED)
    decoy_rng = random.Random(seed + 3 * _EXTRA_SEED)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"kinds must be among {', '.join(KINDS)}; got {sorted(unknown)}")
    rng = random.Random(seed)
    out = []
    for kind in kinds:
        made, tries = 0, 0
        wanted = round(per_kind * (weights or {}).get(kind, 1))
        while made < wanted and tries < 20 * wanted:
            tries += 1
            g = GENERATORS[kind](templates, rng)
            positives = tuple(p for p in g.positives if p.strip())
            negatives = tuple(x for x in g.negatives if x.strip() and x not in positives)
            if not positives or not negatives or not g.reference.strip():
                continue
            if rng.random() < empty_share:
                negatives += (rng.choice(EMPTY_RESPONSES),)
            g = Group(kind, g.reference, positives, negatives)
            if hard_share and extra.random() < hard_share:
                more_pos, more_neg = hard_cases(g, templates, extra)
                positives = tuple(dict.fromkeys(positives + more_pos))
                negatives = tuple(dict.fromkeys(x for x in negatives + more_neg if x not in positives))
                g = Group(kind, g.reference, positives, negatives)
            if hedge_share and extra.random() < hedge_share:
                h = hedge(g, templates, extra)
                g = replace(g, hedges=(h,) if h else ())
            if echo_share and echo_rng.random() < echo_share:
                e = echo(g, templates, echo_rng)
                g = replace(g, echoes=(e,) if e else ())
            if decoy_share and kind in ("number", "fraction") and decoy_rng.random() < decoy_share:
                decoys: dict[str, None] = {}
                counterparts: dict[str, None] = {}
                for _ in range(decoys_per_group):
                    made_decoy = decoy(g, templates, decoy_rng)
                    if made_decoy and made_decoy[0] not in positives:
                        d, c = made_decoy
                        decoys[d] = None
                        if c and c not in negatives:
                            counterparts[c] = None
                g = replace(g, decoys=tuple(decoys), counterparts=tuple(counterparts))
            out.append(g)
            made += 1
    return out


def training_kinds(weights: dict[str, float] | None) -> tuple[str, ...]:
    """The kinds training draws: every kind but the opt-in ones (``OPT_IN_KINDS``) a recipe's kind
    ``weights`` do not name, so adding a kind never changes an older recipe's data."""
    return tuple(k for k in KINDS if k not in OPT_IN_KINDS or k in (weights or {}))


def training_examples(per_kind: int, seed: int, positive: float = 1.0, negative: float = 0.0,
                      weights: dict[str, float] | None = None,
                      identity_share: float = 0.5, empty_share: float = 0.15,
                      hedge_share: float = 0.0, hard_share: float = 0.0,
                      echo_share: float = 0.0, decoy_share: float = 0.0,
                      counterparts: bool = False, decoys_per_group: int = 1) -> list[tuple[str, str, float]]:
    """(reference, response, target) rows from ``TRAIN`` groups: every positive and echo at
    ``positive`` (and with ``counterparts`` each decoy's counterpart), every negative, hedge and decoy
    at ``negative``, and for a share of groups the exact match (reference, reference) and an exact
    match of one of its longer responses, at ``positive``."""
    rng = random.Random(seed + 1)
    out = []
    for g in groups(TRAIN, per_kind, seed, empty_share=empty_share, weights=weights, kinds=training_kinds(weights),
                    hedge_share=hedge_share, hard_share=hard_share, echo_share=echo_share,
                    decoy_share=decoy_share, decoys_per_group=decoys_per_group):
        out += [(g.reference, p, positive) for p in g.positives + g.echoes + (g.counterparts if counterparts else ())]
        out += [(g.reference, x, negative) for x in g.negatives + g.hedges + g.decoys]
        if rng.random() < identity_share:
            out.append((g.reference, g.reference, positive))
            longer = rng.choice(g.positives + g.negatives)
            out.append((longer, longer, positive))
    return out


# --- evaluation ----------------------------------------------------------------------------------------

# (references, responses) -> scores in [0, 1]
Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
METRICS = ("pairwise", "same>=0.5", "different<0.5", "exact", "empty<0.5", "hedged<0.5", "decoy<0.5",
           "counterpart>=0.5")


def evaluate_groups(gs: Sequence[Group], scorer: Scorer) -> dict[str, dict[str, float]]:
    """Per kind and ``all``: pairwise order accuracy (a same-answer response above a different-answer
    one for the same reference; a tie counts half), the share of same-answer responses scored >= 0.5,
    the share of different-answer responses < 0.5, the mean score of the exact match (the
    reference as its own response), and the share of references for which an empty response
    scores < 0.5 (an RL policy that answers nothing must not be paid), and the share of hedges
    (the right answer listed among wrong ones, "72 or 73") scored < 0.5 (NaN without hedges), and
    the share of decoys (a wrong answer in another form than the reference, "0.7" against "1/2")
    scored < 0.5 and of their counterparts (the right answer in the decoy's form, "0.5") scored
    >= 0.5 (NaN without them): a model can refuse decoys by refusing every other form, and the
    counterparts show it."""
    refs, resps, where = [], [], []
    for gi, g in enumerate(gs):
        for role, texts in (("pos", g.positives), ("neg", g.negatives), ("exact", (g.reference,)), ("empty", ("",)),
                            ("hedge", g.hedges), ("decoy", g.decoys), ("counterpart", g.counterparts)):
            for text in texts:
                refs.append(g.reference)
                resps.append(text)
                where.append((gi, role))
    scores = [float(s) for s in scorer(refs, resps)] if refs else []
    per_group: list[dict[str, list[float]]] = [{"pos": [], "neg": [], "exact": [], "empty": [], "hedge": [],
                                                "decoy": [], "counterpart": []} for _ in gs]
    for (gi, role), s in zip(where, scores):
        per_group[gi][role].append(s)
    out: dict[str, dict[str, float]] = {}
    for kind in [*dict.fromkeys(g.kind for g in gs), "all"]:
        chosen = [pg for g, pg in zip(gs, per_group) if kind in ("all", g.kind)]
        order = [1.0 if p > n else 0.5 if p == n else 0.0
                 for pg in chosen for p in pg["pos"] for n in pg["neg"]]
        pos = [p for pg in chosen for p in pg["pos"]]
        neg = [n for pg in chosen for n in pg["neg"]]
        exact = [e for pg in chosen for e in pg["exact"]]
        empty = [e for pg in chosen for e in pg["empty"]]
        hedges = [h for pg in chosen for h in pg["hedge"]]
        decoys = [d for pg in chosen for d in pg["decoy"]]
        counterparts = [c for pg in chosen for c in pg["counterpart"]]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        out[kind] = {"pairwise": mean(order), "same>=0.5": mean([float(p >= 0.5) for p in pos]),
                     "different<0.5": mean([float(n < 0.5) for n in neg]), "exact": mean(exact),
                     "empty<0.5": mean([float(e < 0.5) for e in empty]),
                     "hedged<0.5": mean([float(h < 0.5) for h in hedges]),
                     "decoy<0.5": mean([float(d < 0.5) for d in decoys]),
                     "counterpart>=0.5": mean([float(c >= 0.5) for c in counterparts]),
                     "groups": float(len(chosen)),
                     "pairs": float(len(pos) + len(neg) + len(exact) + len(empty) + len(hedges) + len(decoys)
                                    + len(counterparts))}
    return out


def format_table(columns: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per kind and metric, one column per scorer."""
    names = list(columns)
    kinds = list(next(iter(columns.values())))
    lines = ["| kind | metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for kind in kinds:
        n = int(next(iter(columns.values()))[kind]["groups"])
        for metric in METRICS:
            cells = []
            for name in names:
                v = columns[name][kind][metric]
                cells.append("–" if v != v else f"{v:.3f}")
            label = f"**{kind}** (n={n})" if metric == METRICS[0] else ""
            lines.append(f"| {label} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
