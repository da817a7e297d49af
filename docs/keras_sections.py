"""A griffe extension for the API reference (mkdocs.yml): Keras's "Call arguments:" section as a table.

The package's docstrings use Keras's sections. Griffe's Google-style parser
knows "Args:" but keeps "Call arguments:" as an admonition, whose items would
run together into one paragraph; this extension reads the admonition's items
as an "Args:" block, so the reference lists them as it lists the arguments.
"Input shape:" and "Output shape:" stay admonitions: each is one paragraph.
"""

from __future__ import annotations

from typing import Any

import griffe

TITLE = "Call arguments"


class CallArguments(griffe.Extension):
    """Replaces each object's "Call arguments" admonition by a parameters section of that title."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        sections = obj.docstring.parsed
        for index, section in enumerate(sections):
            if isinstance(section, griffe.DocstringSectionAdmonition) and section.title == TITLE:
                items = "\n".join(f"    {line}" for line in section.value.contents.splitlines())
                parsed = griffe.Docstring(f"{TITLE}.\n\nArgs:\n{items}").parse("google", warn_missing_types=False)
                parameters = [part for part in parsed if isinstance(part, griffe.DocstringSectionParameters)]
                if len(parameters) != 1:
                    raise ValueError(f"{obj.path}: the '{TITLE}:' section is not a list of `name: description` items.")
                parameters[0].title = TITLE
                sections[index] = parameters[0]
