"""Tool definitions: one :class:`Tool` type built from a function, a pydantic model or a schema.

A ``Tool`` holds what every backend needs (name, description, the JSON schema of its
arguments) and, when it came from a Python function, the function itself so
:func:`abstractcore.tools.run_tools` can call it. Argument schemas come from pydantic (a
function's signature becomes a model with ``create_model``), and arguments the model writes
are validated by that model, or by ``jsonschema`` for a tool given as a bare schema.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .._schema import check_json_schema, describe_pydantic_errors, schema_errors
from ..errors import InvalidRequestError

__all__ = ["TOOL_NAME_PATTERN", "Tool", "normalize_tools", "tool"]

#: What OpenAI and Anthropic accept as a tool name (the stricter of the two).
TOOL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_PARAM_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:?\s*$", re.IGNORECASE)
_OTHER_SECTION = re.compile(
    r"^\s*(Returns?|Raises?|Yields?|Examples?|Notes?|See Also)\s*:?\s*$", re.IGNORECASE
)
_GOOGLE_ARG = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_ARG = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


class Tool(BaseModel):
    """A function the model may call: ``name``, ``description`` and the JSON schema of its
    arguments (``parameters``, an object schema). ``strict`` asks backends that support it
    (OpenAI) to guarantee arguments that match the schema."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False
    function: Callable[..., Any] | None = Field(default=None, exclude=True, repr=False)
    arguments_model: type[BaseModel] | None = Field(default=None, exclude=True, repr=False)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        strict: bool = False,
    ) -> Tool:
        """The tool for a typed function: its parameters (type hints, defaults) become the
        schema, its docstring the description (``Args:`` or ``:param x:`` lines describe
        the parameters)."""
        if not callable(fn):
            raise InvalidRequestError(f"{fn!r} is not callable", field="tools")
        tool_name = name or str(getattr(fn, "__name__", ""))
        summary, documented = _parse_docstring(inspect.getdoc(fn) or "")
        model = _arguments_model(fn, tool_name, documented)
        return cls(
            name=_check_name(tool_name, "tools"),
            description=description if description is not None else summary,
            parameters=_object_schema(model),
            strict=strict,
            function=fn,
            arguments_model=model,
        )

    @classmethod
    def from_model(
        cls, model: type[BaseModel], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        """The tool whose arguments are ``model``'s fields (its docstring describes it)."""
        doc = model.__doc__ if model.__doc__ != BaseModel.__doc__ else None
        summary, _ = _parse_docstring(inspect.cleandoc(doc or ""))
        return cls(
            name=_check_name(name or model.__name__, "tools"),
            description=description if description is not None else summary,
            parameters=_object_schema(model),
            arguments_model=model,
        )

    @classmethod
    def from_schema(cls, spec: Mapping[str, Any], *, where: str = "tools") -> Tool:
        """The tool described by a JSON mapping: OpenAI's ``{"type": "function", "function":
        {...}}``, the bare ``{name, description, parameters}`` or Anthropic's
        ``{name, description, input_schema}``."""
        data = dict(spec)
        if data.get("type") == "function" and isinstance(data.get("function"), Mapping):
            data = dict(data["function"])
            where = f"{where}.function"
        elif "type" in data and data.get("type") not in (None, "custom"):
            raise InvalidRequestError(
                f"{where}.type must be 'function', got {data.get('type')!r}", field=f"{where}.type"
            )
        else:
            data.pop("type", None)
        params = data.pop("parameters", None)
        if params is None:
            params = data.pop("input_schema", None)
        strict = data.pop("strict", False)
        name = data.pop("name", None)
        description = data.pop("description", "") or ""
        data.pop("cache_control", None)  # an Anthropic caching hint, meaningless elsewhere
        if data:
            unknown = ", ".join(sorted(data))
            raise InvalidRequestError(f"{where} has unknown field(s): {unknown}", field=where)
        if not isinstance(name, str):
            raise InvalidRequestError(f"{where}.name must be a string", field=f"{where}.name")
        if not isinstance(description, str):
            raise InvalidRequestError(
                f"{where}.description must be a string", field=f"{where}.description"
            )
        if not isinstance(strict, bool):
            raise InvalidRequestError(f"{where}.strict must be a boolean", field=f"{where}.strict")
        if params is None:
            params = {"type": "object", "properties": {}}
        check_json_schema(params, f"{where}.parameters", object_only=True)
        return cls(
            name=_check_name(name, f"{where}.name"),
            description=description,
            parameters=dict(params),
            strict=strict,
        )

    # ------------------------------------------------------------------ use
    def validate_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """``arguments`` checked against the schema (pydantic for a model or a function);
        raises ValueError listing what is wrong."""
        if self.arguments_model is not None:
            try:
                self.arguments_model.model_validate(dict(arguments))
            except ValidationError as exc:
                raise ValueError(describe_pydantic_errors(exc)) from exc
            return dict(arguments)
        problems = schema_errors(self.parameters, dict(arguments))
        if problems:
            raise ValueError(problems)
        return dict(arguments)

    def call_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``function``: validated and converted by the function's
        model (nested models become instances, ``"3"`` for an int is refused in strict
        fields as pydantic decides)."""
        if self.arguments_model is None:
            return dict(arguments)
        try:
            model = self.arguments_model.model_validate(dict(arguments))
        except ValidationError as exc:
            raise ValueError(describe_pydantic_errors(exc)) from exc
        return {k: getattr(model, k) for k in type(model).model_fields}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function (a tool made from a model or a schema has none)."""
        if self.function is None:
            raise TypeError(f"tool {self.name!r} has no Python function to call")
        return self.function(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, strict: bool = False
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    strict: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator: ``@tool`` or ``@tool(name=..., description=...)`` turns a typed function
    into a :class:`Tool` (still callable as the function)."""
    if fn is not None:
        return Tool.from_function(fn)

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, strict=strict)

    return wrap


def normalize_tools(value: Any) -> list[Tool]:
    """Any accepted ``tools=`` value as a list of :class:`Tool` with unique, valid names."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise InvalidRequestError("tools must be a list of tool definitions", field="tools")
    out: list[Tool] = []
    for i, item in enumerate(value):
        where = f"tools[{i}]"
        if isinstance(item, Tool):
            out.append(item)
        elif isinstance(item, type) and issubclass(item, BaseModel):
            out.append(Tool.from_model(item))
        elif isinstance(item, Mapping):
            out.append(Tool.from_schema(item, where=where))
        elif callable(item):
            out.append(Tool.from_function(item))
        else:
            raise InvalidRequestError(
                f"{where} must be a Tool, a function, a pydantic model or a JSON schema "
                f"mapping, got {type(item).__name__}",
                field=where,
            )
    seen: set[str] = set()
    for i, t in enumerate(out):
        if t.name in seen:
            raise InvalidRequestError(
                f"tool name {t.name!r} is used twice; tool names must be unique",
                field=f"tools[{i}].name",
            )
        seen.add(t.name)
    return out


# ---------------------------------------------------------------------- helpers
def _check_name(name: Any, field: str) -> str:
    if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name):
        raise InvalidRequestError(
            f"tool name {name!r} is not valid: use 1-64 letters, digits, '_' or '-'",
            field=field,
        )
    return name


def _object_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)  # the tool's name says it
    schema.setdefault("properties", {})
    return schema


def _arguments_model(
    fn: Callable[..., Any], name: str, documented: dict[str, str]
) -> type[BaseModel]:
    try:
        sig = inspect.signature(fn)
        hints = _type_hints(fn)
    except (TypeError, ValueError, NameError) as exc:
        raise InvalidRequestError(
            f"cannot read the signature of tool {name!r}: {exc}", field="tools"
        ) from exc
    fields: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise InvalidRequestError(
                f"tool {name!r} takes *{pname}: a tool's parameters must be named",
                field="tools",
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise InvalidRequestError(
                f"tool {name!r} has the positional-only parameter {pname!r}; "
                "tools are called with keyword arguments",
                field="tools",
            )
        annotation = hints.get(pname, Any)
        default = ... if p.default is p.empty else p.default
        doc = documented.get(pname)  # an Annotated[..., Field(description=...)] wins over it
        fields[pname] = (annotation, default if doc is None else Field(default, description=doc))
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", name)) or "Tool"
    return create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)


def _type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    import typing

    target: Any = fn if inspect.isroutine(fn) else type(fn).__call__  # a callable object
    return typing.get_type_hints(target, include_extras=True)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description before any section, {parameter: description})."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        sphinx = _SPHINX_ARG.match(line)
        if sphinx:
            current, section = sphinx.group(1), "sphinx"
            params[current] = sphinx.group(2).strip()
            continue
        if _PARAM_SECTION.match(line):
            section, current = "args", None
            continue
        if _OTHER_SECTION.match(line) or line.strip().startswith(":"):
            section, current = "other", None
            continue
        if section is None:
            summary.append(line)
        elif section == "args":
            arg = _GOOGLE_ARG.match(line)
            indent = len(line) - len(line.lstrip())
            if arg and (current is None or indent <= _arg_indent(doc, current)):
                current = arg.group(1).lstrip("*")
                params[current] = arg.group(3).strip()
            elif current is not None and line.strip():
                params[current] = f"{params[current]} {line.strip()}".strip()
        elif section == "sphinx" and current is not None and line.strip():
            params[current] = f"{params[current]} {line.strip()}".strip()
    return "\n".join(summary).strip(), {k: v for k, v in params.items() if v}


def _arg_indent(doc: str, name: str) -> int:
    for line in doc.splitlines():
        m = _GOOGLE_ARG.match(line)
        if m and m.group(1).lstrip("*") == name:
            return len(line) - len(line.lstrip())
    return 0
