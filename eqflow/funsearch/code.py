"""Candidate functions as text: parse, trim a sampler's output to a function body, normalise.

A candidate is stored as a *body*: the statements under the evolved function's ``def`` line,
indented by four spaces. The spec supplies the header (``def priority(el: ..., n: int) -> float:``);
``function_source`` puts the two together. Samplers (an LLM's completion, the mutation sampler)
answer with raw text; ``trim_completion`` turns it into a body or None, never an exception.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import textwrap
import tokenize

INDENT = "    "
_DEF_LINE = re.compile(r"^(\s*)(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(")
_FENCE = re.compile(r"^\s*(```|~~~)")
# A completion is cut by the parsable-prefix loop at most this many times (one line per try at worst).
_MAX_TRIM_TRIES = 400


def parse_function(source: str) -> ast.FunctionDef | None:
    """The first top-level ``def`` in ``source``, or None when it does not parse or holds none."""
    try:
        module = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    for node in module.body:
        if isinstance(node, ast.FunctionDef):
            return node
    return None


def _parse_prefix(lines: list[str]) -> tuple[ast.Module, list[str]] | None:
    """The longest prefix of ``lines`` that parses (cut at each syntax error's line, as the
    FunSearch reference does), with its module; None when no non-empty prefix parses."""
    for _ in range(_MAX_TRIM_TRIES):
        if not lines:
            return None
        try:
            return ast.parse("\n".join(lines) + "\n"), lines
        except SyntaxError as error:
            # The error line (or the last one) and what follows cannot be part of the answer.
            cut = (error.lineno or len(lines)) - 1
            lines = lines[: max(0, min(cut, len(lines) - 1))]
        except (ValueError, MemoryError, RecursionError):
            lines = lines[:-1]
    return None


def _first_line(stmt: ast.stmt) -> int:
    """The first line of a statement, decorators included."""
    decorators = getattr(stmt, "decorator_list", [])
    return min([stmt.lineno] + [d.lineno for d in decorators])


def _statements(function: ast.FunctionDef, drop_docstring: bool) -> list[ast.stmt]:
    body = list(function.body)
    if drop_docstring and body and _is_docstring(body[0]):
        body = body[1:]
    return body


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _indent(text: str) -> str:
    return textwrap.indent(text, INDENT, lambda line: bool(line.strip()))


def _body_text(function: ast.FunctionDef, lines: list[str]) -> str:
    """The body of a parsed ``def`` as 4-space indented text: the original lines (comments kept)
    when they can be cut out cleanly, else ``ast.unparse`` of the statements."""
    body = function.body
    start = _first_line(body[0])
    end = function.end_lineno or body[-1].end_lineno or start
    if start > function.lineno and _four_space_blocks(body, body[0].col_offset):
        # Comment lines just above the first statement belong to the body too.
        while start - 1 > function.lineno and lines[start - 2].strip().startswith("#"):
            start -= 1
        base = body[0].col_offset
        # Out by the body's own indentation; a comment further left (legal anywhere) moves right.
        text = "\n".join(line[base:] if line[:base].isspace() or not line.strip() else line.lstrip()
                         for line in lines[start - 1 : end])
        candidate = _indent(text.rstrip()) + "\n"
        if ast.dump(_reparse_body(candidate)) == ast.dump(ast.Module(body=body, type_ignores=[])):
            return candidate
    # A one-line def (`def f(x): return x`) or a body whose re-indented text reads differently.
    return _indent("\n".join(ast.unparse(stmt) for stmt in body)) + "\n"


def _four_space_blocks(statements: list[ast.stmt], base: int) -> bool:
    """Whether every nested block is indented four spaces deeper than the one around it."""
    for stmt in statements:
        if stmt.col_offset != base:
            return False
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = [s for s in getattr(stmt, field, []) if isinstance(s, ast.stmt)]
            depth = base if field == "orelse" and inner and inner[0].col_offset == base else base + 4  # elif
            if inner and inner[0].lineno != stmt.lineno and not _four_space_blocks(inner, depth):
                return False
        for handler in getattr(stmt, "handlers", []):
            if handler.col_offset != base or not _four_space_blocks(handler.body, base + 4):
                return False
    return True


def _reparse_body(body: str) -> ast.Module:
    try:
        function = parse_function("def _f():\n" + body)
    except RecursionError:
        function = None
    return ast.Module(body=function.body if function else [], type_ignores=[])


def _from_def(lines: list[str]) -> str | None:
    """The body of the ``def`` that starts ``lines`` (anything after the function is cut off)."""
    indent = len(lines[0]) - len(lines[0].lstrip())
    lines = [line[indent:] if line[:indent].isspace() else line for line in lines]
    parsed = _parse_prefix(lines)
    if parsed is None:
        return None
    module, kept = parsed
    function = next((node for node in module.body if isinstance(node, ast.FunctionDef)), None)
    if function is None or not _statements(function, drop_docstring=True):
        return None
    return _body_text(function, kept)


def _from_bare(lines: list[str], prefix: str = "") -> str | None:
    """A completion that continues after the header: the statements indented under it."""
    return _from_def(["def _f():"] + [prefix + line if line.strip() else line for line in lines])


def _def_starts(lines: list[str], function_name: str) -> tuple[list[int], list[int]]:
    """Indexes of ``def`` lines: the evolved function's (``name`` or ``name_vK``), then the others."""
    own = re.compile(rf"^{re.escape(function_name)}(_v\d+)?$")
    matches = [(i, _DEF_LINE.match(line)) for i, line in enumerate(lines)]
    starts = [(i, m.group(2)) for i, m in matches if m]
    return [i for i, name in starts if own.match(name)], [i for i, name in starts if not own.match(name)]


def trim_completion(text: str, function_name: str, header: str) -> str | None:
    """A sampler's output as the first function body that parses (4-space indented), or None.

    Accepts a bare body (an LLM completion of a prompt that ended with ``header``), a full ``def``
    under any name (``priority_v3``...), prose or markdown fences around either, and text after the
    function. A body with a syntax error is cut to its longest parsable prefix. None when nothing
    parses, or the body is empty (a docstring alone counts as empty).
    """
    if not isinstance(text, str):
        return None
    lines = text.expandtabs(4).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # Leading blank lines, prose-free fences (```python) go; closing ones are cut by parsing.
    while lines and (not lines[0].strip() or _FENCE.match(lines[0])):
        lines = lines[1:]
    if not lines:
        return None
    attempts: list[tuple[str, int]] = []  # (how, line) in the order tried
    first = lines[0]
    if _DEF_LINE.match(first):
        attempts.append(("def", 0))
    elif first[:1].isspace():
        attempts.append(("bare", 0))
    own, others = _def_starts(lines, function_name)
    attempts += [("def", start) for start in own if start != 0]
    if not first[:1].isspace() and not _DEF_LINE.match(first):
        attempts.append(("flat", 0))  # an unindented body: `return n % 3`
    attempts += [("def", start) for start in others if start != 0]
    for how, start in attempts:
        try:
            body = _attempt(how, lines, start, function_name)
        except RecursionError:
            body = None
        if body is not None and _compiles(function_source(header, body)):
            return body
    return None


def _attempt(how: str, lines: list[str], start: int, function_name: str) -> str | None:
    """One way of reading a completion: a ``def`` at ``start``, a bare or an unindented body."""
    if how == "bare":
        return _from_bare(lines)
    if how == "flat":
        # An unindented body ends where a def or a fence starts at the margin.
        end = next((i for i, line in enumerate(lines) if i and (_DEF_LINE.match(line) or _FENCE.match(line))),
                   len(lines))
        return _from_bare(lines[:end], INDENT)
    body = _from_def(lines[start:])
    match = _DEF_LINE.match(lines[start])
    if body is not None and match and match.group(2) != function_name:
        # priority_v3 calling itself is the evolved function's recursion.
        body = rename_function(body, match.group(2), function_name)
    return body


def _compiles(source: str) -> bool:
    try:
        compile(source, "<candidate>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


class _DropDocstrings(ast.NodeTransformer):
    """Removes the docstring of every function (nested ones too): it does not change behaviour."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        node.body = _statements(node, drop_docstring=True) or [ast.Pass()]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]


def normalise_body(body: str, header: str) -> str:
    """The canonical text of the function ``header`` + ``body``: ``ast.unparse`` without comments,
    docstrings and formatting, so programs that differ only in those give the same text.

    Raises ValueError when the function does not parse (callers pass trimmed bodies).
    """
    function = parse_function(function_source(header, body))
    if function is None:
        raise ValueError("the function does not parse")
    return ast.unparse(_DropDocstrings().visit(function))


def body_hash(body: str, header: str) -> str:
    """sha256 (hex) of ``normalise_body``: the key that deduplicates programs."""
    return hashlib.sha256(normalise_body(body, header).encode()).hexdigest()


def function_source(header: str, body: str, name: str | None = None) -> str:
    """``header`` (the ``def`` line) followed by ``body``; renamed to ``name`` when given."""
    source = header.rstrip() + "\n" + body.rstrip("\n") + "\n"
    if name is not None:
        match = _DEF_LINE.match(header)
        if match is None:
            raise ValueError(f"not a def line: {header!r}")
        source = rename_function(source, match.group(2), name)
    return source


def rename_function(source: str, old: str, new: str) -> str:
    """``source`` with the function ``old`` renamed ``new``: its ``def`` and every call of ``old``
    (recursion; not ``obj.old(...)``). Formatting and comments are kept."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        # Not tokenizable: a plain text rename of the def and calls is the best that can be done.
        source = re.sub(rf"\bdef(\s+){re.escape(old)}\b", rf"def\g<1>{new}", source)
        return re.sub(rf"(?<![\w.]){re.escape(old)}(?=\s*\()", new, source)
    significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.NEWLINE,
                                                       tokenize.INDENT, tokenize.DEDENT)]
    spans: list[tuple[int, int]] = []
    for i, token in enumerate(significant):
        if token.type != tokenize.NAME or token.string != old:
            continue
        before = significant[i - 1].string if i else ""
        after = significant[i + 1].string if i + 1 < len(significant) else ""
        if before == "def" or (after == "(" and before != "."):
            spans.append(token.start)
    lines = source.splitlines(keepends=True)
    for row, col in reversed(spans):  # right to left: earlier columns stay valid
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[col + len(old) :]
    return "".join(lines)


def body_of(source: str) -> str:
    """The body of a full ``def`` source as 4-space indented text, docstring and comments kept.

    Raises ValueError when ``source`` holds no parsable function.
    """
    lines = source.expandtabs(4).split("\n")
    function = parse_function("\n".join(lines))
    if function is None:
        raise ValueError("no function in source")
    return _body_text(function, lines)
