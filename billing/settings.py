"""Typed, path-aware reading of configuration sections.

Every layer parses its own part of the YAML file into frozen dataclasses with a
`Section`. Problems are collected, not raised one by one, so `meterproxy check`
can report every mistake at once; the file loader (proxy/config.py) maps each
problem's path to a line of the file.

Exceptions:
    ConfigError -- the configuration is invalid; `.problems` lists (path, message, line).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None
    warning: bool = False

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        kind = "warning: " if self.warning else ""
        return f"{where}: {self.path or '(top)'}: {kind}{self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` says where and why."""

    def __init__(self, problems: list[Problem], filename: str = "<config>") -> None:
        self.problems = problems
        self.filename = filename
        super().__init__("\n".join(p.render(filename) for p in problems))


class Problems:
    """Collects the problems (and warnings) found while parsing a whole file."""

    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message, warning=True))

    def raise_if_any(self, filename: str = "<config>") -> None:
        if self.errors:
            raise ConfigError(list(self.errors), filename)


# ---------------------------------------------------------------- scalar parsers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_FACTOR = {
    None: 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration_ms(text: str) -> int:
    """Parse "250ms", "30s", "5m", "1h", "2d" into whole milliseconds; ValueError if not."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 250ms, 30s, 5m or 1h")
    ms = Decimal(m.group(1)) * _DURATION_MS[m.group(2)]
    if ms != ms.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of milliseconds")
    return int(ms)


def parse_size(value: str | int) -> int:
    """Parse 1000, "10MB" (10^6 bytes) or "1MiB" (2^20) into bytes; ValueError if not."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size such as 512KB, 10MB or 1GiB")
    return int(Decimal(m.group(1)) * _SIZE_FACTOR[m.group(2)])


def parse_decimal(value: object) -> Decimal:
    """Read a number exactly from its text (YAML numbers arrive as int or Decimal)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int | Decimal):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    else:
        raise ValueError(f"expected a number, got {type_name(value)}")
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


def type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# ------------------------------------------------------------ ${env.NAME} values

_ENV_REF = re.compile(r"\$\$\{|\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class MissingEnv(ValueError):
    """A `${env.NAME}` reference names a variable that is not set."""


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace `${env.NAME}` and `${env.NAME:-default}`; `$${` is a literal `${`.

    The result is never parsed again. Raises MissingEnv naming the variable.
    """
    env = os.environ if environ is None else environ

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise MissingEnv(f"environment variable {name} is not set")
        return value

    return _ENV_REF.sub(replace, text)


# ------------------------------------------------------------------ the reader


class _Missing:
    pass


MISSING: Any = _Missing()


class Section:
    """Typed reads of one mapping of the config, recording problems by path.

    An invalid or missing value is recorded in `problems` and the reader returns the
    default (or a harmless placeholder), so parsing goes on and `check` can report
    every problem in one run. `done()` reports keys that nobody read.
    """

    def __init__(
        self,
        data: object,
        path: str,
        problems: Problems,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.problems = problems
        self.environ = environ
        self._read: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.add(path, f"must be a mapping, got {type_name(data)}")
            data = {}
        self.data: dict[str, Any] = data

    # -- structure
    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def section(self, key: str, required: bool = False) -> Section:
        value = self.raw(key)
        if value is None and required:
            self.problems.add(self.key_path(key), "required")
        return Section(value, self.key_path(key), self.problems, self.environ)

    def items(self, key: str, required: bool = False) -> Iterator[tuple[str, Any]]:
        """Yield (path, element) of a list value; a missing key yields nothing."""
        value = self.raw(key)
        path = self.key_path(key)
        if value is None:
            if required:
                self.problems.add(path, "required")
            return
        if not isinstance(value, list):
            self.problems.add(path, f"must be a list, got {type_name(value)}")
            return
        for i, element in enumerate(value):
            yield f"{path}[{i}]", element

    def sections(self, key: str, required: bool = False) -> Iterator[Section]:
        for path, element in self.items(key, required):
            yield Section(element, path, self.problems, self.environ)

    def done(self) -> None:
        """Record every key that no reader asked for as unknown."""
        for key in self.data:
            if key not in self._read:
                self.problems.add(self.key_path(key), "unknown key")

    def fail(self, key: str, message: str) -> None:
        self.problems.add(self.key_path(key), message)

    # -- typed scalars
    def _get(self, key: str, default: Any) -> Any:
        value = self.raw(key, MISSING)
        if value is MISSING or value is None:
            if default is MISSING:
                self.fail(key, "required")
            return MISSING
        if isinstance(value, str):
            try:
                return expand_env(value, self.environ)
            except MissingEnv as exc:
                self.fail(key, str(exc))
                return MISSING
        return value

    def _typed(self, key: str, default: Any, convert: Callable[[Any], T], fallback: T) -> T:
        value = self._get(key, default)
        if value is MISSING:
            return fallback if default is MISSING else default
        try:
            return convert(value)
        except ValueError as exc:
            self.fail(key, str(exc))
            return fallback if default is MISSING else default

    def text(self, key: str, default: Any = MISSING) -> Any:
        def convert(v: Any) -> str:
            if isinstance(v, bool | list | dict):
                raise ValueError(f"expected a string, got {type_name(v)}")
            return v if isinstance(v, str) else str(v)

        return self._typed(key, default, convert, "")

    def integer(self, key: str, default: Any = MISSING, minimum: int | None = None) -> Any:
        def convert(v: Any) -> int:
            d = parse_decimal(v)
            if d != d.to_integral_value():
                raise ValueError(f"{v!r} is not a whole number")
            if minimum is not None and d < minimum:
                raise ValueError(f"must be at least {minimum}, got {v}")
            return int(d)

        return self._typed(key, default, convert, 0)

    def number(self, key: str, default: Any = MISSING, minimum: Decimal | None = None) -> Any:
        def convert(v: Any) -> Decimal:
            d = parse_decimal(v)
            if minimum is not None and d < minimum:
                raise ValueError(f"must be at least {minimum}, got {v}")
            return d

        return self._typed(key, default, convert, Decimal(0))

    def flag(self, key: str, default: Any = MISSING) -> Any:
        def convert(v: Any) -> bool:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false"):
                return v.lower() == "true"
            raise ValueError(f"expected true or false, got {v!r}")

        return self._typed(key, default, convert, False)

    def duration_ms(self, key: str, default: Any = MISSING) -> Any:
        def convert(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, str):
                raise ValueError(f"expected a duration such as 30s, got {v!r}")
            return parse_duration_ms(v)

        return self._typed(key, default, convert, 0)

    def size(self, key: str, default: Any = MISSING) -> Any:
        def convert(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int | str):
                raise ValueError(f"expected a size such as 10MB, got {v!r}")
            return parse_size(v)

        return self._typed(key, default, convert, 0)

    def choice(self, key: str, options: tuple[str, ...], default: Any = MISSING) -> Any:
        def convert(v: Any) -> str:
            if not isinstance(v, str) or v not in options:
                raise ValueError(f"must be one of {', '.join(options)}, got {v!r}")
            return v

        return self._typed(key, default, convert, options[0])

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        if self.raw(key) is None:
            return default
        out: list[str] = []
        for path, element in self.items(key):
            if not isinstance(element, str | int) or isinstance(element, bool):
                self.problems.add(path, f"expected a string, got {type_name(element)}")
                continue
            try:
                out.append(expand_env(str(element), self.environ))
            except MissingEnv as exc:
                self.problems.add(path, str(exc))
        return tuple(out)


# ------------------------------------------------------ YAML 1.2 core scalars

YAML12_BOOL = r"^(?:true|True|TRUE|false|False|FALSE)$"
YAML12_NULL = r"^(?:~|null|Null|NULL|)$"
YAML12_INT = r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"
YAML12_FLOAT = (
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_SCALAR_KINDS = [
    ("bool", re.compile(YAML12_BOOL)),
    ("null", re.compile(YAML12_NULL)),
    ("int", re.compile(YAML12_INT)),
    ("float", re.compile(YAML12_FLOAT)),
]


def scalar_kind(text: str) -> str:
    """The YAML 1.2 core type of a plain scalar: bool, null, int, float or str."""
    for kind, pattern in _SCALAR_KINDS:
        if pattern.match(text):
            return kind
    return "str"


def scalar_value(text: str, kind: str | None = None) -> Any:
    """Convert a plain scalar to its value; floats become exact Decimals."""
    kind = kind or scalar_kind(text)
    if kind == "bool":
        return text.lower() == "true"
    if kind == "null":
        return None
    if kind == "int":
        return int(text, 0) if text.startswith(("0o", "0x")) else int(text)
    if kind == "float":
        lowered = text.lower().lstrip("+")
        if lowered in (".inf", "-.inf", ".nan"):
            return Decimal(lowered.replace(".", "").replace("inf", "Infinity"))
        return Decimal(text)
    return text
