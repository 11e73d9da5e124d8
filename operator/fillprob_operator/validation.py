"""Offline validation of a FillProbRollout manifest against the CRD in `crds/`.

The CRD read is the copy shipped as package data (`fillprob_operator/crds/`, the same bytes
as `crds/`), so this works from an installed wheel without a checkout.

What a GitOps pull request can check before anything reaches a cluster: the same schema
(OpenAPI v3, via jsonschema) and the same CEL rules (`x-kubernetes-validations`, via
cel-python) the API server enforces, with the API server's message forms, e.g.

    spec.canarySymbols: Required value: canarySymbols is required ... unless targetPhase is Shadow
    spec.targetPhase: Unsupported value: "X": supported values: "Shadow", "Canary", ...
    spec.observation.shadow: Invalid value: "10": must be a duration such as 90s, ...
    spec.expandBatches: Invalid value: duplicate symbol: SYM2 is listed in both ...

(v1.36 prints no value for a CEL failure on an object or a list, the `"object"` older
servers showed; scalars show their value.) `invalid_message()` wraps the list like the
server's 422: `FillProbRollout.grinder.io "x" is invalid: [a, b]`.

The steps follow kube-apiserver v1.36 (apiextensions-apiserver v0.36.3, kube-openapi):
strict decoding (unknown fields: the server stops there with a 400), status dropped (status
subresource), nulls pruned, defaults applied, then metadata, schema (kube-openapi's order and
wording, number formats included), list-type=set duplicates, and CEL; CEL rules are not run
when an earlier error is "blocking" (Required, Unsupported, Too long, Too many, wrong type).
Every case in tests/fixtures/invalid_rollouts.yaml, and updates (immutability, ratcheting),
gave the same message as a real v1.36.3 API server, up to the order of errors (Go map order).

Differences from the server, on purpose or by necessity:
- Every rule comes from the CRD file; nothing here restates one (the only rule of its own
  is the API server's for metadata.name). CEL runs in cel-python 0.5.0, which lacks
  Kubernetes' CEL libraries. Implemented here:
  `join` (strings), `isURL`/`url` and the URL getters, `indexOf`/`lastIndexOf`/
  `lowerAscii`/`upperAscii`/`trim`/`split`/`replace`/`substring` (strings), `findAll`
  (regex), `matches` with RE2 (google-re2; an invalid pattern is a runtime error, as in
  cel-go, which the selector's regex rule relies on), `isSorted`/`sum`/`min`/`max` (lists),
  and `duration()` with Go's `time.ParseDuration` grammar (domain/durations.py, the
  package's one duration parser; cel-python's own rejects `µs` and accepts `1d`). A rule cel-python cannot compile or run at all may be given a Python
  twin in `PYTHON_RULES` (keyed by the rule text); none is needed by the current CRD. A rule
  with neither is reported as an offline limitation, never silently passed.
- CEL cost budgets are not computed; runtime error texts come from cel-python, not cel-go.
- Transition rules (`oldSelf`) run only when an old object is given (`old=`), as on an
  update; rules with `optionalOldSelf: true` are skipped on create. On update, a CEL error
  on a value that did not change is dropped (the server's ratcheting turns it into a
  warning); schema errors are not ratcheted here (stricter than the server).
- String formats (date-time, ...) are not checked (the spec has none); metadata checks are
  the name only; the namespace is unknown offline. The order of errors from sibling fields is
  the CRD's property order (the server's follows Go map iteration, so it varies).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.resources
import json
import math
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import celpy
import celpy.celtypes as ct
import jsonschema
import re2
import yaml
from celpy.evaluation import CELEvalError

from .api import DNS_SUBDOMAIN_PATTERN
from .domain.durations import parse_go_duration
from .domain.selector import re2_compile

CRD_FILE = "fillprobrollouts.grinder.io.yaml"


def _packaged_crd_path() -> Path:
    """The CRD shipped in the package (fillprob_operator/crds/, package data of the wheel).

    A byte-for-byte copy of the canonical <repo>/crds/ file, kept by scripts/sync-chart-crds.sh
    (`make chart-crds`) and checked by tests/unit/test_packaged_crd.py, so an installed wheel
    (no checkout) and an editable install validate against the same CRD.
    """
    resource = importlib.resources.files(__package__).joinpath("crds", CRD_FILE)
    if isinstance(resource, Path):
        return resource
    # Not a plain directory (a zip import): extract it once for the life of the process.
    return _RESOURCE_FILES.enter_context(importlib.resources.as_file(resource))


_RESOURCE_FILES = contextlib.ExitStack()
DEFAULT_CRD_PATH = _packaged_crd_path()

BLOCKING_MESSAGE = (
    "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)

# ObjectMeta's JSON fields: anything else under metadata is an unknown field.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})
ROOT_META_FIELDS = ("apiVersion", "kind", "metadata")

# The API server's own rule for object names (not the CRD's): the regex as it prints it.
DNS1123_SUBDOMAIN_FMT = DNS_SUBDOMAIN_PATTERN.removeprefix("^").removesuffix("$")
DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '"
    + DNS1123_SUBDOMAIN_FMT + "')"
)

# Rules cel-python cannot evaluate, as Python functions of (self, oldSelf) -> bool, where
# self/oldSelf are the plain JSON values at the rule's schema node. Empty: every rule in the
# current CRD runs in cel-python (with the functions below).
PYTHON_RULES: dict[str, Callable[[Any, Any], bool]] = {}


class ValidationError(Exception):
    """The CRD itself cannot be used (missing file, no such version)."""


# --- Go formatting (k8s.io/apimachinery field.Error) -----------------------------------------


def go_quote(text: str) -> str:
    """strconv.Quote."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def go_float(value: float) -> str:
    """fmt's %v for a float64 (strconv 'g', shortest): exponent form below 1e-4 and from 1e6."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + exponent  # decimal point position relative to the digit string
    exp = point - 1
    neg = "-" if sign else ""
    if exp < -4 or exp >= 6:  # strconv 'g' with shortest precision uses eprec = 6
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{neg}{text}{'0' * (point - len(text))}"
    return f"{neg}{text[:point]}.{text[point:]}"


def go_json(value: Any) -> str:
    """json.Marshal: compact, map keys sorted, <>& escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def go_value(value: Any) -> str:
    """How field.Error prints a BadValue."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return go_quote(value)
    return go_json(value)


_OMIT = object()


def field_error(kind: str, path: str, value: Any = _OMIT, detail: str = "") -> str:
    """field.Error.Error(): "<path>: <Type>[: <value>][: <detail>]"."""
    body = kind
    if kind not in ("Required value", "Forbidden", "Too long", "Internal error") and value is not _OMIT:
        body += ": " + go_value(value)
    if detail:
        body += ": " + detail
    return f"{path or '<nil>'}: {body}"


def invalid_message(kind: str, name: str, errors: list[str]) -> str:
    """The API server's message for `errors` from validate_manifest.

    A 422 reads `FillProbRollout.grinder.io "x" is invalid: [a, b]` (no brackets for one
    error); a strict-decoding refusal (400) is already the whole message.
    """
    if len(errors) == 1 and " cannot be handled as a " in errors[0]:
        return errors[0]
    joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return f"{kind} {go_quote(name)} is invalid: {joined}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# --- the CRD ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_crd(path: str, mtime: float) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_crd(crd_path: str | Path = DEFAULT_CRD_PATH) -> dict[str, Any]:
    path = Path(crd_path)
    if not path.is_file():
        raise ValidationError(f"CRD file not found: {path}")
    return _load_crd(str(path), path.stat().st_mtime)


def _version(crd: dict[str, Any], api_version: Any) -> tuple[dict[str, Any] | None, str | None]:
    group = crd["spec"]["group"]
    served = [v for v in crd["spec"]["versions"] if v.get("served", True)]
    supported = [f"{group}/{v['name']}" for v in served]
    for version in served:
        if api_version == f"{group}/{version['name']}":
            return version, None
    shown = go_quote(api_version) if isinstance(api_version, str) else go_value(api_version)
    return None, f"apiVersion: Unsupported value: {shown}: supported values: " + ", ".join(map(go_quote, supported))


# --- decoding: unknown fields, nulls, defaults (apiextensions-apiserver schema/*) --------------


def _unknown_fields(value: Any, schema: dict[str, Any] | None, path: str, out: list[str], prune: bool) -> None:
    if schema is not None and schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = (schema or {}).get("properties") or {}
        additional = (schema or {}).get("additionalProperties")
        for key in list(value):
            if key in props:
                _unknown_fields(value[key], props[key], _join(path, key), out, prune)
            elif isinstance(additional, dict):
                _unknown_fields(value[key], additional, _join(path, key), out, prune)
            else:
                out.append(_join(path, key))
                if prune:
                    del value[key]
    elif isinstance(value, list):
        items = (schema or {}).get("items")
        for i, item in enumerate(value):
            _unknown_fields(item, items, _index(path, i), out, prune)


def _check_unknown_fields(obj: dict[str, Any], root: dict[str, Any], prune: bool) -> list[str]:
    found: list[str] = []
    props = root.get("properties") or {}
    for key in list(obj):
        if key in ROOT_META_FIELDS:
            continue
        if key in props:
            _unknown_fields(obj[key], props[key], key, found, prune)
        elif not root.get("x-kubernetes-preserve-unknown-fields"):
            found.append(key)
            if prune:
                del obj[key]
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        for key in list(metadata):
            if key not in OBJECT_META_FIELDS:
                found.append(f"metadata.{key}")
                if prune:
                    del metadata[key]
    return sorted(found)


def _nullable(schema: dict[str, Any]) -> bool:
    return bool(schema.get("nullable"))


def apply_defaults(value: Any, schema: dict[str, Any] | None) -> None:
    """structuraldefaulting.Default plus PruneNonNullableNullsWithoutDefaults, in place."""
    if schema is None:
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, prop in props.items():
            if "default" not in prop:
                continue
            if key not in value or (value[key] is None and not _nullable(prop)):
                value[key] = copy.deepcopy(prop["default"])
        for key in list(value):
            prop = props.get(key)
            if prop is None and isinstance(schema.get("additionalProperties"), dict):
                prop = schema["additionalProperties"]
            if prop is None:
                continue
            if value[key] is None and not _nullable(prop) and "default" not in prop:
                del value[key]
                continue
            apply_defaults(value[key], prop)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for item in value:
                apply_defaults(item, items)


# --- schema (OpenAPI v3 structural -> JSON Schema draft 7) -------------------------------------

# In kube-openapi's order of checks: type, string, number, array, enum, object.
_STRING_KEYS = ("maxLength", "minLength", "pattern")
_NUMBER_KEYS = ("multipleOf", "maximum", "minimum")
_ARRAY_KEYS = ("minItems", "maxItems", "uniqueItems")
_OBJECT_KEYS = ("minProperties", "maxProperties")


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Convert one OpenAPI v3 (structural) schema node, recursively.

    `nullable` becomes a "null" type, the OpenAPI boolean `exclusiveMinimum/Maximum` become
    draft-7 numbers, `x-kubernetes-int-or-string` becomes integer-or-string; defaults are
    applied before validation (as the API server does), so they are dropped here; so are
    formats (not checked) and the other x-kubernetes-* extensions. The original type is kept
    under `x-k8s-type` for the messages.
    """
    out: dict[str, Any] = {}
    types: list[str] = []
    if node.get("x-kubernetes-int-or-string"):
        types = ["integer", "string"]
    elif "type" in node:
        types = [node["type"]]
    if types:
        out["x-k8s-type"] = ",".join(types)
        out["type"] = types + (["null"] if _nullable(node) else [])
        if node.get("format") and types[0] in ("integer", "number"):
            out["x-k8s-format"] = node["format"]
        if types[0] in ("integer", "number"):
            out["x-k8s-range"] = [types[0], node.get("format", "")]
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_json_schema(s) for s in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"])
    for key in _STRING_KEYS + _NUMBER_KEYS:
        if key in node:
            out[key] = node[key]
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True and bound in node:
            out[exclusive] = node[bound]
            del out[bound]
    if isinstance(node.get("items"), dict):
        out["items"] = to_json_schema(node["items"])
    for key in _ARRAY_KEYS:
        if key in node:
            out[key] = node[key]
    if "enum" in node:
        out["enum"] = [*node["enum"], None] if _nullable(node) else list(node["enum"])
    for key in _OBJECT_KEYS:
        if key in node:
            out[key] = node[key]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    if "required" in node:
        out["required"] = node["required"]
    return out


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterable[jsonschema.ValidationError]:
    # Go's regexp (RE2), not Python's re: `$` does not match before a trailing newline.
    if validator.is_type(instance, "string") and not re2.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1)}


def _go_number_text(value: int | float) -> str:
    """swag.FormatInt64 / FormatFloat64 (strconv 'f', shortest)."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value) or math.isnan(value):
        return "+Inf" if value > 0 else ("-Inf" if value < 0 else "NaN")
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _k8s_range(validator: Any, spec: list[str], instance: Any, schema: dict[str, Any]) -> Iterable[jsonschema.ValidationError]:
    """kube-openapi's IsValueValidAgainstRange ("Checked value must be of type ...")."""
    if isinstance(instance, bool) or not isinstance(instance, (int, float)):
        return
    type_name, fmt = spec
    text = _go_number_text(instance)
    ok = True
    if type_name == "integer":
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            ok = False
        else:
            low, high = _INT_RANGES.get(fmt, (-(2**63), 2**63 - 1))
            ok = low <= int(text) <= high
    elif fmt in ("float", "float32"):
        ok = abs(float(text)) <= 3.4028234663852886e38
    if not ok:
        where = f"with format {fmt}" if fmt else "(default format)"
        yield jsonschema.ValidationError(f"Checked value must be of type {type_name} {where}")


_Validator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, {"pattern": _re2_pattern, "x-k8s-range": _k8s_range}
)


def _path_of(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path = _index(path, part) if isinstance(part, int) else _join(path, part)
    return path


def _bound(limit: Any, data: Any) -> str:
    # MaximumNativeType: integer data prints the bound as int64, other data as float64.
    if isinstance(data, int) and not isinstance(data, bool):
        return str(int(limit))
    return go_float(float(limit))


def _schema_messages(error: jsonschema.ValidationError, seen_required: set[str]) -> list[tuple[str, str]]:
    """(message, field.ErrorType) pairs, as kubeOpenAPIResultToFieldErrors builds them."""
    path = _path_of(error)
    data = error.instance
    kw = error.validator
    rule = error.validator_value
    if kw == "required":
        out = []
        for key in rule:
            if isinstance(data, dict) and key not in data:
                child = _join(path, key)
                if child not in seen_required:
                    seen_required.add(child)
                    out.append((field_error("Required value", child), "Required"))
        return out
    if kw == "enum":
        values = [v for v in rule if v is not None]
        shown = ", ".join(go_quote(v if isinstance(v, str) else go_json(v)) for v in values)
        return [(field_error("Unsupported value", path, data, f"supported values: {shown}"), "NotSupported")]
    if kw == "x-k8s-range":
        # A plain error in kube-openapi, so the server prints it at the nil path.
        where = f"with format {rule[1]}" if rule[1] else "(default format)"
        return [(field_error("Invalid value", "", "", f"Checked value must be of type {rule[0]} {where} in {path}"), "Invalid")]
    if kw == "type" and "x-k8s-format" in error.schema and data is not None and not isinstance(data, (str, list)):
        # kube-openapi checks the format before the type: a float64 in an int32 field, say.
        data_format = "int64" if isinstance(data, int) and not isinstance(data, bool) else "float64" if isinstance(data, float) else ""
        fmt = error.schema["x-k8s-format"]
        detail = f"{path} in body must be of type {fmt}: {go_quote(data_format)}"
        return [(field_error("Invalid value", path, data_format, detail), "TypeInvalid")]
    if kw == "type":
        actual = _json_type(data)
        expected = error.schema.get("x-k8s-type") or ",".join(rule if isinstance(rule, list) else [rule])
        detail = f"{path} in body must be of type {expected}: {go_quote(actual)}"
        return [(field_error("Invalid value", path, actual, detail), "TypeInvalid")]
    if kw == "maxLength":
        unit = "byte" if rule == 1 else "bytes"
        return [(field_error("Too long", path, detail=f"may not be more than {rule} {unit}"), "TooLong")]
    if kw in ("maxItems", "maxProperties"):
        unit = "item" if rule == 1 else "items"
        return [(field_error("Too many", path, len(data), f"must have at most {rule} {unit}"), "TooMany")]
    if kw == "minLength":
        return [(field_error("Invalid value", path, data, f"{path} in body should be at least {rule} chars long"), "Invalid")]
    if kw == "pattern":
        return [(field_error("Invalid value", path, data, f"{path} in body should match '{rule}'"), "Invalid")]
    if kw == "minItems":
        return [(field_error("Invalid value", path, len(data), f"{path} in body should have at least {rule} items"), "Invalid")]
    if kw == "minProperties":
        return [(field_error("Invalid value", path, len(data), f"{path} in body should have at least {rule} properties"), "Invalid")]
    if kw in ("maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"):
        word = {
            "maximum": "less than or equal to", "exclusiveMaximum": "less than",
            "minimum": "greater than or equal to", "exclusiveMinimum": "greater than",
        }[kw]
        return [(field_error("Invalid value", path, data, f"{path} in body should be {word} {_bound(rule, data)}"), "Invalid")]
    if kw == "multipleOf":
        return [(field_error("Invalid value", path, data, f"{path} in body should be a multiple of {go_value(rule)}"), "Invalid")]
    if kw == "uniqueItems":
        return [(field_error("Invalid value", path, "", f"{path} in body shouldn't contain duplicates"), "Invalid")]
    return [(field_error("Invalid value", path, "", f"{path} in body {error.message}"), "Invalid")]


def _schema_errors(obj: dict[str, Any], root: dict[str, Any]) -> list[tuple[str, str]]:
    validator = _Validator(to_json_schema(root))
    seen_required: set[str] = set()
    failed_strings: dict[str, str] = {}
    out: list[tuple[str, str]] = []
    for error in validator.iter_errors(obj):
        if error.validator in _STRING_KEYS:
            # kube-openapi's string checks stop at the first failure: maxLength, minLength, pattern.
            path = _path_of(error)
            first = failed_strings.get(path)
            if first is not None and _STRING_KEYS.index(first) < _STRING_KEYS.index(str(error.validator)):
                continue
            failed_strings[path] = str(error.validator)
        out.extend(_schema_messages(error, seen_required))
    return out


def _list_set_errors(value: Any, schema: dict[str, Any] | None, path: str) -> list[str]:
    """x-kubernetes-list-type: set -> one Duplicate per repeated value (its second occurrence)."""
    if schema is None:
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, item in value.items():
            if key in props:
                out += _list_set_errors(item, props[key], _join(path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                out += _list_set_errors(item, schema["additionalProperties"], f"{path}[{key}]")
    elif isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "set":
            seen: dict[str, int] = {}
            for i, item in enumerate(value):
                key = go_json(item)
                seen[key] = seen.get(key, 0) + 1
                if seen[key] == 2:
                    out.append(field_error("Duplicate value", _index(path, i), item))
        for i, item in enumerate(value):
            out += _list_set_errors(item, schema.get("items"), _index(path, i))
    return out


def _metadata_errors(obj: dict[str, Any]) -> list[tuple[str, str]]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    name, generate = metadata.get("name"), metadata.get("generateName")
    if not name and not generate:
        return [(field_error("Required value", "metadata.name", detail="name or generateName is required"), "Required")]
    out: list[tuple[str, str]] = []
    if name:
        if not isinstance(name, str):
            return [(field_error("Invalid value", "metadata.name", name, "must be a string"), "Invalid")]
        if len(name) > 253:
            out.append((field_error("Invalid value", "metadata.name", name, "must be no more than 253 characters"), "Invalid"))
        if not re2.fullmatch(DNS1123_SUBDOMAIN_FMT, name):
            out.append((field_error("Invalid value", "metadata.name", name, DNS1123_SUBDOMAIN_MSG), "Invalid"))
    return out


# --- CEL ----------------------------------------------------------------------------------------

def _cel_duration(value: Any) -> Any:
    if isinstance(value, ct.DurationType):
        return value
    if isinstance(value, str):
        try:
            nanos = parse_go_duration(str(value))
        except ValueError as exc:
            return CELEvalError(str(exc), ValueError, (str(value),))
        seconds, rem = divmod(nanos, 10**9)
        return ct.DurationType(seconds, rem)
    return CELEvalError("no such overload: duration", TypeError, (value,))


class _URL:
    """What Kubernetes' CEL `url()` returns (k8s.io/apiserver/pkg/cel/library/urls.go)."""

    def __init__(self, parsed: urllib.parse.SplitResult) -> None:
        self.parsed = parsed


_HOST_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\"%")
_USERINFO_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@")


def _bad_escape(text: str) -> bool:
    return re.search(r"%(?![0-9A-Fa-f]{2})", text) is not None


def _go_valid_host(host: str) -> bool:
    """net/url parseHost."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        port = host[end + 1:]
        return port == "" or re.fullmatch(r":[0-9]*", port) is not None
    if ":" in host and not re.fullmatch(r":[0-9]*", host[host.rfind(":"):]):
        return False
    return not _bad_escape(host) and all(c in _HOST_OK or ord(c) >= 0x80 for c in host)


def _go_parse_request_uri(text: str) -> bool:
    """net/url.ParseRequestURI succeeds: what Kubernetes' CEL isURL() checks."""
    if not text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return False
    if text == "*":
        return True
    scheme, rest = "", text
    for i, ch in enumerate(text):  # getScheme
        if ch.isascii() and ch.isalpha():
            continue
        if ch.isascii() and (ch.isdigit() or ch in "+-."):
            if i == 0:
                break
            continue
        if ch == ":":
            if i == 0:
                return False  # missing protocol scheme
            scheme, rest = text[:i], text[i + 1:]
        break
    if "?" in rest:
        rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        return bool(scheme)  # an opaque URI ("mailto:x") is fine; a relative path is not
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        userinfo, at, host = authority.rpartition("@")
        if at and not all(c in _USERINFO_OK for c in userinfo):
            return False
        if not _go_valid_host(host):
            return False
    return not _bad_escape(rest)


def _parse_url(text: str) -> urllib.parse.SplitResult | None:
    if not _go_parse_request_uri(text):
        return None
    try:
        return urllib.parse.urlsplit(text)
    except ValueError:
        return None


def _cel_is_url(value: Any) -> Any:
    return ct.BoolType(_go_parse_request_uri(str(value)))


def _cel_url(value: Any) -> Any:
    parsed = _parse_url(str(value))
    if parsed is None:
        return CELEvalError(f"URL parse error during conversion from string: {value}", ValueError, (value,))
    return _URL(parsed)


def _url_host(u: _URL) -> str:
    netloc = u.parsed.netloc.rsplit("@", 1)[-1]
    return netloc


def _url_hostname(u: _URL) -> str:
    return u.parsed.hostname or ""


def _url_port(u: _URL) -> str:
    host = _url_host(u)
    if host.startswith("["):
        return host.split("]:", 1)[1] if "]:" in host else ""
    return host.rsplit(":", 1)[1] if ":" in host else ""


def _str_list(items: Any) -> list[str]:
    return [str(x) for x in items]


def _cel_join(items: Any, sep: Any = "") -> Any:
    return ct.StringType(str(sep).join(_str_list(items)))


def _cel_index_of(target: Any, item: Any, start: Any = 0) -> Any:
    if isinstance(target, str):
        return ct.IntType(str(target).find(str(item), int(start)))
    for i, value in enumerate(target):
        if i >= int(start) and value == item:
            return ct.IntType(i)
    return ct.IntType(-1)


def _cel_last_index_of(target: Any, item: Any) -> Any:
    if isinstance(target, str):
        return ct.IntType(str(target).rfind(str(item)))
    for i in range(len(target) - 1, -1, -1):
        if target[i] == item:
            return ct.IntType(i)
    return ct.IntType(-1)


def _cel_split(text: Any, sep: Any, limit: Any = -1) -> Any:
    limit = int(limit)
    if limit == 0:
        return ct.ListType([])
    parts = str(text).split(str(sep)) if limit < 0 else str(text).split(str(sep), limit - 1)
    return ct.ListType([ct.StringType(p) for p in parts])


def _cel_min(items: Any) -> Any:
    return min(items) if len(items) else CELEvalError("min called on empty list", ValueError, ())


def _cel_max(items: Any) -> Any:
    return max(items) if len(items) else CELEvalError("max called on empty list", ValueError, ())


def _cel_sum(items: Any) -> Any:
    values = list(items)
    if not values:
        return ct.IntType(0)
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def _re2(pattern: str) -> Any:
    """The compiled pattern (Go's RE2 dialect, as cel-go's), or the error it could not be compiled with."""
    try:
        return re2_compile(pattern)
    except ValueError as exc:
        return exc


def _re2_error(exc: Exception) -> str:
    return f"error parsing regexp: {exc}"


def _cel_matches(text: Any, pattern: Any) -> Any:
    """CEL's matches(): RE2, unanchored; an invalid pattern is a runtime error (as in cel-go)."""
    compiled = _re2(str(pattern))
    if isinstance(compiled, Exception):
        return CELEvalError(_re2_error(compiled), ValueError, (str(pattern),))
    return ct.BoolType(compiled.search(str(text)) is not None)


def _cel_find_all(text: Any, pattern: Any, limit: Any = -1) -> Any:
    """Kubernetes' regex library: findAll(regex[, limit]) -> the non-overlapping matches."""
    compiled = _re2(str(pattern))
    if isinstance(compiled, Exception):
        return CELEvalError(_re2_error(compiled), ValueError, (str(pattern),))
    found = [m.group(0) for m in compiled.finditer(str(text))]
    if int(limit) >= 0:
        found = found[: int(limit)]
    return ct.ListType([ct.StringType(s) for s in found])


def _cel_substring(text: Any, start: Any, end: Any = None) -> Any:
    """CEL strings extension: substring(start[, end]) in code points; out of range is an error."""
    value = str(text)
    stop = len(value) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(value):
        return CELEvalError(f"index out of range: {int(start)}, {stop}", IndexError, (value,))
    return ct.StringType(value[int(start):stop])


K8S_CEL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "matches": _cel_matches,
    "findAll": _cel_find_all,
    "substring": _cel_substring,
    "duration": _cel_duration,
    "join": _cel_join,
    "isURL": _cel_is_url,
    "url": _cel_url,
    "getScheme": lambda u: ct.StringType(u.parsed.scheme),
    "getHost": lambda u: ct.StringType(_url_host(u)),
    "getHostname": lambda u: ct.StringType(_url_hostname(u)),
    "getPort": lambda u: ct.StringType(_url_port(u)),
    "getEscapedPath": lambda u: ct.StringType(u.parsed.path),
    "getQuery": lambda u: ct.MapType({
        ct.StringType(k): ct.ListType([ct.StringType(v) for v in vs])
        for k, vs in urllib.parse.parse_qs(u.parsed.query, keep_blank_values=True).items()
    }),
    "indexOf": _cel_index_of,
    "lastIndexOf": _cel_last_index_of,
    "lowerAscii": lambda s: ct.StringType("".join(c.lower() if c.isascii() else c for c in str(s))),
    "upperAscii": lambda s: ct.StringType("".join(c.upper() if c.isascii() else c for c in str(s))),
    "trim": lambda s: ct.StringType(str(s).strip()),
    "split": _cel_split,
    "replace": lambda s, old, new, n=-1: ct.StringType(str(s).replace(str(old), str(new), int(n))),
    "isSorted": lambda items: ct.BoolType(all(items[i] <= items[i + 1] for i in range(len(items) - 1))),
    "sum": _cel_sum,
    "min": _cel_min,
    "max": _cel_max,
}

_CEL_ENV = celpy.Environment()


@functools.lru_cache(maxsize=512)
def _compile(expression: str) -> Any:
    """A cel-python program, or the exception it could not be built with."""
    try:
        return _CEL_ENV.program(_CEL_ENV.compile(expression), functions=K8S_CEL_FUNCTIONS)
    except Exception as exc:  # noqa: BLE001 - reported per rule
        return exc


def _to_cel(value: Any, schema: dict[str, Any] | None) -> Any:
    """Typed like Kubernetes' CEL: integer -> int, number -> double, objects -> maps."""
    if value is None:
        return None
    if schema is None or (schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema):
        return celpy.json_to_cel(value)
    kind = schema.get("type")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        return ct.MapType({
            ct.StringType(k): _to_cel(v, props.get(k, additional if isinstance(additional, dict) else None))
            for k, v in value.items()
        })
    if isinstance(value, list):
        items = schema.get("items")
        return ct.ListType([_to_cel(v, items if isinstance(items, dict) else None) for v in value])
    if isinstance(value, bool):
        return ct.BoolType(value)
    if kind == "number" and isinstance(value, (int, float)):
        return ct.DoubleType(float(value))
    if isinstance(value, int):
        return ct.IntType(value)
    if isinstance(value, float):
        return ct.DoubleType(value)
    return ct.StringType(value)


def _uses_old_self(rule: str) -> bool:
    without_strings = re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "''", rule)
    return re.search(r"\boldSelf\b", without_strings) is not None


def _truthy(result: Any) -> bool | Exception:
    if isinstance(result, CELEvalError):
        return result
    if isinstance(result, (bool, ct.BoolType)):
        return bool(result)
    return TypeError(f"rule did not evaluate to a bool: {result!r}")


def _rule_error_string(rule: dict[str, Any]) -> str:
    return (rule.get("message") or "").strip() or rule["rule"].strip()


class _CelContext:
    def __init__(self, is_update: bool) -> None:
        self.is_update = is_update
        self.errors: list[str] = []


def _eval_rule(rule: dict[str, Any], schema: dict[str, Any], value: Any, old: Any) -> bool | Exception:
    text = rule["rule"]
    program = _compile(text)
    fallback = PYTHON_RULES.get(text.strip())
    if isinstance(program, Exception):
        if fallback is None:
            return RuntimeError(f"offline validator cannot compile this rule with cel-python ({program}); add it to PYTHON_RULES")
        return fallback(value, old)
    activation = {"self": _to_cel(value, schema)}
    if old is not None:
        activation["oldSelf"] = _to_cel(old, schema)
    try:
        result = _truthy(program.evaluate(activation))
    except Exception as exc:  # noqa: BLE001 - cel-python raises for some failures
        result = exc
    if isinstance(result, Exception) and fallback is not None:
        return fallback(value, old)
    return result


def _message_expression(rule: dict[str, Any], schema: dict[str, Any], value: Any, old: Any) -> str | None:
    expression = rule.get("messageExpression")
    if not expression:
        return None
    program = _compile(expression)
    if isinstance(program, Exception):
        return None
    activation = {"self": _to_cel(value, schema)}
    if old is not None:
        activation["oldSelf"] = _to_cel(old, schema)
    try:
        result = program.evaluate(activation)
    except Exception:  # noqa: BLE001 - the server falls back to `message`
        return None
    if not isinstance(result, str) or isinstance(result, CELEvalError):
        return None
    text = str(result).strip()
    if not text or "\n" in text or "\r" in text or len(text) > 5 * 1024:
        return None
    return text


def _cel_rules(schema: dict[str, Any], value: Any, old: Any, path: str, ctx: _CelContext) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        uses_old = _uses_old_self(rule["rule"])
        if uses_old and old is None:
            continue  # a transition rule: only on update, and only where an old value correlates
        result = _eval_rule(rule, schema, value, old)
        if result is True:
            continue
        node_type = schema.get("type", "")
        if isinstance(result, Exception):
            why = result.args[0] if isinstance(result, CELEvalError) and result.args else result
            ctx.errors.append(field_error("Invalid value", path, node_type, f"{why} evaluating rule: {_rule_error_string(rule)}"))
            continue
        if ctx.is_update and not uses_old and old is not None and old == value:
            continue  # ratcheting: an unchanged value's error is only a warning on the server
        where = path
        field_path = (rule.get("fieldPath") or "").lstrip(".")
        if field_path:
            where = _join(path, field_path)
        detail = _message_expression(rule, schema, value, old)
        if detail is None:
            detail = (rule.get("message") or "").strip() or f"failed rule: {_rule_error_string(rule)}"
        shown: Any = _OMIT if node_type in ("object", "array") else value
        reason = rule.get("reason")
        if reason == "FieldValueRequired":
            ctx.errors.append(field_error("Required value", where, detail=detail))
        elif reason == "FieldValueForbidden":
            ctx.errors.append(field_error("Forbidden", where, detail=detail))
        elif reason == "FieldValueDuplicate":
            ctx.errors.append(field_error("Duplicate value", where, shown))
        else:
            ctx.errors.append(field_error("Invalid value", where, shown, detail))


def _cel_walk(schema: dict[str, Any] | None, value: Any, old: Any, path: str, ctx: _CelContext) -> None:
    if schema is None or value is None:
        return
    _cel_rules(schema, value, old, path, ctx)
    for sub in schema.get("allOf") or []:
        _cel_walk(sub, value, old, path, ctx)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        correlatable = schema.get("x-kubernetes-map-type") != "atomic"
        old_map = old if isinstance(old, dict) and correlatable else {}
        for key, item in value.items():
            if key in props:
                _cel_walk(props[key], item, old_map.get(key), _join(path, key), ctx)
            elif isinstance(additional, dict):
                _cel_walk(additional, item, old_map.get(key), f"{path}[{key}]", ctx)
    elif isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, dict):
            return
        old_list = old if isinstance(old, list) else []
        list_type = schema.get("x-kubernetes-list-type")
        keys = schema.get("x-kubernetes-list-map-keys") or []
        for i, item in enumerate(value):
            old_item = None
            if list_type == "set" and item in old_list:
                old_item = item
            elif list_type == "map" and isinstance(item, dict):
                wanted = [item.get(k) for k in keys]
                old_item = next((o for o in old_list if isinstance(o, dict) and [o.get(k) for k in keys] == wanted), None)
            _cel_walk(items, item, old_item, _index(path, i), ctx)


# --- entry point ------------------------------------------------------------------------------


def validate_manifest(
    obj: dict[str, Any],
    crd_path: str | Path = DEFAULT_CRD_PATH,
    *,
    old: dict[str, Any] | None = None,
    field_validation: str = "Strict",
) -> list[str]:
    """Errors the API server would give for creating `obj` (updating `old` to `obj` when given).

    Empty means valid. `field_validation` is kubectl's `--validate`: "Strict" (kubectl's
    default) refuses unknown fields with the server's strict-decoding message and nothing
    else (the server stops there too); "Warn"/"Ignore" drop them silently.
    """
    if not isinstance(obj, dict):
        return [f"<nil>: Invalid value: {go_quote(_json_type(obj))}: the manifest must be an object"]
    crd = load_crd(crd_path)
    names = crd["spec"]["names"]
    version, problem = _version(crd, obj.get("apiVersion"))
    if version is None:
        return [problem or "apiVersion: Required value"]
    if obj.get("kind") != names["kind"]:
        shown = go_value(obj.get("kind")) if obj.get("kind") is not None else '""'
        return [f"kind: Unsupported value: {shown}: supported values: {go_quote(names['kind'])}"]
    root = version["schema"]["openAPIV3Schema"]

    new = copy.deepcopy(obj)
    previous = copy.deepcopy(old) if old is not None else None
    unknown = _check_unknown_fields(new, root, prune=field_validation != "Strict")
    if unknown and field_validation == "Strict":
        # The server stops at decoding (400 Bad Request) and says only this.
        return [
            f"{names['kind']} in version {go_quote(version['name'])} cannot be handled as a {names['kind']}: "
            "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown)
        ]
    if previous is not None:
        _check_unknown_fields(previous, root, prune=True)
    status_subresource = "status" in (version.get("subresources") or {})
    for doc in (new, previous):
        if doc is None:
            continue
        if status_subresource:
            doc.pop("status", None)  # the main endpoint ignores status; /status validates it
        apply_defaults(doc, root)

    typed: list[tuple[str, str]] = []
    typed += _metadata_errors(new)
    typed += _schema_errors(new, root)
    errors = [message for message, _ in typed]
    errors += _list_set_errors(new, root, "")
    if any(kind in ("NotSupported", "Required", "TooLong", "TooMany", "TypeInvalid") for _, kind in typed):
        errors.append(BLOCKING_MESSAGE)
    else:
        ctx = _CelContext(is_update=previous is not None)
        _cel_walk(root, new, previous, "", ctx)
        errors += ctx.errors
    return list(dict.fromkeys(errors))  # the server's aggregate drops exact duplicates


def main(argv: list[str] | None = None) -> int:
    """`python -m fillprob_operator.validation FILE...`: print what the API server would say."""
    args = sys.argv[1:] if argv is None else argv
    crd_path: str | Path = DEFAULT_CRD_PATH
    if len(args) >= 2 and args[0] == "--crd":
        crd_path, args = args[1], args[2:]
    if not args:
        print("usage: python -m fillprob_operator.validation [--crd CRD.yaml] MANIFEST.yaml...", file=sys.stderr)
        return 2
    crd = load_crd(crd_path)
    kind = f"{crd['spec']['names']['kind']}.{crd['spec']['group']}"
    failed = False
    for name in args:
        with open(name, encoding="utf-8") as handle:
            docs = [d for d in yaml.safe_load_all(handle) if d is not None]
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != crd["spec"]["names"]["kind"]:
                continue
            errors = validate_manifest(doc, crd_path)
            obj_name = str((doc.get("metadata") or {}).get("name", ""))
            if errors:
                failed = True
                print(f"{name}: {invalid_message(kind, obj_name, errors)}")
            else:
                print(f"{name}: {kind}/{obj_name} valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
