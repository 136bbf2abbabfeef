"""eqflow.funsearch.code: trimming sampler output to a body, normalising, renaming."""

from __future__ import annotations

import ast

import pytest

from eqflow.funsearch.code import (
    body_hash,
    body_of,
    function_source,
    normalise_body,
    parse_function,
    rename_function,
    trim_completion,
)

HEADER = "def priority(el: tuple[int, ...], n: int) -> float:"


def trim(text: str) -> str | None:
    return trim_completion(text, "priority", HEADER)


def test_parse_function() -> None:
    function = parse_function("import math\n\ndef f(x):\n    return x\n")
    assert isinstance(function, ast.FunctionDef) and function.name == "f"
    assert parse_function("x = 1\n") is None
    assert parse_function("def f(:\n") is None


def test_bare_body_is_kept_as_is() -> None:
    body = "    total = sum(el)  # a comment stays\n    return total % (n + 1)\n"
    assert trim(body) == body


def test_nested_blocks_keep_their_comments() -> None:
    body = ("    if n > 3:\n        return 1.0\n    elif el:\n        return 2.0  # two\n    else:\n"
            "        try:\n            return el[0] / n\n        except ZeroDivisionError:\n            return 0.0\n")
    assert trim(body) == body


def test_comment_at_the_margin_inside_a_body() -> None:
    assert trim("    x = len(el)\n# a note at column 0\n    return x\n") == (
        "    x = len(el)\n    # a note at column 0\n    return x\n")


def test_full_def_gives_its_body() -> None:
    text = "def priority(el: tuple[int, ...], n: int) -> float:\n    # why\n    return 1.0\n"
    assert trim(text) == "    # why\n    return 1.0\n"


def test_renamed_def_in_fences_with_prose() -> None:
    text = ("Here is an improved version:\n\n```python\ndef priority_v3(el, n):\n"
            "  if n == 0:\n    return 0.0\n  return priority_v3(el, n - 1) + 1\n```\n\nIt recurses on n.\n")
    # Re-indented to four spaces; the self-call becomes a call of the evolved function.
    assert trim(text) == ("    if n == 0:\n        return 0.0\n    return priority(el, n - 1) + 1\n")


def test_text_after_the_function_is_cut() -> None:
    assert trim("    return 2\n\n\ndef priority_v4(el, n):\n    return 3\n") == "    return 2\n"
    assert trim("    return 2\n```\nThis returns two.\n") == "    return 2\n"
    assert trim("def priority(el, n):\n    return 5\nThat is all, folks.\n") == "    return 5\n"


def test_broken_body_is_trimmed_to_the_parsable_prefix() -> None:
    text = "    a = len(el)\n    b = a + n\n    c = (b +\n    return c\n"
    assert trim(text) == "    a = len(el)\n    b = a + n\n"


def test_unindented_body_and_one_line_def() -> None:
    assert trim("return n % 3\n\ndef other():\n    pass\n") == "    return n % 3\n"
    assert trim("def priority(el, n): return n") == "    return n\n"
    assert trim("\treturn 1\n") == "    return 1\n"


@pytest.mark.parametrize("text", ["", "\n\n", "!!! ??? )))", "```\n```", '    """only a docstring"""\n',
                                  "Sure! Happy to help.", "\x00\x01", "    return (((((\n"])
def test_garbage_and_empty_give_none(text: str) -> None:
    assert trim(text) is None


def test_trimmed_bodies_compile_with_the_header() -> None:
    for text in ["    return 1\n", "def priority_v1(el, n):\n    return -sum(el)\n", "return 0.0"]:
        body = trim(text)
        assert body is not None
        compile(function_source(HEADER, body), "<t>", "exec")


def test_normalisation_ignores_formatting_comments_and_docstrings() -> None:
    a = "    # the weighted sum\n    s = sum(i*x for i,x in enumerate(el, 1))\n    return -(s % (n+1))\n"
    b = ('    """Docstring."""\n    s = sum((i * x) for (i, x) in enumerate(el, 1))   # same\n\n'
         "    return -((s) % (n + 1))\n")
    assert normalise_body(a, HEADER) == normalise_body(b, HEADER)
    assert body_hash(a, HEADER) == body_hash(b, HEADER)
    assert len(body_hash(a, HEADER)) == 64


def test_normalisation_tells_different_programs_apart() -> None:
    a = "    return -(sum(el) % (n + 1))\n"
    assert body_hash(a, HEADER) != body_hash("    return -(sum(el) % (n + 2))\n", HEADER)
    assert body_hash(a, HEADER) != body_hash("    return -(sum(el) % (1 + n))\n", HEADER)
    assert body_hash("    return 1\n", HEADER) != body_hash("    return 1.0\n", HEADER)


def test_normalise_unparsable_raises() -> None:
    with pytest.raises(ValueError):
        normalise_body("    return (\n", HEADER)


def test_function_source_and_rename() -> None:
    source = function_source(HEADER, "    return priority(el, n - 1)  # priority\n", name="priority_v2")
    assert source.startswith("def priority_v2(el: tuple[int, ...], n: int) -> float:\n")
    assert "return priority_v2(el, n - 1)  # priority" in source  # comment text is not renamed
    renamed = rename_function("def f(x):\n    return obj.f(x) + f(x - 1) + f_2(x)\n", "f", "g")
    assert renamed == "def g(x):\n    return obj.f(x) + g(x - 1) + f_2(x)\n"


def test_body_of_keeps_docstring_and_comments() -> None:
    source = 'import math\n\ndef f(a):\n    """Doc."""\n    # note\n    return math.sqrt(a)\n'
    assert body_of(source) == '    """Doc."""\n    # note\n    return math.sqrt(a)\n'
    with pytest.raises(ValueError):
        body_of("not python at all (")
