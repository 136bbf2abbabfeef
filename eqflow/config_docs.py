"""The reference of every workflow-config key, generated from the models in :mod:`eqflow.config`.

``eqflow config docs > docs/config.md`` writes it; a test fails when the page is out of date.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from eqflow.config import REFERENCES, WorkflowConfig, unwrap_annotation

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}

INTRO = """\
# Workflow config reference

<!-- Generated from eqflow/config.py by `eqflow config docs > docs/config.md`; do not edit by hand. -->

A workflow config is a YAML file: run it with `python run.py EXP_ID FILE`, check it with
`eqflow config check FILE`, and get its JSON schema with `eqflow config schema`. Examples:
`cfgs/local.yaml` (a sub-minute demo), `cfgs/local_full.yaml`, `cfgs/cluster_example.yaml`.

`${name}` anywhere in a value is replaced from `variables:`, else from the environment; an
unset name is an error. Unknown keys and values outside a key's choices are errors, reported
with the file, the full key path and the closest known name ("did you mean 'workers'?").
Every problem in a file is reported at once, before anything is started or written.

Names that refer to another section are checked when the file is loaded:

| key | names an entry of | or |
| --- | --- | --- |
"""


@dataclass
class Section:
    model: type[BaseModel]
    where: str  # the YAML path of the section, e.g. pools.<name>
    tag: str | None = None  # the type: value that selects this model

    @property
    def anchor(self) -> str:
        return self.model.__name__.lower()

    @property
    def title(self) -> str:
        key = f"`{self.where}`" if self.where else "Top level"
        return f"{key} (type: `{self.tag}`)" if self.tag else key

    def link(self) -> str:
        return f"[{self.title}](#{self.anchor})"


def sections(root: type[BaseModel] = WorkflowConfig) -> list[Section]:
    """Every model reachable from ``root``, breadth first, with where it sits in the file."""
    found: dict[type[BaseModel], Section] = {root: Section(root, "")}
    queue = [found[root]]
    while queue:
        section = queue.pop(0)
        for name, field in section.model.model_fields.items():
            where = f"{section.where}.{name}" if section.where else name
            for model, path, tag in _models_in(field.annotation, where):
                if model not in found:
                    found[model] = Section(model, path, tag)
                    queue.append(found[model])
    return list(found.values())


def _models_in(tp: Any, where: str) -> list[tuple[type[BaseModel], str, str | None]]:
    tp, discriminator = unwrap_annotation(tp)
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(tp, where, None)]
    if origin is dict:
        return _models_in(get_args(tp)[1], f"{where}.<name>")
    if origin is list:
        return _models_in(get_args(tp)[0], f"{where}[]")
    if origin in (Union, types.UnionType):
        out = []
        for member in get_args(tp):
            for model, path, _ in _models_in(member, where):
                tag = get_args(model.model_fields[discriminator].annotation)[0] if discriminator else None
                out.append((model, path, tag))
        return out
    return []


def type_text(tp: Any, links: dict[type[BaseModel], Section]) -> str:
    tp, discriminator = unwrap_annotation(tp)
    origin = get_origin(tp)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return links[tp].link()
    if origin is Literal:
        names = [f"`{v}`" for v in get_args(tp)]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if origin is dict:
        return f"map of name to {type_text(get_args(tp)[1], links)}"
    if origin is list:
        return f"list of {type_text(get_args(tp)[0], links)}"
    if origin in (Union, types.UnionType):
        parts = [type_text(m, links) for m in get_args(tp)]
        return ("one of " if discriminator else "") + " or ".join(parts)
    return str(tp)


def _bounds(field: FieldInfo) -> str:
    marks = []
    for item in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, attr):
                marks.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen):
            marks.append(f"at least {item.min_length}")
    return f" ({', '.join(marks)})" if marks else ""


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        return "its defaults"
    if value is None:
        return "null"
    text = yaml.safe_dump(_drop_none(to_jsonable_python(value)), default_flow_style=True, sort_keys=False,
                          width=10_000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """docs/config.md: an introduction, then a table of keys per section."""
    found = sections()
    links = {s.model: s for s in found}
    lines = [INTRO.rstrip("\n")]
    lines += [f"| `{key}` | `{target}` | {alternative} |" for key, target, alternative in REFERENCES]
    for section in found:
        lines += ["", f'<a id="{section.anchor}"></a>', "", f"## {section.title}", ""]
        lines += [" ".join((section.model.__doc__ or "").replace("``", "`").split()), ""]
        lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for name, field in section.model.model_fields.items():
            cells = [f"`{name}`", type_text(field.annotation, links) + _bounds(field), default_text(field),
                     field.description or ""]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
