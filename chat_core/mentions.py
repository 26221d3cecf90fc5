"""``@username`` mentions in message content. Pure.

A mention is ``@`` followed by a username (letters, digits, ``_``, ``.``, ``-``; 3-32 of them,
as user_core allows), not preceded by one of those characters (so ``a@b.org`` mentions nobody).
A username may end in ``.`` or ``-``, so a trailing run of them (``hi @bob.``) is tried both
ways: ``bob.`` and ``bob``. Which candidates are real users who are members of the room is the
Store's business (chat_core.service resolves names, the Store keeps members only).
"""

from __future__ import annotations

import re

_MENTION = re.compile(r"(?<![A-Za-z0-9_.\-])@([A-Za-z0-9_.\-]+)")
MIN_NAME, MAX_NAME = 3, 32
#: Candidates looked up per message at most: a message naming hundreds of people costs no more.
MAX_MENTIONS = 20


def mention_names(content: str) -> list[str]:
    """Lower-cased candidate usernames in first-mention order, without repeats, at most
    ``MAX_MENTIONS``."""
    if "@" not in content:
        return []
    names: dict[str, None] = {}
    for match in _MENTION.finditer(content):
        word = match.group(1)
        for name in (word, word.rstrip(".-")):
            if MIN_NAME <= len(name) <= MAX_NAME:
                names.setdefault(name.lower())
        if len(names) >= MAX_MENTIONS:
            break
    return list(names)[:MAX_MENTIONS]
