"""Sections with one method chosen by ``name`` and that method's own settings keyed by its name.

``negatives: {name: glofnd, alpha: 0.05, glofnd: {lr: 0.05, beta1: 0.5}}``: the section keeps
the settings every method of the section shares (the target fraction, when removal starts, where
tables live, the temperature, ...); a subsection named after the method holds the settings only
that method reads, validated when the config is loaded:

* the registry (:data:`~debiascl.registry.LOSSES`, :data:`~debiascl.registry.DETECTORS`) decides
  which names exist, so a registered component's subsection is accepted with no schema edit;
* its keys are the component's constructor parameters, less the section's shared keys, the run
  facts (:data:`RUN_FACTS`) and the inputs the composition layer computes (:data:`COMPUTED`);
  a built-in method may keep a typed model (``TYPED_SETTINGS`` of the section: ranges, choices,
  and settings the composition layer reads for it, like ``stable_glofnd.reference``);
* an unknown key, or a subsection of a method other than ``name``, is a one-line
  :class:`~debiascl.errors.ConfigError` (a setting that would be silently ignored is refused);
  ``<section>.<method>=null`` removes a subsection (to switch methods from the command line);
* a shared section key the selected method does not read, given at a value other than its
  default, is a one-line error too (:func:`refuse_unread_keys`, at load: ``negatives.alpha`` with
  ``oracle``); ``<section>.<key>=null`` puts a shared key back to its default. Saved run configs
  (:mod:`debiascl.config.migrate`) load as saved.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import ConfigDict, ValidationError, create_model, model_validator

from debiascl.config.sections.base import Section
from debiascl.errors import ConfigError

#: Facts about the run every component may name (supplied by ``debiascl.compose``, not a config).
RUN_FACTS = ("num_samples", "mode", "directions", "texts", "labels", "output_dir")
#: Inputs the composition layer computes for a section's components (never config keys).
COMPUTED = {"loss": (), "negatives": ("text_embeddings", "eta")}
#: Section keys whose component argument has another name (section key -> argument).
RENAMED = {"table_placement": "placement", "table_sharding": "sharding"}
#: The modules whose import registers the built-in components of a section.
_REGISTERING = {"loss": "debiascl.objectives.builtin", "negatives": "debiascl.negatives.builders"}


_NO = inspect.Parameter("none", inspect.Parameter.VAR_POSITIONAL)  # kind of a missing parameter


class MethodSettings(Section):
    """The settings of one method (a subsection keyed by the method's name)."""


def _registry(kind: str) -> Any:
    importlib.import_module(_REGISTERING[kind])
    from debiascl import registry

    return registry.LOSSES if kind == "loss" else registry.DETECTORS


def registered_names(kind: str) -> list[str]:
    """The names registered for section ``kind`` (``loss`` or ``negatives``)."""
    return _registry(kind).names()


def _signature_model(kind: str, name: str, shared: frozenset[str]) -> type[MethodSettings]:
    """A settings model read off the registered entry's constructor signature."""
    entry = _registry(kind).get(name)
    target = entry.func if isinstance(entry, functools.partial) else entry
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except (NameError, TypeError):
        hints = {}
    skip = set(shared) | {RENAMED.get(k, k) for k in shared} | set(RUN_FACTS) | set(COMPUTED[kind])
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    fields: dict[str, Any] = {}
    for key, param in inspect.signature(entry).parameters.items():
        if key in skip or param.kind not in named:
            continue
        default = ... if param.default is param.empty else param.default
        fields[key] = (hints.get(key, Any), default)
    return create_model(f"{kind}.{name}", __base__=MethodSettings, **fields)


class MethodSection(Section):
    """A section choosing one registered method by ``name``; its settings sit under that name."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    #: ``loss`` or ``negatives``: the section's key in the run config and its registry.
    KIND: ClassVar[str]
    #: Typed settings models of built-in methods (others are read off their signature).
    TYPED_SETTINGS: ClassVar[dict[str, type[MethodSettings]]] = {}
    #: Shared keys read whatever the method (by the composition layer), never refused as unread.
    ALWAYS_READ: ClassVar[frozenset[str]] = frozenset({"name"})
    #: Settings under which any method reads a shared key (named in the unread-key error).
    READ_WITH: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _null_resets_shared_key(cls, data: Any) -> Any:
        """``<section>.<key>=null`` on a shared key that cannot be None: back to its default (to
        drop, from the command line, a key the newly chosen method does not read)."""
        if not isinstance(data, dict):
            return data
        reset = [
            k
            for k, f in cls.model_fields.items()
            if data.get(k, 0) is None and type(None) not in typing.get_args(f.annotation)
        ]
        return {k: v for k, v in data.items() if k not in reset} if reset else data

    @classmethod
    def keys_read_by(cls, name: str) -> frozenset[str] | None:
        """The shared keys method ``name`` reads: the parameters its constructor names (section
        keys renamed as in :data:`RENAMED`; a ``**kwargs`` catch-all receives nothing, see
        :func:`debiascl.registry.call_with_options`) and :attr:`ALWAYS_READ`; None when ``name``
        is not registered (its builder reports that)."""
        if name not in registered_names(cls.KIND):
            return None
        params = inspect.signature(_registry(cls.KIND).get(name)).parameters
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        taken = {k for k in cls.model_fields if params.get(RENAMED.get(k, k), _NO).kind in named}
        return frozenset(taken) | cls.ALWAYS_READ

    def keys_read(self) -> frozenset[str] | None:
        """The shared keys this section's method reads, given the section's other values."""
        return self.keys_read_by(self.name)

    @classmethod
    def settings_model(cls, name: str) -> type[MethodSettings]:
        """The model of method ``name``'s own settings.

        Raises:
            ConfigError: ``name`` is not registered.
        """
        if name in cls.TYPED_SETTINGS:
            return cls.TYPED_SETTINGS[name]
        return _signature_model(cls.KIND, name, frozenset(cls.model_fields))

    @classmethod
    def moved_key_error(cls, key: str, name: str) -> ConfigError | None:
        """The error for a key that moved into method subsections (None: not such a key)."""
        owners = sorted(n for n, m in cls.TYPED_SETTINGS.items() if key in m.model_fields)
        if not owners:
            return None
        kind = cls.KIND
        if name in owners:
            return ConfigError(
                f"{kind}.{key} moved: use {kind}.{name}.{key} (a method's own settings sit "
                f"under its name, e.g. {kind}: {{name: {name}, {name}: {{{key}: ...}}}})"
            )
        where = " or ".join(f"{kind}.{n}.{key}" for n in owners)
        return ConfigError(
            f"{kind}.{key} moved into the settings of the methods that read it ({where}); "
            f"{kind}.name={name} does not read it: delete it"
        )

    def _check_subsection(self, key: str, value: Any) -> dict[str, Any]:
        kind, name = self.KIND, self.name
        names = registered_names(kind)
        if key == name and key not in names:
            _registry(kind).get(name)  # raises: unknown name, the registered ones listed
        if key not in names:
            moved = self.moved_key_error(key, name)
            if moved is not None:
                raise moved
            raise ConfigError(
                f"unknown key '{kind}.{key}' (section keys: "
                f"{', '.join(type(self).model_fields)}; a method's own settings go under "
                f"{kind}.<name>, registered: {', '.join(names)})"
            )
        if key != name:
            raise ConfigError(
                f"{kind}.{key} holds settings of {key} but {kind}.name={name}: delete it (override "
                f"{kind}.{key}=null) or set {kind}.name={key}"
            )
        model = self.settings_model(name)
        if isinstance(value, MethodSettings):
            value = value.model_dump(exclude_unset=True)
        if not isinstance(value, dict):
            raise ConfigError(
                f"{kind}.{key} must be a mapping of {name}'s settings (got {value!r})"
            )
        try:
            return model.model_validate(value).model_dump(exclude_unset=True)
        except ValidationError as err:
            valid = "valid keys: " + ", ".join(model.model_fields)
            if not model.model_fields:
                valid = f"{kind}.name={name} has no settings of its own"
            problems = []
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    owners = [
                        f"{kind}.{n}"
                        for n, m in self.TYPED_SETTINGS.items()
                        if where in m.model_fields
                    ]
                    read = f"; {where} is read by {', '.join(owners)}" if owners else ""
                    problems.append(f"unknown key '{kind}.{key}.{where}' ({valid}{read})")
                elif e["type"] == "missing":
                    problems.append(f"{kind}.{key}.{where} is required")
                else:
                    problems.append(f"{kind}.{key}.{where}: {e['msg']} (got {e.get('input')!r})")
            raise ConfigError("; ".join(problems)) from None

    @model_validator(mode="after")
    def _method_subsections(self) -> MethodSection:
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key in list(extra):
            if extra[key] is None:  # `<section>.<method>=null`: no settings given
                del extra[key]
            else:
                extra[key] = self._check_subsection(key, extra[key])
        return self

    @property
    def settings(self) -> dict[str, Any]:
        """The selected method's own settings, every default filled in.

        Raises:
            ConfigError: ``name`` is not registered, or a required setting is not given.
        """
        given = (self.__pydantic_extra__ or {}).get(self.name, {})
        try:
            return self.settings_model(self.name).model_validate(given).model_dump()
        except ValidationError:
            return self._check_subsection(self.name, given)  # raises the one-line error

    def flat_settings(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """Shared and own settings in one mapping, at non-default values (JSON types), less the
        keys in ``exclude``: the spelling checkpoints' config fingerprints were hashed with
        before the subsections (``negatives.glofnd.lr`` was ``negatives.lr``)."""
        extra = set(self.__pydantic_extra__ or {})
        out = self.model_dump(mode="json", exclude_defaults=True, exclude=extra | set(exclude))
        model = self.settings_model(self.name)
        given = model.model_validate((self.__pydantic_extra__ or {}).get(self.name, {}))
        own = given.model_dump(mode="json", exclude_defaults=True, exclude=set(exclude))
        return {**out, **own}


def refuse_unread_keys(section: MethodSection, saved: Mapping[str, Any] | None = None) -> None:
    """Refuse shared keys of ``section`` that its selected method does not read.

    A key counts when it was given (``model_fields_set``) at a value other than its default;
    ``saved``: a saved run config's mapping of the section, whose keys are accepted at their
    saved value (a run recorded before this check still loads for evaluation).

    Raises:
        ConfigError: one line naming the keys, the method and how to drop them.
    """
    read = section.keys_read()
    if read is None:
        return
    kind, name, saved = section.KIND, section.name, saved or {}
    unread = []
    for key in type(section).model_fields:
        if key in read or not section.changed(key):
            continue
        if key in saved and saved[key] == getattr(section, key):
            continue
        unread.append(key)
    if not unread:
        return
    cls = type(section)
    named = []
    for key in unread:
        readers = [n for n in registered_names(kind) if key in (cls.keys_read_by(n) or ())]
        with_ = [cls.READ_WITH[key]] if key in cls.READ_WITH else []
        hint = with_ if name in readers and with_ else [*readers, *with_]
        named.append(f"{kind}.{key}={getattr(section, key)} (read by {' or '.join(hint) or '-'})")
    resets = " ".join(f"{kind}.{k}=null" for k in unread)
    raise ConfigError(
        f"{', '.join(named)}: not read by {kind}.name={name}; delete "
        f"{'it' if len(unread) == 1 else 'them'}, or on the command line reset to the default "
        f"with {resets}"
    )
