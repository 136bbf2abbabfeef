"""Problem specifications: a Python file with one function to evolve and one to run.

A spec reads like a FunSearch specification::

    \"\"\"What the problem is (this docstring starts every prompt).\"\"\"
    import itertools
    import funsearch

    DEFAULT_TESTS = [{"n": 6, "s": 1}, {"n": 7, "s": 1}]
    KNOWN = {'{"n":6,"s":1}': 10}          # test key -> best known score
    TARGETS = {'{"n":6,"s":1}': 10}        # test key -> the score a run aims for

    @funsearch.run
    def evaluate(n: int, s: int) -> list[tuple[int, ...]]:
        ...                                  # builds a solution, calling priority()

    @funsearch.evolve
    def priority(el: tuple[int, ...], n: int, s: int) -> float:
        \"\"\"What priority means.\"\"\"
        return 0.0

    def score(solution, n: int, s: int) -> float:
        ...                                  # checks the solution; raises ValueError if invalid

Conventions:

* A **test** is a JSON object (a dict); ``test_key(test)`` is its canonical JSON
  (``{"n":6,"s":1}``), the key of score dictionaries, ``KNOWN`` and ``TARGETS`` (keys written with
  other spacing or key order are normalised on load).
* ``import funsearch`` works in a spec: the loader and the sandbox register a marker module whose
  ``run`` and ``evolve`` are identity decorators. The decorators are found in the source
  (``@funsearch.run`` / ``@funsearch.evolve`` on top-level functions, exactly one of each).
* The run function is called as ``evaluate(**test)`` inside the sandbox and returns the
  **solution** as JSON-able data (lists, tuples, numbers), not its score. It must call the
  evolved function by its name, so the sandbox's candidate is the one it finds.
* ``score(solution, **test) -> float`` (plain function name) is trusted: it runs outside the
  candidate's process on the JSON the candidate returned, checks the solution independently and
  returns its score; it raises ``ValueError`` for an invalid solution. A spec without ``score``
  (a classic FunSearch spec whose run function returns the score) also works, but then the score
  is whatever the candidate's process reports.
* ``reduce(scores, how) -> float`` (optional) folds per-test scores into one program score;
  without it the score is the mean over tests.
* ``prepare(**test)`` (optional) runs once per test in each sandbox server before any candidate, to
  build structures every candidate reuses (copy-on-write across the forked children).
* ``DEFAULT_TESTS`` (list of dicts), ``KNOWN`` and ``TARGETS`` (test key -> score) are optional
  module constants.

``Spec.load`` takes a bundled spec name (``deletion_codes``, ``cap_set``) or a path to a ``.py`` file.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import textwrap
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from eqflow.funsearch._sandbox_server import install_marker, load_module
from eqflow.funsearch._sandbox_server import test_key as _test_key

BUNDLED = ("deletion_codes", "cap_set")


def test_key(test: dict[str, Any]) -> str:
    """The canonical JSON of a test: ``json.dumps(test, sort_keys=True, separators=(",", ":"))``."""
    return _test_key(test)


test_key.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into one


class SpecError(ValueError):
    """A specification that cannot be used, with what is wrong and where."""


@dataclass(frozen=True)
class Spec:
    name: str
    text: str
    docstring: str
    imports: str
    function_name: str
    header: str
    function_docstring: str
    initial_body: str
    run_name: str
    sha256: str
    # Lines (0-based, end exclusive) of the evolved function's body after its docstring.
    body_start: int = field(repr=False)
    body_end: int = field(repr=False)
    body_indent: str = field(repr=False)  # the spec's own indentation of that body
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, name_or_path: str) -> Spec:
        """A bundled spec by name, or a spec file by path."""
        if name_or_path in BUNDLED:
            text = resources.files("eqflow.funsearch.specs").joinpath(f"{name_or_path}.py").read_text()
            return cls.from_text(text, name_or_path)
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise SpecError(f"no spec {name_or_path!r}: not a bundled spec ({', '.join(BUNDLED)}) and no such file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read spec {path}: {exc}") from exc
        return cls.from_text(text, path.stem)

    @classmethod
    def from_text(cls, text: str, name: str) -> Spec:
        try:
            tree = ast.parse(text, filename=f"<spec {name}>")
        except SyntaxError as exc:
            raise SpecError(f"spec {name}: syntax error at line {exc.lineno}: {exc.msg}") from exc
        evolve = _marked(tree, "evolve", name)
        run = _marked(tree, "run", name)
        if evolve is run:
            raise SpecError(f"spec {name}: {evolve.name} is marked both @funsearch.run and @funsearch.evolve")
        lines = text.splitlines()
        header, header_end = _header(evolve, lines, name)
        body_start = header_end
        function_docstring = ""
        first = evolve.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            function_docstring = ast.get_docstring(evolve) or ""
            body_start = _end(first)
            if len(evolve.body) == 1:
                raise SpecError(f"spec {name}: {evolve.name} has only a docstring; give it an initial body")
        body_end = _end(evolve)
        rest = evolve.body[1:] if function_docstring else evolve.body
        if body_start >= body_end or any(_start(stmt) < body_start for stmt in rest):
            raise SpecError(f"spec {name}: put the body of {evolve.name} on its own lines")
        initial_body = textwrap.indent(textwrap.dedent("\n".join(lines[body_start:body_end])), "    ")
        first_line = lines[_start(first)]
        body_indent = first_line[: len(first_line) - len(first_line.lstrip())]
        imports = [
            ast.get_source_segment(text, node) or ""
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not _imports_only_funsearch(node)
        ]
        return cls(
            name=name, text=text, docstring=ast.get_docstring(tree) or "", imports="\n".join(imports),
            function_name=evolve.name, header=header, function_docstring=function_docstring,
            initial_body=initial_body, run_name=run.name, sha256=hashlib.sha256(text.encode()).hexdigest(),
            body_start=body_start, body_end=body_end, body_indent=body_indent,
        )

    def program(self, body: str) -> str:
        """The spec's text with the evolved function's body (after its docstring) replaced; ``body``
        may be indented any way (it is re-indented to match the spec)."""
        lines = self.text.splitlines()
        new_body = textwrap.indent(textwrap.dedent(body.strip("\n")), self.body_indent).splitlines()
        out = lines[: self.body_start] + new_body + lines[self.body_end:]
        return "\n".join(out) + "\n"

    def module(self) -> types.ModuleType:
        """The spec imported in this process (trusted code: the spec's own text only)."""
        module = self._cache.get("module")
        if module is None:
            install_marker()
            try:
                module = load_module(self.text, self.name, f"_eqflow_spec_{self.name}_{self.sha256[:12]}")
            except Exception as exc:
                raise SpecError(f"spec {self.name} failed to import: {type(exc).__name__}: {exc}") from exc
            self._cache["module"] = module
        return module

    @property
    def default_tests(self) -> list[dict[str, Any]]:
        tests = getattr(self.module(), "DEFAULT_TESTS", [])
        if not isinstance(tests, list) or not all(isinstance(test, dict) for test in tests):
            raise SpecError(f"spec {self.name}: DEFAULT_TESTS must be a list of dicts")
        return [dict(test) for test in tests]

    @property
    def known(self) -> dict[str, float]:
        return self._scores_by_key("KNOWN")

    @property
    def targets(self) -> dict[str, float]:
        return self._scores_by_key("TARGETS")

    @property
    def has_checker(self) -> bool:
        """Whether the spec checks solutions itself (``score``) rather than trusting the run's number."""
        return callable(getattr(self.module(), "score", None))

    def reduce(self, scores: dict[str, float], how: str = "last") -> float:
        """One score for a program from its per-test scores: the spec's ``reduce``, else the mean."""
        if not scores:
            raise ValueError("no scores to reduce")
        reducer = getattr(self.module(), "reduce", None)
        if callable(reducer):
            return float(reducer(dict(scores), how))
        return math.fsum(scores.values()) / len(scores)

    def check(self, test: dict[str, Any], solution: Any) -> float:
        """The score of ``solution`` for ``test`` by the spec's ``score``; ValueError if invalid."""
        scorer = getattr(self.module(), "score", None)
        if not callable(scorer):
            raise SpecError(f"spec {self.name} has no score() function to check solutions with")
        try:
            value = float(scorer(solution, **test))
        except ValueError:
            raise
        except Exception as exc:  # a malformed solution can trip the checker in other ways
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        if not math.isfinite(value):
            raise ValueError(f"score {value} is not finite")
        return value

    def _scores_by_key(self, constant: str) -> dict[str, float]:
        table = getattr(self.module(), constant, {})
        if not isinstance(table, dict):
            raise SpecError(f"spec {self.name}: {constant} must be a dict of test key -> score")
        out = {}
        for key, value in table.items():
            try:
                test = json.loads(key) if isinstance(key, str) else None
            except ValueError:
                test = None
            if not isinstance(test, dict):
                raise SpecError(f"spec {self.name}: {constant} key {key!r} is not a test's JSON")
            out[test_key(test)] = float(value)
        return out


def _is_marker(decorator: ast.expr, marker: str) -> bool:
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    return (isinstance(decorator, ast.Attribute) and decorator.attr == marker
            and isinstance(decorator.value, ast.Name) and decorator.value.id == "funsearch")


def _marked(tree: ast.Module, marker: str, name: str) -> ast.FunctionDef:
    found = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and any(_is_marker(decorator, marker) for decorator in node.decorator_list)]
    if not found:
        raise SpecError(f"spec {name}: no function marked @funsearch.{marker}")
    if len(found) > 1:
        names = ", ".join(f"{node.name} (line {node.lineno})" for node in found)
        raise SpecError(f"spec {name}: {len(found)} functions marked @funsearch.{marker}: {names}; mark exactly one")
    node = found[0]
    if isinstance(node, ast.AsyncFunctionDef):
        raise SpecError(f"spec {name}: @funsearch.{marker} function {node.name} must not be async")
    return node


def _start(node: ast.stmt) -> int:
    """0-based first line of a statement."""
    return node.lineno - 1


def _end(node: ast.stmt) -> int:
    """0-based line after a statement."""
    assert node.end_lineno is not None
    return node.end_lineno


def _header(function: ast.FunctionDef, lines: list[str], name: str) -> tuple[str, int]:
    """The ``def`` line(s) of a function (without decorators), and the 0-based line after them."""
    first_body_line = _start(function.body[0])
    def_line = function.lineno - 1
    if first_body_line == def_line:
        raise SpecError(f"spec {name}: put the body of {function.name} on its own lines")
    # The signature ends at the last line before the body that holds code (not a comment).
    end = first_body_line
    while end > def_line + 1 and not lines[end - 1].split("#", 1)[0].strip():
        end -= 1
    return "\n".join(line.rstrip() for line in lines[def_line:end]), end


def _imports_only_funsearch(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "funsearch"
    return all(alias.name.split(".")[0] == "funsearch" for alias in node.names)
