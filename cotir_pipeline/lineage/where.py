"""A small, safe filter language for lineage queries (never ``eval``, never SQL text).

Grammar (keywords are case-insensitive)::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := COLUMN op literal
                | COLUMN ["not"] "in" "(" literal ("," literal)* ")"
                | COLUMN "is" ["not"] "null"
                | LIST_COLUMN "contains" literal
    op         := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    literal    := 'text' (a quote inside is written '') | number | true | false

Columns are checked against the lineage schema and literals against the column's
type, so ``source = 'X'; drop table`` or ``1 = 1`` fail with a message saying what
was expected where. Comparisons with a null value are false, as in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cotir_pipeline.lineage.schema import LINEAGE_SCHEMA, LIST_COLUMNS, SCALAR_COLUMNS

#: Bounds that keep a hostile filter from costing more than a bad answer.
MAX_WHERE_LENGTH = 4000
MAX_DEPTH = 32
MAX_IN_VALUES = 10_000


class WhereError(ValueError):
    """The filter text is not valid; the message says where and what was expected."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "number", "word", "op", "(", ")", ","
    text: str
    position: int
    value: Any = None


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
    """,
    re.VERBOSE,
)

_KEYWORDS = {"and", "or", "not", "in", "is", "null", "contains", "true", "false"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            if text[position] == "'":
                raise WhereError(f"unterminated string starting at position {position}")
            raise WhereError(
                f"unexpected character {text[position]!r} at position {position}: "
                "filters use column names, 'quoted text', numbers, "
                "= != < <= > >=, in (...), is [not] null, contains, and, or, not, ( )"
            )
        kind = match.lastgroup or ""
        token_text = match.group()
        if kind == "string":
            value = token_text[1:-1].replace("''", "'")
            tokens.append(_Token("string", token_text, position, value))
        elif kind == "number":
            number = float(token_text) if any(c in token_text for c in ".eE") else int(token_text)
            tokens.append(_Token("number", token_text, position, number))
        elif kind == "word":
            tokens.append(_Token("word", token_text, position, token_text.lower()))
        elif kind == "op":
            tokens.append(_Token("op", token_text, position))
        elif kind == "punct":
            tokens.append(_Token(token_text, token_text, position))
        position = match.end()
    return tokens


# -- the parsed filter ------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``column op value`` (op is one of = != < <= > >=)."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class InList:
    """``column [not] in (values)``."""

    column: str
    values: tuple[Any, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    """``column is [not] null``."""

    column: str
    negated: bool


@dataclass(frozen=True)
class Contains:
    """``list_column contains value``."""

    column: str
    value: str


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` of two or more parts."""

    op: str
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """``not part``."""

    part: Node


Node = Comparison | InList | IsNull | Contains | BoolOp | Not


@dataclass(frozen=True)
class Where:
    """A parsed, validated filter: evaluate it on a table holding :attr:`columns`."""

    text: str
    node: Node

    @property
    def columns(self) -> list[str]:
        """Lineage columns the filter reads, in schema order."""
        found: set[str] = set()
        _collect_columns(self.node, found)
        return [name for name in LINEAGE_SCHEMA.names if name in found]

    def mask(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """Boolean mask of the rows of ``table`` that match (nulls count as no match)."""
        return pc.fill_null(_evaluate(self.node, table), False)


def _collect_columns(node: Node, found: set[str]) -> None:
    if isinstance(node, BoolOp):
        for part in node.parts:
            _collect_columns(part, found)
    elif isinstance(node, Not):
        _collect_columns(node.part, found)
    else:
        found.add(node.column)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _describe(self, token: _Token | None) -> str:
        return (
            "the end of the filter"
            if token is None
            else (f"{token.text!r} at position {token.position}")
        )

    def _fail(self, expected: str, token: _Token | None = None) -> WhereError:
        token = token if token is not None else self._peek()
        return WhereError(f"expected {expected}, got {self._describe(token)}")

    def _next(self) -> _Token | None:
        token = self._peek()
        if token is not None:
            self.index += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token.kind == "word" and token.value == word:
            self.index += 1
            return True
        return False

    def parse(self) -> Node:
        if not self.tokens:
            raise WhereError("the filter is empty: give e.g. \"source = 'GoPro'\"")
        node = self._expr(0)
        if self._peek() is not None:
            raise self._fail("'and', 'or' or the end of the filter")
        return node

    def _expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise WhereError(f"the filter nests deeper than {MAX_DEPTH} levels")
        parts = [self._term(depth)]
        while self._keyword("or"):
            parts.append(self._term(depth))
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def _term(self, depth: int) -> Node:
        parts = [self._factor(depth)]
        while self._keyword("and"):
            parts.append(self._factor(depth))
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def _factor(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise WhereError(f"the filter nests deeper than {MAX_DEPTH} levels")
        if self._keyword("not"):
            return Not(self._factor(depth + 1))
        token = self._peek()
        if token is not None and token.kind == "(":
            self.index += 1
            node = self._expr(depth + 1)
            closing = self._next()
            if closing is None or closing.kind != ")":
                raise self._fail("')'", closing)
            return node
        return self._comparison()

    def _column(self) -> str:
        token = self._next()
        if token is None or token.kind != "word" or token.value in _KEYWORDS:
            raise self._fail("a column name", token)
        name = token.text
        if name not in SCALAR_COLUMNS and name not in LIST_COLUMNS:
            known = ", ".join(SCALAR_COLUMNS + LIST_COLUMNS)
            raise WhereError(
                f"unknown column {name!r} at position {token.position}; known: {known}"
            )
        return name

    def _literal(self, column: str) -> Any:
        token = self._next()
        if token is None or token.kind not in ("string", "number", "word"):
            raise self._fail("a value ('text' or a number)", token)
        if token.kind == "word" and token.value not in ("true", "false"):
            raise self._fail(f"a value for {column} ('quoted text' or a number)", token)
        value = token.value if token.kind != "word" else token.value == "true"
        kind = LINEAGE_SCHEMA.field(column).type
        if pa.types.is_list(kind):
            kind = kind.value_type
        if pa.types.is_string(kind):
            if not isinstance(value, str):
                raise WhereError(
                    f"{column} holds text: quote the value, e.g. {column} = '{token.text}' "
                    f"(position {token.position})"
                )
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            if isinstance(value, str | bool):
                raise WhereError(
                    f"{column} holds numbers: give a number, got {token.text} "
                    f"(position {token.position})"
                )
            if pa.types.is_integer(kind) and isinstance(value, float):
                raise WhereError(f"{column} holds integers, got {token.text}")
        return value

    def _comparison(self) -> Node:
        column = self._column()
        token = self._next()
        if column in LIST_COLUMNS:
            if token is None or token.kind != "word" or token.value != "contains":
                raise self._fail(f"'contains' ({column} is a list)", token)
            return Contains(column, self._literal(column))
        if token is not None and token.kind == "op":
            op = {"==": "=", "<>": "!="}.get(token.text, token.text)
            # Order comparisons on text are allowed too (e.g. sample_id >= 'f0').
            return Comparison(column, op, self._literal(column))
        if token is not None and token.kind == "word":
            if token.value == "is":
                negated = self._keyword("not")
                if not self._keyword("null"):
                    raise self._fail("'null'")
                return IsNull(column, negated)
            negated = False
            if token.value == "not":
                negated = True
                token = self._next()
            if token is not None and token.kind == "word" and token.value == "in":
                return InList(column, self._values(column), negated)
        raise self._fail("an operator (= != < <= > >=, in, not in, is null)", token)

    def _values(self, column: str) -> tuple[Any, ...]:
        opening = self._next()
        if opening is None or opening.kind != "(":
            raise self._fail("'(' after 'in'", opening)
        values = [self._literal(column)]
        while True:
            token = self._next()
            if token is not None and token.kind == ")":
                break
            if token is None or token.kind != ",":
                raise self._fail("',' or ')'", token)
            values.append(self._literal(column))
            if len(values) > MAX_IN_VALUES:
                raise WhereError(f"'in' takes at most {MAX_IN_VALUES} values")
        return tuple(values)


def parse_where(text: str) -> Where:
    """Parse and validate a filter such as ``source = 'GoPro' and status = 'dropped'``.

    Raises :class:`WhereError` naming the position and what was expected.
    """
    if not isinstance(text, str):
        raise WhereError(f"the filter must be text, got {type(text).__name__}")
    if len(text) > MAX_WHERE_LENGTH:
        raise WhereError(f"the filter is longer than {MAX_WHERE_LENGTH} characters")
    return Where(text=text, node=_Parser(text).parse())


# -- evaluation -------------------------------------------------------------------------


def _typed(column: str, values: Sequence[Any]) -> pa.Array:
    kind = LINEAGE_SCHEMA.field(column).type
    if pa.types.is_list(kind):
        kind = kind.value_type
    return pa.array(list(values), type=kind)


_COMPARE = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def _column_data(table: pa.Table, name: str) -> pa.ChunkedArray:
    data = table.column(name)
    if pa.types.is_dictionary(data.type):
        data = data.cast(data.type.value_type)
    return data


def _evaluate(node: Node, table: pa.Table) -> Any:
    if isinstance(node, BoolOp):
        combine = pc.and_kleene if node.op == "and" else pc.or_kleene
        result = _evaluate(node.parts[0], table)
        for part in node.parts[1:]:
            result = combine(result, _evaluate(part, table))
        return result
    if isinstance(node, Not):
        return pc.invert(_evaluate(node.part, table))
    if isinstance(node, IsNull):
        nulls = pc.is_null(_column_data(table, node.column))
        return pc.invert(nulls) if node.negated else nulls
    if isinstance(node, InList):
        data = _column_data(table, node.column)
        found = pc.is_in(data, value_set=_typed(node.column, node.values))
        # SQL: a null value is neither in nor not in the list.
        found = pc.if_else(pc.is_null(data), pa.scalar(None, pa.bool_()), found)
        return pc.invert(found) if node.negated else found
    if isinstance(node, Contains):
        data = table.column(node.column).combine_chunks()
        flat = pc.list_flatten(data)
        parents = pc.list_parent_indices(data)
        hits = pc.filter(parents, pc.fill_null(pc.equal(flat, node.value), False))
        rows = pa.array(np.arange(len(table), dtype=np.int64)).cast(parents.type)
        return pc.is_in(rows, value_set=hits)
    assert isinstance(node, Comparison)
    data = _column_data(table, node.column)
    scalar = pa.scalar(node.value, type=_typed(node.column, [node.value]).type)
    return _COMPARE[node.op](data, scalar)
