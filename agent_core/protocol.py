"""MMedAgent's action protocol: a Plan is ``{"thoughts", "actions": [{"API_name", "API_params"}], "value"}``.

Plans and actions are valid by construction: a constructor that returns gave a usable object, and an error
names the field and quotes the value. An action's parameter may name an earlier action's output
(``"$0.boxes"``); the reference must point backwards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

REFERENCE = re.compile(r"^\$(\d+)\.([a-z_]+)$")


class PlanError(ValueError):
    """A plan does not follow the protocol or does not fit the tool registry."""


@dataclass(frozen=True)
class Action:
    """One tool call."""

    API_name: str
    API_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.API_name, str) or not self.API_name.strip():
            raise PlanError(f"Invalid 'API_name' value {self.API_name!r} - must be a non-empty string")
        if not isinstance(self.API_params, dict):
            raise PlanError(f"Invalid 'API_params' value {self.API_params!r} - must be an object")

    def references(self) -> list[tuple[int, str]]:
        """``(action index, output name)`` for every parameter that names an earlier action's output."""
        found = []
        for value in self.API_params.values():
            if isinstance(value, str) and (match := REFERENCE.match(value)):
                found.append((int(match.group(1)), match.group(2)))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"API_name": self.API_name, "API_params": self.API_params}


@dataclass(frozen=True)
class Plan:
    """What the planner decided: its reasoning, the tool calls in order, and the reply to the user."""

    thoughts: str
    actions: tuple[Action, ...]
    value: str

    def __post_init__(self) -> None:
        for name in ("thoughts", "value"):
            if not isinstance(getattr(self, name), str):
                raise PlanError(f"Invalid '{name}' value {getattr(self, name)!r} - must be a string")
        for index, action in enumerate(self.actions):
            if not isinstance(action, Action):
                raise PlanError(f"Invalid 'actions[{index}]' value {action!r} - must be an Action")
            for source, _ in action.references():
                if source >= index:
                    raise PlanError(
                        f"Invalid 'actions[{index}].API_params' - reference to action {source} must point to an "
                        "earlier action"
                    )

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a JSON object, not {type(data).__name__}")
        missing = [key for key in ("thoughts", "actions", "value") if key not in data]
        if missing:
            raise PlanError(f"the plan lacks {missing}")
        if not isinstance(data["actions"], list):
            raise PlanError(f"Invalid 'actions' value {data['actions']!r} - must be a list")
        actions = []
        for index, item in enumerate(data["actions"]):
            if not isinstance(item, dict) or "API_name" not in item:
                raise PlanError(
                    f"Invalid 'actions[{index}]' value {item!r} - must be an object with 'API_name'"
                )
            actions.append(Action(item["API_name"], item.get("API_params") or {}))
        return cls(thoughts=data["thoughts"], actions=tuple(actions), value=data["value"])

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanError(f"the plan is not valid JSON: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "thoughts": self.thoughts,
            "actions": [a.to_dict() for a in self.actions],
            "value": self.value,
        }

    def to_mmedagent_text(self) -> str:
        """The plan in MMedAgent's own format, the LLM planner's training target.

        ``"thoughts🤔"<thoughts>`` ``"actions🚀"<JSON list>`` ``"value👉"<value>``, one section a line, as in
        MMedAgent's instruction data. ``parse_plan`` reads it back to an equal plan; surrounding whitespace of
        ``thoughts`` and ``value`` is not kept. Raises ``PlanError`` when a field would read back differently:
        one that holds a section marker of its own, starts with ``:`` or is wrapped whole in quotes.
        """
        thoughts, value = self.thoughts.strip(), self.value.strip()
        actions = json.dumps([a.to_dict() for a in self.actions], ensure_ascii=False)
        text = (
            f'"thoughts{MARKERS["thoughts"]}"{thoughts}\n'
            f'"actions{MARKERS["actions"]}"{actions}\n'
            f'"value{MARKERS["value"]}"{value}'
        )
        if parse_plan(text) != Plan(thoughts, self.actions, value):
            raise PlanError(
                "the plan cannot be written in MMedAgent's format: 'thoughts' or 'value' would read back "
                f"differently ({thoughts!r}, {value!r})"
            )
        return text


#: MMedAgent's section markers
MARKERS = {"thoughts": "🤔", "actions": "🚀", "value": "👉"}
_EMOJI = "|".join(MARKERS.values())
_SECTION = re.compile(
    rf'"\s*(?P<quoted>thoughts?|actions?|value)\s*(?:{_EMOJI})?\s*"\s*:?'
    rf"|^[ \t]*(?P<labelled>thoughts?|actions?|value)\s*(?:{_EMOJI})?\s*:"
    rf"|\b(?P<marked>thoughts?|actions?|value)\s*(?:{_EMOJI})\s*:?",
    re.IGNORECASE | re.MULTILINE,
)
_WORD = re.compile(r"[^\W\d][\w-]*")  # a bare word: a key or value the LLM did not quote
_FENCE = re.compile(r"```[\w+-]*")
_END_TOKENS = re.compile(r"(?:\s*(?:</s>|<\|[\w-]*\|>|<eos>))+\s*$")
_PLAN_KEYS = {
    "thoughts": "thoughts",
    "thought": "thoughts",
    "actions": "actions",
    "action": "actions",
    "value": "value",
}
_ACTION_KEYS = {
    "apiname": "API_name",
    "name": "API_name",
    "tool": "API_name",
    "toolname": "API_name",
    "apiparams": "API_params",
    "params": "API_params",
    "parameters": "API_params",
    "arguments": "API_params",
    "args": "API_params",
}
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = {
    "true": "true",
    "false": "false",
    "null": "null",
    "True": "true",
    "False": "false",
    "None": "null",
}


def parse_plan(text: str) -> Plan:
    """A plan from what a planner wrote: our JSON or MMedAgent's text format.

    Read: a JSON object ``{"thoughts", "actions", "value"}``; MMedAgent's ``"thoughts🤔" … "actions🚀" [...]
    "value👉" …`` (also with the emoji left out, or as ``Thoughts: … Actions: [...] Value: …`` lines); a bare
    list of actions, or one action object. Repaired, since a small LLM makes these slips: code fences, text
    before or after, single quotes, Python's True/False/None, trailing commas, unquoted keys, brackets left
    open at the end, keys in another case or spelling (``api_name``, ``params``). Refused with a
    ``PlanError`` that names the field: an action without a non-empty ``API_name``, ``API_params`` that is
    not an object, an unknown key in an action (a parameter written beside ``API_params`` would be lost),
    no ``actions`` at all, references that point forwards. Tool names are not checked here; that is
    ``ToolRegistry.validate``.
    """
    if not isinstance(text, str):
        raise PlanError(f"a plan must be text, not {type(text).__name__}")
    body = _FENCE.sub("", _END_TOKENS.sub("", text)).strip()
    if not body:
        raise PlanError("the plan is empty")
    bracket = _first_bracket(body)
    marker = _SECTION.search(body)
    if marker is not None and (bracket is None or marker.start() < bracket):
        return _plan_from_sections(body)
    if bracket is None:
        raise PlanError(
            "the text holds no plan: neither a JSON object or list nor MMedAgent's "
            f'"thoughts🤔" "actions🚀" "value👉" sections: {_excerpt(body)!r}'
        )
    data, _ = _lenient_json(body, bracket)
    return _plan_from_data(data)


def _excerpt(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_bracket(text: str, start: int = 0) -> int | None:
    found = [i for i in (text.find("{", start), text.find("[", start)) if i >= 0]
    return min(found) if found else None


def _plan_from_sections(body: str) -> Plan:
    """MMedAgent's sections: thoughts up to the actions marker, the JSON after it, the value after that.

    The actions marker taken is the first one followed by a bracket, so a thought that mentions "actions"
    does not end the thoughts; the value marker is looked for only after the actions' JSON, so a parameter
    named "value" inside it is not one.
    """
    markers = list(_SECTION.finditer(body))
    actions_marker = next(
        (m for m in markers if _section_name(m) == "actions" and body[m.end() :].lstrip()[:1] in ("[", "{")),
        None,
    )
    if actions_marker is None:
        named = [_section_name(m) for m in markers]
        raise PlanError(
            f"the plan has no 'actions' section holding a JSON list (sections found: {named}): "
            f"{_excerpt(body)!r}"
        )
    thoughts_marker = next(
        (m for m in markers if _section_name(m) == "thoughts" and m.end() <= actions_marker.start()), None
    )
    thoughts = body[thoughts_marker.end() : actions_marker.start()] if thoughts_marker else ""
    start = _first_bracket(body, actions_marker.end())
    assert start is not None  # the marker was chosen for the bracket after it
    actions, end = _lenient_json(body, start)
    value_marker = next((m for m in markers if _section_name(m) == "value" and m.start() >= end), None)
    value = body[value_marker.end() :] if value_marker else ""
    return _plan_from_data(
        {"thoughts": _section_text(thoughts), "actions": actions, "value": _section_text(value)}
    )


def _section_name(match: re.Match[str]) -> str:
    word = (match.group("quoted") or match.group("labelled") or match.group("marked")).lower()
    return _PLAN_KEYS[word]


def _section_text(text: str) -> str:
    """A section's text without the spaces around it, and without quotes (and a comma) wrapping it whole."""
    text = text.strip()
    quoted = re.fullmatch(r"([\"'])(.*)\1\s*,?", text, flags=re.DOTALL)
    return quoted.group(2).strip() if quoted else text


def _lenient_json(text: str, start: int) -> tuple[Any, int]:
    """The JSON value that begins at ``text[start]`` (``{`` or ``[``), repaired, and the index after it."""
    repaired, end = _repair_json(text, start)
    try:
        return json.loads(repaired), end
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"the plan is not valid JSON even after repair ({exc.msg}): {_excerpt(repaired)!r}"
        ) from None


def _repair_json(text: str, start: int) -> tuple[str, int]:
    """Rewrite the JSON-like value at ``text[start]`` as strict JSON; return it and where it ended.

    One pass over the characters, tracking strings and open brackets: single-quoted strings become
    double-quoted, bare words become literals or quoted strings, commas before a closing bracket go, and
    at the end of the text an open string and open brackets are closed. Text after the value is ignored.
    """
    out: list[str] = []
    expected: list[str] = []
    index = start
    while index < len(text):
        char = text[index]
        if char in "\"'":
            literal, index = _read_string(text, index)
            out.append(literal)
            continue
        if char in "{[":
            expected.append("}" if char == "{" else "]")
            out.append(char)
        elif char in "}]":
            if char != expected[-1]:
                raise PlanError(
                    f"the plan's JSON closes with {char!r} where {expected[-1]!r} was expected, at character "
                    f"{index}: {_excerpt(text[start : index + 1])!r}"
                )
            _drop_trailing_comma(out)
            out.append(expected.pop())
            if not expected:
                return "".join(out), index + 1
        elif (word := _WORD.match(text, index)) and not (out and (out[-1][-1:].isdigit() or out[-1] == ".")):
            out.append(_LITERALS.get(word.group(), json.dumps(word.group(), ensure_ascii=False)))
            index += len(word.group())
            continue
        else:
            out.append(char)
        index += 1
    _drop_trailing_comma(out)
    out.extend(reversed(expected))
    return "".join(out), len(text)


def _read_string(text: str, start: int) -> tuple[str, int]:
    """The string literal at ``text[start]`` as a JSON string, and the index after its closing quote.

    A single quote ends a single-quoted string only before ``, : } ]`` or the end, so an apostrophe
    ("the patient's lung") stays in it. A string left open at the end of the text is closed there.
    """
    quote = text[start]
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):
            following = text[index + 1]
            code = text[index + 2 : index + 6]
            if following == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", code):
                chars.append(chr(int(code, 16)))
                index += 6
            else:
                chars.append(_ESCAPES.get(following, following))
                index += 2
            continue
        if char == quote and (quote == '"' or text[index + 1 :].lstrip()[:1] in ("", ",", ":", "}", "]")):
            return _json_string(chars), index + 1
        chars.append(char)
        index += 1
    return _json_string(chars), len(text)


def _json_string(chars: list[str]) -> str:
    """``chars`` as a JSON string literal; ``\\u`` surrogate pairs (an escaped emoji) joined, lone ones replaced."""
    text = "".join(chars).encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return json.dumps(text, ensure_ascii=False)


def _drop_trailing_comma(out: list[str]) -> None:
    position = len(out) - 1
    while position >= 0 and out[position].isspace():
        position -= 1
    if position >= 0 and out[position] == ",":
        del out[position]


def _normalised_keys(data: dict[str, Any], names: dict[str, str], where: str, strict: bool) -> dict[str, Any]:
    """``data`` with its keys spelled canonically (case, ``_``, spaces and emoji ignored).

    With ``strict`` an unknown key is an error; without, it is left out. Two keys that mean the same
    field are an error either way.
    """
    result: dict[str, Any] = {}
    for key, value in data.items():
        canonical = names.get(re.sub(r"[^a-z]", "", str(key).lower()))
        if canonical is None:
            if strict:
                expected = sorted(set(names.values()))
                raise PlanError(f"Invalid '{where}' - unknown key {key!r} (expected {expected})")
            continue
        if canonical in result:
            raise PlanError(f"Invalid '{where}' - {key!r} repeats '{canonical}'")
        result[canonical] = value
    return result


def _plan_from_data(data: Any) -> Plan:
    if isinstance(data, list):
        return Plan("", _actions_from(data), "")
    if not isinstance(data, dict):
        raise PlanError(f"a plan must be a JSON object or a list of actions, not {type(data).__name__}")
    fields = _normalised_keys(data, _PLAN_KEYS, "plan", strict=False)
    if "actions" not in fields:
        if _normalised_keys(data, _ACTION_KEYS, "plan", strict=False):
            return Plan("", _actions_from([data]), "")
        raise PlanError(f"the plan has no 'actions' (keys: {sorted(map(str, data))})")
    return Plan(
        thoughts=_text_field(fields.get("thoughts"), "thoughts"),
        actions=_actions_from(fields["actions"]),
        value=_text_field(fields.get("value"), "value"),
    )


def _text_field(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PlanError(f"Invalid '{name}' value {value!r} - must be a string")
    return value.strip()


def _actions_from(items: Any) -> tuple[Action, ...]:
    if isinstance(items, dict) and items:
        items = [items]
    if not isinstance(items, list):
        raise PlanError(f"Invalid 'actions' value {items!r} - must be a list of actions")
    return tuple(_action_from(item, index) for index, item in enumerate(items))


def _action_from(item: Any, index: int) -> Action:
    where = f"actions[{index}]"
    if not isinstance(item, dict):
        raise PlanError(
            f"Invalid '{where}' value {item!r} - must be an object with 'API_name' and 'API_params'"
        )
    fields = _normalised_keys(item, _ACTION_KEYS, where, strict=True)
    name = fields.get("API_name")
    if not isinstance(name, str) or not name.strip():
        raise PlanError(f"Invalid '{where}.API_name' value {name!r} - must be a non-empty string")
    params = fields.get("API_params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise PlanError(f"Invalid '{where}.API_params' value {params!r} - must be an object")
    return Action(name.strip(), params)
