"""Untrusted text made safe for the places people read it: the terminal (rich), CSV and Markdown.

Strings from manifests, results files and bundles can come from anyone. Printed raw they can clear the screen
(``\\x1b[2J``), retitle the terminal or plant a hyperlink (OSC sequences), restyle a table through rich markup
(``[link=…]``), start a formula in a spreadsheet (``=cmd|' /C calc'!A0``) or a ``javascript:`` link in Markdown.
One helper per sink, so every renderer uses the same rules:

- ``clean_text``: escape sequences, control characters and bidirectional overrides removed (for any sink);
- ``safe_text``: ``clean_text`` plus rich markup escaped (for strings handed to rich as markup);
- ``csv_cell``: a formula-looking cell prefixed with ``'`` as OWASP recommends (numbers stay numbers);
- ``md_cell``: a Markdown table cell with pipes, brackets and HTML escaped (no links, no raw HTML).
"""

from __future__ import annotations

import re
from typing import Any

# ESC-introduced sequences (ECMA-48): CSI (ESC [ … final), OSC/DCS/SOS/PM/APC strings up to BEL or ST, and the
# two-character escapes; then the 8-bit C1 forms of CSI and OSC/DCS.
_ESCAPES = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]                 # CSI … final byte
  | \x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)   # OSC, DCS, SOS, PM, APC … BEL or ST (or the end of the text)
  | \x1b[ -/]*[0-~]                         # other escapes (ESC c, ESC ( B …)
  | \x9b[0-?]*[ -/]*[@-~]                   # 8-bit CSI
  | [\x90\x98\x9d\x9e\x9f].*?(?:\x07|\x9c|$)  # 8-bit DCS, SOS, OSC, PM, APC
    """,
    re.VERBOSE | re.DOTALL,
)
# C0/C1 controls (tab, newline and carriage return become spaces first), DEL, and the bidirectional overrides and
# isolates that reorder what the eye sees ("Trojan Source").
_WHITESPACE = re.compile(r"[\t\n\r\v\f]+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_NUMBER = re.compile(r"[+-]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?%?")


def clean_text(value: Any) -> str:
    """``str(value)`` without escape sequences or control characters; line breaks and tabs become one space."""
    text = value if isinstance(value, str) else str(value)
    text = _ESCAPES.sub("", text)
    text = _WHITESPACE.sub(" ", text)
    return _CONTROLS.sub("", text)


def safe_text(value: Any) -> str:
    """Text from an untrusted source, ready to print through rich as markup: cleaned, then markup escaped.

    Use it for every manifest, results-file or bundle string that reaches a rich table, title or ``print``."""
    from rich.markup import escape

    return escape(clean_text(value))


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run: strings starting ``= + - @`` (or tab/CR) get a leading ``'``.

    Numbers are returned as they are, and so are strings that are plain numbers (``-0.21``): a negative value
    stays a value. Everything else is cleaned of control characters first."""
    if value is None or isinstance(value, bool | int | float):
        return value
    raw = value if isinstance(value, str) else str(value)
    if raw.startswith(_FORMULA_START) and not _NUMBER.fullmatch(raw.strip()):
        return "'" + clean_text(raw)
    text = clean_text(raw)
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def md_cell(value: Any) -> str:
    """A Markdown table cell: one line, no raw HTML, no links or images (``[x](javascript:…)`` shows as text)."""
    text = clean_text(value).replace("\\", "\\\\")
    for ch in "|[]":  # no cell split, no link or image syntax
        text = text.replace(ch, "\\" + ch)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


__all__ = ["clean_text", "csv_cell", "md_cell", "safe_text"]
