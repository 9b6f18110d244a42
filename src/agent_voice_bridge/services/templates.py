"""``instructions`` and ``greeting`` filled in with the call's facts.

``{caller}``, ``{callee}``, ``{call_sid}``, ``{local_time}`` and every TwiML
``<Parameter>`` by name. Unknown names and other braces (JSON in a prompt) are
left as written, so a prompt never fails to render mid-call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: str, facts: Mapping[str, str]) -> str:
    return _FIELD.sub(lambda m: str(facts.get(m.group(1), m.group(0))), template)
