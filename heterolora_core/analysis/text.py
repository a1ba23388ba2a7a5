"""Text from records, shown as text: inside Markdown, inside Plotly figures, on a terminal.

A record's fields (a run folder's name, ``task``, ``model``, ``error``, a module name) hold
whatever is on disk. Through a Markdown renderer ``![x](http://host/pixel.png)`` is an image the
browser fetches; in a Plotly legend, title, axis label or hover ``<a href=...>`` is a link; on a
terminal ``ESC[2J`` clears the screen and a carriage return overwrites a line. Each function here
turns any value into text that its destination shows literally; every place that puts record
text there goes through one of them.
"""
from __future__ import annotations

import re

#: Characters a terminal acts on instead of printing: C0 and C1 controls and DEL, line and
#: paragraph separators, and the bidirectional overrides that reorder what is shown.
_TERMINAL_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: ASCII punctuation: CommonMark lets a backslash escape any of it, and every piece of Markdown
#: syntax (links, images, emphasis, code, HTML, Streamlit's ``:color[...]`` and ``$math$``) needs some.
_MARKDOWN_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
#: Where GitHub-flavoured Markdown finds a bare link in text, escapes or not (``http://``, ``www.``,
#: ``name@host``): an invisible word joiner (U+2060) goes between the parts.
_AUTOLINK_JOINTS = re.compile(r"(?i)(?<=:)(?=//)|(?<=\bwww)(?=\.)|(?<=@)")
WORD_JOINER = "\u2060"


def markdown_text(value: object) -> str:
    """``value`` as literal text inside Markdown (``st.markdown``, ``st.caption``, ``st.error``, a
    widget's label or help): every ASCII punctuation character backslash-escaped, line breaks and
    other control characters as one space, and a :data:`WORD_JOINER` inside every bare link GFM
    would find (``http:⁠//``, ``www⁠.``, ``@⁠host``). ``"![x](http://h/p.png)"`` is shown as written,
    neither an image nor a link."""
    text = _AUTOLINK_JOINTS.sub(WORD_JOINER, _LINE_BREAKS.sub(" ", str(value)))
    return _MARKDOWN_PUNCTUATION.sub(lambda match: "\\" + match.group(0), text)


def plotly_text(value: object) -> str:
    """``value`` as literal text in a Plotly figure (trace names, titles, category labels, hover):
    ``&``, ``<`` and ``>`` as HTML entities, which Plotly shows as the characters instead of reading
    ``<a href>``, ``<img>`` or ``<br>`` as its tags; line breaks as spaces."""
    text = _LINE_BREAKS.sub(" ", str(value))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def terminal_text(value: object) -> str:
    """``value`` for a terminal: every control character (escape sequences, carriage returns,
    line breaks, bidirectional overrides) written as its ``\\xNN`` / ``\\uNNNN`` escape, so a record
    can neither move the cursor nor forge a line."""
    return _TERMINAL_CONTROLS.sub(lambda match: match.group(0).encode("unicode_escape").decode("ascii"), str(value))
