"""Prompts for the LLM samplers, built the way the FunSearch reference builds them.

A prompt is the problem's module docstring and imports, then the chosen programs (in ascending
score order) renamed ``priority_v0 .. priority_v{k-1}``: the first keeps the spec's docstring,
each later one is documented as an improved version of the one before. It ends with the bare
``def priority_vk(...):`` line, so a code model continues with the body of a new version. The
engine trims a completion to the function body (``code.trim_completion``); ``restore_names``
renames the versions that body mentions back to the evolved function's own name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from eqflow.funsearch.code import body_of, rename_function

__all__ = ["build_prompt", "version_name", "restore_names", "prompt_header"]


def version_name(function_name: str, version: int) -> str:
    return f"{function_name}_v{version}"


def _docstring_block(text: str) -> str:
    """The module docstring as it appears in the prompt (quoted once, whatever the spec holds)."""
    text = (text or "").strip()
    if not text:
        return ""
    if text.startswith(('"""', "'''")):
        return text + "\n"
    return f'"""{text}\n"""\n'


def _imports_block(imports: Any) -> str:
    if not imports:
        return ""
    if isinstance(imports, str):
        text = imports.strip()
    else:
        text = "\n".join(str(line).strip() for line in imports if str(line).strip())
    return text + "\n" if text else ""


def _def_name(header: str) -> str:
    match = re.match(r"\s*(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", header)
    if match is None:
        raise ValueError(f"not a def line: {header!r}")
    return match.group(1)


def prompt_header(header: str, function_name: str, version: int) -> str:
    """The spec's ``def`` line renamed to ``priority_v{version}``."""
    return rename_function(header.rstrip() + "\n", _def_name(header), version_name(function_name, version)).rstrip()


def _strip_docstring(body: str) -> str:
    """``body`` without a leading docstring statement (the prompt writes its own)."""
    import ast

    try:
        module = ast.parse("def _f():\n" + body)
    except SyntaxError:
        return body
    function = module.body[0]
    assert isinstance(function, ast.FunctionDef)
    first = function.body[0] if function.body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return body
    lines = body.split("\n")
    end = (first.end_lineno or first.lineno) - 1  # lines of body (module line 1 is the def)
    rest = "\n".join(lines[end:])
    return rest if rest.strip() else "    pass\n"


def _quoted(text: str) -> str:
    text = text.replace('"""', r"\"\"\"")
    return f'"""{text}\n"""' if "\n" in text else f'"""{text}"""'


def _version(spec: Any, source: str, version: int) -> str:
    function_name = spec.function_name
    body = _strip_docstring(body_of(source))
    if version == 0:
        doc = (getattr(spec, "function_docstring", "") or "").strip()
    else:
        doc = f"Improved version of `{version_name(function_name, version - 1)}`."
    lines = [prompt_header(spec.header, function_name, version)]
    if doc:
        lines.append("\n".join(("    " + line) if line.strip() else "" for line in _quoted(doc).split("\n")))
    text = "\n".join(lines) + "\n" + body.rstrip("\n") + "\n"
    # A program that calls itself (recursion) calls its own version.
    return rename_function(text, function_name, version_name(function_name, version))


def build_prompt(spec: Any, parents: Sequence[str]) -> str:
    """The prompt for one ``sample`` task: ``parents`` are full function sources (``def ...``),
    lowest score first; the result ends with the bare header of ``priority_v{len(parents)}``."""
    parts = [_docstring_block(getattr(spec, "docstring", "")), _imports_block(getattr(spec, "imports", ""))]
    parts += [_version(spec, source, i) for i, source in enumerate(parents)]
    parts.append(prompt_header(spec.header, spec.function_name, len(parents)) + "\n")
    head = "\n".join(part for part in parts[:2] if part)
    return "\n\n".join(([head] if head else []) + parts[2:])


_VERSION = r"(?<![\w.]){name}_v\d+(?=\s*\()"


def restore_names(body: str, function_name: str) -> str:
    """A body trimmed from a completion with every call of ``priority_vN`` (its own version,
    recursion, or an earlier version the model reused) named ``priority`` again."""
    return re.sub(_VERSION.format(name=re.escape(function_name)), function_name, body)
