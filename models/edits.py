"""Rule-based one-word minimal edits of a sentence, used to train and to probe answer equivalence.

Meaning-changing edits (an equivalence reward should drop): negation flips, antonym swaps, number
swaps. Meaning-preserving controls (it should not drop): synonym swaps, filler words, clause reorder.
Every rule is deterministic given a ``random.Random``; a rule that does not apply returns ``None``.
Word lists are small on purpose: enough to teach and to probe, not a thesaurus.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

_ANTONYMS = [
    ("big", "small"), ("large", "small"), ("tall", "short"), ("long", "short"), ("hot", "cold"),
    ("warm", "cool"), ("old", "young"), ("new", "old"), ("up", "down"), ("open", "closed"),
    ("inside", "outside"), ("indoors", "outdoors"), ("before", "after"), ("early", "late"),
    ("fast", "slow"), ("quickly", "slowly"), ("happy", "sad"), ("good", "bad"), ("rich", "poor"),
    ("high", "low"), ("heavy", "light"), ("wet", "dry"), ("full", "empty"), ("easy", "hard"),
    ("increase", "decrease"), ("increased", "decreased"), ("rise", "fall"), ("rose", "fell"),
    ("win", "lose"), ("won", "lost"), ("buy", "sell"), ("bought", "sold"), ("accept", "reject"),
    ("accepted", "rejected"), ("allow", "forbid"), ("always", "never"), ("many", "few"),
    ("more", "less"), ("most", "least"), ("first", "last"), ("top", "bottom"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("day", "night"), ("man", "woman"), ("men", "women"),
    ("boy", "girl"), ("boys", "girls"), ("black", "white"), ("dark", "bright"), ("start", "finish"),
    ("started", "stopped"), ("true", "false"), ("correct", "incorrect"), ("positive", "negative"),
    ("strong", "weak"), ("safe", "dangerous"), ("cheap", "expensive"), ("near", "far"),
    ("add", "remove"), ("added", "removed"), ("enter", "leave"), ("entering", "leaving"),
    ("sitting", "standing"), ("asleep", "awake"), ("laughing", "crying"), ("smiling", "frowning"),
    ("pushing", "pulling"), ("giving", "taking"), ("opening", "closing"), ("above", "below"),
    ("over", "under"), ("with", "without"), ("success", "failure"), ("agree", "disagree"),
    ("support", "oppose"), ("supports", "opposes"), ("love", "hate"), ("higher", "lower"),
    ("larger", "smaller"), ("bigger", "smaller"), ("older", "younger"), ("maximum", "minimum"),
]
_SYNONYMS = [
    ("big", "large"), ("small", "little"), ("quickly", "rapidly"), ("fast", "quick"),
    ("begin", "start"), ("began", "started"), ("buy", "purchase"), ("bought", "purchased"),
    ("help", "assist"), ("helps", "assists"), ("show", "demonstrate"), ("shows", "demonstrates"),
    ("said", "stated"), ("says", "states"), ("kids", "children"), ("child", "kid"),
    ("man", "guy"), ("woman", "lady"), ("car", "automobile"), ("happy", "glad"), ("sad", "unhappy"),
    ("end", "finish"), ("ended", "finished"), ("near", "close to"), ("often", "frequently"),
    ("about", "approximately"), ("maybe", "perhaps"), ("answer", "reply"), ("ask", "inquire"),
    ("get", "obtain"), ("use", "utilize"), ("uses", "utilizes"), ("used", "utilized"),
    ("need", "require"), ("needs", "requires"), ("enough", "sufficient"), ("mistake", "error"),
    ("shut", "close"), ("speak", "talk"), ("speaking", "talking"), ("stone", "rock"),
    ("road", "street"), ("film", "movie"), ("sofa", "couch"), ("jumping", "leaping"),
    ("running", "jogging"), ("cutting", "slicing"), ("looking", "gazing"), ("cook", "chef"),
    ("photo", "picture"), ("large", "huge"), ("rich", "wealthy"), ("difficult", "hard"),
    ("intelligent", "smart"), ("ill", "sick"), ("shout", "yell"), ("shouting", "yelling"),
    ("killed", "slain"), ("attempt", "try"), ("attempted", "tried"), ("purchase", "buy"),
]
# Same-kind named entities: swapping one for another changes what is asserted ("the capital is Lyon").
_ENTITY_KINDS = {
    "city": ["Paris", "London", "Berlin", "Rome", "Madrid", "Moscow", "Tokyo", "Beijing", "Washington",
             "Chicago", "Boston", "Sydney", "Cairo", "Delhi", "Mumbai", "Toronto", "Lyon", "Dublin",
             "Baghdad", "Jerusalem", "Seoul", "Vienna", "Athens", "Geneva", "Brussels", "Manila"],
    "country": ["France", "Germany", "Italy", "Spain", "Russia", "China", "Japan", "India", "Canada",
                "Brazil", "Mexico", "Egypt", "Iraq", "Iran", "Israel", "Pakistan", "Australia",
                "Britain", "England", "Ireland", "Greece", "Syria", "Afghanistan", "Korea", "Turkey",
                "Ukraine", "Poland", "Sweden", "Norway", "Nigeria", "Kenya", "Argentina", "America"],
    "nationality": ["French", "German", "Italian", "Spanish", "Russian", "Chinese", "Japanese",
                    "Indian", "Canadian", "British", "American", "Iraqi", "Iranian", "Israeli",
                    "Egyptian", "Syrian", "Greek", "Turkish", "Korean", "Mexican", "Australian"],
    "month": ["January", "February", "March", "April", "June", "July", "August", "September",
              "October", "November", "December"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "person": ["John", "Mary", "Bush", "Obama", "Clinton", "Smith", "Johnson", "Peter", "David",
               "Michael", "Sarah", "James", "Robert", "Maria", "Anna", "Paul", "Tom", "Lisa"],
    "colour": ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "purple", "orange",
               "grey", "gray"],
    "animal": ["dog", "cat", "horse", "cow", "sheep", "bird", "fish", "monkey", "lion", "tiger",
               "elephant", "rabbit", "snake", "bear", "pig", "goat", "deer", "duck", "mouse"],
}
_NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve", "twenty", "hundred", "thousand", "million"]
_AUXILIARIES = ["is", "are", "was", "were", "can", "could", "will", "would", "should", "has",
                "have", "had", "does", "did", "do", "must", "may", "might"]
_FILLERS_START = ["Basically, ", "In fact, ", "Actually, ", "To be clear, ", "Well, "]
_FILLERS_INSIDE = ["really", "actually", "indeed"]

WORD = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")


def _pair_map(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a, b in pairs:
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return out


ANTONYMS = _pair_map(_ANTONYMS)
# proper nouns match case-sensitively ("Turkey", not "turkey"); common nouns in any case
ENTITIES = {(w if w[0].isupper() else w.lower()): [o for o in kind if o != w]
            for kind in _ENTITY_KINDS.values() for w in kind}
SYNONYMS = _pair_map(_SYNONYMS)


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _swap_from(table: dict[str, list[str]], text: str, rng: random.Random) -> str | None:
    hits = [m for m in WORD.finditer(text) if m.group().lower() in table]
    if not hits:
        return None
    m = rng.choice(hits)
    new = _match_case(rng.choice(table[m.group().lower()]), m.group())
    return text[: m.start()] + new + text[m.end():]


def antonym_swap(text: str, rng: random.Random) -> str | None:
    """Replace one word by an opposite: 'the water is hot' -> 'the water is cold'."""
    return _swap_from(ANTONYMS, text, rng)


def synonym_swap(text: str, rng: random.Random) -> str | None:
    """Replace one word by a near-synonym (a control: meaning kept)."""
    return _swap_from(SYNONYMS, text, rng)


def entity_swap(text: str, rng: random.Random) -> str | None:
    """Replace a name, place, date word, colour or animal by another of its kind: 'in Paris' -> 'in Lyon'."""
    hits = [m for m in WORD.finditer(text)
            if m.group() in ENTITIES or (m.group().lower() in ENTITIES and m.group().lower()[0].islower())]
    if not hits:
        return None
    m = rng.choice(hits)
    word = m.group()
    choices = ENTITIES.get(word) or ENTITIES[word.lower()]
    new = rng.choice(choices)
    if new[0].islower():
        new = _match_case(new, word)
    return text[: m.start()] + new + text[m.end():]


def negation_flip(text: str, rng: random.Random) -> str | None:
    """Remove a 'not'/'n't'/'no', or insert 'not' after an auxiliary verb."""
    neg = re.search(r"\b(not|never)\s+", text, flags=re.IGNORECASE)
    if neg:
        return text[: neg.start()] + text[neg.end():]
    contracted = re.search(r"\b(\w+)n't\b", text)
    if contracted:
        base = {"wo": "will", "ca": "can", "do": "do", "does": "does", "did": "did"}.get(
            contracted.group(1).lower(), contracted.group(1))
        return text[: contracted.start()] + base + text[contracted.end():]
    aux = [m for m in re.finditer(r"\b(" + "|".join(_AUXILIARIES) + r")\b", text, re.IGNORECASE)]
    if aux:
        m = rng.choice(aux)
        return text[: m.end()] + " not" + text[m.end():]
    return None


def number_swap(text: str, rng: random.Random) -> str | None:
    """Change one number (digits or a number word) to a different one."""
    hits = [m for m in WORD.finditer(text)
            if m.group()[0].isdigit() or m.group().lower() in _NUMBER_WORDS]
    if not hits:
        return None
    m = rng.choice(hits)
    word = m.group()
    if word[0].isdigit():
        digits = re.sub(r"\D", "", word)
        value = int(digits) if digits else 0
        choices = [value + 1, value + rng.randint(2, 9), max(value * 2, 2), max(value // 2, 1)]
        new = str(rng.choice([c for c in choices if c != value] or [value + 1]))
    else:
        new = _match_case(rng.choice([w for w in _NUMBER_WORDS if w != word.lower()]), word)
    return text[: m.start()] + new + text[m.end():]


def add_filler(text: str, rng: random.Random) -> str | None:
    """Add a filler word or opener (a control: meaning kept)."""
    if not text.strip():
        return None
    if rng.random() < 0.5:
        return rng.choice(_FILLERS_START) + text[:1].lower() + text[1:]
    aux = [m for m in re.finditer(r"\b(" + "|".join(_AUXILIARIES) + r")\b", text, re.IGNORECASE)]
    if not aux:
        return rng.choice(_FILLERS_START) + text[:1].lower() + text[1:]
    m = rng.choice(aux)
    return text[: m.end()] + " " + rng.choice(_FILLERS_INSIDE) + text[m.end():]


def reorder_clauses(text: str, rng: random.Random) -> str | None:
    """Swap two clauses joined by ' and ' or '; ' (a control: meaning kept)."""
    body = text.rstrip(" .!?")
    end = text[len(body):]
    for sep in ("; ", ", and ", " and "):
        if sep in body:
            left, right = body.split(sep, 1)
            if len(left.split()) >= 3 and len(right.split()) >= 3:
                swapped = right[:1].upper() + right[1:] + sep + left[:1].lower() + left[1:]
                return swapped + end
    return None


# name -> (rule, meaning_changed)
EDITS: dict[str, tuple[Callable[[str, random.Random], str | None], bool]] = {
    "antonym": (antonym_swap, True),
    "negation": (negation_flip, True),
    "number": (number_swap, True),
    "entity": (entity_swap, True),
    "synonym": (synonym_swap, False),
    "filler": (add_filler, False),
    "reorder": (reorder_clauses, False),
}
# The seed card's probe: one-word swaps, with synonyms as the control.
SWAP_PROBES = ("antonym", "negation", "number", "synonym")
