"""Just enough PromQL structure to test alert rules and dashboards on live data.

Two questions the monitoring tests ask of every expression the role ships:

* which vector selectors does it read (``name{matchers}``), so each can be
  looked up on its own and an empty one named;
* what are its *inner vectors*: the expression without its final threshold.
  An alert ``A > 5`` returns nothing while all is well, which also holds when
  ``A`` itself is broken (a typo, a renamed metric, a label that never
  matches).  ``A`` must return series for the alert to mean anything.  For
  ``A > 5 and on (x) B > 1`` both ``A`` and ``B`` are inner vectors.

This is a scanner, not a parser: it knows strings, brackets, label braces,
set operators and comparison operators at the top level, which is all the
role's rules and dashboard use.
"""
from __future__ import annotations

import re

_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                 "bottomk", "topk", "quantile"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OPERATORS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_SET_OPERATORS = ("and", "or", "unless")
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_MODIFIER = re.compile(r"^\s*(?:on|ignoring)\s*\([^)]*\)\s*(?:(?:group_left|group_right)\s*(?:\([^)]*\))?)?\s*")


def _skip_string(expr: str, i: int) -> int:
    """Index just past the string literal that starts at ``i``."""
    quote, j = expr[i], i + 1
    while j < len(expr) and expr[j] != quote:
        j += 2 if expr[j] == "\\" else 1
    return j + 1


def _top_level(expr: str):
    """Yield (index, char) of the characters of ``expr`` outside strings,
    parentheses, brackets and label braces."""
    depth, i, n = 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr            # "(a) + (b)": the outer pair is not one group
        expr = expr[1:-1].strip()
    return expr


def split_set_operators(expr: str) -> list[str]:
    """The operands of the top-level ``and``/``or``/``unless`` of ``expr``,
    without their ``on (...)``/``ignoring (...)`` modifiers."""
    cuts, last = [], 0
    for i, _ in _top_level(expr):
        for op in _SET_OPERATORS:
            end = i + len(op)
            if (expr.startswith(op, i) and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:"))
                    and (end >= len(expr) or not (expr[end].isalnum() or expr[end] in "_:"))):
                cuts.append((i, end))
    parts = []
    for start, end in cuts:
        if start < last:
            continue
        parts.append(expr[last:start])
        last = end
    parts.append(expr[last:])
    return [_MODIFIER.sub("", part, count=1).strip() for part in parts]


def strip_threshold(expr: str) -> str:
    """``expr`` without its first top-level comparison and what follows it."""
    expr = _strip_parens(expr)
    for i, c in _top_level(expr):
        for op in _COMPARISONS:
            if expr.startswith(op, i) and not (op in (">", "<") and expr.startswith(op + "=", i)):
                # "=~" and "!~" live inside label braces, never at the top level.
                return _strip_parens(expr[:i])
    return expr


def inner_vectors(expr: str) -> list[str]:
    """The expression(s) an alert compares against its threshold: one per
    operand of a top-level set operator, each without its comparison."""
    return [strip_threshold(part) for part in split_set_operators(expr) if part]


def selectors(expr: str) -> list[str]:
    """The vector selectors of a PromQL expression (``name{matchers}``), in order.

    Skips strings, ranges ``[...]``, numbers, functions and aggregations (a
    name followed by ``(``), and the label lists of by/without/on/ignoring/group_*.
    """
    found, i, n = [], 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            while i < n and (expr[i].isalnum() or expr[i] in "._" or (expr[i] in "+-" and expr[i - 1] in "eE")):
                i += 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            word, k = expr[i:j], j
            while k < n and expr[k].isspace():
                k += 1
            nxt = expr[k] if k < n else ""
            if word in _GROUPING and nxt == "(":
                i = expr.index(")", k) + 1
            elif nxt == "(" or word.lower() in _OPERATORS or word in _AGGREGATIONS or word in _GROUPING:
                i = j
            elif nxt == "{":
                end = _close_brace(expr, k)
                found.append(word + expr[k:end + 1])
                i = end + 1
            else:
                found.append(word)
                i = j
        elif c == "{":
            end = _close_brace(expr, i)
            found.append(expr[i:end + 1])
            i = end + 1
        else:
            i += 1
    return found


def _close_brace(expr: str, start: int) -> int:
    i = start + 1
    while expr[i] != "}":
        if expr[i] in "\"'`":
            i = _skip_string(expr, i)
            continue
        i += 1
    return i
