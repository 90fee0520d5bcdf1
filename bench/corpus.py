"""Filler text for seeded posts and comments, and the same for the baseline's feed page, so the
baseline serves bodies of the size the seeded feed does."""

from __future__ import annotations

import random

POST_CHARS = (40, 280)  # length range of seeded post texts
COMMENT_CHARS = (10, 120)

_VOCABULARY = (
    "the of and a to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which she "
    "do how their if will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part coffee "
    "weekend photo trip garden friends dinner music concert hiking city beach morning news "
    "project launch birthday family weather sunset recipe movie book game team office coding "
    "release bug fix tea lunch running bike train station airport holiday"
)
_WORDS = _VOCABULARY.split()


def filler(chars: int, seed: int = 0) -> str:
    """Deterministic lowercase words, exactly ``chars`` characters long."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]
