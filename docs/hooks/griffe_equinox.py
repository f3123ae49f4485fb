"""griffe extension: constructor signatures for `equinox.Module` classes.

An `equinox.Module` is a dataclass made by a metaclass, which static analysis does
not see: this gives every such class without a written `__init__` one built from
its annotated fields (in base-class order; `eqx.field(init=False)` fields left out,
`default=` / `default_factory=` as defaults). It also reads the module-level
assignments `Name.__init__.__doc__ = "..."` (the "**Arguments:**" lists of the
constructors) into the `__init__` docstrings, which `merge_init_into_class` then
shows under the class.
"""

import ast
from typing import Any

import griffe


_NOT_FIELDS = ("AbstractVar", "AbstractClassVar", "ClassVar")


def _is_module_class(cls: griffe.Class) -> bool:
    try:
        mro = cls.mro()
    except Exception:  # unresolved bases
        mro = []
    names = [str(b) for b in cls.bases]
    for parent in mro:
        names += [str(b) for b in parent.bases]
    return any(n in ("Module", "eqx.Module", "equinox.Module") for n in names)


def _field_call(value: Any) -> dict[str, Any] | None:
    if isinstance(value, griffe.ExprCall) and str(value.function).endswith("field"):
        args = {}
        for a in value.arguments:
            if isinstance(a, griffe.ExprKeyword):
                args[a.name] = a.value
        return args
    return None


def _fields(cls: griffe.Class) -> list[griffe.Parameter]:
    params = []
    for member in cls.members.values():
        if not isinstance(member, griffe.Attribute) or member.annotation is None:
            continue
        if member.name.startswith("__") or "property" in member.labels:
            continue
        if any(str(member.annotation).startswith(k) for k in _NOT_FIELDS):
            continue
        spec = _field_call(member.value)
        if spec is not None:
            if str(spec.get("init", "True")) == "False":
                continue
            if "default_factory" in spec:
                default = griffe.ExprCall(spec["default_factory"], [])
            else:
                default = spec.get("default")
        else:
            default = member.value
        params.append(
            griffe.Parameter(
                member.name,
                annotation=member.annotation,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=default,
            )
        )
    return params


def _init_docs(module: griffe.Module) -> dict[str, str]:
    """`{"Name": doc}` from `Name.__init__.__doc__ = "..."` in the module source."""
    try:
        tree = ast.parse(module.source)
    except Exception:
        return {}
    docs = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        t = node.targets[0]
        if (
            isinstance(t, ast.Attribute)
            and t.attr == "__doc__"
            and isinstance(t.value, ast.Attribute)
            and t.value.attr == "__init__"
            and isinstance(t.value.value, ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[t.value.value.id] = node.value.value
    return docs


class EquinoxInit(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Module | griffe.Class, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        members = list(obj.members.values())
        for member in members:
            if not member.is_alias and (member.is_module or member.is_class):
                self._visit(member, seen)  # pyright: ignore[reportArgumentType]
        if isinstance(obj, griffe.Class):
            self._add_init(obj)
        elif obj.filepath:
            for name, doc in _init_docs(obj).items():
                cls = obj.members.get(name)
                if isinstance(cls, griffe.Class) and not cls.is_alias:
                    init = cls.members.get("__init__")
                    if isinstance(init, griffe.Function):
                        init.docstring = griffe.Docstring(doc, parent=init)

    def _add_init(self, cls: griffe.Class) -> None:
        if "__init__" in cls.members or not _is_module_class(cls):
            return
        try:
            mro = list(reversed(cls.mro()))
        except Exception:
            mro = []
        for parent in mro:
            init = parent.members.get("__init__")
            if init is not None and getattr(init, "lineno", 0) != 0:
                return  # inherits a written constructor (ours have lineno 0)
        params: dict[str, griffe.Parameter] = {}
        for parent in [*mro, cls]:
            for p in _fields(parent):
                params[p.name] = p
        init = griffe.Function(
            "__init__",
            lineno=0,
            endlineno=0,
            parent=cls,
            parameters=griffe.Parameters(
                griffe.Parameter(
                    "self", kind=griffe.ParameterKind.positional_or_keyword
                ),
                *params.values(),
            ),
            returns="None",
        )
        cls.set_member("__init__", init)
