"""Chat prompts rendered with the model's own Jinja chat template, the way transformers renders them.

The template ships with the model (the export copies `chat_template.jinja`, or it sits in
`tokenizer_config.json`), so a system prompt, multi-turn history and the generation prompt come out exactly
as the model was trained on, not as a hard-coded imitation.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

ROLES = ("system", "user", "assistant")


class ChatTemplateError(ValueError):
    pass


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]):
        self.source = source
        self.special_tokens = special_tokens
        self._template = None  # compiled on first use: jinja2 is only needed by apps that chat

    @classmethod
    def find(cls, folder: Path) -> "ChatTemplate | None":
        """The template of a level folder: chat_template.jinja, else tokenizer_config.json's; None if neither."""
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = folder / "chat_template.jinja"
        source = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if not isinstance(source, str) or not source:
            return None
        special = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(source, {name: text for name, text in special.items() if text is not None})

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt for `messages` (dicts with role and content), ending with the assistant's turn opening."""
        if not messages:
            raise ChatTemplateError("messages is empty")
        for index, message in enumerate(messages):
            if message.get("role") not in ROLES:
                raise ChatTemplateError(f"messages[{index}].role {message.get('role')!r}: use one of {', '.join(ROLES)}")
            if not isinstance(message.get("content"), str):
                raise ChatTemplateError(f"messages[{index}].content must be a string")
        template = self._compiled()
        import jinja2  # present: _compiled needs it

        try:
            return template.render(messages=messages, add_generation_prompt=True, tools=None,
                                           **self.special_tokens)
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"the model's chat template refused these messages: {error}") from None

    def _compiled(self):
        """The template in the sandbox transformers renders chat templates in, with the same helpers."""
        if self._template is None:
            try:
                import jinja2
                from jinja2.ext import loopcontrols
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                raise ChatTemplateError("chat templates need jinja2: pip install 'specqd[chat]'") from None

            def raise_exception(message: str) -> None:
                raise jinja2.TemplateError(message)

            environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                        extensions=[loopcontrols])
            environment.filters["tojson"] = _tojson
            environment.globals["raise_exception"] = raise_exception
            environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
            self._template = environment.from_string(self.source)
        return self._template


def _token_text(value: object) -> str | None:
    """tokenizer_config.json gives a special token as text or as an AddedToken dict with its content."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _tojson(value: object, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)
